"""``onionpost lab run``: a scenario's variants x repeats, each on a freshly started network.

For every variant and repeat: a fresh private Tor network (unless
``network.tor = false``), one relay recording its operator's view, the scripted
users (``population.run_population``), every registered capture, then the
truth written out and the users' homes removed. After all runs, the attacks
and the report (``analysis.analyse``). Ctrl-C (KeyboardInterrupt) unwinds
through every ``finally``: daemons, their tors, the relay, the network and any
netem rule are stopped before the command exits.

Layout of DIR (docs/lab.md):
    scenario.toml  truth.jsonl  results.json  report.md  roc/*.png
    traces/<variant>/run<k>/{relay0.jsonl, ..., queues.json, run.json, flows/*.jsonl, logs/}
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from onionpost.lab import flows, registry
from onionpost.lab.scenario import LabScenario, Variant, contact_graph, daemon_args, to_toml

Progress = Callable[[str, float], None]
# How far into one run each of the population's progress messages is (the bar moves within a run).
PHASES = (("private Tor network", 0.0), ("people online", 0.3), ("running the schedule", 0.4),
          ("stopping the users", 0.9))


class LabError(RuntimeError):
    """A run that cannot go on; one line for the user."""


def check_out_dir(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise LabError(f"{out} is not an empty directory: give a new or empty --out")


# -- network conditions ----------------------------------------------------------------

def netem_command(latency_ms: float, jitter_ms: float, action: str = "add") -> list[str]:
    cmd = ["tc", "qdisc", action, "dev", "lo", "root"]
    if action == "del":
        return cmd
    cmd += ["netem", "delay", f"{latency_ms:g}ms"]
    return cmd + [f"{jitter_ms:g}ms"] if jitter_ms else cmd


def apply_conditions(scenario: LabScenario) -> tuple[dict, Callable[[], None]]:
    """Apply netem on loopback if asked and allowed; return what was applied, and the undo."""
    net = scenario.network
    record = {"latency_ms": net.latency_ms, "jitter_ms": net.jitter_ms, "netem": "not asked",
              "tcp_nodelay": "not asked" if not net.tcp_nodelay else
              "not applied: tor has no option for TCP_NODELAY on its own connections"}
    if not (net.latency_ms or net.jitter_ms):
        return record, lambda: None
    if shutil.which("tc") is None:
        record["netem"] = "not applied: tc is not installed"
        return record, lambda: None
    done = subprocess.run(netem_command(net.latency_ms, net.jitter_ms), capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        record["netem"] = f"not applied: {done.stderr.strip() or 'tc failed'}"
        return record, lambda: None
    record["netem"] = "applied on lo (every loopback connection of this machine, both directions)"
    return record, lambda: subprocess.run(netem_command(0, 0, "del"), capture_output=True, timeout=30)


def check_daemon_options(scenario: LabScenario) -> None:
    """Refuse before starting anything if a variant needs a daemon option this onionpost lacks."""
    import re
    import sys

    needed = {arg: v.name for v in scenario.resolved_variants() for arg in daemon_args(v) if arg.startswith("--")}
    if not needed:
        return
    done = subprocess.run([sys.executable, "-m", "onionpost", "daemon", "--help"], capture_output=True, text=True,
                          timeout=120, env=dict(os.environ, COLUMNS="200"))
    known = set(re.findall(r"(--[a-z][a-z-]*)", done.stdout))
    missing = sorted(set(needed) - known)
    if missing:
        raise LabError(f"variant {needed[missing[0]]} needs the daemon option {missing[0]}, which this "
                       f"onionpost daemon does not have (missing: {', '.join(missing)})")


# -- one run ---------------------------------------------------------------------------

def _population_scenario(scenario: LabScenario, variant: Variant, seed: int, testnet: Path | None):
    from onionpost.lab.population import Scenario
    import random

    t = scenario.traffic
    edges = contact_graph(scenario.population, random.Random(seed))
    return Scenario(people=scenario.population.users, duration=t.duration, message_rate=t.rate,
                    reply_probability=t.reply_probability, reply_delay=t.reply_delay, reply_min=t.reply_min,
                    churn_rate=t.churn_rate, offline=t.offline, offline_min=t.offline_min,
                    daemon_args=daemon_args(variant), seed=seed, testnet=str(testnet) if testnet else None,
                    relays=scenario.population.relays,
                    edges=tuple(edges), pattern=t.pattern, on=t.on, off=t.off)


def run_once(scenario: LabScenario, variant: Variant, repeat: int, seed: int, out: Path,
             progress: Callable[[str], None]) -> dict:
    """One run on a fresh network; writes traces/<variant>/run<repeat>/ and returns its truth records."""
    from onionpost.lab.population import run_population

    run_dir = out / "traces" / variant.name / f"run{repeat}"
    work = out / "work" / variant.name / f"run{repeat}"
    run_dir.mkdir(parents=True)
    network = None
    started: list[registry.Capture] = []
    testnet = work / "testnet" if scenario.network.tor else None
    began = time.monotonic()
    try:
        if testnet is not None:
            from onionpost.torconfig.testnet import PrivateTorNetwork

            progress("starting a private Tor network")
            network = PrivateTorNetwork(testnet)
            network.up()
        network_up = time.monotonic() - began
        ctx = registry.RunContext(run_dir, testnet)

        def on_ready(people) -> None:
            ctx.people = people
            for capture in registry.CAPTURES.values():
                started.append(capture)
                capture.start(ctx)

        def on_done(people) -> None:
            while started:
                started.pop(0).stop(ctx)
            progress("schedule done; stopping the users")

        population = _population_scenario(scenario, variant, seed, testnet)
        result = run_population(population, work / "population", progress=progress, on_ready=on_ready,
                                on_done=on_done)
    finally:
        while started:  # a run cut short: stop the captures (tcpdump, event listeners) it started
            started.pop(0).stop(ctx)
        if network is not None:
            network.down()
        for log in sorted((work / "population").glob("*.log")):  # kept for a failed run too
            (run_dir / "logs").mkdir(exist_ok=True)
            shutil.copyfile(log, run_dir / "logs" / log.name)
    for k, trace in enumerate(result["traces"]):
        shutil.copyfile(trace, run_dir / f"relay{k}.jsonl")
    shutil.copyfile(result["truth"], run_dir / "queues.json")
    run_name = f"{variant.name}/run{repeat}"
    traces = flows.relay_traces(run_dir)
    truth = flows.truth_records(run_name, json.loads((run_dir / "queues.json").read_text()), traces, result)
    flows.write_flows(run_dir / "flows" / "relay.jsonl",
                      [f for relay, trace in traces.items() for f in flows.relay_flows(relay, trace, truth)])
    summary = {k: v for k, v in result.items() if k not in ("trace", "traces", "truth", "messages", "sent_at")}
    summary.update(variant=variant.name, repeat=repeat, seed=seed, capture_notes=ctx.notes,
                   daemon_args=list(population.daemon_args), network_up_seconds=round(network_up, 1),
                   run_seconds=round(time.monotonic() - began, 1))
    (run_dir / "run.json").write_text(json.dumps(summary, indent=1, default=str))
    shutil.rmtree(work, ignore_errors=True)
    return {"run": run_name, "records": truth}


def run(scenario: LabScenario, out: Path, *, seed: int | None = None, repeat: int | None = None,
        progress: Progress | None = None) -> dict:
    """Run every variant ``repeat`` times, then the attacks and the report. Returns the results."""
    from onionpost.lab import analysis

    report = progress or (lambda message, percent: None)
    scenario = replace(scenario, seed=scenario.seed if seed is None else seed,
                       repeat=scenario.repeat if repeat is None else repeat)
    scenario = replace(scenario, variants=scenario.resolved_variants())
    check_out_dir(out)
    check_daemon_options(scenario)
    registry.load_plugins()
    out.mkdir(parents=True, exist_ok=True)
    (out / "scenario.toml").write_text(to_toml(scenario), encoding="utf-8")
    runs = [(v, k) for v in scenario.variants for k in range(scenario.repeat)]
    conditions, undo = apply_conditions(scenario)
    started = time.monotonic()
    try:
        with open(out / "truth.jsonl", "w", encoding="utf-8") as truth:
            for index, (variant, k) in enumerate(runs):
                base = 100.0 * index / (len(runs) + 1)

                def step(message: str, variant=variant, k=k, base=base) -> None:
                    within = next((share for part, share in PHASES if part in message), 0.0)
                    report(f"{variant.name} run {k + 1}/{scenario.repeat}: {message}",
                           base + within * 100.0 / (len(runs) + 1))

                done = run_once(scenario, variant, k, scenario.seed + k, out, step)
                for record in done["records"]:
                    truth.write(json.dumps(record, separators=(",", ":")) + "\n")
                truth.flush()
    finally:
        undo()
        shutil.rmtree(out / "work", ignore_errors=True)
    (out / "conditions.json").write_text(json.dumps(
        {**conditions, "wall_seconds": round(time.monotonic() - started, 1), "pid": os.getpid()}, indent=1))
    report("attacks and report", 100.0 * len(runs) / (len(runs) + 1))
    results = analysis.analyse(out)
    report("done", 100.0)
    return results
