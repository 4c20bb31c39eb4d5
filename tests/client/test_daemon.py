"""onionpost daemon: the CLI through it, its JSON-RPC API under bad input, events, crashes, permissions."""

import asyncio
import json
import select
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from onionpost.client.rpc import AsyncDaemonClient, RpcError

from .conftest import PASSWORD, REPO, Person, run_cli
from .daemon_helpers import DaemonProcess, connect_daemons, stop_all, wait_until

FAST = ("--link-spread", "1", "--receipt-delay", "0.2", "--link-gap", "0")


@pytest.fixture
def pair(tmp_path, nodes):
    relay = nodes("relay")
    people = [Person(tmp_path / name, name, [relay]) for name in ("alice", "bob")]
    daemons = []
    try:
        for person in people:
            daemons.append(DaemonProcess(person.home, *FAST).start())
        yield daemons
    finally:
        stop_all(daemons)


def raw_lines(home, *lines: bytes, read: int = 1, timeout: float = 10) -> list[dict]:
    """Write raw bytes to the socket; read ``read`` answer lines."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.connect(str(home / "daemon.sock"))
    with sock, sock.makefile("rb") as reader:
        for line in lines:
            try:
                sock.sendall(line)
            except (BrokenPipeError, ConnectionResetError):
                break  # the daemon closed the connection after answering: read that answer
        return [json.loads(reader.readline()) for _ in range(read)]


def cli(home, *args, password: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "ONIONPOST_PASSWORD"}
    if password:
        env["ONIONPOST_PASSWORD"] = password
    return subprocess.run([sys.executable, "-m", "onionpost", "--home", str(home), *args], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO, env=env, stdin=subprocess.DEVNULL)


@pytest.mark.timeout(120)
def test_the_cli_goes_through_the_daemon_without_a_password(pair):
    alice, bob = pair
    assert stat.S_IMODE(os.stat(alice.home / "daemon.sock").st_mode) == 0o600
    bob_alias, alice_alias = connect_daemons(alice, bob)
    sent = cli(bob.home, "send", alice_alias.upper(), "hello through the daemon", "--json")  # no password: the socket is the access
    assert sent.returncode == 0, sent.stderr
    row = json.loads(sent.stdout)
    assert row["contact"] == alice_alias and row["state"] == "pending"
    wait_until(lambda: any(m["text"] == "hello through the daemon" for m in alice.call("history", contact=bob_alias)),
               what="the message at alice")
    received = cli(alice.home, "receive", "--wait", "0", "--json")
    assert received.returncode == 0, received.stderr
    assert [e["text"] for e in json.loads(received.stdout) if e["kind"] == "message"] == ["hello through the daemon"]
    again = cli(alice.home, "receive", "--wait", "0")
    assert again.stdout.strip() == "nothing new"  # shown once, never twice
    wait_until(lambda: bob.call("history", contact=alice_alias)[-1]["state"] == "delivered", what="the receipt")
    status = cli(bob.home, "status", "--json")
    assert json.loads(status.stdout)["mode"] == "daemon"
    # Errors and exit codes are the CLI's, through the daemon too.
    unknown = cli(bob.home, "send", "nobody", "x")
    assert unknown.returncode == 1 and unknown.stderr.strip() == "error: no contact named 'nobody' (see 'onionpost contacts')"
    mismatch = cli(bob.home, "verify", alice_alias, "--code", "1" * 60)
    assert mismatch.returncode == 3 and "DO NOT MATCH" in mismatch.stderr


@pytest.mark.timeout(120)
def test_events_replay_from_since_and_continue_live(pair):
    alice, bob = pair
    bob_alias, alice_alias = connect_daemons(alice, bob)
    bob.call("send", contact=alice_alias, text="one")
    wait_until(lambda: any(e["kind"] == "message" for e in alice.call("receive", wait=0)), what="message one")

    async def follow():
        client = await AsyncDaemonClient.connect(alice.home)
        try:
            first = await client.call("events.subscribe", since=0)
            seen = []
            bob.call("send", contact=alice_alias, text="two")
            async for event in client.events():
                seen.append(event)
                if event["kind"] == "message" and event["text"] == "two":
                    return first, seen
        finally:
            await client.close()

    first, seen = asyncio.run(asyncio.wait_for(follow(), 60))
    ids = [e["id"] for e in seen]
    assert ids == sorted(set(ids)), "events are in order, none twice"
    texts = [e["text"] for e in seen if e["kind"] == "message"]
    assert texts == ["one", "two"]  # "one" replayed from the log, "two" live
    assert first["last"] >= next(e["id"] for e in seen if e["text"] == "one")


@pytest.mark.timeout(120)
def test_bad_requests_get_errors_and_the_daemon_keeps_serving(pair):
    alice, _ = pair
    home = alice.home
    [parse] = raw_lines(home, b"{not json\n")
    assert parse["error"]["code"] == -32700 and parse["id"] is None
    [not_object] = raw_lines(home, b"[1, 2]\n")
    assert not_object["error"]["code"] == -32600
    [unknown] = raw_lines(home, b'{"jsonrpc": "2.0", "id": 7, "method": "teleport"}\n')
    assert unknown["error"]["code"] == -32601 and unknown["id"] == 7
    [typed] = raw_lines(home, b'{"jsonrpc": "2.0", "id": 8, "method": "history", "params": {"contact": 5}}\n')
    assert typed["error"]["code"] == -32602 and "must be a string" in typed["error"]["message"]
    [extra] = raw_lines(home, b'{"jsonrpc": "2.0", "id": 9, "method": "contacts", "params": {"colour": "red"}}\n')
    assert extra["error"]["code"] == -32602
    [positional] = raw_lines(home, b'{"jsonrpc": "2.0", "id": 10, "method": "contacts", "params": [1]}\n')
    assert positional["error"]["code"] == -32602
    [user] = raw_lines(home, b'{"jsonrpc": "2.0", "id": 11, "method": "send", "params": {"contact": "x", "text": "y"}}\n')
    assert user["error"]["code"] == 1 and user["error"]["data"]["kind"] == "no_contact"
    # A 10 MB line: an error, the connection closed, nothing else.
    [huge] = raw_lines(home, b'{"jsonrpc": "2.0", "id": 1, "method": "' + b"x" * 10_000_000 + b'"}\n')
    assert huge["error"]["code"] == -32600 and "longer than" in huge["error"]["message"]
    # Clients that vanish mid-request, or mid-line.
    for payload in (b'{"jsonrpc": "2.0", "id": 1, "method": "receive", "params": {"wait": 5}}\n', b'{"jsonrpc": "2.0", "id'):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(str(home / "daemon.sock"))
        sock.sendall(payload)
        sock.close()
    # A notification (no id) is executed and not answered; the next request is.
    answers = raw_lines(home, b'{"jsonrpc": "2.0", "method": "status"}\n', b'{"jsonrpc": "2.0", "id": 2, "method": "status"}\n')
    assert answers[0]["id"] == 2 and answers[0]["result"]["mode"] == "daemon"


@pytest.mark.timeout(120)
def test_a_thousand_connections_at_once(pair):
    alice, _ = pair
    sockets = []
    try:
        for _ in range(1000):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(10)
            try:
                sock.connect(str(alice.home / "daemon.sock"))
            except OSError:
                sock.close()  # the listen backlog is full: refused, as it should be
                continue
            sockets.append(sock)
        assert len(sockets) >= 64
        refused = 0
        for sock in sockets[64:200]:
            try:
                line = sock.makefile("rb").readline()
            except OSError:
                line = b""
            refused += (not line) or b"too many connections" in line
        assert refused == len(sockets[64:200])
    finally:
        for sock in sockets:
            sock.close()
    def serving() -> bool:
        try:
            return alice.call("status")["mode"] == "daemon"
        except RpcError as exc:  # the closed connections are still being counted down
            assert exc.message == "too many connections"
            return False

    assert wait_until(serving, what="the daemon serving again")


@pytest.mark.timeout(90)
def test_another_local_user_cannot_reach_the_socket(nodes):
    """Two locks, each enough: the home is 0700, and the socket itself is 0600."""
    probe_python = shutil.which("python3", path="/usr/bin:/bin")
    if os.geteuid() != 0 or probe_python is None:
        pytest.skip("needs root and a system python3 to probe as another user")
    base = Path(tempfile.mkdtemp(prefix="onionpost-modes-", dir="/tmp"))
    try:
        os.chmod(base, 0o711)  # others may pass through, as through a home directory
        person = Person(base / "alice", "alice", [nodes("relay")])
        daemon = DaemonProcess(person.home, *FAST).start()
        try:
            probe = ("import socket, sys\n"
                     "s = socket.socket(socket.AF_UNIX)\n"
                     "try:\n    s.connect(sys.argv[1])\nexcept PermissionError:\n    print('refused')\n"
                     "else:\n    print('connected')\n")

            def as_nobody() -> str:
                result = subprocess.run([probe_python, "-c", probe, str(person.home / "daemon.sock")], user="nobody",
                                        capture_output=True, text=True, timeout=30, cwd="/")
                return result.stdout.strip() or result.stderr.strip()

            assert stat.S_IMODE(os.stat(person.home).st_mode) == 0o700
            assert stat.S_IMODE(os.stat(person.home / "daemon.sock").st_mode) == 0o600
            assert as_nobody() == "refused"  # the home's mode
            os.chmod(person.home, 0o711)
            assert as_nobody() == "refused"  # the socket's own mode
            os.chmod(person.home, 0o700)
        finally:
            daemon.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.timeout(60)
def test_the_daemon_refuses_a_home_others_can_read(tmp_path, nodes):
    person = Person(tmp_path / "alice", "alice", [nodes("relay")])
    os.chmod(person.home, 0o755)
    result = run_cli("daemon", "--home", str(person.home), timeout=30)
    assert result.returncode == 1
    assert result.stderr.strip() == f"error: {person.home} is accessible to other users (mode 0755); run 'chmod 700 {person.home}' first"


@pytest.mark.timeout(60)
def test_one_owner_per_home(tmp_path, nodes):
    person = Person(tmp_path / "alice", "alice", [nodes("relay")])
    daemon = DaemonProcess(person.home, *FAST).start()
    try:
        second = DaemonProcess(person.home)
        result = subprocess.run([sys.executable, "-m", "onionpost", "daemon", "--home", str(person.home)],
                                capture_output=True, text=True, timeout=30, cwd=REPO, env=second.env)
        assert result.returncode == 1
        assert result.stderr.startswith(f"error: a daemon (or another onionpost command, pid {daemon.proc.pid}) is already using")
    finally:
        assert daemon.stop() == 0
    assert "onionpost daemon stopped" in daemon.output and not (person.home / "daemon.sock").exists()
    # Without a daemon, a writer holding the lock keeps a second one out with one line.
    from onionpost.client.home import HomeLock

    with HomeLock(person.home):
        result = cli(person.home, "send", "anyone", "x", password=PASSWORD)
    assert result.returncode == 1
    assert result.stderr.strip() == (f"error: another onionpost process (pid {os.getpid()}) is using {person.home}; "
                                     "stop it, or start 'onionpost daemon' so that commands can share it")


@pytest.mark.timeout(180)
def test_a_daemon_killed_mid_conversation_loses_nothing_and_shows_nothing_twice(pair):
    alice, bob = pair
    bob_alias, alice_alias = connect_daemons(alice, bob)
    texts = [f"m{i}" for i in range(30)]
    shown: list[str] = []

    def receive() -> list[str]:
        shown.extend(e["text"] for e in alice.call("receive", wait=0) if e["kind"] == "message")
        return shown

    for text in texts[:10]:
        bob.call("send", contact=alice_alias, text=text)
    wait_until(lambda: len(receive()) >= 3, what="some messages at alice")
    os.kill(alice.proc.pid, signal.SIGKILL)  # mid-conversation
    alice.kill()
    for text in texts[10:]:
        bob.call("send", contact=alice_alias, text=text)
    alice.output = ""
    alice.start()
    wait_until(lambda: len(set(receive())) >= 30, timeout=90, what="all 30 messages shown")
    assert len(shown) == 30, "a message was shown twice"
    assert sorted(shown, key=lambda t: int(t[1:])) == texts
    stored = [m["text"] for m in alice.call("history", contact=bob_alias, limit=100) if m["direction"] == "in"]
    assert sorted(stored, key=lambda t: int(t[1:])) == texts


@pytest.mark.timeout(120)
def test_receive_follow_streams_events_until_interrupted(pair):
    alice, bob = pair
    bob_alias, alice_alias = connect_daemons(alice, bob)
    env = {k: v for k, v in os.environ.items() if k != "ONIONPOST_PASSWORD"}
    follow = subprocess.Popen([sys.executable, "-m", "onionpost", "--home", str(alice.home), "receive", "--follow", "--json"],
                              cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        event = {}
        while event.get("kind") != "message":  # sent until --follow (subscribed at some point) prints one
            assert time.monotonic() < deadline, "no message event streamed"
            bob.call("send", contact=alice_alias, text="streamed")
            while select.select([follow.stdout], [], [], 1.0)[0]:
                event = json.loads(follow.stdout.readline())
                if event["kind"] == "message":
                    break
        assert event["text"] == "streamed" and event["contact"] == bob_alias and event["id"] > 0
    finally:
        follow.send_signal(signal.SIGINT)
        _, err = follow.communicate(timeout=30)
    assert follow.returncode == 130 and "Traceback" not in err


@pytest.mark.timeout(90)
def test_a_home_deeper_than_a_unix_socket_path_allows_still_gets_its_daemon(tmp_path, nodes):
    # AF_UNIX paths stop at 107 bytes; a lab run's or a test's temporary folder easily goes deeper.
    deep = tmp_path / ("d" * 60) / ("e" * 60) / "alice"
    assert len(str(deep / "daemon.sock")) > 107
    Person(deep, "alice", [nodes("relay")])
    daemon = DaemonProcess(deep, *FAST).start()
    try:
        assert stat.S_IMODE(os.stat(deep / "daemon.sock").st_mode) == 0o600
        status = cli(deep, "status", "--json")
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["mode"] == "daemon"

        async def over_asyncio():
            client = await AsyncDaemonClient.connect(deep)
            try:
                return await client.call("status")
            finally:
                await client.close()

        assert asyncio.run(over_asyncio())["mode"] == "daemon"
    finally:
        stop_all([daemon])
