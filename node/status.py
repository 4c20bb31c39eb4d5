"""``status.json``: aggregate counts a running node publishes for ``onionpost node status``.

Only counts, never ids or addresses of clients. The file names the node's
process id; a file whose process is gone means the node is not running.
"""

import json
import os
from pathlib import Path

from .datadir import replace_private
from .store import read_counts


def write_status(path: Path, *, connections: int, sessions: int, subscriptions: int, **extra: str) -> None:
    """``connections``: open TCP connections (sessions, handshakes in progress, upgrades not yet read);
    ``sessions``: established sessions. ``extra``: more live fields (an onion node adds ``onion_service``)."""
    data = {"pid": os.getpid(), "connections": connections, "sessions": sessions, "subscriptions": subscriptions, **extra}
    replace_private(path, json.dumps(data).encode())


def remove_status(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def read_status(data_dir) -> dict:
    """Counts for a data directory: queues and messages from the database, live figures if the node runs."""
    queues, messages = read_counts(data_dir.store_location())
    status = {"running": False, "queues": queues, "messages": messages, "connections": None, "sessions": None, "subscriptions": None}
    try:
        live = json.loads(data_dir.status_path.read_text())
        pid = int(live["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return status
    if _process_alive(pid):
        status.update(
            running=True,
            connections=int(live.get("connections", 0)),
            sessions=int(live.get("sessions", 0)),
            subscriptions=int(live.get("subscriptions", 0)),
        )
        if isinstance(live.get("onion_service"), str):
            status["onion_service"] = live["onion_service"]
    return status


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
