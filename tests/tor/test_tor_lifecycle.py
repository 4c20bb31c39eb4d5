"""Stale networks are cleaned by the next up; down leaves no process alive."""

import json
import os
import signal
import time

import pytest
from typer.testing import CliRunner

from tests.tor.tor_helpers import assert_all_stopped, require_tor
from onionpost.torconfig import process
from onionpost.torconfig.cli import app
from onionpost.torconfig.testnet import PrivateTorNetwork

pytestmark = pytest.mark.tor


@pytest.fixture(scope="module")
def small_dir(tmp_path_factory):
    """Directory for a second, minimal network (3 authorities + 1 relay); keys kept between tests."""
    require_tor()
    directory = tmp_path_factory.mktemp("small-testnet")
    yield directory
    PrivateTorNetwork(directory, relays=1).down()
    assert not process.tor_pids_under(directory)


def wait_dead(pids: list[int], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while any(process.pid_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert_all_stopped(pids)


@pytest.mark.timeout(180)
def test_stale_network_is_cleaned_by_next_up(small_dir):
    old = PrivateTorNetwork(small_dir, relays=1).up()
    assert old["status"] == "ready"
    old_pids = [node["pid"] for node in old["nodes"]]
    # A killed run: authorities die by SIGKILL, relays stay alive, state file stays.
    killed = [node["pid"] for node in old["nodes"] if node["role"] == "authority"]
    for pid in killed:
        os.kill(pid, signal.SIGKILL)
    wait_dead(killed)
    assert (small_dir / "network.json").exists()

    second = PrivateTorNetwork(small_dir, relays=1)  # as a new process would
    assert second.status()["status"] == "stale"
    new = second.up()
    assert new["status"] == "ready"
    assert_all_stopped(old_pids)
    new_pids = [node["pid"] for node in new["nodes"]]
    assert not set(new_pids) & set(old_pids)
    assert sorted(process.tor_pids_under(small_dir)) == sorted(new_pids)

    second.down()
    assert_all_stopped(new_pids)
    assert not (small_dir / "network.json").exists()


@pytest.mark.timeout(180)
def test_cli_down_stops_every_process(small_dir):
    runner = CliRunner()
    result = runner.invoke(app, ["up", "--dir", str(small_dir), "--relays", "1"])
    assert result.exit_code == 0, result.output
    status = json.loads(runner.invoke(app, ["status", "--dir", str(small_dir), "--json"]).output)
    assert status["status"] == "ready" and len(status["nodes"]) == 4
    pids = [node["pid"] for node in status["nodes"]]
    # A second up keeps the healthy network.
    assert runner.invoke(app, ["up", "--dir", str(small_dir), "--relays", "1"]).exit_code == 0
    again = json.loads(runner.invoke(app, ["status", "--dir", str(small_dir), "--json"]).output)
    assert [node["pid"] for node in again["nodes"]] == pids

    result = runner.invoke(app, ["down", "--dir", str(small_dir)])
    assert result.exit_code == 0 and "network stopped" in result.output
    assert_all_stopped(pids)
    assert not process.tor_pids_under(small_dir)
    status = json.loads(runner.invoke(app, ["status", "--dir", str(small_dir), "--json"]).output)
    assert status["status"] == "down"
