"""Unit tests for torrc rendering, SOCKS credentials and CLI errors (no tor needed)."""

import re

import pytest
from typer.testing import CliRunner

from onionpost.torconfig import socks, torrc
from onionpost.torconfig.cli import app
from onionpost.torconfig.errors import TorError
from onionpost.torconfig.launch import start_tor

DIR_AUTH = "DirAuthority auth0 orport=5000 no-v2 v3ident=AA 127.0.0.1:5001 BB"
VALUES = {
    "data_dir": "/tmp/x", "control_port": "auto", "control_port_file": "/tmp/x/control-port",
    "log_file": "/tmp/x/notice.log", "nickname": "auth0", "contact": "test", "or_port": 5000,
    "dir_port": 5001, "voting_start_offset": 3, "bandwidths_file": "/tmp/bw", "socks_port": "127.0.0.1:auto",
}


def options(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition(" ")
            found.setdefault(key, []).append(value)
    return found


@pytest.fixture
def join() -> str:
    return torrc.render_join([DIR_AUTH, DIR_AUTH.replace("auth0", "auth1")], "/tmp/empty")


@pytest.mark.parametrize("role", torrc.ROLES)
def test_every_placeholder_is_filled(role, join):
    text = torrc.render_torrc(role, VALUES, join if role in torrc.TESTNET_ROLES else None)
    assert "$" not in text
    opts = options(text)
    assert opts["DataDirectory"] == ["/tmp/x"]
    assert opts["ControlPort"] == ["127.0.0.1:auto"]
    assert opts["CookieAuthentication"] == ["1"]
    assert all(len(values) == 1 for key, values in opts.items() if key != "DirAuthority"), opts


@pytest.mark.parametrize("role", torrc.TESTNET_ROLES)
def test_testnet_roles_join_the_network(role, join):
    opts = options(torrc.render_torrc(role, VALUES, join))
    assert opts["TestingTorNetwork"] == ["1"]
    assert len(opts["DirAuthority"]) == 2
    assert opts["GeoIPFile"] == opts["GeoIPv6File"] == ["/tmp/empty"]
    assert opts["Schedulers"] == ["Vanilla"] and opts["AssumeReachable"] == ["1"]
    assert opts["ShutdownWaitLength"] == ["0"]


def test_authority_options(join):
    opts = options(torrc.render_torrc("authority", VALUES, join))
    assert opts["ORPort"] == ["127.0.0.1:5000 IPv4Only"] and opts["DirPort"] == ["127.0.0.1:5001"]
    assert opts["V3AuthVotingInterval"] == ["10"] and opts["TestingV3AuthVotingStartOffset"] == ["3"]
    assert opts["V3BandwidthsFile"] == ["/tmp/bw"]
    assert opts["AuthDirVoteStableGuaranteeMTBF"] == opts["AuthDirVoteStableGuaranteeMinUptime"] == ["0"]
    assert opts["ExitPolicy"] == ["reject *:*"] and opts["SocksPort"] == ["0"]


def test_client_and_onion_host_start_offline(join):
    client = options(torrc.render_torrc("client", VALUES, join))
    host = options(torrc.render_torrc("onion_host", VALUES, join))
    assert client["SocksPort"] == ["127.0.0.1:auto IsolateSOCKSAuth"] and host["SocksPort"] == ["0"]
    for opts in (client, host):
        assert opts["DisableNetwork"] == ["1"] and opts["FetchDirInfoExtraEarly"] == ["1"]
        assert int(opts["MaxClientCircuitsPending"][0]) > 32
    real = options(torrc.render_torrc("real_client", VALUES))
    assert "TestingTorNetwork" not in real and "DisableNetwork" not in real


def test_only_a_private_network_client_offers_the_lab_observer_events(join):
    client = options(torrc.render_torrc("client", VALUES, join))
    assert client["TestingEnableConnBwEvent"] == client["TestingEnableCellStatsEvent"] == ["1"]
    real = options(torrc.render_torrc("real_client", VALUES))
    assert not any(key.startswith("TestingEnable") for key in real)


def test_bad_values_are_refused(join):
    with pytest.raises(ValueError):
        torrc.render_torrc("relay", {**VALUES, "nickname": "a\nExitRelay 1"}, join)
    with pytest.raises(ValueError):
        torrc.render_torrc("relay", {**VALUES, "data_dir": "/tmp/#x"}, join)
    with pytest.raises(KeyError):
        torrc.render_torrc("relay", {k: v for k, v in VALUES.items() if k != "or_port"}, join)
    with pytest.raises(ValueError):
        torrc.render_torrc("relay", VALUES)  # testnet role without join settings
    with pytest.raises(ValueError):
        torrc.render_join(["ExitRelay 1"], "/tmp/empty")


def test_isolation_credentials():
    first = socks.isolation_credentials("queue-1")
    assert first == socks.isolation_credentials(b"queue-1")
    assert first != socks.isolation_credentials("queue-2")
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{22}", part) for part in first)


def test_cli_errors_are_one_line(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["up", "--dir", str(tmp_path), "--relays", "0"])
    assert result.exit_code == 1
    assert result.output.strip().startswith("error:") and "Traceback" not in result.output
    result = runner.invoke(app, ["status", "--dir", str(tmp_path), "--json"])
    assert result.exit_code == 0 and '"status": "down"' in result.output
    result = runner.invoke(app, ["down", "--dir", str(tmp_path)])
    assert result.exit_code == 0 and "no network" in result.output


def test_start_tor_needs_a_running_network(tmp_path):
    with pytest.raises(TorError, match="no private Tor network"):
        start_tor(tmp_path / "client", testnet_dir=tmp_path / "nothing")


def test_detail_log_is_added_only_when_asked(monkeypatch):
    join = torrc.render_join([DIR_AUTH], "/tmp/geoip")
    monkeypatch.delenv(torrc.DETAIL_LOG_ENV, raising=False)
    assert "info.log" not in torrc.render_torrc("client", VALUES, join)
    monkeypatch.setenv(torrc.DETAIL_LOG_ENV, "info")
    assert "Log info file /tmp/x/info.log" in torrc.render_torrc("client", VALUES, join).splitlines()
    monkeypatch.setenv(torrc.DETAIL_LOG_ENV, "everything")
    assert "info.log" not in torrc.render_torrc("client", VALUES, join)
