"""``onionpost lab run smoke`` end to end over a private Tor network, and Ctrl-C in the middle of a run.

The smoke run: every output exists and parses, the export round-trips, and
no process the run started (network tors, relay, daemons, their tors) is
left behind. The interrupted run: SIGINT while the schedule runs stops all
of them and exits 130.
"""

import json
import os
import select
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from onionpost.lab import export, flows
from onionpost.lab.scenario import BUILTINS, parse_scenario
from onionpost.torconfig import process
from tests.tor.tor_helpers import require_tor

pytestmark = pytest.mark.tor


def descendants(root: int) -> set[int]:
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parents[int(entry)] = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = set(), [root]
    while frontier:
        pid = frontier.pop()
        kids = [p for p, parent in parents.items() if parent == pid]
        found.update(kids)
        frontier += kids
    return found


@pytest.fixture
def start():
    """Start 'onionpost lab run'; a run the test leaves running is interrupted and waited for."""
    started = []

    def launch(out: Path, *args: str) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-m", "onionpost", "lab", "run", *args, "--out", str(out)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        started.append(proc)
        return proc

    yield launch
    for proc in started:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(240)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        proc.stderr.close()


def assert_gone(pids: set[int], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while (alive := [p for p in pids if process.pid_alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not alive, f"processes left behind: {alive}"


def watch(proc: subprocess.Popen, timeout: float) -> set[int]:
    """Every descendant seen while ``proc`` runs."""
    seen: set[int] = set()
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        seen |= descendants(proc.pid)
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"lab run did not finish in {timeout} s")
        time.sleep(0.5)
    return seen


@pytest.mark.timeout(1200)
def test_smoke_scenario_end_to_end(tmp_path, start):
    require_tor()
    out = tmp_path / "smoke"
    proc = start(out, "smoke", "--seed", "5")
    seen = watch(proc, 1100)
    stderr = proc.stderr.read()
    assert proc.returncode == 0, stderr[-3000:]
    assert_gone(seen)
    assert seen, "the run started no process"

    scenario = parse_scenario(tomllib.loads((out / "scenario.toml").read_text()))
    assert scenario.seed == 5 and scenario.population == BUILTINS["smoke"].population
    records = [json.loads(line) for line in (out / "truth.jsonl").read_text().splitlines()]
    kinds = {r["kind"] for r in records}
    assert kinds == {"queue", "session", "message"}
    queues = [r for r in records if r["kind"] == "queue"]
    assert len(queues) == 2 * 4  # smoke: 4 users, mean degree 2 -> 4 conversations
    messages = [r for r in records if r["kind"] == "message"]
    assert messages and sum(m["received"] is not None for m in messages) >= len(messages) // 2
    assert any(r["kind"] == "session" and r["user"] for r in records)

    run_dir = out / "traces" / "default" / "run0"
    assert (run_dir / "relay0.jsonl").stat().st_size > 0
    results = json.loads((out / "results.json").read_text())
    linkage = results["summary"]["default"]["attacks"]["relay-linkage"]["signals"]
    assert 0.0 <= linkage["co_subscription"]["same_person"]["auc"]["mean"] <= 1.0
    # The guard vantage: every user's guard link captured, the source used noted, both attacks scored.
    guard = results["runs"][0]["capture_notes"]["guard"]
    assert guard["captured"] and guard["source"] in ("tcpdump", "control", "control+tcpdump"), guard
    assert guard["flows"] == 4 and not guard["failed"], guard
    for name in ("guard-flow", "guard+relay"):
        attack = results["summary"]["default"]["attacks"][name]
        assert not attack["missing"] and attack["signals"], attack
    report = (out / "report.md").read_text()
    assert "### default" in report and "bytes per message" in report
    assert all((out / "roc" / f"default-relay-linkage-{q}.png").stat().st_size > 0
               for q in ("same_person", "same_conversation"))

    dest = export.export(out, "espresso")
    back = export.read_layout(dest)
    origin = json.loads((run_dir / "run.json").read_text())["observed_from"]
    by_user: dict[str, list] = {}
    for flow in flows.read_flows(run_dir):
        if flow["user"] and flow["side"] == "relay":
            by_user.setdefault(flow["user"], []).extend(flow["packets"])
    assert set(back) == {f"default_run0_{u}" for u in by_user} | {f"default_run0_user{k}" for k in range(4)}
    assert all("inflow" in back[f"default_run0_user{k}"] for k in range(4))
    for user, packets in by_user.items():
        got = back[f"default_run0_{user}"]["outflow"]
        assert [s for _, s in got] == [s for _, s in sorted(packets)]
        assert all(abs(g - (t - origin)) < 2e-6 for (g, _), (t, _) in zip(got, sorted(packets)))
    done = subprocess.run([sys.executable, "-m", "onionpost", "lab", "export", str(out), "--format", "jsonl"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (out / "export" / "jsonl" / "packets.jsonl").stat().st_size > 0


@pytest.mark.timeout(900)
def test_ctrl_c_in_the_middle_of_the_schedule_stops_every_process_of_the_run(tmp_path, start):
    require_tor()
    proc = start(tmp_path / "interrupted", "smoke")
    seen: set[int] = set()
    progress = ""
    deadline = time.monotonic() + 700
    while "running the schedule" not in progress:
        assert proc.poll() is None, progress + proc.stderr.read()[-3000:]
        assert time.monotonic() < deadline, f"the schedule did not start in 700 s: {progress}"
        if select.select([proc.stderr], [], [], 0.5)[0]:
            progress += proc.stderr.readline()
        seen |= descendants(proc.pid)
    seen |= descendants(proc.pid)
    assert sum(" daemon " in _cmdline(p) for p in seen) >= 4 and sum("tor" in _cmdline(p) for p in seen) >= 4
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(240)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("lab run did not stop within 240 s of SIGINT")
    stderr = proc.stderr.read()
    assert proc.returncode == 130, stderr[-3000:]
    assert "interrupted" in stderr
    assert_gone(seen)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode() + " "
    except OSError:
        return ""
