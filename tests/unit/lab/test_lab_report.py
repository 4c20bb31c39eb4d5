"""``lab report`` and ``lab export`` on a lab directory of synthetic traces with a known answer."""

import json
import subprocess
import sys

import pytest

from onionpost.lab import analysis, export, flows
from onionpost.lab.scenario import LabScenario, Population, Variant, to_toml
from tests.unit.lab.labdir import make_lab_dir

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def lab_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("lab")
    make_lab_dir(out)
    analysis.analyse(out)
    return out


def auc(results, variant, signal, question):
    return results["summary"][variant]["attacks"]["relay-linkage"]["signals"][signal][question]["auc"]


def test_results_tell_correlated_from_independent_with_mean_and_sd(lab_dir):
    results = json.loads((lab_dir / "results.json").read_text())
    assert len(results["runs"]) == 4
    linked = auc(results, "correlated", "co_subscription", "same_person")
    assert linked["mean"] >= 0.95 and linked["n"] == 2 and linked["sd"] is not None
    chance = auc(results, "independent", "co_subscription", "same_person")
    assert abs(chance["mean"] - 0.5) <= 0.15
    costs = results["summary"]["correlated"]["costs"]
    assert costs["delivery_p50"]["mean"] == pytest.approx(1.0) and costs["bytes_per_message"]["mean"] > 16384
    assert results["summary"]["independent"]["costs"]["added_delivery_p50"] == pytest.approx(0.0)


def test_report_has_every_variant_table_and_its_roc_pictures(lab_dir):
    report = (lab_dir / "report.md").read_text()
    for variant in ("correlated", "independent"):
        assert f"### {variant}" in report
        for question in ("same_person", "same_conversation"):
            png = lab_dir / "roc" / f"{variant}-relay-linkage-{question}.png"
            assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            assert f"(roc/{png.name})" in report
    assert "| co_subscription | same_person | 1.00" in report or "| co_subscription | same_person | 0.9" in report
    assert "TPR at 0.1 % FPR" in report and "bytes per message" in report


def test_report_command_rebuilds_from_the_captured_data(lab_dir):
    (lab_dir / "report.md").unlink()
    done = subprocess.run([sys.executable, "-m", "onionpost", "lab", "report", str(lab_dir)],
                          capture_output=True, text=True, timeout=100)
    assert done.returncode == 0, done.stderr
    assert "### correlated" in (lab_dir / "report.md").read_text()


def test_report_of_a_directory_without_a_run_is_one_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "onionpost", "lab", "report", str(tmp_path)],
                          capture_output=True, text=True, timeout=100)
    assert done.returncode == 1 and done.stderr.strip().count("\n") == 0
    assert "no lab run" in done.stderr


@pytest.mark.parametrize("fmt", ["espresso", "deepcoffea"])
def test_inflow_outflow_export_round_trips(lab_dir, tmp_path, fmt):
    dest = export.export(lab_dir, fmt, tmp_path / fmt)
    back = export.read_layout(dest)
    index = json.loads((dest / "index.json").read_text())
    expected = {}
    for run_dir in sorted((lab_dir / "traces").glob("*/run*")):
        origin = json.loads((run_dir / "run.json").read_text())["observed_from"]
        for flow in flows.read_flows(run_dir):
            if flow["user"]:
                name = f"{run_dir.parent.name}_{run_dir.name}_{flow['user']}"
                expected.setdefault(name, []).extend((t - origin, s) for t, s in flow["packets"])
    assert set(back) == set(expected) == set(index["flows"])
    for name, packets in expected.items():
        got = back[name]["outflow"]
        assert [s for _, s in got] == [s for _, s in sorted(packets)]
        assert max(abs(a - b) for (a, _), (b, _) in zip(got, sorted(packets))) < 2e-6
        assert index["flows"][name]["run"].startswith(name.split("_")[0])
    line = (dest / "outflow" / next(iter(expected))).read_text().splitlines()[0]
    assert line.count("\t") == 1 and abs(int(line.split("\t")[1])) == 16384


def test_jsonl_export_holds_every_packet(lab_dir, tmp_path):
    dest = export.export(lab_dir, "jsonl", tmp_path / "jsonl")
    rows = [json.loads(line) for line in (dest / "packets.jsonl").read_text().splitlines()]
    total = sum(len(f["packets"]) for run in (lab_dir / "traces").glob("*/run*") for f in flows.read_flows(run))
    assert len(rows) == total and {"run", "flow", "side", "user", "t", "size"} <= set(rows[0])


def test_export_refuses_an_unknown_format_and_a_non_empty_destination(lab_dir, tmp_path):
    with pytest.raises(export.ExportError, match="unknown format"):
        export.export(lab_dir, "pcap")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(export.ExportError, match="not empty"):
        export.export(lab_dir, "jsonl", tmp_path / "full")


def test_truth_records_tie_each_session_to_its_user(lab_dir):
    records = [json.loads(line) for line in (lab_dir / "truth.jsonl").read_text().splitlines()]
    queues = {(r["run"], r["name"]): r for r in records if r["kind"] == "queue"}
    sessions = [r for r in records if r["kind"] == "session" and r["queues"]]
    assert sessions
    for s in sessions:
        for name in s["queues"]:
            q = queues[(s["run"], name)]
            assert q["reader"] in s["users"] or q["writer"] in s["users"]


def test_added_latency_is_measured_against_the_scenarios_first_variant_not_the_first_name(tmp_path):
    make_lab_dir(tmp_path, repeat=1, n_people=6)
    reordered = LabScenario(name="synthetic", population=Population(users=6),
                            variants=(Variant("independent"), Variant("correlated")))
    (tmp_path / "scenario.toml").write_text(to_toml(reordered))
    run = tmp_path / "traces" / "independent" / "run0" / "run.json"
    data = json.loads(run.read_text())
    data["latency"]["delivery"]["p50"] = 3.0  # the scenario's first variant: the baseline
    run.write_text(json.dumps(data))
    results = analysis.analyse(tmp_path)
    assert results["variants"] == ["independent", "correlated"]
    assert results["summary"]["independent"]["costs"]["added_delivery_p50"] == pytest.approx(0.0)
    assert results["summary"]["correlated"]["costs"]["added_delivery_p50"] == pytest.approx(0.5 - 3.0)
