"""Helpers for tests against real node processes: start/stop nodes, raw clients, queues."""

import asyncio
import base64
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from onionpost.proto import (
    BLOCK_SIZE,
    MAX_VERSION,
    NEED_DATA,
    ClientSession,
    Connected,
    Error,
    New,
    NodeAddress,
    RemoteProtocolError,
    Reply,
    SecureQueue,
    parse_node_address,
)
from onionpost.proto import crypto
from onionpost.transport.connector import WEBSOCKET_PATH

REPO = Path(__file__).resolve().parents[2]


class NodeProcess:
    """A node run as ``python -m onionpost node run`` in its own process, stopped by PID."""

    def __init__(self, data_dir: Path):
        self.data_dir = Path(data_dir)
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}.log"
        self.proc: subprocess.Popen | None = None
        self.address: NodeAddress | None = None
        self.secret_ids: list[bytes] = []
        """Queue ids created by the test; the log must never show them."""

    @classmethod
    def create(cls, data_dir: Path, *, access_keys: tuple[str, ...] = (), store: str | None = None, **config) -> "NodeProcess":
        """``store``: a PostgreSQL URL (``node init --store``); None for the default SQLite file."""
        args = ["init", "--data", str(data_dir)]
        for key in access_keys:
            args += ["--access-key", key]
        if store is not None:
            args += ["--store", store]
        result = run_cli(*args)
        assert result.returncode == 0, result.stderr
        if config:
            path = Path(data_dir) / "node.json"
            data = json.loads(path.read_text())
            data.update(config)
            path.write_text(json.dumps(data))
        node = cls(data_dir)
        node.address = parse_node_address(result.stdout.strip())
        return node

    def start(self, timeout: float = 30.0, *, preexec_fn=None, args: tuple[str, ...] = ()) -> "NodeProcess":
        """``preexec_fn`` runs in the child before the node starts (e.g. to lower its RLIMIT_NOFILE); ``args``: more flags for ``node run``."""
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "onionpost", "node", "run", "--data", str(self.data_dir), *args],
            stdout=subprocess.PIPE,
            stderr=log,
            cwd=REPO,
            preexec_fn=preexec_fn,
        )
        log.close()
        deadline = time.monotonic() + timeout
        line = b""
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                self.kill()
                raise RuntimeError(f"node did not start: {self.log_text()[-2000:]}")
            ready, _, _ = select.select([self.proc.stdout], [], [], left)
            if ready:
                chunk = os.read(self.proc.stdout.fileno(), 1)
                if not chunk:
                    continue
                line += chunk
        assert b"listening" in line and str(self.address).encode() in line, line
        return self

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM by PID; return the exit status."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        finally:
            self.proc.stdout.close()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        if self.proc is not None and not self.proc.stdout.closed:
            self.proc.stdout.close()

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def check_log(self) -> None:
        """No traceback, and none of the test's queue ids in any usual encoding."""
        text = self.log_text()
        assert "Traceback" not in text, text[-3000:]
        for qid in self.secret_ids:
            for form in id_forms(qid):
                assert form not in text, f"queue id {form} leaked into the log"


def id_forms(qid: bytes) -> list[str]:
    return [
        qid.hex(),
        base64.b64encode(qid).decode(),
        base64.urlsafe_b64encode(qid).decode().rstrip("="),
        repr(qid)[2:-1][:20],
    ]


def run_cli(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "onionpost", "node", *args], capture_output=True, text=True, timeout=timeout, cwd=REPO
    )


class Closed(Exception):
    """The node closed the WebSocket."""


