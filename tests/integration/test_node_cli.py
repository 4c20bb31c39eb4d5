"""``onionpost node`` commands as a user runs them: real processes, real files."""

import asyncio
import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from onionpost.proto import Ok, Subscribe, parse_node_address
from tests.integration.relay_helpers import REPO, NodeProcess, RawClient, new_queue, run_cli, wait_for

pytestmark = pytest.mark.timeout(60)


def assert_clean_error(result: subprocess.CompletedProcess, *words: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for word in words:
        assert word in lines[0], lines[0]


def test_help_lists_the_commands():
    installed = str(Path(sys.executable).with_name("onionpost"))  # the command the install put beside this Python
    for command in ([installed, "node", "--help"], [sys.executable, "-m", "onionpost", "node", "--help"]):
        result = subprocess.run(command, capture_output=True, text=True, timeout=30, cwd=REPO)
        assert result.returncode == 0, result.stderr
        for name in ("init", "address", "run", "status"):
            assert name in result.stdout


def test_init_creates_a_private_node(tmp_path):
    data = tmp_path / "node"
    result = run_cli("init", "--data", str(data), "--listen", "127.0.0.1:0", "--access-key", "k1", "--access-key", "k2")
    assert result.returncode == 0, result.stderr
    address = parse_node_address(result.stdout.strip())
    assert address.host == "127.0.0.1" and address.port > 0
    assert stat.S_IMODE(os.stat(data).st_mode) == 0o700
    for name in ("node.json", "identity.key", "node.db"):
        assert stat.S_IMODE(os.stat(data / name).st_mode) == 0o600, name
    assert len((data / "identity.key").read_bytes()) == 32
    config = json.loads((data / "node.json").read_text())
    assert config["listen"] == {"host": "127.0.0.1", "port": address.port}
    assert config["access_keys"] == ["k1", "k2"] and config["quota"] == 128 and config["unsecured_limit"] == 3
    again = run_cli("address", "--data", str(data))
    assert again.returncode == 0 and again.stdout.strip() == str(address)

    assert_clean_error(run_cli("init", "--data", str(data)), "already exists")
    assert (data / "identity.key").stat().st_size == 32


@pytest.mark.parametrize("listen", ["0.0.0.0:9000", "192.168.1.2:80", "example.com:80", "127.0.0.1:99999", "[::1"])
def test_init_refuses_bad_listen(tmp_path, listen):
    assert_clean_error(run_cli("init", "--data", str(tmp_path / "node"), "--listen", listen), "listen")
    assert not (tmp_path / "node" / "identity.key").exists()


def test_errors_are_one_line(tmp_path):
    missing = tmp_path / "missing"
    for command in ("address", "run", "status"):
        assert_clean_error(run_cli(command, "--data", str(missing)), "no node")
    data = tmp_path / "node"
    assert run_cli("init", "--data", str(data)).returncode == 0
    (data / "node.json").write_text("{not json")
    for command in ("address", "run", "status"):
        assert_clean_error(run_cli(command, "--data", str(data)), "corrupted configuration")
    (data / "node.json").write_text(json.dumps({"listen": {"host": "10.0.0.1", "port": 5}}))
    assert_clean_error(run_cli("run", "--data", str(data)), "loopback")


def test_run_refuses_a_busy_port(tmp_path):
    data = tmp_path / "node"
    assert run_cli("init", "--data", str(data)).returncode == 0
    port = json.loads((data / "node.json").read_text())["listen"]["port"]
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", port))
        busy.listen()
        assert_clean_error(run_cli("run", "--data", str(data)), str(port))


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
async def test_run_status_and_clean_stop(tmp_path, stop_signal):
    node = NodeProcess.create(tmp_path / "node").start()
    try:
        client = await RawClient.connect(node.address)
        try:
            q = await new_queue(client, node=node)
            assert isinstance(await client.request(Subscribe(), q.rid, q.rsecret), Ok)

            def status():
                result = run_cli("status", "--data", str(node.data_dir), "--json")
                assert result.returncode == 0, result.stderr
                return json.loads(result.stdout)

            await wait_for(lambda: status()["subscriptions"] == 1, timeout=15, interval=0.3)
            live = status()
            assert live == {
                "running": True, "queues": 1, "messages": 0, "connections": 1, "sessions": 1, "subscriptions": 1,
            }
            text = run_cli("status", "--data", str(node.data_dir))
            assert "queues: 1" in text.stdout and "subscriptions: 1" in text.stdout
        finally:
            await client.close()
        os.kill(node.proc.pid, stop_signal)
        assert await asyncio.to_thread(node.proc.wait, 20) == 0
        stopped = json.loads(run_cli("status", "--data", str(node.data_dir), "--json").stdout)
        assert stopped == {
            "running": False, "queues": 1, "messages": 0, "connections": None, "sessions": None, "subscriptions": None,
        }
        node.check_log()
    finally:
        node.kill()


def test_trace_is_refused_on_a_node_that_serves_people(tmp_path):
    data = tmp_path / "onion"
    assert run_cli("init", "--data", str(data), "--onion").returncode == 0
    result = run_cli("run", "--data", str(data), "--trace", str(tmp_path / "trace.jsonl"))
    assert_clean_error(result, "--trace records what a relay operator sees", "private test network")
    assert not (tmp_path / "trace.jsonl").exists() and not (data / "tor").exists()
