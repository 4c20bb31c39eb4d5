"""The floor: a minimal aiohttp WebSocket relay with no crypto and no storage.

Run as ``python -m bench.raw_relay --port P`` (127.0.0.1 only). It speaks a
toy protocol with the same shape as onionpost's: every WebSocket message is
one 16,384-byte binary block whose first byte says what it is.

    'S' + id(24)            subscribe to queue ``id``             -> 'O' block
    'P' + id(24) + payload  publish into queue ``id``             -> 'O' block to the sender;
                                                                     'M' + id + payload to the subscriber
    'A' + id(24)            acknowledge the in-flight message     -> next 'M' block, if any (no answer otherwise)
    'N'                     ping                                  -> 'O' block

Like the real node it keeps one message in flight per subscription (the next
is pushed after the ACK), holding the rest in memory. Nothing is signed,
encrypted, padded-checked or written to disk: it is what a Python relay on
aiohttp cannot beat.
"""

import argparse
import asyncio
import socket
from collections import deque

from aiohttp import WSMsgType, web

BLOCK = 16384
ID = 24
OK_BLOCK = b"O" + bytes(BLOCK - 1)


class Queue:
    __slots__ = ("subscriber", "backlog", "in_flight")

    def __init__(self) -> None:
        self.subscriber = None
        self.backlog: deque = deque()
        self.in_flight = False


class Relay:
    def __init__(self) -> None:
        self.queues: dict[bytes, Queue] = {}
        self.connections = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(max_msg_size=4 * BLOCK, compress=False)
        await ws.prepare(request)
        sock = request.transport.get_extra_info("socket") if request.transport else None
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.connections += 1
        mine: list[bytes] = []
        try:
            async for msg in ws:
                if msg.type != WSMsgType.BINARY or len(msg.data) != BLOCK:
                    break
                data = msg.data
                kind = data[0]
                if kind == 0x50:  # 'P'
                    qid = data[1 : 1 + ID]
                    q = self.queues.get(qid)
                    await ws.send_bytes(OK_BLOCK)
                    if q is None:
                        continue
                    if q.subscriber is not None and not q.in_flight:
                        q.in_flight = True
                        await q.subscriber.send_bytes(b"M" + data[1:])
                    else:
                        q.backlog.append(data)
                elif kind == 0x41:  # 'A'
                    q = self.queues.get(data[1 : 1 + ID])
                    if q is None:
                        continue
                    if q.backlog:
                        await ws.send_bytes(b"M" + q.backlog.popleft()[1:])
                    else:
                        q.in_flight = False
                elif kind == 0x53:  # 'S'
                    qid = bytes(data[1 : 1 + ID])
                    q = self.queues.setdefault(qid, Queue())
                    q.subscriber = ws
                    mine.append(qid)
                    await ws.send_bytes(OK_BLOCK)
                    if q.backlog and not q.in_flight:
                        q.in_flight = True
                        await ws.send_bytes(b"M" + q.backlog.popleft()[1:])
                elif kind == 0x4E:  # 'N'
                    await ws.send_bytes(OK_BLOCK)
                else:
                    break
        finally:
            self.connections -= 1
            for qid in mine:
                q = self.queues.get(qid)
                if q is not None and q.subscriber is ws:
                    q.subscriber = None
                    q.in_flight = False
        return ws


async def main(port: int) -> None:
    relay = Relay()
    app = web.Application()
    app.router.add_get("/onionpost", relay.handle)
    runner = web.AppRunner(app, access_log=None, handle_signals=True)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    print(f"raw relay listening on 127.0.0.1:{port}", flush=True)
    stop = asyncio.Event()
    import signal

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    asyncio.run(main(parser.parse_args().port))
