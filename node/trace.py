"""The relay operator's view, recorded for the privacy measurements (docs/privacy.md, docs/lab.md).

Only with ``onionpost node run --trace FILE``, and only on a private test
network: a loopback node, or an onion node on ``--testnet``. A production node
refuses the flag, so no operator records this by accident.

One JSON object per line, in time order (the format ``onionpost.lab.relayview``
reads):

    {"t": T, "ev": "open",  "session": S}
    {"t": T, "ev": "close", "session": S}
    {"t": T, "ev": "cmd",   "session": S, "cmd": NAME, "queue": HEX|null, "via": "direct"|"forward"}
    {"t": T, "ev": "msg",   "session": S, "queue": HEX}      a message pushed to a subscriber
    {"t": T, "ev": "ids",   "rid": HEX, "snd": HEX}          the two ids of a queue NEW created

It records exactly what the relay already sees (sessions, command names,
queue ids, times); nothing inside the end-to-end encryption.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO


class RelayTrace:
    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time):
        self._file: IO[str] = open(path, "a", buffering=1 << 16, encoding="utf-8")  # noqa: SIM115 - closed in close()
        self._clock = clock
        self._sessions: dict[int, int] = {}
        self._next = 0

    def _write(self, event: dict) -> None:
        self._file.write(json.dumps({"t": round(self._clock(), 6), **event}, separators=(",", ":")) + "\n")

    def _session(self, conn) -> int:
        return self._sessions.get(id(conn), -1)

    def opened(self, conn) -> None:
        self._next += 1
        self._sessions[id(conn)] = self._next
        self._write({"ev": "open", "session": self._next})

    def closed(self, conn) -> None:
        session = self._sessions.pop(id(conn), -1)
        self._write({"ev": "close", "session": session})

    def command(self, conn, name: str, queue: bytes | None, *, via: str = "direct") -> None:
        self._write({"ev": "cmd", "session": self._session(conn), "cmd": name,
                     "queue": queue.hex() if queue else None, "via": via})

    def pushed(self, conn, queue: bytes) -> None:
        self._write({"ev": "msg", "session": self._session(conn), "queue": queue.hex()})

    def created(self, rid: bytes, snd: bytes) -> None:
        self._write({"ev": "ids", "rid": rid.hex(), "snd": snd.hex()})

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()