class RawClient:
    """A client driven by hand: an aiohttp WebSocket and an ``onionproto.ClientSession``.

    Unlike ``transport.RelayLink`` it can send anything (wrong sizes, garbage,
    replayed transmissions) and shows every reply, pushes included.
    """

    def __init__(self, address: NodeAddress, http: aiohttp.ClientSession, ws, max_version: int = MAX_VERSION):
        self.address = address
        self.http = http
        self.ws = ws
        self.session = ClientSession(address.key, max_version=max_version)
        self.replies: deque[Reply] = deque()
        self.pushes: list[Reply] = []

    @classmethod
    async def connect(cls, address: NodeAddress, *, handshake: bool = True, max_version: int = MAX_VERSION) -> "RawClient":
        http = aiohttp.ClientSession()
        ws = await http.ws_connect(f"http://{address.host}:{address.port}{WEBSOCKET_PATH}", max_msg_size=4 * BLOCK_SIZE)
        client = cls(address, http, ws, max_version)
        if handshake:
            while not isinstance(await client._next_event(10), Connected):
                pass
        return client

    async def _next_event(self, timeout: float):
        while True:
            event = self.session.next_event()
            out = self.session.data_to_send()  # the client hello, once the node hello is read
            if out:
                await self.send_raw(out)
            if event is not NEED_DATA:
                return event
            msg = await self.ws.receive(timeout=timeout)
            if msg.type != aiohttp.WSMsgType.BINARY:
                raise Closed(f"{msg.type.name}")
            assert len(msg.data) == BLOCK_SIZE
            self.session.receive_data(msg.data)

    async def send_raw(self, data: bytes) -> None:
        await self.ws.send_bytes(data)

    def build(self, command, queue=None, key=None) -> tuple[bytes, bytes]:
        """(corr, packed transmission) without sending it."""
        return self.session.transmission(command, queue, key)

    async def send_packed(self, *packed: bytes) -> None:
        data = self.session.send_packed(list(packed))
        for start in range(0, len(data), BLOCK_SIZE):
            await self.send_raw(data[start : start + BLOCK_SIZE])

    async def reply(self, timeout: float = 10.0) -> Reply:
        """The next reply or push, in arrival order."""
        while True:
            event = await self._next_event(timeout)
            if isinstance(event, Reply):
                return event

    async def answer(self, corr: bytes, timeout: float = 10.0):
        """Wait for the response to ``corr``; pushes seen meanwhile go to ``self.pushes``."""
        while True:
            reply = await self.reply(timeout)
            if reply.corr == corr:
                return reply.response
            self.pushes.append(reply)

    async def request(self, command, queue=None, key=None, timeout: float = 10.0):
        corr, packed = self.build(command, queue, key)
        await self.send_packed(packed)
        return await self.answer(corr, timeout)

    async def push(self, timeout: float = 10.0) -> Reply:
        if self.pushes:
            return self.pushes.pop(0)
        while True:
            reply = await self.reply(timeout)
            if reply.corr is None:
                return reply

    async def expect_close(self, timeout: float = 10.0) -> list[str]:
        """Read until the node closes; return the error codes seen on the way (the fatal one last)."""
        codes = []
        try:
            while True:
                reply = await self.reply(timeout)
                if isinstance(reply.response, Error):
                    codes.append(reply.response.code)
        except RemoteProtocolError as exc:  # a plain ERR instead of the welcome
            codes.append(exc.code.value)
        except Closed:
            pass
        return codes

    async def close(self) -> None:
        await self.ws.close()
        await self.http.close()


@dataclass
class Queue:
    """A queue as its recipient (and, once secured, its sender) knows it."""

    rid: bytes
    snd: bytes
    rkey: bytes
    rsecret: bytes
    queue_key: bytes
    skey: bytes | None = None
    ssecret: bytes | None = None


async def new_queue(client, *, secure: bool = True, akey: str | None = None, node: NodeProcess | None = None) -> Queue:
    """Create a queue with ``client`` (RawClient or RelayLink) and optionally secure it."""
    rkey, rsecret = crypto.signing_keypair()
    dh_public, dh_secret = crypto.dh_keypair()
    ids = await client.request(New(rkey=rkey, dhkey=dh_public, akey=akey), None, rsecret)
    assert not isinstance(ids, Error), ids
    queue = Queue(ids.rid, ids.snd, rkey, rsecret, crypto.queue_secret(dh_secret, ids.dhkey))
    if node is not None:
        node.secret_ids += [ids.rid, ids.snd]
    if secure:
        queue.skey, queue.ssecret = crypto.signing_keypair()
        ok = await client.request(SecureQueue(skey=queue.skey), ids.rid, rsecret)
        assert not isinstance(ok, Error), ok
    return queue


async def wait_for(predicate, timeout: float = 10.0, interval: float = 0.02):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(interval)
