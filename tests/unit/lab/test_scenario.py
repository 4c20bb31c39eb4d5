"""Scenario TOML: parsed, checked with one-line errors naming the field, written back whole, documented."""

import random
import re
import subprocess
import sys
import tomllib
from dataclasses import fields
from pathlib import Path

import pytest

from onionpost.lab.scenario import (
    BUILTINS, SECTIONS, TOP_LEVEL, Client, Defences, LabScenario, ScenarioError, Variant, contact_graph,
    daemon_args, load_scenario, parse_scenario, to_toml,
)

pytestmark = pytest.mark.timeout(60)

DOC = Path(__file__).resolve().parents[3] / "docs" / "lab.md"

FULL = """
name = "mine"
description = "all of it"
seed = 7
repeat = 3
[population]
users = 5
graph = "listed"
contacts = [[0, 1], [1, 2], [3, 4]]
[traffic]
pattern = "onoff"
rate = 3
on = 30.5
off = 90
[client]
isolation = "contact"
[defences]
send_delay = 2.5
[network]
tor = false
latency_ms = 20
[[variant]]
name = "base"
[[variant]]
name = "covered"
defences.cover_rate = 1.5
client.isolation = "shared"
"""


def test_a_full_file_is_read_and_variants_inherit_the_scenario_settings():
    s = parse_scenario(tomllib.loads(FULL))
    assert (s.name, s.seed, s.repeat, s.population.users, s.population.contacts) == \
        ("mine", 7, 3, 5, ((0, 1), (1, 2), (3, 4)))
    assert s.traffic.rate == 3.0 and isinstance(s.traffic.rate, float) and s.traffic.pattern == "onoff"
    base, covered = s.resolved_variants()
    assert base.client.isolation == "contact" and base.defences.send_delay == 2.5
    assert covered.client.isolation == "shared" and covered.defences == Defences(send_delay=2.5, cover_rate=1.5)


@pytest.mark.parametrize("scenario", [*BUILTINS.values(), parse_scenario(tomllib.loads(FULL))],
                         ids=lambda s: s.name)
def test_the_written_toml_reads_back_to_the_same_scenario_with_every_value(scenario):
    text = to_toml(scenario)
    again = parse_scenario(tomllib.loads(text))
    assert again.resolved_variants() == scenario.resolved_variants()
    for section in SECTIONS:
        assert getattr(again, section) == getattr(scenario, section)
        for f in fields(SECTIONS[section]):
            assert re.search(rf"^\[{section}\][^\[]*^{f.name} = ", text, re.M | re.S), (section, f.name)
    assert [getattr(again, k) for k in TOP_LEVEL] == [getattr(scenario, k) for k in TOP_LEVEL]


@pytest.mark.parametrize("text, message", [
    ("[population]\nuserz = 3", "unknown field population.userz"),
    ("colour = 1", "unknown field colour"),
    ("[[variant]]\nname = 'a'\ndefences.cover = 1", "unknown field variant.defences.cover"),
    ("[[variant]]\nname = 'a'\nextra = 1", "unknown field variant.extra"),
    ("[population]\nusers = 'many'", "population.users must be an integer"),
    ("[population]\nusers = 1", "population.users must be at least 2"),
    ("[traffic]\nrate = -1", "traffic.rate must be positive"),
    ("[traffic]\nreply_probability = 2", "traffic.reply_probability must be in [0, 1]"),
    ("[client]\nisolation = 'circuit'", "client.isolation must be one of queue, contact, profile, shared"),
    ("[network]\ntor = 1", "network.tor must be true or false"),
    ("[population]\ngraph = 'listed'\nusers = 3\ncontacts = [[0, 3]]", "population.contacts: [0, 3]"),
    ("[population]\ngraph = 'listed'", "population.contacts must list edges"),
    ("[population]\nrelays = 3", "population.relays must be 1 or 2"),
    ("[[variant]]\nname = 'a'\n[[variant]]\nname = 'a'", "variant names repeat"),
])
def test_bad_values_are_refused_naming_the_field(text, message):
    with pytest.raises(ScenarioError, match=re.escape(message)):
        parse_scenario(tomllib.loads(text), origin="x.toml")


def test_files_builtins_and_bad_files(tmp_path):
    assert load_scenario("smoke") is BUILTINS["smoke"]
    good = tmp_path / "good.toml"
    good.write_text(FULL)
    assert load_scenario(str(good)).name == "mine"
    bad = tmp_path / "bad.toml"
    bad.write_text("[population\nusers = 3")
    with pytest.raises(ScenarioError, match="bad.toml: not valid TOML"):
        load_scenario(str(bad))
    with pytest.raises(ScenarioError, match="unknown scenario 'nothing'"):
        load_scenario("nothing")
    with pytest.raises(ScenarioError, match="cannot read scenario"):
        load_scenario(str(tmp_path / "absent.toml"))


