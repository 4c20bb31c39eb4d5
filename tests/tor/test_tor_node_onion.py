"""Relay nodes as Tor onion services: ``onionpost node init --onion`` / ``node run --testnet``.

Every node here is a real ``python -m onionpost node run`` process that
launches its own tor on the session's private network (or, in one test, uses
the session's client tor); clients reach it only through the client tor's
SOCKS port. Processes run on free ports and are stopped by PID; no tor a node
launched may outlive it.
"""

import asyncio
import json
import os
import re
import select
import signal
import stat
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from onionpost.proto import Ack, ErrorCode, Forward, ForwardResult, Get, Message, New, NodeAddress, Ok, SecureQueue, Send
from onionpost.proto import crypto, delivery, forward, parse_node_address
from onionpost.torconfig import onion_keys, process
from onionpost.torconfig.control import TorControl
from onionpost.transport import RelayError, RelayLink
from onionpost.transport.retry import retrying
from onionpost.transport.tor import TorConnector
from tests.tor.tor_helpers import assert_all_stopped

pytestmark = pytest.mark.tor

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT = 120.0


def node_cli(*args: str, timeout: float = 60.0, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "onionpost", "node", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env=env)


class OnionNode:
    """An onion-mode node process, stopped by PID."""

    def __init__(self, data_dir: Path, address: NodeAddress):
        self.data_dir = data_dir
        self.address = address
        self.log_path = data_dir.parent / f"{data_dir.name}.log"
        self.proc: subprocess.Popen | None = None
        self.seen_tor_pids: set[int] = set()

    @classmethod
    def create(cls, data_dir: Path) -> "OnionNode":
        result = node_cli("init", "--data", str(data_dir), "--onion")
        assert result.returncode == 0, result.stderr
        return cls(data_dir, parse_node_address(result.stdout.strip()))

    def spawn(self, *args: str) -> subprocess.Popen:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "onionpost", "node", "run", "--data", str(self.data_dir), *args],
                stdout=subprocess.PIPE, stderr=log, cwd=REPO,
            )
        return self.proc

    def start(self, *args: str, timeout: float = START_TIMEOUT) -> float:
        """Run the node; return the seconds until it printed its listening line (service published)."""
        started = time.monotonic()
        self.spawn(*args)
        line = self.read_line(timeout)
        assert line.startswith("onionpost node listening on 127.0.0.1:") and line.endswith(f"address {self.address}"), line
        self.seen_tor_pids.update(self.tor_pids())
        return time.monotonic() - started

    def read_line(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        line = b""
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or (self.proc.poll() is not None and not select.select([self.proc.stdout], [], [], 0)[0]):
                self.kill()
                raise AssertionError(f"node did not come up: {self.log_text()[-3000:]}")
            if select.select([self.proc.stdout], [], [], min(left, 0.5))[0]:
                chunk = os.read(self.proc.stdout.fileno(), 1)
                line += chunk
                if not chunk and self.proc.poll() is not None:
                    self.kill()
                    raise AssertionError(f"node exited before listening: {self.log_text()[-3000:]}")
        return line.decode().strip()

    def tor_pids(self) -> list[int]:
        """Live tors started from a torrc in this node's data directory."""
        return process.tor_pids_under(self.data_dir / "tor")

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM by PID; return the exit status."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                raise
        self.proc.stdout.close()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        if self.proc is not None and not self.proc.stdout.closed:
            self.proc.stdout.close()
        # Its tor exits with it (owned); whatever is left is stopped by PID.
        process.stop_pids(self.tor_pids())

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def timing(self, what: str) -> float | None:
        """The last "<what> in X s" figure the node logged (bootstrapped, published)."""
        found = re.findall(rf"{what} in ([0-9.]+) s", self.log_text())
        return float(found[-1]) if found else None


@pytest.fixture
def onion_nodes(tmp_path):
    """``make(name)`` -> a created (not started) ``OnionNode``; at the end every node is stopped and
    checked: exit status 0, no traceback, and no tor it launched left alive."""
    nodes: list[OnionNode] = []

    def make(name: str = "node") -> OnionNode:
        node = OnionNode.create(tmp_path / name)
        nodes.append(node)
        return node

    yield make
    statuses = []
    for node in nodes:
        try:
            statuses.append(node.stop())
        finally:
            node.kill()
    for node, status in zip(nodes, statuses):
        assert status == 0, f"node exited with {status}: {node.log_text()[-3000:]}"
        assert "Traceback" not in node.log_text(), node.log_text()[-3000:]
        assert_all_stopped(sorted(node.seen_tor_pids))
        assert not node.tor_pids()


def network_args(tor_network) -> list[str]:
    return ["--testnet", str(tor_network.directory)]


async def connect(address: NodeAddress, client_tor, tag: str, *, control: TorControl | None = None,
                  within: float = 240.0) -> tuple[RelayLink, float]:
    """A RelayLink through the client tor (one circuit per tag), retried as the client retries
    (backoff, and NEWNYM through ``control`` when the onion is unreachable); return it and the seconds it took."""
    started = time.monotonic()
    connector = TorConnector(socks_port=client_tor.socks_port,
                             on_unreachable=control.new_identity if control is not None else None)
    link = await retrying(lambda: RelayLink.connect(address, connector=connector, isolation=tag, timeout=90.0),
                          within=within)
    return link, time.monotonic() - started


class Queue:
    def __init__(self, rid, snd, rsecret, ssecret, queue_key):
        self.rid, self.snd, self.rsecret, self.ssecret, self.queue_key = rid, snd, rsecret, ssecret, queue_key


async def new_queue(link: RelayLink) -> Queue:
    """NEW + KEY: a secured queue."""
    rkey, rsecret = crypto.signing_keypair()
    dh_public, dh_secret = crypto.dh_keypair()
    ids = await link.request(New(rkey=rkey, dhkey=dh_public, akey=None), None, rsecret)
    skey, ssecret = crypto.signing_keypair()
    assert isinstance(await link.request(SecureQueue(skey=skey), ids.rid, rsecret), Ok)
    return Queue(ids.rid, ids.snd, rsecret, ssecret, crypto.queue_secret(dh_secret, ids.dhkey))


async def send_and_get(link: RelayLink, q: Queue, body: bytes) -> None:
    """SEND to ``q``, then GET and ACK it: the round trip every test checks."""
    assert isinstance(await link.request(Send(body=body), q.snd, q.ssecret), Ok)
    await get_and_ack(link, q, body)


async def get_and_ack(link: RelayLink, q: Queue, body: bytes) -> None:
    got = await link.request(Get(), q.rid, q.rsecret)
    assert isinstance(got, Message), got
    assert delivery.open_message(q.queue_key, got.box)[1] == body
    assert isinstance(await link.request(Ack(mid=got.mid), q.rid, q.rsecret), Ok)


def status(node: OnionNode) -> dict:
    result = node_cli("status", "--data", str(node.data_dir), "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.timeout(600)
async def test_round_trip_over_the_onion_and_restart_keeps_address_and_queues(tor_network, client_tor, client_control,
                                                                              onion_nodes):
    node = onion_nodes("relay")
    seed = (node.data_dir / "onion.key").read_bytes()
    assert len(seed) == 32 and stat.S_IMODE(os.stat(node.data_dir / "onion.key").st_mode) == 0o600
    assert node.address.host == onion_keys.onion_address_of_key(seed) and node.address.port == 80
    before = node_cli("address", "--data", str(node.data_dir))
    assert before.returncode == 0 and before.stdout.strip() == str(node.address)
    assert not (node.data_dir / "tor").exists()  # computed without starting tor

    up = node.start(*network_args(tor_network))
    print(f"\nnode up (tor bootstrap {node.timing('bootstrapped')} s, publication {node.timing('published')} s): {up:.1f} s")
    live = status(node)
    assert live["running"] and live["address"] == str(node.address) and live["onion_service"] == "published"

    link, opened = await connect(node.address, client_tor, "first")
    try:
        started = time.monotonic()
        q = await new_queue(link)
        print(f"first connection {opened:.2f} s, NEW+KEY {time.monotonic() - started:.3f} s")
        started = time.monotonic()
        await send_and_get(link, q, b"over the onion")
        print(f"first SEND+GET+ACK round trip {time.monotonic() - started:.3f} s")
        # Left for after the restart:
        assert isinstance(await link.request(Send(body=b"kept across the restart"), q.snd, q.ssecret), Ok)
    finally:
        await link.close()

    pids = node.tor_pids()
    assert len(pids) == 1
    assert node.stop() == 0
    assert_all_stopped(pids)
    assert node_cli("address", "--data", str(node.data_dir)).stdout.strip() == str(node.address)
    assert "onion service" in node.log_text() and "removed" in node.log_text()

    up = node.start(*network_args(tor_network))
    print(f"node restarted (tor bootstrap {node.timing('bootstrapped')} s, publication {node.timing('published')} s): {up:.1f} s")
    assert node.tor_pids() and not set(node.tor_pids()) & set(pids)
    # The client tor may still hold the old descriptor (introduction points of the stopped tor);
    # the onionpost client asks for NEWNYM when an onion is unreachable, the test does it at once.
    await client_control.new_identity()
    link, opened = await connect(node.address, client_tor, "after restart", control=client_control)
    try:
        print(f"connection after restart {opened:.2f} s")
        await get_and_ack(link, q, b"kept across the restart")
        await send_and_get(link, q, b"after the restart")
    finally:
        await link.close()


@pytest.mark.timeout(300)
async def test_forwarding_between_two_onion_nodes(tor_network, client_tor, onion_nodes):
    a, b = onion_nodes("a"), onion_nodes("b")
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda node: node.start(*network_args(tor_network)), (a, b)))
    sender, _ = await connect(a.address, client_tor, "sender")
    recipient, _ = await connect(b.address, client_tor, "recipient")
    try:
        q = await new_queue(recipient)
        body = b"from a client of A to a queue on B"
        envelope, response_key = forward.seal_send(b.address.key, q.snd, Send(body=body), q.ssecret, int(time.time()))
        started = time.monotonic()
        answer = await sender.request(Forward(node=str(b.address), env=envelope), timeout=120.0)
        print(f"\nfirst FWD A -> B over Tor {time.monotonic() - started:.2f} s")
        assert isinstance(answer, ForwardResult), answer
        assert isinstance(forward.open_response(response_key, answer.env), Ok)
        await get_and_ack(recipient, q, body)

        # The pooled link A -> B is reused.
        envelope, response_key = forward.seal_send(b.address.key, q.snd, Send(body=b"again"), q.ssecret, int(time.time()))
        started = time.monotonic()
        answer = await sender.request(Forward(node=str(b.address), env=envelope))
        print(f"second FWD A -> B {time.monotonic() - started:.3f} s")
        assert isinstance(forward.open_response(response_key, answer.env), Ok)
        await get_and_ack(recipient, q, b"again")

        # A node that is not running (its descriptor was never published): UNREACHABLE.
        c = onion_nodes("c")
        envelope, _ = forward.seal_send(c.address.key, q.snd, Send(body=b"lost"), q.ssecret, int(time.time()))
        started = time.monotonic()
        with pytest.raises(RelayError) as refused:
            await sender.request(Forward(node=str(c.address), env=envelope), timeout=120.0)
        assert refused.value.code == ErrorCode.UNREACHABLE
        print(f"FWD to an unpublished onion refused after {time.monotonic() - started:.2f} s")
    finally:
        await sender.close()
        await recipient.close()


