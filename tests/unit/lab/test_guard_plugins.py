"""The "guard" capture and the "guard-flow" and "guard+relay" attacks plugged into ``lab report``/``lab export``."""

import json
from pathlib import Path

import pytest

from onionpost.lab import analysis, export, flowcorr, guardlink, registry
from tests.unit.lab.labdir import make_lab_dir

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def guard_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("guard")
    make_lab_dir(out, repeat=1, n_people=8, guard=True)
    analysis.analyse(out)
    return out


def test_both_plugins_register():
    registry.load_plugins()
    assert "guard" in registry.CAPTURES
    assert registry.ATTACKS["guard-flow"].vantage == "guard"
    assert registry.ATTACKS["guard+relay"].vantage == "guard+relay"
    assert not {"onionpost.lab.guardlink", "onionpost.lab.flowcorr"} & set(registry.SKIPPED)


def test_report_has_auc_rows_for_the_guard_attacks(guard_dir):
    results = json.loads((guard_dir / "results.json").read_text())
    flow = results["summary"]["correlated"]["attacks"]["guard-flow"]
    assert not flow["missing"] and flow["vantage"] == "guard"
    # The synthetic guard flows carry their owner's sessions: the flow attack must find them.
    assert flow["signals"]["rank"]["same_person"]["auc"]["mean"] >= 0.9
    assert flow["signals"]["vote"]["same_person"]["auc"]["mean"] >= 0.8
    both = results["summary"]["correlated"]["attacks"]["guard+relay"]["signals"]
    assert "flow" in both and "co_subscription+flow" in both
    assert 0.0 <= both["co_subscription+flow"]["same_person"]["auc"]["mean"] <= 1.0
    report = (guard_dir / "report.md").read_text()
    assert "**guard-flow** (guard)" in report and "**guard+relay** (guard+relay)" in report
    assert "| rank | same_person |" in report and "| co_subscription+flow | same_person |" in report
    assert (guard_dir / "roc" / "correlated-guard-flow-same_person.png").stat().st_size > 0
    # Which source the guard observer used is in the report, not only in results.json.
    assert "## Vantage points captured" in report
    assert "| correlated | run0 | guard | source: control, 8 flows (fallback because: no capture permission) |" in report


def test_a_run_without_guard_capture_reports_not_captured(tmp_path):
    make_lab_dir(tmp_path, repeat=1, n_people=6)
    results = analysis.analyse(tmp_path)
    for name in ("guard-flow", "guard+relay"):
        attack = results["summary"]["correlated"]["attacks"][name]
        assert not attack["signals"] and "not captured" in attack["missing"][0]
    assert "guard-flow: not captured" in (tmp_path / "report.md").read_text()
    assert "## Vantage points captured" not in (tmp_path / "report.md").read_text()
    with pytest.raises(FileNotFoundError, match="no guard-link capture"):
        flowcorr.guard_flow(tmp_path / "traces" / "correlated" / "run0")


def test_export_pairs_guard_flows_with_relay_sessions(guard_dir, tmp_path):
    dest = export.export(guard_dir, "deepcoffea", tmp_path / "dc")
    back = export.read_layout(dest)
    index = json.loads((dest / "index.json").read_text())
    run_dir = guard_dir / "traces" / "correlated" / "run0"
    users = [p.stem for p in guardlink.guard_flow_paths(run_dir)]
    origin = json.loads((run_dir / "run.json").read_text())["observed_from"]
    for user in users:
        name = f"correlated_run0_{user}"
        assert set(back[name]) == {"inflow", "outflow"}
        flow = guardlink.read_flow(run_dir / "guard" / f"{user}.jsonl")
        want = sorted(zip(flow.t.tolist(), flow.size.tolist()))
        assert [s for _, s in back[name]["inflow"]] == [s for _, s in want]
        assert all(abs(t - (x - origin)) < 2e-6 for (t, _), (x, _) in zip(back[name]["inflow"], want))
    assert index["pairs"] >= len(users)


class _Ctx:
    def __init__(self, run_dir: Path, testnet):
        self.run_dir, self.testnet, self.people, self.notes = run_dir, testnet, [], {}


def test_the_guard_capture_on_loopback_notes_it_and_captures_nothing(tmp_path):
    ctx = _Ctx(tmp_path, None)
    guardlink.start_guard(ctx)
    guardlink.stop_guard(ctx)
    assert ctx.notes["guard"]["captured"] is False and "loopback" in ctx.notes["guard"]["note"]
    assert not (tmp_path / guardlink.GUARD_DIR).exists() and not (tmp_path / "flows").exists()


def test_a_user_whose_tor_is_not_running_is_noted_not_fatal(tmp_path):
    class Person:
        name, home = "user0", tmp_path / "home"

    ctx = _Ctx(tmp_path, tmp_path / "testnet")
    ctx.people = [Person()]
    guardlink.start_guard(ctx)
    guardlink.stop_guard(ctx)
    assert ctx.notes["guard"]["captured"] is False
    assert "no running tor" in ctx.notes["guard"]["failed"]["user0"]


def test_a_tcpdump_capture_follows_the_tor_a_restarted_daemon_starts(tmp_path, monkeypatch):
    links = guardlink.TorLinks({9001: "F" * 40}, frozenset({"F" * 40}))
    alive = {200: [(41000, 9001)]}  # the old tor (pid 100) has gone; the daemon's new one is 200

    def connections(pid, or_ports):
        if pid not in alive:
            raise guardlink.CaptureError(f"no process {pid}")
        return alive[pid]

    monkeypatch.setattr(guardlink, "tor_connections", connections)
    monkeypatch.setattr(guardlink, "client_tor", lambda home: (200, 9051, Path(home) / "tor" / "cookie"))
    capture = guardlink.Capture(name="user0", out=tmp_path, source="tcpdump", pid=100, links=links,
                                connections=[guardlink.Connection(40000, 9001)], start=0.0, clock=lambda: 5.0,
                                home=tmp_path)
    capture._look()
    assert capture.pid == 200 and [c.local_port for c in capture.connections] == [40000, 41000]
    capture.home, capture.pid = None, 100  # without the home the capture ends with its tor
    capture._look()
    assert capture.pid == 100 and len(capture.connections) == 2