def test_builtins_match_the_issue():
    smoke, default, defences = BUILTINS["smoke"], BUILTINS["default"], BUILTINS["defences"]
    assert smoke.population.users <= 5 and smoke.traffic.duration <= 90
    assert default.population.users >= 20 and 600 <= default.traffic.duration <= 900
    names = {v.name for v in defences.resolved_variants()}
    assert {"send-delay", "cover", "reconnect-jitter", "batch", "isolation-shared", "isolation-contact",
            "isolation-profile"} <= names
    assert defences.population == default.population
    assert 300 <= defences.traffic.duration <= default.traffic.duration


def test_the_scenario_client_defaults_are_the_daemons_own_so_an_unset_field_adds_no_option():
    from onionpost.client.timing import TimingPolicy

    daemon, lab = TimingPolicy(), Client()
    assert (lab.link_spread, lab.receipts, lab.receipt_delay) == (daemon.spread, daemon.receipts, daemon.receipt_delay)
    assert (lab.link_lifetime, lab.link_gap, lab.send_link_idle) == (daemon.link_lifetime, daemon.link_gap,
                                                                     daemon.send_link_idle)
    always = {v.name: v for v in BUILTINS["defences"].resolved_variants()}["always-connected"]
    assert daemon_args(always) == ("--link-lifetime", "1800", "--link-gap", "0", "--send-link-idle", "300")


def test_daemon_args_carry_only_what_differs_from_the_daemon_defaults():
    assert daemon_args(Variant()) == ()
    args = daemon_args(Variant("v", Client(isolation="shared", link_spread=0.0),
                               Defences(send_delay=2.5, cover_rate=1.0, reconnect_jitter=30.0, batch=10.0)))
    assert args == ("--link-spread", "0", "--isolation", "shared", "--send-delay", "2.5", "--cover-rate", "1",
                    "--reconnect-jitter", "30", "--batch", "10")


def test_random_contact_graph_has_the_mean_degree_and_no_repeats():
    s = LabScenario()
    for users, degree in ((20, 3.0), (4, 2.0), (5, 4.0)):
        p = s.population.__class__(users=users, mean_degree=degree)
        edges = contact_graph(p, random.Random(1))
        assert len(edges) == round(users * degree / 2) and len(set(edges)) == len(edges)
        assert all(0 <= a < b < users for a, b in edges)
    assert contact_graph(p, random.Random(1)) == contact_graph(p, random.Random(1))


def _documented() -> set[str]:
    table = DOC.read_text().split("| field | default | meaning |", 1)[1].split("\n\n", 1)[0]
    rows = re.findall(r"^\| `([a-z_.]+)` \|", table, re.M)
    assert len(rows) == len(set(rows)), "a field is documented twice"
    return set(rows)


def test_docs_lab_md_documents_exactly_the_scenario_fields():
    expected = {*TOP_LEVEL, "variant.name"}
    expected |= {f"{section}.{f.name}" for section, cls in SECTIONS.items() for f in fields(cls)}
    assert _documented() == expected


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "onionpost", "lab", *args], capture_output=True, text=True,
                          timeout=50)


def test_cli_lists_builtins_and_refuses_bad_input_in_one_line(tmp_path):
    listed = _cli("list")
    assert listed.returncode == 0 and [line.split()[0] for line in listed.stdout.splitlines()] == list(BUILTINS)
    bad = tmp_path / "bad.toml"
    bad.write_text("[traffic]\nspeed = 3\n")
    full = tmp_path / "full"
    full.mkdir()
    (full / "something").write_text("")
    for args, message in ((("run", "nothing", "--out", str(tmp_path / "o")), "unknown scenario 'nothing'"),
                          (("run", str(bad), "--out", str(tmp_path / "o")), "unknown field traffic.speed"),
                          (("run", "smoke", "--out", str(full)), "is not an empty directory"),
                          (("export", str(tmp_path), "--format", "pcap"), "unknown format 'pcap'")):
        done = _cli(*args)
        assert done.returncode == 1 and done.stderr.startswith("error: ") and message in done.stderr, done.stderr
        assert done.stderr.strip().count("\n") == 0
    assert not (tmp_path / "o").exists()


def test_cli_names_the_missing_lab_extra(tmp_path):
    code = ("import sys; sys.modules['matplotlib'] = None; sys.argv = ['onionpost', 'lab', 'run', 'smoke', '--out', "
            f"{str(tmp_path / 'o')!r}]; from onionpost.cli import main; main()")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=50)
    assert done.returncode == 1 and "missing: matplotlib" in done.stderr and "onionpost[lab]" in done.stderr
