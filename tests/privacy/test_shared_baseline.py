"""Sanity check of the relay-side linkage attack: with every queue on one socket it must succeed.

``--isolation shared`` (a lab-only baseline) puts all of a person's queues on
one session, so a relay operator who looks at which queues are read in the
same session (``co_session``: socket-level linkage) links every person's
queues. If the attack
did not score this AUC >= 0.8, its low scores on the defaults would mean
nothing. A small population (6 people, 2 contacts each) keeps this fast.
"""

import json

import pytest

from onionpost.lab import linkage, relayview
from onionpost.lab.population import Scenario, run_population


@pytest.mark.timeout(420)
def test_the_linkage_attack_links_a_persons_queues_when_they_share_one_socket(tmp_path):
    # Enough activity that every queue is read in the window: 4 messages a minute each way, and
    # people restarting (every queue subscribed again) about twice a minute.
    scenario = Scenario(people=6, degree=2, duration=40, message_rate=4.0, churn_rate=2.0, offline_min=3.0,
                        offline=3.0, seed=21, daemon_args=("--isolation", "shared", "--link-spread", "2"))
    run = run_population(scenario, tmp_path / "shared", progress=lambda line: print(f"[shared] {line}"))
    with open(run["trace"]) as trace:
        events = [e for e in map(json.loads, trace) if e["t"] >= run["observed_from"]]
    results = linkage.evaluate(relayview.load(events, run["truth"]))
    print(linkage.format_table(results))
    assert run["messages_sent"] > 5, run
    assert results["signals"]["co_session"]["same_person"]["auc"] >= 0.8, linkage.format_table(results)
