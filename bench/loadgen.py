"""Load generator for the relay workload: K sender/recipient pairs in one process.

Run by ``bench.relay`` as ``python -m bench.loadgen`` with a JSON config on
stdin; it sets everything up, prints ``ready``, waits for a ``go T0 T1`` line
(``time.monotonic()`` instants, comparable across processes), runs the load
until T1 and prints one JSON line of results.

Two modes with the same client pattern (one WebSocket per queue side, the
recipient subscribed and acknowledging every message, at most ``window``
messages sent but not yet delivered per pair):

* ``node``: real onionpost sessions (``transport.RelayLink``); every queue is
  created with NEW, secured with KEY and subscribed with SUB; senders send
  signed SENDs whose bodies are real end-to-end ratchet messages
  (``client.e2e``, 15,232 bytes), **pre-encrypted** before the timed part: a
  pool per pair, reused cyclically (the node cannot tell; the recipient checks
  that every body is the expected one, and decrypts the first with its
  ratchet state).
* ``raw``: the toy protocol of ``bench.raw_relay`` over plain aiohttp
  WebSockets, 16 KB blocks, nothing signed or encrypted.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections import deque

import aiohttp

BLOCK = 16384


def make_pool(size: int):
    """A real conversation: handshake, then ``size`` chained ratchet messages from the inviter."""
    from onionpost.client import e2e, payloads

    secrets, invitation = e2e.create_invitation()
    pending, request = e2e.create_request(invitation, payloads.encode("request", reply="x", snd=b"\0" * 24, skey=b"\0" * 32, via="link"))
    opened = e2e.open_request(secrets, request)
    sender_state, accept = e2e.accept_request(secrets, opened, payloads.encode("accept", skey=b"\0" * 32, profile={"name": "a", "bio": ""}))
    receiver_state, _ = e2e.complete_join(pending, accept)
    chain = e2e.SenderChain()
    pool = []
    now = int(time.time())
    for i in range(size):
        chain, chained = chain.next_message(payloads.encode("msg", text=f"benchmark message {i}", ts=now))
        sender_state, ciphertext = e2e.ratchet_encrypt(sender_state, chained)
        pool.append(ciphertext)
    return pool, receiver_state


class Pair:
    def __init__(self, index: int, pool: list[bytes], window: int):
        self.index = index
        self.pool = pool
        self.window = asyncio.Semaphore(window)
        self.sent_at: deque[float] = deque()
        self.sent = 0
        self.received = 0
        self.receiver_state = None
        self.checked_first = False

    def expected(self, pool: list) -> object:
        """The body the next delivery must carry (pools are sent cyclically)."""
        return pool[self.received % len(pool)]

    def delivered(self, ok: bool, now: float, holder: dict) -> None:
        """Count one delivery received at ``now``: note a wrong body, record latency, free a window slot."""
        if not ok:
            holder.setdefault("bad", []).append(f"pair {self.index}: unexpected body")
        self.received += 1
        sent = self.sent_at.popleft() if self.sent_at else now
        stats = holder.get("stats")
        if stats is not None:
            stats.record(sent, now)
        self.window.release()


class Stats:
    def __init__(self, t0: float, t1: float):
        self.t0, self.t1 = t0, t1
        self.delivered = 0
        self.latencies: list[float] = []
        self.errors: list[str] = []

    def record(self, sent: float, now: float) -> None:
        if self.t0 <= now < self.t1:
            self.delivered += 1
            if sent >= self.t0:
                self.latencies.append(now - sent)


# --- onionpost node ------------------------------------------------------------------------


async def node_setup(config, pairs: list[Pair], holder: dict):
    from onionpost.proto import MAX_VERSION, Ack, Message, New, SecureQueue, Send, Subscribe, crypto, parse_node_address
    from onionpost.proto.delivery import open_message
    from onionpost.transport import RelayLink
    from onionpost.client import e2e

    address = parse_node_address(config["address"])
    max_version = config.get("max_version", MAX_VERSION)  # 2: a 1.1 client, which signs every ACK
    links = []

    async def setup(pair: Pair):
        rkey, rsecret = crypto.signing_keypair()
        dh_public, dh_secret = crypto.dh_keypair()
        skey, ssecret = crypto.signing_keypair()
        state: dict = {}

        def on_push(rid, response):
            if not isinstance(response, Message):
                return
            now = time.monotonic()
            _, body = open_message(state["queue_key"], response.box)
            ok = body == pair.expected(pair.pool)
            if not pair.checked_first:
                e2e.ratchet_decrypt(pair.receiver_state, body)  # raises if it is not a real ratchet message
                pair.checked_first = True
            pair.delivered(ok, now, holder)
            task = asyncio.get_running_loop().create_task(state["recipient"].request_many([(Ack(response.mid), rid, rsecret)]))
            task.add_done_callback(_check_task(holder))

        recipient = await RelayLink.connect(address, on_push=on_push, max_version=max_version)
        state["recipient"] = recipient
        ids = await recipient.request(New(rkey=rkey, dhkey=dh_public, akey=None), None, rsecret)
        state["queue_key"] = crypto.queue_secret(dh_secret, ids.dhkey)
        await recipient.request(SecureQueue(skey=skey), ids.rid, rsecret)
        await recipient.request(Subscribe(), ids.rid, rsecret)
        sender = await RelayLink.connect(address, max_version=max_version)
        links.extend([recipient, sender])

        async def send(body: bytes):
            [response] = await sender.request_many([(Send(body), ids.snd, ssecret)])
            if type(response).__name__ != "Ok":
                holder.setdefault("bad", []).append(f"SEND answered {response}")

        return send

    senders = []
    for i in range(0, len(pairs), 20):
        senders += await asyncio.gather(*(setup(p) for p in pairs[i : i + 20]))

    async def close():
        await asyncio.gather(*(link.close() for link in links), return_exceptions=True)

    return senders, close


def _check_task(holder):
    def done(task: asyncio.Task):
        if task.cancelled() or holder.get("closing"):
            return  # sends and ACKs still in flight when the run ends are cut off on purpose
        exc = task.exception()
        if exc is not None:
            holder.setdefault("bad", []).append(f"{type(exc).__name__}: {exc}")
        else:
            result = task.result()
            if isinstance(result, list) and result and type(result[0]).__name__ == "Error":
                holder.setdefault("bad", []).append(f"ACK answered {result[0]}")

    return done


# --- raw relay --------------------------------------------------------------------------------


async def raw_setup(config, pairs: list[Pair], holder: dict):
    host, port = config["address"].rsplit(":", 1)
    url = f"http://{host}:{port}/onionpost"
    sessions = []

    async def connect():
        http = aiohttp.ClientSession()
        ws = await http.ws_connect(url, max_msg_size=BLOCK + 1)
        sessions.append((http, ws))
        return ws

    async def setup(pair: Pair):
        qid = os.urandom(24)
        recipient = await connect()
        sender = await connect()
        await recipient.send_bytes(b"S" + qid + bytes(BLOCK - 25))
        msg = await recipient.receive()
        assert msg.data[:1] == b"O"
        ack = b"A" + qid + bytes(BLOCK - 25)
        pad = bytes(BLOCK - 25 - len(pair.pool[0]))

        async def read_recipient():
            async for msg in recipient:
                if msg.type != aiohttp.WSMsgType.BINARY:
                    break
                now = time.monotonic()
                data = msg.data
                pair.delivered(data[25 : 25 + len(pair.pool[0])] == pair.expected(pair.pool), now, holder)
                await recipient.send_bytes(ack)

        oks: deque = deque()

        async def read_sender():
            async for msg in sender:
                if msg.type != aiohttp.WSMsgType.BINARY:
                    break
                if oks:
                    oks.popleft().set_result(None)

        holder.setdefault("tasks", []).extend(
            [asyncio.get_running_loop().create_task(read_recipient()), asyncio.get_running_loop().create_task(read_sender())]
        )
        lock = asyncio.Lock()

        async def send(body: bytes):
            fut = asyncio.get_running_loop().create_future()
            async with lock:
                oks.append(fut)
                await sender.send_bytes(b"P" + qid + body + pad)
            await fut

        return send

    senders = []
    for i in range(0, len(pairs), 20):
        senders += await asyncio.gather(*(setup(p) for p in pairs[i : i + 20]))

    async def close():
        for task in holder.get("tasks", []):
            task.cancel()
        for http, ws in sessions:
            await ws.close()
            await http.close()

    return senders, close


# --- XMPP server (Prosody) ------------------------------------------------------------------


async def xmpp_setup(config, pairs: list[Pair], holder: dict):
    """slixmpp clients (SASL ANONYMOUS, no TLS, on loopback): one per sender, one per recipient.

    The ratchet message travels base64-encoded in a chat message's <body>,
    as an XMPP client would carry binary ciphertext. Senders hand slixmpp a
    pre-serialized stanza (``send_raw``): slixmpp's own serializer escapes
    20 KB bodies character by character in Python, which would make the
    client, not the server, the bottleneck. Recipients parse every stanza
    with slixmpp and check the body.
    """
    import base64
    import socket

    import slixmpp

    host, port = config["address"].rsplit(":", 1)
    clients = []

    async def connect():
        xmpp = slixmpp.ClientXMPP(config["domain"], "")
        xmpp.enable_starttls = False
        xmpp.enable_direct_tls = False
        xmpp.enable_plaintext = True
        started = asyncio.get_running_loop().create_future()
        xmpp.add_event_handler("session_start", lambda _e: started.done() or started.set_result(None))
        xmpp.add_event_handler("failed_auth", lambda _e: started.done() or started.set_exception(RuntimeError("XMPP login failed")))
        xmpp.connect(host=host, port=int(port))
        await asyncio.wait_for(started, 20)
        sock = xmpp.transport.get_extra_info("socket") if xmpp.transport else None
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        clients.append(xmpp)
        return xmpp

    async def setup(pair: Pair):
        recipient = await connect()
        sender = await connect()
        bodies = [base64.b64encode(b).decode() for b in pair.pool]
        to = str(recipient.boundjid)

        def on_message(msg):
            pair.delivered(msg["body"] == pair.expected(bodies), time.monotonic(), holder)

        recipient.add_event_handler("message", on_message)
        stanzas = [f"<message to='{to}' type='chat' id='m{i}'><body>{b}</body></message>" for i, b in enumerate(bodies)]
        index = {body: i for i, body in enumerate(pair.pool)}

        async def send(body: bytes):
            sender.send_raw(stanzas[index[body]])

        return send

    senders = []
    for i in range(0, len(pairs), 10):
        senders += await asyncio.gather(*(setup(p) for p in pairs[i : i + 10]))

    async def close():
        for xmpp in clients:
            xmpp.disconnect(wait=0)
        await asyncio.sleep(0.1)

    return senders, close


# --- driver -------------------------------------------------------------------------------------


async def run(config) -> dict:
    pool_size = config["pool"]
    pairs = []
    for i in range(config["pairs"]):
        pool, receiver_state = make_pool(pool_size) if config.get("real_e2e", True) else ([os.urandom(15232) for _ in range(pool_size)], None)
        pair = Pair(i, pool, config["window"])
        pair.receiver_state = receiver_state
        pair.checked_first = receiver_state is None
        pairs.append(pair)
    holder: dict = {}
    setup = {"node": node_setup, "raw": raw_setup, "xmpp": xmpp_setup}[config["mode"]]
    senders, close = await setup(config, pairs, holder)
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    line = await loop.run_in_executor(None, sys.stdin.readline)
    _, t0, t1 = line.split()
    t0, t1 = float(t0), float(t1)
    stats = Stats(t0, t1)
    holder["stats"] = stats
    pending: set[asyncio.Task] = set()

    async def drive(pair: Pair, send):
        await asyncio.sleep(max(0.0, t0 - 0.05 - time.monotonic()))  # start just before T0: the window fills
        i = 0
        while True:
            await pair.window.acquire()
            if time.monotonic() >= t1:
                return
            pair.sent_at.append(time.monotonic())
            body = pair.pool[i % len(pair.pool)]
            i += 1
            pair.sent += 1
            task = loop.create_task(send(body))
            task.add_done_callback(_check_task(holder))
            pending.add(task)
            task.add_done_callback(pending.discard)

    await asyncio.gather(*(drive(p, s) for p, s in zip(pairs, senders)))
    await asyncio.sleep(0.2)
    holder["closing"] = True
    for task in list(pending):
        task.cancel()
    await close()
    lat = stats.latencies
    step = max(1, len(lat) // 20000)
    return {
        "delivered": stats.delivered,
        "latencies": lat[::step],
        "errors": holder.get("bad", [])[:5],
        "error_count": len(holder.get("bad", [])),
    }


def main() -> None:
    config = json.loads(sys.stdin.readline())
    result = asyncio.run(run(config))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
