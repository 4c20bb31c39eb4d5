"""A client's home directory: who owns it, who may read it, where its daemon listens.

One process writes a home at a time (docs/daemon.md, "One owner per home"):
``HomeLock`` is an exclusive ``flock`` on ``HOME/lock`` that the kernel drops
when the process ends, however it ends, so a crash never leaves a stale lock.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
from collections.abc import Iterator
from pathlib import Path

LOCK_NAME = "lock"
SOCKET_NAME = "daemon.sock"


class HomeBusy(Exception):
    """Another process holds the home's lock."""

    def __init__(self, home: Path, pid: int | None):
        self.home, self.pid = home, pid
        who = f"another onionpost process (pid {pid})" if pid else "another onionpost process"
        super().__init__(
            f"{who} is using {home}; stop it, or start 'onionpost daemon' so that commands can share it"
        )


class HomeNotPrivate(Exception):
    """The home directory can be read or written by other users."""


def socket_path(home: Path) -> Path:
    return Path(home) / SOCKET_NAME


UNIX_PATH_MAX = 107
"""Longest AF_UNIX path Linux takes (sun_path is 108 bytes with its final NUL)."""


@contextlib.contextmanager
def unix_address(path: Path) -> Iterator[str]:
    """An address to bind or connect ``path`` with, even when ``path`` is longer than AF_UNIX allows.

    A deep home (a test's or the lab's temporary folder) gives a socket path
    over 107 bytes. Then the address goes through the directory's descriptor,
    ``/proc/self/fd/N/daemon.sock``, which names the same file in a few bytes.
    The descriptor is needed only while bind or connect runs.
    """
    if len(os.fsencode(path)) <= UNIX_PATH_MAX or not os.path.isdir("/proc/self/fd"):
        yield str(path)
        return
    fd = os.open(Path(path).parent, os.O_PATH | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{Path(path).name}"
    finally:
        os.close(fd)


def check_private(home: Path) -> None:
    """Refuse a home that anyone but its owner can read, write or enter."""
    mode = stat.S_IMODE(os.stat(home).st_mode)
    if mode & 0o077:
        raise HomeNotPrivate(
            f"{home} is accessible to other users (mode {mode:04o}); run 'chmod 700 {home}' first"
        )


class HomeLock:
    """``flock(LOCK_EX)`` on ``HOME/lock``; the file holds the owner's PID (for the error message only)."""

    def __init__(self, home: Path):
        self.home = Path(home)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock or raise ``HomeBusy`` at once (never waits)."""
        if self._fd is not None:
            return
        self.home.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.home / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise HomeBusy(self.home, owner_pid(self.home)) from None
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)  # closing the descriptor drops the flock

    def __enter__(self) -> HomeLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def owner_pid(home: Path) -> int | None:
    """The PID written by the lock's holder, if it can be read."""
    try:
        text = (Path(home) / LOCK_NAME).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def is_locked(home: Path) -> bool:
    """Whether some process holds the home's lock right now."""
    path = Path(home) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False
