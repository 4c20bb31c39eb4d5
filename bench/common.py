"""Shared helpers of the benchmark suite: processes, /proc accounting, ports, statistics.

Every process the suite starts listens on 127.0.0.1 only, on a port chosen
free just before, and is stopped by its PID (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


class BenchError(Exception):
    """A workload could not run; the message says why."""


class Skipped(Exception):
    """A workload (or one row of it) cannot run on this machine; the message says why."""


# --- /proc accounting ------------------------------------------------------------------


def cpu_seconds(pid: int | str) -> float:
    """User + system CPU time of a whole process (all its threads), in seconds.

    ``pid`` may also be ``"PID/task/TID"``: one thread.
    """
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    # The command name is in parentheses and may contain spaces: split after the last ')'.
    fields = data[data.rindex(b")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / CLK_TCK


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of a process and all its live descendants (e.g. a node's workers, PostgreSQL's backends)."""
    total = 0.0
    pending = [str(pid)]
    while pending:
        current = pending.pop()
        try:
            total += cpu_seconds(current)
            for tid in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{tid}/children") as f:
                    pending += f.read().split()
        except FileNotFoundError:  # ended meanwhile
            continue
    return total


def thread_cpu_seconds(pid: int) -> tuple[float, float]:
    """(CPU seconds of the main thread, CPU seconds of all other threads) of a process."""
    main = others = 0.0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            seconds = cpu_seconds(f"{pid}/task/{tid}")
        except FileNotFoundError:  # a thread that just ended
            continue
        if tid == str(pid):
            main = seconds
        else:
            others += seconds
    return main, others


def rss_bytes(pid: int) -> int:
    """Resident set size of a process now (VmRSS)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise BenchError(f"no VmRSS for process {pid}")


def settle_rss(pid: int, *, wait: float = 0.5) -> int:
    """RSS after a short pause (lets a just-started server finish allocating)."""
    time.sleep(wait)
    return rss_bytes(pid)


# --- ports, processes ---------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def python_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop("PYTHONASYNCIODEBUG", None)
    return env


def stop_pid(proc: subprocess.Popen, timeout: float = 20.0) -> int | None:
    """SIGTERM by PID, then SIGKILL if it does not exit in ``timeout`` seconds."""
    if proc.poll() is not None:
        return proc.returncode
    try:
        os.kill(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return proc.poll()
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        return proc.wait(10)


def wait_line(proc: subprocess.Popen, needle: bytes, timeout: float, what: str, log_path: Path | None = None) -> bytes:
    """Read ``proc.stdout`` until a line containing ``needle``; return it."""
    deadline = time.monotonic() + timeout
    buf = b""
    fd = proc.stdout.fileno()
    while True:
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            if needle in line:
                return line
        left = deadline - time.monotonic()
        if left <= 0 or proc.poll() is not None:
            tail = ""
            if log_path is not None and log_path.exists():
                tail = log_path.read_text(errors="replace")[-1500:]
            raise BenchError(f"{what} did not start (exit status {proc.poll()}): {tail.strip()}")
        ready, _, _ = select.select([fd], [], [], min(left, 0.5))
        if ready:
            chunk = os.read(fd, 4096)
            if chunk:
                buf += chunk


class ChildProcess:
    """A child started with ``stdout=PIPE`` (its ``proc``), stopped by PID."""

    proc: subprocess.Popen | None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc is not None:
            stop_pid(self.proc)
            self.proc.stdout.close()


@dataclass
class NodeProcess(ChildProcess):
    """A real node: ``python -m onionpost node init/run`` in a temp data directory."""

    data_dir: Path
    address: str = ""
    proc: subprocess.Popen | None = None
    started_in: float = 0.0

    @classmethod
    def init(cls, data_dir: Path, *, store: str | None = None, **config) -> "NodeProcess":
        """``store``: a PostgreSQL URL (``node init --store``); None for SQLite."""
        port = free_port()
        result = subprocess.run(
            [sys.executable, "-m", "onionpost", "node", "init", "--data", str(data_dir), "--listen", f"127.0.0.1:{port}",
             *(("--store", store) if store else ())],
            capture_output=True, text=True, timeout=60, cwd=REPO, env=python_env(),
        )
        if result.returncode != 0:
            raise BenchError(f"onionpost node init failed: {result.stderr.strip()}")
        if config:
            path = Path(data_dir) / "node.json"
            data = json.loads(path.read_text())
            data.update(config)
            path.write_text(json.dumps(data))
        return cls(Path(data_dir), result.stdout.strip())

    @property
    def log_path(self) -> Path:
        return self.data_dir.parent / f"{self.data_dir.name}.log"

    def start(self, timeout: float = 60.0, *, prefix: tuple[str, ...] = (), log_level: str = "WARNING",
              args: tuple[str, ...] = ()) -> "NodeProcess":
        """``prefix``: a command to run the node under (e.g. ``prlimit --nofile=1024:1024``); ``args``: more ``node run`` flags."""
        log = open(self.log_path, "ab")
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            [*prefix, sys.executable, "-m", "onionpost", "node", "run", "--data", str(self.data_dir), "--log-level", log_level, *args],
            stdout=subprocess.PIPE, stderr=log, cwd=REPO, env=python_env(),
        )
        log.close()
        wait_line(self.proc, b"listening", timeout, "the node", self.log_path)
        self.started_in = time.perf_counter() - t0
        return self

    def check_log(self) -> None:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        if "Traceback" in text or " ERROR " in text:
            raise BenchError(f"the node logged errors: {text[-1500:]}")


@dataclass
class ServerProcess(ChildProcess):
    """A helper server of the suite (``python -m bench.xxx``), printing one 'listening' line."""

    args: list[str]
    log_path: Path
    proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30.0) -> "ServerProcess":
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, *self.args], stdout=subprocess.PIPE, stderr=log, cwd=REPO, env=python_env())
        log.close()
        self.line = wait_line(self.proc, b"listening", timeout, " ".join(self.args[:2]), self.log_path).decode()
        return self



# --- statistics ------------------------------------------------------------------------------


def percentile(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100.0
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


@dataclass
class Row:
    """One line of the results table."""

    workload: str
    metric: str
    ours: float | str | None
    baseline: float | str | None = None
    baseline_name: str = ""
    unit: str = ""
    ratio: float | None = None
    target: str = ""
    met: bool | None = None
    note: str = ""

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items()}


@dataclass
class Result:
    """What one workload produced: table rows plus raw details for the JSON file."""

    name: str
    rows: list[Row] = field(default_factory=list)
    details: dict = field(default_factory=dict)
    skipped: str | None = None
    error: str | None = None
    seconds: float = 0.0
