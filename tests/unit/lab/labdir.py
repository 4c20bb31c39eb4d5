"""A lab output directory made from synthetic traces, laid out as ``onionpost lab run`` writes it."""

import json
from pathlib import Path

from onionpost.lab import flows, synthetic
from onionpost.lab.scenario import LabScenario, Population, Variant, to_toml

VARIANTS = ("correlated", "independent")


def make_lab_dir(out: Path, repeat: int = 2, n_people: int = 12) -> LabScenario:
    """One variant per synthetic mode, ``repeat`` seeds each; returns the scenario written."""
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
                for record in records:
                    truth_file.write(json.dumps(record) + "\n")
    return scenario
