"""One .onion for several backends, without Tor: Onionbalance's files, node.json, the CLI's checks."""

import asyncio
import datetime
import json
import os
import stat

import pytest
from cryptography.hazmat.primitives import serialization
from typer.testing import CliRunner

from onionpost.node.cli import app
from onionpost.node.config import ConfigError, NodeConfig, OnionConfig
from onionpost.node.datadir import DataDir
from onionpost.node.onion import NodeTor, TorOptions
from onionpost.torconfig import onion_keys, onionbalance

pytestmark = pytest.mark.timeout(60)

MASTER, INSTANCE = bytes(range(32)), bytes(range(32, 64))
A = onion_keys.onion_address_of_key(bytes(range(64, 96)))
B = onion_keys.onion_address_of_key(bytes(range(96, 128)))


def test_config_yaml_lists_the_instances_and_the_key():
    data = json.loads(onionbalance.render_config("master.pem", [A, onion_keys.service_id(B)]))  # JSON is YAML
    assert data == {"services": [{"key": "master.pem", "instances": [
        {"address": onion_keys.service_id(A), "name": "backend1"},
        {"address": onion_keys.service_id(B), "name": "backend2"}]}]}


@pytest.mark.parametrize("instances, message", [
    ([], "at least one backend"),
    ([A, A], "listed twice"),
    ([A, "example.onion"], "not a v3 onion address"),
    ([onion_keys.onion_address_of_key(bytes([i]) * 32) for i in range(9)], "at most 8"),
])
def test_config_yaml_refuses_bad_instances(instances, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        onionbalance.write_frontend(tmp_path / "ob", MASTER, instances)
    assert not (tmp_path / "ob").exists()


def test_frontend_files_hold_the_master_key_privately(tmp_path):
    config = onionbalance.write_frontend(tmp_path / "ob", MASTER, [A, B])
    key = serialization.load_pem_private_key((tmp_path / "ob" / "master.pem").read_bytes(), password=None)
    public = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert onion_keys.onion_address(public) == onion_keys.onion_address_of_key(MASTER)
    assert stat.S_IMODE(os.stat(tmp_path / "ob").st_mode) == 0o700
    for path in (config, tmp_path / "ob" / "master.pem"):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_backend_instance_dir_names_the_master(tmp_path):
    master = onion_keys.onion_address_of_key(MASTER)
    directory = onionbalance.write_instance_dir(tmp_path / "instance", INSTANCE, master)
    assert (directory / "ob_config").read_text() == f"MasterOnionAddress {master}\n"
    assert (directory / "hs_ed25519_secret_key").read_bytes() == onion_keys.to_secret_key_file(INSTANCE)
    assert onionbalance.instance_service_conf(80, 4000) == {
        "HiddenServicePort": ["80 127.0.0.1:4000"], "HiddenServiceVersion": "3", "HiddenServiceOnionbalanceInstance": "1"}
    assert onionbalance.instance_service_conf(80, "[::1]:4000")["HiddenServicePort"] == ["80 [::1]:4000"]
    with pytest.raises(ValueError, match="master address"):
        onionbalance.write_instance_dir(tmp_path / "other", INSTANCE, "nope.onion")
    assert not (tmp_path / "other").exists()


def test_onion_config_round_trip_for_frontend_and_backend():
    for onion in (OnionConfig(instances=(A, B)), OnionConfig(master=A), OnionConfig(instances=())):
        config = NodeConfig(port=4000, onion=onion)
        assert NodeConfig.loads(config.dumps()) == config
    assert json.loads(NodeConfig(port=1, onion=OnionConfig()).dumps())["onion"] == {"virtual_port": 80}


@pytest.mark.parametrize("onion, message", [
    ({"master": A, "instances": [B]}, "one of them"),
    ({"master": "example.onion"}, "v3 onion address"),
    ({"instances": A}, "list of v3 onion addresses"),
    ({"instances": ["x"]}, "list of v3 onion addresses"),
])
def test_onion_config_refuses_bad_balance_fields(onion, message):
    with pytest.raises(ConfigError, match=message):
        NodeConfig.loads(json.dumps({"listen": {"host": "127.0.0.1", "port": 1}, "onion": onion}))


@pytest.mark.parametrize("args, message", [
    (["--balanced"], "--balanced is for onion nodes: add --onion"),
    (["--backend-of", "FRONT"], "--backend-of is for onion nodes: add --onion"),
    (["--onion", "--balanced", "--backend-of", "FRONT"],
     "--balanced makes a frontend and --backend-of a backend; a node is one of them"),
])
def test_init_refuses_contradictory_options_and_writes_nothing(args, message, tmp_path):
    front = tmp_path / "front"
    assert CliRunner().invoke(app, ["init", "--data", str(front), "--onion", "--balanced"]).exit_code == 0
    args = [str(front) if a == "FRONT" else a for a in args]
    result = CliRunner().invoke(app, ["init", "--data", str(tmp_path / "node"), *args])
    assert result.exit_code == 1
    assert result.stderr == f"error: {message}\n"
    assert not (tmp_path / "node").exists()


def test_backends_share_the_identity_and_announce_the_master_address(tmp_path):
    runner = CliRunner()
    front, one, two = (str(tmp_path / name) for name in ("front", "one", "two"))
    master_address = runner.invoke(app, ["init", "--data", front, "--onion", "--balanced"]).stdout.strip()
    for backend in (one, two):
        result = runner.invoke(app, ["init", "--data", backend, "--onion", "--backend-of", front])
        assert result.exit_code == 0, result.stderr
        assert result.stdout.strip() == master_address
        assert runner.invoke(app, ["address", "--data", backend]).stdout.strip() == master_address
    instances = [DataDir(b).instance_address() for b in (one, two)]
    assert len(set(instances) | {master_address}) == 3
    assert DataDir(front).load_config().onion.instances == tuple(instances)
    assert DataDir(one).load_identity() == DataDir(front).load_identity()
    status = json.loads(runner.invoke(app, ["status", "--data", one, "--json"]).stdout)
    assert status["address"] == master_address and status["instance"] == instances[0]
    assert json.loads(runner.invoke(app, ["status", "--data", front, "--json"]).stdout)["instances"] == instances
    text = runner.invoke(app, ["status", "--data", one]).stdout
    assert f"address: {master_address}\nrole: backend (Onionbalance instance {instances[0]})" in text


def test_backend_of_a_plain_node_or_a_full_frontend_is_refused(tmp_path):
    runner = CliRunner()
    plain, front = str(tmp_path / "plain"), str(tmp_path / "front")
    runner.invoke(app, ["init", "--data", plain, "--onion"])
    result = runner.invoke(app, ["init", "--data", str(tmp_path / "b"), "--onion", "--backend-of", plain])
    assert result.exit_code == 1 and "is not a balanced frontend" in result.stderr
    assert not (tmp_path / "b").exists()
    runner.invoke(app, ["init", "--data", front, "--onion", "--balanced"])
    for i in range(onionbalance.MAX_INSTANCES):
        assert runner.invoke(app, ["init", "--data", str(tmp_path / f"b{i}"), "--onion", "--backend-of", front]).exit_code == 0
    result = runner.invoke(app, ["init", "--data", str(tmp_path / "extra"), "--onion", "--backend-of", front])
    assert result.exit_code == 1 and "8 backends already" in result.stderr
    assert not (tmp_path / "extra").exists()


def test_a_frontend_without_backends_says_how_to_add_one(tmp_path):
    front = str(tmp_path / "front")
    CliRunner().invoke(app, ["init", "--data", front, "--onion", "--balanced"])
    result = CliRunner().invoke(app, ["run", "--data", front])
    assert result.exit_code == 1
    assert result.stderr.endswith(f"has no backend yet: add one with 'onionpost node init --onion --backend-of {front} "
                                  "--data BACKEND'\n")


class FakeConsensus:
    def __init__(self, valid_after: datetime.datetime, interval: int):
        self.valid_after = valid_after
        self.fresh_until = valid_after + datetime.timedelta(seconds=interval)


def test_testnet_timing_follows_the_voting_interval():
    pytest.importorskip("onionbalance")
    from onionbalance.hs_v3 import consensus

    from onionpost.torconfig import onionbalance_testnet as timing

    class Holder:
        pass

    at = datetime.datetime(2026, 11, 29, 17, 43, 40)
    ten, twenty = Holder(), Holder()
    ten.consensus, twenty.consensus = FakeConsensus(at, 10), FakeConsensus(at, 20)
    # tor: a test network's time period is one shared-random run (24 votes), offset by one phase (12)
    assert (timing._time_period_length(ten), timing._srv_phase_duration(ten)) == (4, 2)
    # with chutney's 20 s, the same values as Onionbalance's own
    original = consensus.Consensus(do_refresh_consensus=False)
    original.consensus = twenty.consensus

    from onionbalance.hs_v3 import onionbalance as ob

    saved, ob.my_onionbalance.is_testnet = ob.my_onionbalance.is_testnet, True
    try:
        original.is_live = lambda: True
        assert timing._time_period_length(twenty) == original.get_time_period_length() == 8
        assert timing._srv_phase_duration(twenty) == original._get_srv_phase_duration() == 4
        assert timing._start_of_current_srv_run(twenty) == original.get_start_time_of_current_srv_run()
        assert timing._start_of_previous_srv_run(twenty) == original.get_start_time_of_previous_srv_run()
    finally:
        ob.my_onionbalance.is_testnet = saved
    start = timing._start_of_current_srv_run(ten)
    assert start % 240 == 0 and 0 <= at.replace(tzinfo=datetime.timezone.utc).timestamp() - start < 240


class FakeControl:
    """Records what a backend's NodeTor asks of tor (no tor)."""

    def __init__(self):
        self.calls: list[tuple] = []

    async def descriptor_findable(self, address):
        self.calls.append(("check", address))
        return False

    async def remove_instance(self, hs_dir):
        self.calls.append(("remove", hs_dir))

    async def publish_instance(self, hs_dir, options, *, timeout=0):
        self.calls.append(("publish", hs_dir, options, (hs_dir / "ob_config").read_text()))
        return onion_keys.onion_address_of_key(onion_keys.from_secret_key_file((hs_dir / "hs_ed25519_secret_key").read_bytes()))


async def test_a_backend_publishes_its_instance_for_the_master_and_republishes_it(tmp_path):
    master = onion_keys.onion_address_of_key(MASTER)
    tor = NodeTor(DataDir(tmp_path), INSTANCE, 80, ("127.0.0.1", 4000), TorOptions(), asyncio.Event(), progress=None,
                  master=master)
    control = tor.control = FakeControl()
    await tor.publish()
    instance_dir = tmp_path / "instance"
    conf = onionbalance.instance_service_conf(80, 4000)
    assert control.calls == [("publish", instance_dir, conf, f"MasterOnionAddress {master}\n")]
    for _ in range(2):  # clients cannot find the instance's descriptor twice in a row
        await tor._check_findable()  # noqa: SLF001
    instance = onion_keys.onion_address_of_key(INSTANCE)
    assert control.calls[1:] == [("check", instance), ("check", instance), ("remove", instance_dir),
                                 ("publish", instance_dir, conf, f"MasterOnionAddress {master}\n")]
    assert tor.published and tor.state == "published"
