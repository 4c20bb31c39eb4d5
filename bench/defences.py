"""Workload "defences" (opt-in: ``scripts/bench.py --only defences``): what each traffic-correlation
defence buys against a relay operator, and what it costs.

For each setting (the defaults, each defence on alone, and the lab-only
``--isolation shared`` baseline) a scripted population of real daemons
(``onionpost.lab.population``, as ``tests/privacy/test_timing_linkage.py``
runs it: random sends and replies, people going offline and back) talks
through one loopback relay that records its operator's view (``--trace``).
Every setting uses the same seed, so the same schedule.

Figures per setting:

* **AUC same person / same conversation**: the relay-side linkage attack
  (``onionpost.lab.linkage``), the best of its signals for each question (the
  attacker picks the one that works), with the signal's name.
* **bytes per real message**: every block the relay exchanged with the
  clients during the observed window (each command and its answer, each
  pushed message: 16,384 bytes each, the protocol's fixed block) divided by the
  messages the people sent. Receipts, profile updates, cover, subscriptions and
  ACKs are all in it.
* **added latency p50 / p95**: send -> the recipient's ``message`` event, minus
  the defaults' figure in the same run of the bench.
"""

from __future__ import annotations

import json
from pathlib import Path

from onionpost.lab import linkage, relayview
from onionpost.lab.population import Scenario, run_population
from onionpost.proto.versions import BLOCK_SIZE

from .common import Result, Row

SETTINGS = {
    "defaults": (),
    "always connected (the defaults before presence)": ("--link-gap", "0", "--link-lifetime", "1800",
                                                        "--send-link-idle", "300"),
    "send delay 10 s": ("--send-delay", "10"),
    "cover 2/min, Poisson": ("--cover-rate", "2"),
    "reconnect jitter 60 s": ("--reconnect-jitter", "60"),
    "batch 30 s": ("--batch", "30"),
    "isolation shared (baseline)": ("--isolation", "shared"),
}


def scenario(quick: bool, daemon_args: tuple[str, ...]) -> Scenario:
    if quick:
        return Scenario(people=6, degree=2, duration=60, seed=31, daemon_args=daemon_args)
    return Scenario(people=10, degree=3, duration=150, seed=31, daemon_args=daemon_args)


def best(results: dict, question: str) -> tuple[float, str]:
    """The attacker's pick: the signal with the highest AUC for ``question``."""
    return max((m[question]["auc"], signal) for signal, m in results["signals"].items())


def measure(run: dict) -> dict:
    with open(run["trace"]) as trace:
        events = [e for e in map(json.loads, trace) if e["t"] >= run["observed_from"]]
    results = linkage.evaluate(relayview.load(events, run["truth"]))
    window = [e for e in events if e["t"] <= run["observed_until"]]
    blocks = sum(2 if e["ev"] == "cmd" else 1 for e in window if e["ev"] in ("cmd", "msg"))
    person, person_signal = best(results, "same_person")
    conversation, conversation_signal = best(results, "same_conversation")
    delivery = run["latency"]["delivery"]
    return {
        "auc_same_person": round(person, 3), "same_person_signal": person_signal,
        "auc_same_conversation": round(conversation, 3), "same_conversation_signal": conversation_signal,
        "bytes_per_message": round(blocks * BLOCK_SIZE / max(1, run["messages_sent"])),
        "delivery_p50": delivery["p50"], "delivery_p95": delivery["p95"],
        "messages_sent": run["messages_sent"], "offline_periods": run["offline_periods"],
        "defended": {f"{signal}/{question}": round(results["signals"][signal][question]["auc"], 3) for signal, question in
                     (("co_subscription", "same_person"), ("co_closing", "same_person"), ("ack_send", "same_conversation"))},
        "table": linkage.format_table(results),
    }


def run(quick: bool, workdir: Path, settings: dict | None = None) -> Result:
    result = Result("defences")
    measured = {}
    for name, args in (settings or SETTINGS).items():
        folder = workdir / name.split(" ")[0].replace("/", "-")
        print(f"[defences] {name}: {' '.join(args) or '(defaults)'}", flush=True)
        measured[name] = measure(run_population(scenario(quick, args), folder, progress=lambda line: None))
        print(f"[defences] {name}: {json.dumps({k: v for k, v in measured[name].items() if k != 'table'})}", flush=True)
    base = measured.get("defaults")
    for name, m in measured.items():
        added = ("–" if base is None or m["delivery_p50"] is None or base["delivery_p50"] is None else
                 f"{m['delivery_p50'] - base['delivery_p50']:+.1f} / {m['delivery_p95'] - base['delivery_p95']:+.1f} s")
        note = (f"best signals: {m['same_person_signal']}, {m['same_conversation_signal']}; "
                f"{m['messages_sent']} messages; delivery p50/p95 {m['delivery_p50']} / {m['delivery_p95']} s; "
                f"added vs defaults {added}")
        result.rows.append(Row("defences", f"{name}: AUC same person", m["auc_same_person"], unit="AUC", note=note))
        result.rows.append(Row("defences", f"{name}: AUC same conversation", m["auc_same_conversation"], unit="AUC"))
        result.rows.append(Row("defences", f"{name}: bytes per real message", m["bytes_per_message"], unit="bytes"))
    result.details = measured
    return result
