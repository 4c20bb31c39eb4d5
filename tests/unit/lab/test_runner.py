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
