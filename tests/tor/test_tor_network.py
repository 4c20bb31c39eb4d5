"""The session's private network comes up and a client tor bootstraps on it."""

import threading

import pytest

from onionpost.torconfig import TorError, process
from onionpost.torconfig.launch import start_tor
from onionpost.torconfig.testnet import AUTHORITIES

pytestmark = pytest.mark.tor


@pytest.mark.timeout(120)
def test_network_is_up(tor_network):
    status = tor_network.status()
    assert status["status"] == "ready"
    assert all(node["alive"] for node in status["nodes"])
    assert status["consensus"]["routers"] == AUTHORITIES + tor_network.relays


@pytest.mark.timeout(120)
async def test_client_bootstraps_to_100(client_control, client_tor):
    phase = await client_control.bootstrap_progress()
    assert (phase.progress, phase.tag) == (100, "done")
    assert client_tor.alive() and client_tor.socks_port
    assert client_tor.control_cookie_path.stat().st_size == 32


@pytest.mark.timeout(120)
def test_bootstrap_progress_is_reported(tor_network, tmp_path):
    reports: list[tuple[str, float]] = []
    tor = start_tor(tmp_path / "client", testnet_dir=tor_network.directory,
                    progress=lambda summary, percent: reports.append((summary, percent)))
    try:
        percents = [percent for _, percent in reports]
        assert percents[-1] == 100.0 and percents == sorted(percents)
        assert reports[-1][0] == "Done"
    finally:
        tor.stop()
    assert not tor.alive()


@pytest.mark.timeout(60)
def test_an_aborted_start_stops_tor_at_once(tor_network, tmp_path):
    abort = threading.Event()

    def report(summary: str, percent: float) -> None:
        if percent > 0:  # tor runs and bootstraps: give up now
            abort.set()

    with pytest.raises(TorError, match="aborted"):  # instead of finishing the bootstrap
        start_tor(tmp_path / "client", testnet_dir=tor_network.directory, progress=report, abort=abort)
    assert process.tor_pids_under(tmp_path / "client") == []
