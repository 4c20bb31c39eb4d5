"""One client WebSocket: feeds blocks to a ``NodeSession`` and writes answers in order.

relay.md "Transport" and "Blocks": every message is one binary block of
16384 bytes (else fatal ``BLOCK``), and answers come in the order of the
commands. Each command reserves a ``Slot`` in the output queue when it is
read; the writer seals and sends slots from the head as they are answered,
batching several answers per block. Pushes go after everything reserved.

An idle session costs little memory: the writer task exists only while
answers are ready to send, and neither loop keeps a reference to the last
block it handled.
"""

import asyncio
from collections import deque
from collections.abc import Callable, Coroutine, Iterable

import aiohttp
from aiohttp import web

from onionpost.proto import (
    BLOCK_SIZE,
    NEED_DATA,
    CommandReceived,
    CommandRejected,
    Connected,
    Error,
    ErrorCode,
    NodeSession,
    RemoteProtocolError,
    Response,
)

from .tally import Tally
from .throttle import TokenBucket

MAX_DETAIL = 200
FATAL_FLUSH_TIMEOUT = 10.0
CLOSED_TYPES = (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR)


def error(code: ErrorCode, detail: str) -> Error:
    return Error(code.value, detail[:MAX_DETAIL])


class Slot:
    """The place of one command's answer (and the pushes that must follow it) in the output."""

    __slots__ = ("corr", "queue", "items", "_connection")

    def __init__(self, connection: "Connection", corr: bytes | None, queue: bytes | None):
        self.corr, self.queue = corr, queue
        self.items: list | None = None
        self._connection = connection

    def answer(self, response: Response, pushes: Iterable[tuple[bytes, Response]] = ()) -> None:
        """Fill the slot with ``response``, then ``pushes`` as ``(queue, response)``; only the first call counts."""
        if self.items is not None:
            return
        if isinstance(response, Error) and response.detail and len(response.detail) > MAX_DETAIL:
            response = Error(response.code, response.detail[:MAX_DETAIL])
        self.items = [(self.corr, self.queue, response)]
        self.items.extend((None, queue, push) for queue, push in pushes)
        self._connection._wake()


class _Raw:
    """Plaintext handshake bytes (node hello, welcome)."""

    __slots__ = ("data",)

    def __init__(self, data: bytes):
        self.data = data


class _Fatal:
    __slots__ = ("code", "detail")

    def __init__(self, code: ErrorCode, detail: str):
        self.code, self.detail = code, detail


