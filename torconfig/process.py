"""Start and stop tor processes by PID (shared by testnet and launch)."""

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from onionpost.torconfig.errors import TorError

STOP_TIMEOUT = 5.0


def tor_binary() -> str:
    """Return the path of the tor executable."""
    path = shutil.which("tor") or ("/usr/sbin/tor" if os.path.exists("/usr/sbin/tor") else None)
    if path is None:
        raise TorError("the tor executable was not found (install tor)")
    return path


def make_private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) and set mode 0700, as tor requires."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def replace_private(path: Path, data: bytes) -> None:
    """Atomically replace ``path`` with ``data``, readable by its owner only (mode 0600)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def spawn_tor(torrc: Path, output: Path) -> subprocess.Popen:
    """Start ``tor -f torrc`` in its own session, stdout/stderr to ``output``.

    ``--defaults-torrc`` points at an empty file so no system torrc leaks in
    (``/dev/null`` is refused, gotcha 7).
    """
    empty = torrc.parent / "torrc-defaults"
    empty.touch()
    with open(output, "wb") as out:
        return subprocess.Popen(
            [tor_binary(), "--defaults-torrc", str(empty), "-f", str(torrc)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def pid_alive(pid: int) -> bool:
    """Return True if ``pid`` runs (zombies count as dead; our own are reaped)."""
    _reap(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def cmdline(pid: int) -> list[str]:
    """Return the command line of ``pid`` (empty if unknown)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def is_tor_with(pid: int, torrc: Path) -> bool:
    """Return True if ``pid`` is a live tor started with this torrc (guards against PID reuse)."""
    return pid_alive(pid) and str(torrc) in cmdline(pid)


def tor_pids_under(directory: Path) -> list[int]:
    """Return PIDs of live tors whose torrc lies under ``directory``."""
    prefix = str(directory.resolve()) + os.sep
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        args = cmdline(int(entry.name))
        if "-f" in args[:-1] and args[args.index("-f") + 1].startswith(prefix):
            if pid_alive(int(entry.name)):
                found.append(int(entry.name))
    return found


def stop_pids(pids: list[int], timeout: float = STOP_TIMEOUT) -> None:
    """Stop processes: SIGTERM, then SIGKILL whatever is alive after ``timeout``."""
    pids = [pid for pid in pids if pid_alive(pid)]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = _signal_and_wait(pids, sig, timeout)
    if pids:
        raise TorError(f"processes still alive after SIGKILL: {pids}")


def kill_pids(pids: list[int], timeout: float = STOP_TIMEOUT) -> None:
    """SIGKILL processes at once, as a crash would, and wait until they are gone."""
    if _signal_and_wait([pid for pid in pids if pid_alive(pid)], signal.SIGKILL, timeout):
        raise TorError(f"processes still alive after SIGKILL: {pids}")


def _signal_and_wait(pids: list[int], sig: int, timeout: float) -> list[int]:
    """Send ``sig`` to each pid; return those still alive after ``timeout``."""
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while pids and time.monotonic() < deadline:
        time.sleep(0.05)
        pids = [pid for pid in pids if pid_alive(pid)]
    return pids


def read_control_port_file(path: Path) -> int | None:
    """Return the port in a ``ControlPortWriteToFile`` file, or None if not written yet."""
    try:
        text = path.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("PORT=") and ":" in line:
            return int(line.rsplit(":", 1)[1])
    return None


def log_tail(*paths: Path, lines: int = 5) -> str:
    """Return the last lines of tor's output/log files, for error messages."""
    tail: list[str] = []
    for path in paths:
        try:
            tail += path.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            pass
    return " | ".join(line.strip() for line in tail if line.strip())
