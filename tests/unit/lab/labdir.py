"""A lab output directory made from synthetic traces, laid out as ``onionpost lab run`` writes it."""

import json
from pathlib import Path

from onionpost.lab import flowcorr, flows, guardlink, synthetic, synthflow
from onionpost.lab.scenario import LabScenario, Population, Variant, to_toml

VARIANTS = ("correlated", "independent")


def make_lab_dir(out: Path, repeat: int = 2, n_people: int = 12, guard: bool = False) -> LabScenario:
    """One variant per synthetic mode, ``repeat`` seeds each; returns the scenario written.

    ``guard``: each run also holds a guard-link capture of every user (``synthflow.guard_flows``
    of the relay's sessions), laid out as the "guard" capture writes it.
    """
    scenario = LabScenario(name="synthetic", description="synthetic traces with a known answer", repeat=repeat,
                           population=Population(users=n_people), variants=tuple(Variant(m) for m in VARIANTS))
    out.mkdir(parents=True, exist_ok=True)
    (out / "scenario.toml").write_text(to_toml(scenario))
    with open(out / "truth.jsonl", "w") as truth_file:
        for mode in VARIANTS:
            for k in range(repeat):
                trace = synthetic.generate(n_people=n_people, contacts=2, mode=mode, seed=k, duration=1800.0)
                run_dir = out / "traces" / mode / f"run{k}"
                run_dir.mkdir(parents=True)
                path, _ = trace.write(run_dir)
                path.rename(run_dir / "relay0.jsonl")
                (run_dir / "truth.json").rename(run_dir / "queues.json")
                times = [e["t"] for e in trace.events]
                sends = sum(e["ev"] == "cmd" and e["cmd"] == "SEND" for e in trace.events)
                run = {"observed_from": min(times), "observed_until": max(times), "messages_sent": sends,
                       "latency": {"delivery": {"count": 1, "p50": 0.5 + k, "p95": 2.0 + k}}}
                (run_dir / "run.json").write_text(json.dumps(run))
                records = flows.truth_records(f"{mode}/run{k}", trace.truth, {"relay0": run_dir / "relay0.jsonl"}, {})
                flows.write_flows(run_dir / "flows" / "relay.jsonl",
                                  flows.relay_flows("relay0", run_dir / "relay0.jsonl", records))
                if guard:
                    add_guard_capture(run_dir, seed=k)
                    run["capture_notes"] = {"guard": {"captured": True, "source": "control", "flows": n_people,
                                                      "failed": {}, "fallback_reasons": ["no capture permission"]}}
                    (run_dir / "run.json").write_text(json.dumps(run))
                for record in records:
                    truth_file.write(json.dumps(record) + "\n")
    return scenario


def add_guard_capture(run_dir: Path, seed: int = 0) -> None:
    """guard/<user>.jsonl flow files (source "control") carrying the user's relay sessions, and flows/guard.jsonl."""
    sessions = flowcorr.relay_sessions(run_dir / "relay0.jsonl", run_dir / "queues.json")
    for flow in synthflow.guard_flows(sessions, seed=seed):
        header = {"flow": flow.owner, "source": "control", "resolution": 0.0, "start": float(flow.t.min()),
                  "end": float(flow.t.max()), "connections": [], "fallback_reasons": ["synthetic"]}
        (run_dir / guardlink.GUARD_DIR).mkdir(exist_ok=True)
        guardlink.write_flow(run_dir / guardlink.GUARD_DIR / f"{flow.owner}.jsonl", header,
                             zip(flow.t.tolist(), flow.size.tolist()))
    guardlink.write_guard_flows(run_dir)