class Connection:
    __slots__ = (
        "_ws", "session", "_dispatcher", "_throttle", "max_pending", "_out", "_writer", "_room", "_final_sent",
        "_tasks", "closed", "established", "_hello_deadline", "_on_established", "_tally",
    )

    def __init__(
        self,
        ws: web.WebSocketResponse,
        session: NodeSession,
        dispatcher,
        throttle: TokenBucket,
        *,
        max_pending: int = 4096,
        tally: Tally | None = None,
        hello_timeout: float = 20.0,
        on_established: Callable[[], object] | None = None,
    ):
        self._ws = ws
        self.session = session
        self._dispatcher = dispatcher
        self._throttle = throttle
        self.max_pending = max_pending
        self._out: deque | None = None
        """Reserved answers and raw output, oldest first; None while empty (an idle session keeps no deque)."""
        self._writer: asyncio.Task | None = None
        """Sends what is ready at the head of ``_out``; exists only while there is something to send."""
        self._room: asyncio.Future | None = None
        """Set while the reader waits for ``_out`` to shrink below ``max_pending``."""
        self._final_sent: asyncio.Future | None = None
        """Set once a fatal ERR is queued; done when it was sent (or sending failed)."""
        self._tasks: set[asyncio.Task] | None = None
        self.closed = False
        self.established = False
        """True once the client hello was accepted (relay.md "Handshake")."""
        self._hello_deadline: float | None = asyncio.get_running_loop().time() + hello_timeout
        self._on_established = on_established
        self._tally = tally or Tally()

    # --- used by the dispatcher -----------------------------------------------------

    def push(self, queue: bytes | None, response: Response) -> None:
        """Queue a push (``corr`` nil) after every answer already reserved."""
        if self.closed:
            return
        slot = Slot(self, None, queue)
        self._append(slot)
        slot.answer(response)

    def spawn(self, coroutine: Coroutine) -> None:
        """Run a command that waits on the network (FWD); cancelled when the session ends."""
        task = asyncio.get_running_loop().create_task(coroutine)
        if self._tasks is None:
            self._tasks = set()
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """End the session from the node's side (shutdown)."""
        self.closed = True
        self._make_room()
        await self._ws.close(code=aiohttp.WSCloseCode.GOING_AWAY)

    # --- reading ----------------------------------------------------------------------

    async def serve(self) -> None:
        try:
            self._queue_raw(self.session.data_to_send())
            await self._read_loop()
            if self._final_sent is not None:  # let the writer send the answers so far and the fatal ERR
                await asyncio.wait_for(asyncio.shield(self._final_sent), FATAL_FLUSH_TIMEOUT)
        except (asyncio.TimeoutError, ConnectionError):
            pass
        finally:
            self.closed = True
            self._dispatcher.session_closed(self)
            for task in list(self._tasks or ()):
                task.cancel()
            await self._stop_writer()
            await self._ws.close()

    async def _stop_writer(self) -> None:
        writer = self._writer
        if writer is not None:
            writer.cancel()
            try:
                await writer
            except (asyncio.CancelledError, Exception):
                pass

    async def _read_loop(self) -> None:
        while not self.closed and self._final_sent is None:
            if self.pending() >= self.max_pending:
                self._room = asyncio.get_running_loop().create_future()
                await self._room
                continue
            if self._dispatcher.store_full():
                await self._dispatcher.store_room()
                continue
            if not await self._read_one():
                return

    async def _read_one(self) -> bool:
        """Read and handle one block; False when the session ends. (A function of its own, so the
        block is not kept alive by a local while the next one is awaited.)"""
        timeout = None
        if self._hello_deadline is not None:
            timeout = max(0.0, self._hello_deadline - asyncio.get_running_loop().time())
        try:
            msg = await self._ws.receive(timeout)
        except asyncio.TimeoutError:
            self._fatal(ErrorCode.HANDSHAKE, "no client hello in time")
            return False
        if msg.type in CLOSED_TYPES:
            return False
        if msg.type != aiohttp.WSMsgType.BINARY or len(msg.data) != BLOCK_SIZE:
            self._fatal(ErrorCode.BLOCK, f"every message must be one binary block of {BLOCK_SIZE} bytes")
            return False
        return self._receive_block(msg.data)

    def _receive_block(self, data: bytes) -> bool:
        try:
            self.session.receive_data(data)
            while True:
                event = self.session.next_event()
                self._queue_raw(self.session.data_to_send())
                if event is NEED_DATA:
                    return True
                self._handle(event)
        except RemoteProtocolError as exc:
            self._fatal(exc.code, exc.message)
            return False

    def _handle(self, event) -> None:
        if isinstance(event, Connected):
            self.established = True
            self._hello_deadline = None
            if self._on_established is not None:
                self._on_established()
        elif isinstance(event, CommandRejected):
            self._reserve(event.corr, event.queue).answer(error(event.code, event.detail))
        elif isinstance(event, CommandReceived):
            t = event.transmission
            slot = self._reserve(t.corr, t.queue)
            if not self._throttle.take():
                slot.answer(error(ErrorCode.THROTTLED, "too many commands; retry later"))
                return
            self._dispatcher.dispatch(self, t, slot)

    def pending(self) -> int:
        """Entries in the output: answers reserved or ready, raw blocks, a fatal ERR."""
        return 0 if self._out is None else len(self._out)

    def _append(self, entry) -> None:
        if self._out is None:
            self._out = deque()
        self._out.append(entry)

    def _reserve(self, corr: bytes | None, queue: bytes | None) -> Slot:
        slot = Slot(self, corr, queue)
        self._append(slot)
        return slot

    def _queue_raw(self, data: bytes) -> None:
        if data:
            self._append(_Raw(data))
            self._wake()

    def _fatal(self, code: ErrorCode, detail: str) -> None:
        """relay.md "Error codes": a fatal ERR is pushed after the answers so far, then the session closes."""
        self._tally.count(f"sessions closed ({code.value})")
        self._final_sent = asyncio.get_running_loop().create_future()
        self._append(_Fatal(code, detail))
        self._wake()

    # --- writing -------------------------------------------------------------------------

    def _wake(self) -> None:
        """Something was answered: make sure a writer runs."""
        if self._writer is None and not self.closed:
            self._writer = asyncio.get_running_loop().create_task(self._write_ready())

    async def _write_ready(self) -> None:
        """Send the answered head of the output until nothing is ready, then end."""
        try:
            while not self.closed:
                sent = await self._send_ready()
                if sent is None:
                    return
                if sent:
                    break
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a dead socket, or an answer that cannot be encoded: end the session
            self._tally.count(f"session output failed ({type(exc).__name__})")
        finally:
            self._writer = None
        self._end_output()
        await self._ws.close()

    async def _send_ready(self) -> bool | None:
        """Send what is ready; None if nothing was, True if it was the session's last output."""
        chunks, final = self._take_ready()
        self._make_room()
        if not chunks:
            return None
        for chunk in chunks:
            if len(chunk) == BLOCK_SIZE:
                await self._ws.send_bytes(chunk)
            else:
                view = memoryview(chunk)
                for start in range(0, len(chunk), BLOCK_SIZE):
                    await self._ws.send_bytes(view[start : start + BLOCK_SIZE])
        return final

    def _make_room(self) -> None:
        if self._room is not None and (self.pending() < self.max_pending or self.closed):
            if not self._room.done():
                self._room.set_result(None)
            self._room = None

    def _end_output(self) -> None:
        """No more output: the fatal ERR was sent or the socket failed."""
        self.closed = True
        self._make_room()
        if self._final_sent is not None and not self._final_sent.done():
            self._final_sent.set_result(None)

    def _take_ready(self) -> tuple[list[bytes], bool]:
        """Seal everything answered at the head of the output, in order, into chunks of whole
        blocks; True if the session ends."""
        chunks: list[bytes] = []
        replies: list = []
        final = False
        out = self._out
        while out:
            head = out[0]
            if isinstance(head, Slot):
                if head.items is None:
                    break
                replies.extend(head.items)
            else:
                if replies:
                    chunks.append(self.session.send(replies))
                    replies = []
                if isinstance(head, _Raw):
                    chunks.append(head.data)
                else:
                    chunks.append(self.session.fatal_error(head.code, head.detail))
                    final = True
                    out.clear()
                    break
            out.popleft()
        if not out:
            self._out = None
        if replies:
            chunks.append(self.session.send(replies))
        return chunks, final
