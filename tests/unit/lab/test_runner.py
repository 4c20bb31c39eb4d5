"""The runner's checks before it starts anything: the output folder, the daemon's options, network conditions."""

import pytest

from onionpost.lab import runner
from onionpost.lab.scenario import LabScenario, Network, Variant

pytestmark = pytest.mark.timeout(120)


def test_out_dir_must_be_new_or_empty(tmp_path):
    runner.check_out_dir(tmp_path / "new")
    runner.check_out_dir(tmp_path)
    (tmp_path / "x").write_text("")
    with pytest.raises(runner.LabError, match="not an empty directory"):
        runner.check_out_dir(tmp_path)


def test_a_variant_needing_an_option_the_daemon_lacks_is_refused_before_anything_starts(monkeypatch):
    scenario = LabScenario(variants=(Variant("plain"), Variant("odd")))
    monkeypatch.setattr(runner, "daemon_args", lambda v: ("--no-such-option", "1") if v.name == "odd" else ())
    with pytest.raises(runner.LabError, match="variant odd needs the daemon option --no-such-option"):
        runner.check_daemon_options(scenario)
    monkeypatch.setattr(runner, "daemon_args", lambda v: ("--link-spread", "0"))
    runner.check_daemon_options(scenario)


def test_netem_command_and_conditions_not_asked():
    assert runner.netem_command(20, 5) == ["tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", "20ms", "5ms"]
    assert runner.netem_command(20, 0) == ["tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", "20ms"]
    assert runner.netem_command(0, 0, "del") == ["tc", "qdisc", "del", "dev", "lo", "root"]
    record, undo = runner.apply_conditions(LabScenario(network=Network(tcp_nodelay=True)))
    assert record["netem"] == "not asked" and record["tcp_nodelay"].startswith("not applied")
    undo()


def test_a_scenario_maps_onto_the_population_run():
    from onionpost.lab.scenario import Client, Population, Traffic

    scenario = LabScenario(population=Population(users=6, mean_degree=2.0, relays=2),
                           traffic=Traffic(pattern="onoff", rate=3.0, on=10.0, off=50.0, duration=90.0, churn_rate=0.0))
    variant = Variant("v", Client(link_spread=0.0))
    p = runner._population_scenario(scenario, variant, 9, None)
    assert (p.people, p.relays, p.message_rate, p.pattern, p.on, p.off, p.duration, p.churn_rate, p.seed) == \
        (6, 2, 3.0, "onoff", 10.0, 50.0, 90.0, 0.0, 9)
    assert p.daemon_args == ("--link-spread", "0") and len(p.edges) == 6 and p.testnet is None


def test_onoff_traffic_is_silent_between_bursts():
    import random

    from onionpost.lab import population

    s = population.Scenario(people=4, duration=3000.0, message_rate=6.0, reply_probability=0.0, churn_rate=0.0,
                            pattern="onoff", on=30.0, off=300.0, edges=((0, 1), (2, 3)))
    rng = random.Random(3)
    bursts = population._bursts(s, random.Random(3))
    assert bursts and all(0 <= a < b <= s.duration for a, b in bursts)
    sends = [t for t, action, _ in population._schedule(s, list(s.edges), rng) if action == "send"]
    # Silent most of the time: far fewer messages than the rate over the whole duration would give.
    assert 0 < len(sends) < 0.5 * 4 * s.duration / 60 * s.message_rate
    poisson = population.Scenario(people=4, duration=3000.0, message_rate=6.0, reply_probability=0.0,
                                  churn_rate=0.0, edges=((0, 1), (2, 3)))
    assert population._bursts(poisson, rng) == [(0.0, 3000.0)]