@pytest.mark.timeout(240)
async def test_a_killed_tor_is_restarted_and_the_service_republished(tor_network, client_tor, client_control, onion_nodes):
    node = onion_nodes("relay")
    node.start(*network_args(tor_network))
    link, _ = await connect(node.address, client_tor, "before")
    try:
        q = await new_queue(link)
    finally:
        await link.close()
    [old] = node.tor_pids()
    os.kill(old, signal.SIGKILL)
    deadline = time.monotonic() + 90
    while "is published again" not in node.log_text():
        assert time.monotonic() < deadline and node.proc.poll() is None, node.log_text()[-3000:]
        await asyncio.sleep(0.2)
    assert f"tor (pid {old}) exited unexpectedly" in node.log_text()
    [new] = node.tor_pids()
    node.seen_tor_pids.add(new)
    assert new != old and status(node)["onion_service"] == "published"
    # The client tor still holds the old descriptor (dead introduction points); a real client
    # retries, the test clears tor's onion cache to be quick.
    await client_control.new_identity()
    link, _ = await connect(node.address, client_tor, "after")
    try:
        await send_and_get(link, q, b"after tor came back")
    finally:
        await link.close()


def sigterm_when(node: OnionNode, condition, timeout: float = 60.0) -> list[int]:
    """SIGTERM the node as soon as ``condition()`` holds; return the tor PIDs seen by then."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline and node.proc.poll() is None, node.log_text()[-3000:]
        node.seen_tor_pids.update(node.tor_pids())
        time.sleep(0.01)
    pids = node.tor_pids()
    node.seen_tor_pids.update(pids)
    os.kill(node.proc.pid, signal.SIGTERM)
    return pids


@pytest.mark.timeout(120)
def test_a_tor_that_cannot_be_restarted_ends_the_node(tor_network, tmp_path, onion_nodes):
    # The node joins the session's network through a copy of its state file, which the test can take away.
    net = tmp_path / "net"
    net.mkdir()
    (net / "network.json").write_text((tor_network.directory / "network.json").read_text())
    node = onion_nodes("relay")
    node.start("--testnet", str(net))
    [pid] = node.tor_pids()
    (net / "network.json").unlink()
    os.kill(pid, signal.SIGKILL)
    assert node.proc.wait(60) == 1
    node.proc.stdout.close()
    log = node.log_text()
    assert f"tor (pid {pid}) exited unexpectedly" in log and "restart attempt 3 of 3 failed" in log
    last = log.strip().splitlines()[-1]
    assert last.startswith("error: tor died and could not be restarted (3 attempts): could not start tor: no private Tor network")
    assert "Traceback" not in log
    assert not node.tor_pids()
    node.proc = None  # checked here; the fixture has nothing left to stop


@pytest.mark.timeout(180)
def test_sigterm_during_startup_leaves_no_tor(tor_network, onion_nodes):
    node = onion_nodes("relay")
    # While tor bootstraps (its process exists, start_tor has not returned).
    node.spawn(*network_args(tor_network))
    pids = sigterm_when(node, node.tor_pids)
    assert node.proc.wait(30) == 0, node.log_text()
    assert_all_stopped(pids)
    assert not node.tor_pids()
    node.proc.stdout.close()

    # While tor uploads the descriptor (stem is blocked waiting for it: the node must not wait).
    published_before = node.log_text().count("publishing onion service")
    node.spawn(*network_args(tor_network))
    pids = sigterm_when(node, lambda: node.log_text().count("publishing onion service") > published_before)
    started = time.monotonic()
    assert node.proc.wait(30) == 0, node.log_text()
    assert time.monotonic() - started < 15
    assert_all_stopped(pids)
    assert not node.tor_pids()


@pytest.mark.timeout(180)
def test_a_killed_node_takes_its_tor_with_it(tor_network, onion_nodes):
    node = onion_nodes("relay")
    node.start(*network_args(tor_network))
    pids = node.tor_pids()
    assert len(pids) == 1
    os.kill(node.proc.pid, signal.SIGKILL)  # no chance to stop its tor
    assert node.proc.wait(10) == -signal.SIGKILL
    # tor took ownership of the node's control connection; the kernel closed it with the node.
    assert_all_stopped(pids, timeout=10.0)
    assert "Owning controller connection has closed" in (node.data_dir / "tor" / "notice.log").read_text()
    node.proc.stdout.close()
    node.proc = None  # checked here; the fixture has nothing left to stop


@pytest.mark.timeout(60)
def test_startup_failure_is_one_line_and_leaves_no_tor(tmp_path, onion_nodes):
    node = onion_nodes("relay")
    result = node_cli("run", "--data", str(node.data_dir), "--testnet", str(tmp_path / "no-network"))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: could not start tor: no private Tor network")
    assert not node.tor_pids()
    for args, words in ((["--tor-socks", "9"], "--tor-control"), (["--tor-control", "9"], "--tor-socks"),
                        (["--tor-control", "9", "--tor-socks", "9", "--tor-password", "x", "--tor-cookie", "c"],
                         "exclude")):
        result = node_cli("run", "--data", str(node.data_dir), *args)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], lines


@pytest.mark.timeout(120)
async def test_existing_tor_through_its_control_and_socks_ports(client_tor, onion_nodes):
    node = onion_nodes("relay")
    node.start("--tor-control", str(client_tor.control_port), "--tor-cookie", str(client_tor.control_cookie_path),
               "--tor-socks", str(client_tor.socks_port))
    assert not (node.data_dir / "tor").exists()  # no tor of its own
    link, _ = await connect(node.address, client_tor, "existing tor")
    try:
        q = await new_queue(link)
        await send_and_get(link, q, b"through an existing tor")
    finally:
        await link.close()
    assert node.stop() == 0
    assert client_tor.alive()
    # The service is gone from that tor: the same key can be published again.
    seed = (node.data_dir / "onion.key").read_bytes()
    async with await TorControl.connect(client_tor.control_port, cookie_path=client_tor.control_cookie_path) as control:
        await control.publish_onion(seed, {80: 9}, await_publication=False)
        await control.remove_onion(node.address.host)


@pytest.mark.timeout(60)
def test_loopback_node_ignores_tor_flags_with_a_warning(tmp_path):
    data = tmp_path / "loopback"
    init = node_cli("init", "--data", str(data))
    assert init.returncode == 0
    log = tmp_path / "loopback.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "onionpost", "node", "run", "--data", str(data), "--tor-socks", "9"],
                                stdout=subprocess.PIPE, stderr=err, cwd=REPO,
                                env={**os.environ, "ONIONPOST_TESTNET": str(tmp_path / "net")})
    try:
        line = proc.stdout.readline().decode()
        assert line.strip().endswith(init.stdout.strip()), line
        warning = log.read_text().splitlines()[0]
        assert warning.startswith("warning: --testnet, --tor-socks ignored") and "not an onion node" in warning
        assert not (data / "tor").exists()
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(20) == 0
        proc.stdout.close()
