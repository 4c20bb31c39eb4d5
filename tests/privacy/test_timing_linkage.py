"""A relay operator cannot link one person's queues, or a conversation's two, by timing (issue 15).

A scripted population of real daemons (16 people, 3 contacts each, random
send and reply schedules, people going offline and coming back) talks through
one real relay that records its operator's view (``node run --trace``). The
relay-side attack (``onionpost.lab.linkage``) scores every pair of queues.

- With the default settings, the signals the defences target stay near
  chance: co-subscription and co-closing for "same person", the overlap of
  the queues' online time for "same person" (each queue is online on its own
  schedule, not whenever the device is), and ACK followed by SEND (the
  automatic receipt) for "same conversation": AUC <= 0.6.
- With the defences off (everything at once, as the one-shot CLI used to), the
  same attack on the same kind of population links them (AUC >= 0.8): the
  measurement can see a link when there is one.

The full tables (every signal, including the harder ones) are printed, and
written to ``PRIVACY_RESULTS`` if that variable names a folder.
"""

import json
import os
from pathlib import Path

import pytest

from onionpost.lab import linkage, relayview
from onionpost.lab.population import Scenario, run_population

DEFENDED = (("co_subscription", "same_person"), ("co_closing", "same_person"), ("online_overlap", "same_person"),
            ("ack_send", "same_conversation"))
NO_DEFENCES = ("--link-spread", "0", "--receipt-delay", "0", "--link-gap", "0", "--link-lifetime", "0",
               "--send-link-idle", "0")


def measure(tmp_path: Path, name: str, scenario: Scenario) -> dict:
    run = run_population(scenario, tmp_path / name, progress=lambda line: print(f"[{name}] {line}"))
    with open(run["trace"]) as trace:
        events = [e for e in map(json.loads, trace) if e["t"] >= run["observed_from"]]
    results = linkage.evaluate(relayview.load(events, run["truth"]))
    table = linkage.format_table(results)
    print(f"\n{name}: {run['messages_sent']} messages, {run['offline_periods']} offline periods, "
          f"{run['queues']} queues\n{table}")
    if os.environ.get("PRIVACY_RESULTS"):
        folder = Path(os.environ["PRIVACY_RESULTS"])
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{name}.json").write_text(json.dumps({"run": run, "results": results}, indent=1, default=str))
        (folder / f"{name}.txt").write_text(table + "\n")
    assert run["messages_sent"] > 50 and run["offline_periods"] >= 5, run
    return results


def auc(results: dict, signal: str, question: str) -> float:
    return results["signals"][signal][question]["auc"]


@pytest.mark.timeout(900)
def test_default_settings_keep_the_timing_signals_near_chance_and_the_attack_works_without_them(tmp_path):
    defended = measure(tmp_path, "defaults", Scenario(people=16, duration=150, seed=11))
    # Without defences a stop is instant, so people can come and go more often: everyone restarts a few times.
    baseline = measure(tmp_path, "no-defences", Scenario(duration=90, seed=12, churn_rate=3.0, offline_min=5.0,
                                                         offline=10.0, daemon_args=NO_DEFENCES))
    for signal, question in DEFENDED:
        assert auc(defended, signal, question) <= 0.6, (signal, question, linkage.format_table(defended))
    for signal, question in (("co_subscription", "same_person"), ("ack_send", "same_conversation")):
        assert auc(baseline, signal, question) >= 0.8, (signal, question, linkage.format_table(baseline))
