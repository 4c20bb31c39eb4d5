"""``onionpost demo``, the README's main job: a whole run, and Ctrl-C at each stage.

The demo starts its own private network, two relay processes and two client
tors in a directory given with ``--dir``; afterwards no process may mention
that directory any more.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from onionpost.demo import MESSAGES
from onionpost.torconfig import process

pytestmark = pytest.mark.tor

REPO = Path(__file__).resolve().parents[2]


class Demo:
    """``python -m onionpost demo --dir DIR`` with its output in files."""

    def __init__(self, workdir: Path):
        self.workdir = workdir / "demo"
        self.out = workdir / "demo.out"
        self.err = workdir / "demo.err"
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            # Ctrl-C must reach it even when the tests run in a background job, where SIGINT
            # is ignored and the child would inherit that.
            self.proc = subprocess.Popen([sys.executable, "-m", "onionpost", "demo", "--dir", str(self.workdir)],
                                         stdout=out, stderr=err, cwd=REPO,
                                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))

    def output(self) -> str:
        return self.out.read_text(errors="replace") + self.err.read_text(errors="replace")

    def wait_for(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.out.read_text(errors="replace"):
            assert self.proc.poll() is None, f"demo exited before {text!r}:\n{self.output()[-3000:]}"
            assert time.monotonic() < deadline, f"no {text!r} after {timeout} s:\n{self.output()[-3000:]}"
            time.sleep(0.05)

    def processes_left(self) -> list[str]:
        """Live processes whose command line names the demo's directory."""
        mark = str(self.workdir.resolve())
        left = []
        for entry in Path("/proc").glob("[0-9]*"):
            pid = int(entry.name)
            args = process.cmdline(pid)
            if pid != os.getpid() and any(mark in arg for arg in args) and process.pid_alive(pid):
                left.append(f"{pid}: {' '.join(args)}")
        return left

    def kill_leftovers(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        process.stop_pids([int(line.split(":")[0]) for line in self.processes_left()])


@pytest.fixture
def demo(tmp_path):
    demos = []

    def start() -> Demo:
        demos.append(Demo(tmp_path))
        return demos[-1]

    yield start
    for d in demos:
        d.kill_leftovers()


@pytest.mark.timeout(300)
def test_demo_runs_the_conversation_and_leaves_nothing_running(demo):
    run = demo()
    assert run.proc.wait(240) == 0, run.output()[-3000:]
    out = run.out.read_text()
    for sender, text in MESSAGES:
        state = "delivered" if sender == "alice" else "received"
        assert f"{'Alice' if sender == 'alice' else 'Bob'}: {text}  [{state}]" in out, out
    assert "Security code (the same on both sides)" in out and "True" not in out
    circuits = [line for line in out.splitlines() if " queue " in line and "circuit relay" in line]
    assert len(circuits) == 4, out  # one circuit per one-directional queue and side
    assert len({line.split("circuit ")[1] for line in circuits}) == 4, out
    assert out.rstrip().endswith("Done.")
    assert "Traceback" not in run.output()
    assert run.processes_left() == []


@pytest.mark.timeout(240)
@pytest.mark.parametrize("stage", [
    "1. Starting a private Tor network",  # while the network comes up (in a worker thread)
    "2. Starting two onionpost relays",   # while the relays' tors bootstrap and publish
    "3. Two people",                      # while the clients' tors bootstrap
    "6. They talk",                       # in the middle of the conversation
])
def test_ctrl_c_at_any_stage_stops_everything(demo, stage):
    run = demo()
    run.wait_for(stage, timeout=120)
    time.sleep(0.5)
    run.proc.send_signal(signal.SIGINT)
    assert run.proc.wait(60) == 130, run.output()[-3000:]
    assert "Interrupted: everything was stopped." in run.err.read_text()
    assert "Traceback" not in run.output()
    assert run.processes_left() == []
