"""Several backends of one node on one PostgreSQL database (issue 14): any backend serves any queue.

Each backend here is its own ``node run`` process on its own port, with a copy
of the first one's data directory (the same identity.key and store URL), as a
backend on another machine would be; ``--workers`` is tested at the end.
"""

import asyncio
import json
import os
import random
import re
import signal
import shutil
import time
from pathlib import Path

import pytest

from onionpost.proto import Ack, Delete, ErrorCode, Get, Message, NoMessage, Ok, Send, Subscribe, SubscriptionEnded, parse_node_address
from onionpost.proto import delivery
from onionpost.transport import LinkClosed, RelayError, RelayLink
from tests.integration.conftest import finish
from tests.integration.relay_helpers import NodeProcess, new_queue, run_cli
from tests.pg_helpers import PostgresCluster, free_port

pytestmark = pytest.mark.timeout(120)

MESSAGES = 1000
BATCH = 50


class Inbox:
    """A subscriber that ACKs every pushed message and keeps the bodies, in push order."""

    def __init__(self, queue):
        self.queue = queue
        self.bodies: list[bytes] = []
        self.ended = asyncio.Event()
        self.pushed = asyncio.Event()
        self.acked = 0
        self.link: RelayLink | None = None
        self._acks: set[asyncio.Task] = set()

    def __call__(self, queue_id, response) -> None:
        if isinstance(response, SubscriptionEnded):
            self.ended.set()
        elif isinstance(response, Message):
            self.bodies.append(delivery.open_message(self.queue.queue_key, response.box)[1])
            self.pushed.set()
            task = asyncio.get_running_loop().create_task(self.link.request(Ack(mid=response.mid), self.queue.rid, self.queue.rsecret))
            self._acks.add(task)
            task.add_done_callback(self._acked)

    def _acked(self, task: asyncio.Task) -> None:
        self._acks.discard(task)
        if not task.cancelled() and task.exception() is None:
            assert isinstance(task.result(), Ok), task.result()
            self.acked += 1

    async def all_acked(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while self.acked < len(self.bodies):
            assert time.monotonic() < deadline, f"{self.acked} of {len(self.bodies)} pushes acknowledged in {timeout} s"
            await asyncio.sleep(0.01)

    async def wait_for(self, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while len(self.bodies) < count:
            left = deadline - time.monotonic()
            assert left > 0, f"{len(self.bodies)} of {count} messages pushed in {timeout} s"
            self.pushed.clear()
            try:
                await asyncio.wait_for(self.pushed.wait(), left)
            except asyncio.TimeoutError:
                pass


def add_backend(first: NodeProcess, name: str) -> NodeProcess:
    """Another backend of ``first``'s node: a copy of its data directory listening on another port."""
    directory = first.data_dir.parent / name
    shutil.copytree(first.data_dir, directory, ignore=shutil.ignore_patterns("status.json", "*.log"))
    config_path = directory / "node.json"
    config = json.loads(config_path.read_text())
    config["listen"]["port"] = free_port()
    config_path.write_text(json.dumps(config))
    backend = NodeProcess(directory)
    backend.address = parse_node_address(run_cli("address", "--data", str(directory)).stdout.strip())
    return backend


@pytest.fixture
def two_backends(tmp_path, pg_cluster):
    first = NodeProcess.create(tmp_path / "backend1", store=pg_cluster.url(f"backends{random.getrandbits(48)}"),
                               quota=100_000)
    second = add_backend(first, "backend2")
    started = []
    try:
        for backend in (first, second):
            backend.start()
            started.append(backend)
        yield first, second
    finally:
        finish(started)


async def test_send_on_one_backend_is_pushed_by_the_other_exactly_once_in_order(two_backends):
    one, two = two_backends
    assert one.address.key == two.address.key and one.address.port != two.address.port
    sender = await RelayLink.connect(one.address)
    q = await new_queue(sender, node=one)
    inbox = Inbox(q)
    inbox.link = await RelayLink.connect(two.address, on_push=inbox)
    try:
        assert isinstance(await inbox.link.request(Subscribe(), q.rid, q.rsecret), Ok)
        started = time.monotonic()
        for start in range(0, MESSAGES, BATCH):
            commands = [(Send(body=b"%06d" % n), q.snd, q.ssecret) for n in range(start, start + BATCH)]
            assert all(isinstance(a, Ok) for a in await sender.request_many(commands, timeout=30))
        await inbox.wait_for(MESSAGES, timeout=60)
        elapsed = time.monotonic() - started
        assert inbox.bodies == [b"%06d" % n for n in range(MESSAGES)]
        await asyncio.sleep(0.3)
        assert len(inbox.bodies) == MESSAGES, "a message was pushed twice"
        assert isinstance(await inbox.link.request(Get(), q.rid, q.rsecret), NoMessage)
    finally:
        await sender.close()
        await inbox.link.close()
    print(f"{MESSAGES} messages from backend 1 to a subscriber on backend 2 in {elapsed:.2f} s")


async def test_one_push_is_heard_within_milliseconds(two_backends):
    """Figures only (no timed assert): SEND-to-push delay when the subscriber is on the other backend, and on the same."""
    one, two = two_backends
    sender = await RelayLink.connect(one.address)
    figures = {}
    try:
        for name, backend in (("other backend", two), ("same backend", one)):
            q = await new_queue(sender, node=one)
            inbox = Inbox(q)
            inbox.link = await RelayLink.connect(backend.address, on_push=inbox)
            try:
                assert isinstance(await inbox.link.request(Subscribe(), q.rid, q.rsecret), Ok)
                delays = []
                for n in range(21):
                    started = time.monotonic()
                    assert isinstance(await sender.request(Send(body=b"ping %d" % n), q.snd, q.ssecret), Ok)
                    await inbox.wait_for(n + 1, timeout=10)
                    delays.append(time.monotonic() - started)
                figures[name] = sorted(delays)
            finally:
                await inbox.link.close()
    finally:
        await sender.close()
    for name, delays in figures.items():
        print(f"SEND on backend 1, push on the {name}: median {delays[10] * 1000:.1f} ms, max {delays[-1] * 1000:.1f} ms")


async def test_a_sub_moved_to_another_backend_ends_the_old_one(two_backends):
    one, two = two_backends
    old_inbox_link = await RelayLink.connect(two.address)
    q = await new_queue(old_inbox_link, node=two)
    await old_inbox_link.close()
    old, new = Inbox(q), Inbox(q)
    old.link = await RelayLink.connect(two.address, on_push=old)
    new.link = await RelayLink.connect(one.address, on_push=new)
    sender = await RelayLink.connect(two.address)
    try:
        assert isinstance(await old.link.request(Subscribe(), q.rid, q.rsecret), Ok)
        assert isinstance(await sender.request(Send(body=b"to the old"), q.snd, q.ssecret), Ok)
        await old.wait_for(1, timeout=10)
        await old.all_acked()  # else the new subscriber rightly gets it again
        assert isinstance(await new.link.request(Subscribe(), q.rid, q.rsecret), Ok)
        await asyncio.wait_for(old.ended.wait(), 10)
        assert isinstance(await sender.request(Send(body=b"to the new"), q.snd, q.ssecret), Ok)
        await new.wait_for(1, timeout=10)
        assert new.bodies == [b"to the new"] and old.bodies == [b"to the old"]
        assert not new.ended.is_set()
        # And back: a SUB on backend 2 again ends the one on backend 1.
        assert isinstance(await old.link.request(Subscribe(), q.rid, q.rsecret), Ok)
        await asyncio.wait_for(new.ended.wait(), 10)
    finally:
        for link in (old.link, new.link, sender):
            await link.close()


async def test_a_backend_killed_mid_traffic_loses_nothing_confirmed(two_backends):
    one, two = two_backends
    setup = await RelayLink.connect(two.address)
    q = await new_queue(setup, node=two)
    await setup.close()
    inbox = Inbox(q)
    inbox.link = await RelayLink.connect(two.address, on_push=inbox)
    assert isinstance(await inbox.link.request(Subscribe(), q.rid, q.rsecret), Ok)
    confirmed: list[int] = []
    attempted = 0
    sender = await RelayLink.connect(one.address)
    killer = asyncio.get_running_loop().call_later(random.Random(14).uniform(0.2, 0.6), one.kill)
    try:
        while True:
            numbers = list(range(attempted, attempted + 16))
            attempted += 16
            answers = await sender.request_many([(Send(body=b"%06d" % n), q.snd, q.ssecret) for n in numbers], timeout=20)
            for n, answer in zip(numbers, answers):
                assert isinstance(answer, Ok), answer
                confirmed.append(n)
    except (LinkClosed, asyncio.TimeoutError):
        pass
    finally:
        killer.cancel()
        await sender.close()
    assert confirmed, "backend 1 was killed before confirming anything"
    # The sender carries on through backend 2.
    sender = await RelayLink.connect(two.address)
    try:
        for n in range(attempted, attempted + 16):
            assert isinstance(await sender.request(Send(body=b"%06d" % n), q.snd, q.ssecret), Ok)
            confirmed.append(n)
        attempted += 16
        await inbox.wait_for(len(confirmed), timeout=30)
        await asyncio.sleep(0.3)
        received = [int(body) for body in inbox.bodies]
        assert received == sorted(set(received)), "duplicates or reordering"
        assert not set(confirmed) - set(received), "a confirmed message was lost"
        assert set(received) <= set(range(attempted))
    finally:
        await sender.close()
        await inbox.link.close()
        one.start()  # the fixture stops both
    print(f"attempted {attempted}, confirmed {len(confirmed)}, received {len(received)}")


@pytest.mark.timeout(60)
def test_a_backend_with_another_identity_refuses_to_start(tmp_path, pg_cluster):
    url = pg_cluster.url(f"identity{random.getrandbits(48)}")
    first = NodeProcess.create(tmp_path / "first", store=url)
    result = run_cli("init", "--data", str(tmp_path / "other"), "--store", url)
    assert result.returncode == 1
    assert result.stderr.startswith("error: the database postgresql://") and "belongs to another node" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "other").exists(), "nothing is written for a refused node"
    # A data directory whose identity.key was replaced: `node run` refuses too.
    impostor = add_backend(first, "impostor")
    (impostor.data_dir / "identity.key").write_bytes(b"\x07" * 32)
    run = run_cli("run", "--data", str(impostor.data_dir))
    assert run.returncode == 1 and "belongs to another node" in run.stderr and "Traceback" not in run.stderr, run.stderr


@pytest.mark.timeout(60)
def test_a_wrong_database_url_is_one_line(tmp_path):
    for url, words in [
        (f"postgresql://nobody@127.0.0.1:{free_port()}/none", "cannot reach the database"),
        ("mysql://somewhere/db", "give a PostgreSQL URL"),
        (f"postgresql://user:hunter2@127.0.0.1:{free_port()}/none", "user:***@"),
    ]:
        result = run_cli("init", "--data", str(tmp_path / "node"), "--store", url)
        assert result.returncode == 1 and words in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and "hunter2" not in result.stderr, result.stderr
        assert not (tmp_path / "node").exists()


async def test_a_database_that_vanishes_gets_errors_never_a_false_ok(tmp_path):
    """The database stops mid-run: SENDs are answered INTERNAL (never OK), the log says why in one line; when it is back, the node carries on."""
    with PostgresCluster(fsync=False) as cluster:
        node = NodeProcess.create(tmp_path / "node", store=cluster.url("vanishing")).start()
        link = None
        try:
            link = await RelayLink.connect(node.address)
            q = await new_queue(link, node=node)
            assert isinstance(await link.request(Send(body=b"before"), q.snd, q.ssecret), Ok)
            cluster.halt()
            with pytest.raises(RelayError) as refused:
                await link.request(Send(body=b"while away"), q.snd, q.ssecret)
            assert refused.value.code == ErrorCode.INTERNAL
            cluster.resume()
            deadline = time.monotonic() + 30
            while True:  # the first command after the restart may still meet the broken connection
                try:
                    assert isinstance(await link.request(Send(body=b"after"), q.snd, q.ssecret), Ok)
                    break
                except RelayError as exc:
                    assert exc.code == ErrorCode.INTERNAL and time.monotonic() < deadline
                    await asyncio.sleep(0.2)
            bodies = []
            while isinstance(got := await link.request(Get(), q.rid, q.rsecret), Message):
                bodies.append(delivery.open_message(q.queue_key, got.box)[1])
                assert isinstance(await link.request(Ack(mid=got.mid), q.rid, q.rsecret), Ok)
            assert bodies == [b"before", b"after"]
        finally:
            if link is not None:
                await link.close()
            finish([node])
        log = node.log_text()
        assert "store transaction failed" in log and "postgresql://" in log, log[-2000:]


async def test_workers_share_the_port_and_the_queues(tmp_path, pg_cluster):
    """`node run --workers 2`: two processes on one port (SO_REUSEPORT); whichever serves whom, messages flow."""
    node = NodeProcess.create(tmp_path / "node", store=pg_cluster.url(f"workers{random.getrandbits(48)}"))
    node.start(args=("--workers", "2"))
    links = []
    try:
        children = Path(f"/proc/{node.proc.pid}/task/{node.proc.pid}/children").read_text().split()
        assert len(children) == 2, children
        setup = await RelayLink.connect(node.address)
        links.append(setup)
        queues = [await new_queue(setup, node=node) for _ in range(8)]
        inboxes = []
        for q in queues:  # new connections, spread by the kernel over both workers
            inbox = Inbox(q)
            inbox.link = await RelayLink.connect(node.address, on_push=inbox)
            links.append(inbox.link)
            assert isinstance(await inbox.link.request(Subscribe(), q.rid, q.rsecret), Ok)
            inboxes.append(inbox)
        for n in range(5):
            sender = await RelayLink.connect(node.address)
            links.append(sender)
            for q in queues:
                assert isinstance(await sender.request(Send(body=b"%d" % n), q.snd, q.ssecret), Ok)
        for inbox in inboxes:
            await inbox.wait_for(5, timeout=20)
            assert inbox.bodies == [b"0", b"1", b"2", b"3", b"4"]
    finally:
        for link in links:
            await link.close()
        finish([node])
    for pid in children:
        assert not Path(f"/proc/{pid}").exists(), "a worker outlived the node"


@pytest.mark.timeout(60)
def test_workers_need_the_postgresql_store(tmp_path):
    assert run_cli("init", "--data", str(tmp_path / "node")).returncode == 0
    result = run_cli("run", "--data", str(tmp_path / "node"), "--workers", "2")
    assert result.returncode == 1 and "--workers needs a PostgreSQL store" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


async def test_a_forwarded_envelope_is_spent_on_every_backend(two_backends):
    """The envelope replay record is in the shared database: replayed to another backend, it is refused."""
    from onionpost.proto import Error, RelayForward, forward

    one, two = two_backends
    client1 = await RelayLink.connect(one.address)
    client2 = await RelayLink.connect(two.address)
    try:
        q = await new_queue(client1, node=one)
        envelope, response_key = forward.seal_send(one.address.key, q.snd, Send(body=b"once"), q.ssecret, int(time.time()))
        first = forward.open_response(response_key, (await client1.request(RelayForward(env=envelope))).env)
        assert isinstance(first, Ok)
        again = forward.open_response(response_key, (await client2.request(RelayForward(env=envelope))).env)
        assert isinstance(again, Error) and again.code == ErrorCode.ENVELOPE.value
        got = await client2.request(Get(), q.rid, q.rsecret)
        assert delivery.open_message(q.queue_key, got.box)[1] == b"once"
        assert isinstance(await client2.request(Ack(mid=got.mid), q.rid, q.rsecret), Ok)
        assert isinstance(await client1.request(Get(), q.rid, q.rsecret), NoMessage)
    finally:
        await client1.close()
        await client2.close()


def worker_pids(node: NodeProcess) -> list[str]:
    return Path(f"/proc/{node.proc.pid}/task/{node.proc.pid}/children").read_text().split()


async def test_a_crashed_worker_is_started_again(tmp_path, pg_cluster):
    from onionpost.node.workers import MIN_UPTIME

    node = NodeProcess.create(tmp_path / "node", store=pg_cluster.url(f"restart{random.getrandbits(48)}"))
    node.start(args=("--workers", "2"))
    started = time.monotonic()
    try:
        before = worker_pids(node)
        assert len(before) == 2
        await asyncio.sleep(max(0.0, MIN_UPTIME + 0.5 - (time.monotonic() - started)))  # a crash at start stops the node instead
        os.kill(int(before[0]), signal.SIGKILL)
        deadline = time.monotonic() + 30
        while len(after := worker_pids(node)) != 2 or before[0] in after:
            assert time.monotonic() < deadline and node.proc.poll() is None, f"workers now: {after}"
            await asyncio.sleep(0.05)
        assert before[1] in after, "the other worker kept serving"
        for _ in range(4):  # new connections, to either worker
            link = await RelayLink.connect(node.address)
            try:
                q = await new_queue(link, node=node)
                assert isinstance(await link.request(Send(body=b"x"), q.snd, q.ssecret), Ok)
            finally:
                await link.close()
    finally:
        finish([node])
    assert re.search(r"worker \d exited \(signal 9\); starting it again", node.log_text()), node.log_text()[-1000:]


async def test_a_del_on_one_backend_ends_the_subscriber_on_the_other(two_backends):
    one, two = two_backends
    owner = await RelayLink.connect(one.address)
    q = await new_queue(owner, node=one)
    inbox = Inbox(q)
    inbox.link = await RelayLink.connect(two.address, on_push=inbox)
    try:
        assert isinstance(await inbox.link.request(Subscribe(), q.rid, q.rsecret), Ok)
        assert isinstance(await owner.request(Delete(), q.rid, q.rsecret), Ok)
        await asyncio.wait_for(inbox.ended.wait(), 10)
    finally:
        await owner.close()
        await inbox.link.close()


async def test_status_reads_the_counts_from_the_database(two_backends):
    one, two = two_backends
    link = await RelayLink.connect(two.address)
    try:
        q = await new_queue(link, node=two)
        await new_queue(link, node=two)
        assert isinstance(await link.request(Send(body=b"waiting"), q.snd, q.ssecret), Ok)
    finally:
        await link.close()
    for backend in (one, two):  # any backend's data directory shows the node's queues
        result = run_cli("status", "--data", str(backend.data_dir), "--json")
        assert result.returncode == 0, result.stderr
        status = json.loads(result.stdout)
        assert status["running"] and (status["queues"], status["messages"]) == (2, 1), status
