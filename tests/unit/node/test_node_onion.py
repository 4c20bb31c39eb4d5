"""Onion mode without Tor: node.json, onion.key, the computed .onion address, the Tor options."""

import json
import os
import stat

import pytest
from typer.testing import CliRunner

from onionpost.node.cli import app
from onionpost.node.config import ConfigError, NodeConfig, OnionConfig
from onionpost.node.datadir import DataDir, DataDirError
from onionpost.node.onion import NodeTorError, TorOptions, port_target, print_progress
from onionpost.proto import parse_node_address
from onionpost.torconfig.onion_keys import onion_address_of_key, public_key_from_address


def fixed_rng(*seeds: bytes):
    values = iter(seeds)
    return lambda n: next(values)


IDENTITY, ONION = bytes(range(32)), bytes(range(32, 64))


def test_onion_config_round_trip():
    config = NodeConfig(host="127.0.0.1", port=4000, onion=OnionConfig())
    data = json.loads(config.dumps())
    assert data["onion"] == {"virtual_port": 80} and data["listen"] == {"host": "127.0.0.1", "port": 4000}
    assert NodeConfig.loads(config.dumps()) == config
    assert NodeConfig.loads(json.dumps({"listen": {"host": "127.0.0.1", "port": 1}, "onion": {}})).onion == OnionConfig(80)
    assert NodeConfig.loads(json.dumps({"listen": {"host": "127.0.0.1", "port": 1}, "onion": None})).onion is None


def test_loopback_config_is_unchanged():
    assert "onion" not in json.loads(NodeConfig(port=5).dumps())


@pytest.mark.parametrize("onion", [[], "yes", 80, {"virtual_port": 0}, {"virtual_port": 70000}, {"virtual_port": "80"},
                                   {"virtual_port": 80, "extra": 1}])
def test_bad_onion_config(onion):
    with pytest.raises(ConfigError):
        NodeConfig.from_json({"listen": {"host": "127.0.0.1", "port": 1}, "onion": onion})


def test_onion_listen_address_stays_loopback():
    with pytest.raises(ConfigError, match="--onion"):
        NodeConfig.from_json({"listen": {"host": "0.0.0.0", "port": 1}, "onion": {}})


def test_init_onion_creates_the_key_and_computes_the_address(tmp_path):
    directory = DataDir(tmp_path / "node")
    config = directory.init("127.0.0.1:4567", rng=fixed_rng(IDENTITY, ONION), onion=True)
    assert config.onion == OnionConfig(80) and (config.host, config.port) == ("127.0.0.1", 4567)
    key = directory.onion_key_path
    assert key.read_bytes() == ONION and stat.S_IMODE(os.stat(key).st_mode) == 0o600
    address = directory.address()
    assert address.host == onion_address_of_key(ONION) and address.port == 80 and address.is_onion
    assert address.key == directory.load_identity().public
    assert public_key_from_address(address.host)  # a valid v3 name
    assert parse_node_address(str(address)) == address
    assert DataDir(tmp_path / "node").address() == address  # stable, read back from the files
    assert not directory.tor_dir.exists()  # nothing of tor yet


def test_loopback_init_has_no_onion_key(tmp_path):
    directory = DataDir(tmp_path / "node")
    directory.init("127.0.0.1:4567", rng=fixed_rng(IDENTITY))
    assert not directory.onion_key_path.exists()
    assert str(directory.address()).endswith("@127.0.0.1:4567")


def test_onion_key_problems(tmp_path):
    directory = DataDir(tmp_path / "node")
    directory.init(rng=fixed_rng(IDENTITY, ONION), onion=True)
    directory.onion_key_path.write_bytes(b"short")
    with pytest.raises(DataDirError, match="corrupted onion key"):
        directory.address()
    directory.onion_key_path.unlink()
    with pytest.raises(DataDirError, match="onion.key is missing"):
        directory.address()
    with pytest.raises(DataDirError, match="already exists"):
        DataDir(tmp_path / "node").init(onion=True)


def test_init_refuses_a_leftover_onion_key(tmp_path):
    (tmp_path / "node").mkdir()
    (tmp_path / "node" / "onion.key").write_bytes(ONION)
    with pytest.raises(DataDirError, match="already exists"):
        DataDir(tmp_path / "node").init(onion=True)
    assert (tmp_path / "node" / "onion.key").read_bytes() == ONION


def test_tor_options():
    assert TorOptions().check() == [] and not TorOptions().external and TorOptions().given() == []
    assert TorOptions(testnet="net").check() == []
    external = TorOptions(control_port=9051, socks_port=9050, password="pw")
    assert external.external and external.check() == []
    assert external.given() == ["--tor-control", "--tor-password", "--tor-socks"]
    [warning] = TorOptions(testnet="net", control_port=9051, socks_port=9050).check()
    assert "--testnet" in warning and "ignored" in warning
    for bad, words in [
        (TorOptions(control_port=1, socks_port=2, cookie="c", password="p"), "exclude"),
        (TorOptions(cookie="c"), "--tor-control"),
        (TorOptions(password="p"), "--tor-control"),
        (TorOptions(socks_port=9050), "--tor-control"),
        (TorOptions(control_port=9051), "--tor-socks"),
    ]:
        with pytest.raises(NodeTorError, match=words):
            bad.check()


def test_port_target():
    assert port_target("127.0.0.1", 5000) == 5000
    assert port_target("127.0.0.2", 5000) == "127.0.0.2:5000"
    assert port_target("::1", 5000) == "[::1]:5000"


def test_progress_lines(capsys):
    print_progress("Connecting", 10.0)
    print_progress("Done", 100.0)
    lines = capsys.readouterr().err.splitlines()
    assert lines == ["tor [##                  ]  10% Connecting", "tor [####################] 100% Done"]


def test_cli_init_address_status(tmp_path):
    runner = CliRunner()
    data = str(tmp_path / "node")
    init = runner.invoke(app, ["init", "--data", data, "--onion", "--listen", "127.0.0.1:0"])
    assert init.exit_code == 0, init.output
    address = parse_node_address(init.stdout.strip())
    assert address.is_onion and address.port == 80
    assert runner.invoke(app, ["address", "--data", data]).stdout.strip() == str(address)
    status = json.loads(runner.invoke(app, ["status", "--data", data, "--json"]).stdout)
    assert status["address"] == str(address) and status["running"] is False
    text = runner.invoke(app, ["status", "--data", data]).stdout
    assert f"address: {address}" in text and "onion service: not running" in text
    config = json.loads((tmp_path / "node" / "node.json").read_text())
    assert config["onion"] == {"virtual_port": 80} and config["listen"]["host"] == "127.0.0.1"


def test_cli_run_refuses_contradictory_tor_flags(tmp_path):
    runner = CliRunner()
    data = str(tmp_path / "node")
    assert runner.invoke(app, ["init", "--data", data, "--onion"]).exit_code == 0
    result = runner.invoke(app, ["run", "--data", data, "--tor-control", "9051"])
    assert result.exit_code == 1 and "error: --tor-control needs --tor-socks" in result.stderr
    result = runner.invoke(app, ["run", "--data", data, "--tor-socks", "9050"])
    assert result.exit_code == 1 and "error: --tor-socks is for an existing tor" in result.stderr
