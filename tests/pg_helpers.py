"""A throwaway PostgreSQL cluster for tests and the bench: ``initdb`` under a temp dir, ``postgres`` on a free 127.0.0.1 port.

The server is this process's child, stopped by its PID (SIGINT: PostgreSQL's
fast shutdown; SIGKILL if it does not stop). PostgreSQL refuses to run as
root, so when this process is root (CI) the cluster's files belong to, and
its programs run as, the unprivileged user ``nobody`` (``ONIONPOST_PG_USER``
names another). Debian's server programs live in
/usr/lib/postgresql/<version>/bin, which is not on PATH: the newest version
there is used, or ``initdb`` from PATH. Missing PostgreSQL is an error that
says how to install it, never a skip: ``scripts/setup.sh`` installs it.
"""

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg

SUPERUSER = "onionpost"
DEFAULT_UNPRIVILEGED = "nobody"


class PostgresMissing(RuntimeError):
    pass


def server_bin_dir() -> Path:
    """The directory of ``initdb`` and ``postgres``: Debian's newest version dir, else PATH."""
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: _version_key(Path(p).parents[1].name))
    if versions:
        return Path(versions[-1]).parent
    found = shutil.which("initdb")
    if found:
        return Path(os.path.realpath(found)).parent
    raise PostgresMissing(
        "PostgreSQL's server programs (initdb, postgres) are missing: run 'bash scripts/setup.sh' "
        "(it installs Debian's postgresql package) or 'apt-get install postgresql'"
    )


def _version_key(name: str) -> tuple:
    return tuple(int(part) if part.isdigit() else 0 for part in name.split("."))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PostgresCluster:
    """``start()`` a cluster; ``url(name)`` creates a database and returns its URL; ``stop()`` ends it and removes its files."""

    def __init__(self, *, fsync: bool = True):
        self.fsync = fsync
        self.bin = server_bin_dir()
        self.port = 0
        self.dir: Path | None = None
        self.proc: subprocess.Popen | None = None
        self._user: str | None = None
        if os.geteuid() == 0:
            self._user = os.environ.get("ONIONPOST_PG_USER", DEFAULT_UNPRIVILEGED)

    @property
    def data(self) -> Path:
        return self.dir / "data"

    @property
    def log_path(self) -> Path:
        return self.dir / "postgres.log"

    def _run_as(self) -> dict:
        return {"user": self._user} if self._user else {}

    def start(self, timeout: float = 60.0) -> "PostgresCluster":
        self.dir = Path(tempfile.mkdtemp(prefix="onionpost-pg-"))
        if self._user:
            entry = pwd.getpwnam(self._user)
            os.chown(self.dir, entry.pw_uid, entry.pw_gid)
        init = subprocess.run(
            [str(self.bin / "initdb"), "-D", str(self.data), "-U", SUPERUSER, "--auth=trust", "-E", "UTF8", "--no-locale",
             "--no-sync", "--no-instructions"],
            capture_output=True, text=True, timeout=timeout, **self._run_as(),
        )
        if init.returncode != 0:
            self._remove()
            raise RuntimeError(f"initdb failed: {init.stderr.strip()[-1500:]}")
        self.port = free_port()
        self._spawn(timeout)
        return self

    def _spawn(self, timeout: float) -> None:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [str(self.bin / "postgres"), "-D", str(self.data), "-p", str(self.port), "-h", "127.0.0.1",
             "-k", str(self.dir), "-c", "max_connections=200", "-c", f"fsync={'on' if self.fsync else 'off'}"],
            stdout=log, stderr=log, **self._run_as(),
        )
        log.close()
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                text = self.log_text()[-1500:]
                self._remove()
                raise RuntimeError(f"postgres exited with {self.proc.returncode}: {text}")
            try:
                psycopg.connect(self.admin_url, connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"postgres did not accept connections within {timeout} s: {self.log_text()[-1500:]}")
                time.sleep(0.05)

    @property
    def admin_url(self) -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/postgres"

    def url(self, database: str) -> str:
        """Create ``database`` (if new) and return its URL."""
        with psycopg.connect(self.admin_url, autocommit=True) as db:
            exists = db.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone()
            if not exists:
                db.execute(f'CREATE DATABASE "{database}"')
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def halt(self, timeout: float = 30.0) -> None:
        """Stop the server (fast shutdown: every session is cut) but keep its files; ``resume()`` brings it back."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)

    def resume(self, timeout: float = 60.0) -> None:
        """Start the halted server again on the same port."""
        self._spawn(timeout)

    def stop(self, timeout: float = 30.0) -> None:
        """Fast shutdown by PID (SIGINT), SIGKILL after ``timeout``; then remove the files."""
        self.halt(timeout)
        self._remove()

    def _remove(self) -> None:
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except (OSError, TypeError):
            return ""

    def __enter__(self) -> "PostgresCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
