"""Admission of TCP connections, in front of aiohttp (relay.md "Transport", "Limits").

``Admission`` accepts the listening socket's connections itself and refuses
one with a fixed ``503`` (closing it at once, so a flood never holds more
descriptors than the node admits) when the node already holds ``max``
connections, or ``max_pending`` connections that have no session yet, or when
new connections arrive faster than ``rate`` (all sources together: over Tor
every connection comes from the local tor). If accept() itself runs out of
descriptors, it stops accepting for a second and counts it.

Every admitted connection first meets a ``Gate``: a small protocol that

* reads the HTTP request head itself, and passes it on only if it is exactly
  the WebSocket upgrade's shape (``GET /onionpost HTTP/1.1``, well-formed
  header lines, a Host, no body): anything else gets a fixed ``400``, so
  aiohttp's parser never answers (its error texts name it) and never logs;
* closes the connection if the head is not complete within
  ``handshake_timeout`` seconds (the session's own handshake has a deadline of
  its own, in ``Connection``).

Refusals and timeouts are counted in the node's ``Tally``, never logged one
by one. The aiohttp protocol is created only for a valid head, so silent or
garbage connections cost a small object and a timer.
"""

import asyncio
import contextlib
import errno
import logging
import re
import socket
import time
from collections.abc import Callable

from .config import Connections
from .tally import Tally
from .throttle import TokenBucket

log = logging.getLogger(__name__)

REFUSED = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nRetry-After: 10\r\nConnection: close\r\n\r\n"
BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
REQUEST_LINE = b"GET /onionpost HTTP/1.1"
MAX_HEAD = 8192
_HEADER = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*([\x20-\x7e\t]*)")
_BODY_HEADERS = (b"content-length", b"transfer-encoding")

ACCEPT_BATCH = 64
"""Most connections accepted in one turn of the event loop."""
ACCEPT_RETRY_DELAY = 1.0
"""Seconds without accepting after accept() ran out of descriptors."""
DESCRIPTOR_RESERVE_SHARE = 8
"""Of the descriptor limit, 1/8 (at least 24, at most 256) is kept for everything but client connections."""


def descriptor_budget(descriptor_limit: int) -> int:
    """Most client connections for a process that may open ``descriptor_limit`` files.

    The reserve holds the node's own files (about 12: database, log, event loop), forwarding
    links, and the one socket being refused at a time.
    """
    reserve = min(256, max(24, descriptor_limit // DESCRIPTOR_RESERVE_SHARE))
    return max(1, descriptor_limit - reserve)


class Admission:
    """Accepts the node's connections itself (``start``), so a refusal frees its descriptor at once."""

    def __init__(
        self,
        make_handler: Callable[[], asyncio.Protocol],
        settings: Connections,
        descriptor_limit: int,
        tally: Tally,
        *,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.make_handler = make_handler
        most = descriptor_budget(descriptor_limit)
        self.max = min(settings.max or most, most)
        if settings.max is not None and settings.max > most:
            log.warning("connections.max %d lowered to %d: the open-file limit is %d", settings.max, most, descriptor_limit)
        self.max_pending = settings.max_pending or max(4, self.max // 4)
        self.timeout = settings.handshake_timeout
        self.tally = tally
        self._bucket = TokenBucket(settings.rate, settings.burst, clock)
        self._gates: dict[asyncio.BaseTransport, Gate] = {}
        self._starting = 0
        """Sockets accepted and admitted whose transport is not made yet."""
        self.pending = 0
        """Open connections whose session is not established yet."""
        self._sock: socket.socket | None = None
        self._tasks: set[asyncio.Task] = set()

    @property
    def open(self) -> int:
        return len(self._gates) + self._starting

    def start(self, sock: socket.socket) -> None:
        """Accept on the listening socket ``sock`` (non-blocking) until ``close``."""
        self._sock = sock
        asyncio.get_running_loop().add_reader(sock.fileno(), self._accept)

    def _accept(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:
                self._accept_failed(exc)
                return
            reason = self._refusal()
            if reason is not None:
                self.tally.count(reason)
                _refuse(conn)
                continue
            self._starting += 1
            self.pending += 1
            task = asyncio.get_running_loop().create_task(self._connect(conn))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _refusal(self) -> str | None:
        if self.open >= self.max:
            return "connections refused (connection limit)"
        if self.pending >= self.max_pending:
            return "connections refused (handshakes in progress)"
        if not self._bucket.take():
            return "connections refused (rate)"
        return None

    async def _connect(self, conn: socket.socket) -> None:
        gate = Gate(self)
        try:
            conn.setblocking(False)
            await asyncio.get_running_loop().connect_accepted_socket(lambda: gate, conn)
        except BaseException as exc:  # the peer left in between, or the node is stopping (cancelled)
            if gate.transport is None:
                self._starting -= 1
                self.pending -= 1
                conn.close()
            if isinstance(exc, asyncio.CancelledError):
                raise
            self.tally.count(f"connections lost while accepted ({type(exc).__name__})")

    def _accept_failed(self, exc: OSError) -> None:
        """Out of descriptors (or memory): stop accepting for a moment; one count, not one log line per try."""
        if exc.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
            self.tally.count(f"accept() failed ({exc.strerror or type(exc).__name__})")
            return
        self.tally.count("accept() failed (out of descriptors)")
        loop = asyncio.get_running_loop()
        loop.remove_reader(self._sock.fileno())
        loop.call_later(ACCEPT_RETRY_DELAY, self._resume)

    def _resume(self) -> None:
        if self._sock is not None:
            asyncio.get_running_loop().add_reader(self._sock.fileno(), self._accept)

    def established(self, transport: asyncio.BaseTransport | None) -> None:
        """The connection's session completed its handshake: it no longer counts as pending."""
        gate = self._gates.get(transport)
        if gate is not None and gate.pending:
            gate.pending = False
            self.pending -= 1

    def close(self) -> None:
        """Stop accepting, and close the connections aiohttp does not know yet (their head is not read)."""
        if self._sock is not None:
            asyncio.get_running_loop().remove_reader(self._sock.fileno())
            self._sock = None
        for task in list(self._tasks):
            task.cancel()
        for gate in list(self._gates.values()):
            if gate._inner is None:
                gate.transport.abort()

    def _opened(self, gate: "Gate") -> None:
        self._starting -= 1
        self._gates[gate.transport] = gate

    def _closed(self, gate: "Gate") -> None:
        if self._gates.pop(gate.transport, None) is not None and gate.pending:
            self.pending -= 1


def _refuse(conn: socket.socket) -> None:
    """Answer 503 and close now, freeing the descriptor before the next accept."""
    try:
        conn.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            conn.recv(MAX_HEAD)  # what already arrived: unread data would turn the close into a reset
        conn.send(REFUSED)
    except OSError:
        pass
    finally:
        conn.close()


class Gate(asyncio.Protocol):
    """One connection: screens the request head, then hands the byte stream to aiohttp unchanged."""

    __slots__ = ("_admission", "transport", "_head", "_inner", "_timer", "pending")

    def __init__(self, admission: Admission):
        self._admission = admission
        self.transport: asyncio.Transport | None = None
        self._head = bytearray()
        self._inner: asyncio.Protocol | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.pending = True

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self._admission._opened(self)
        self._timer = asyncio.get_running_loop().call_later(self._admission.timeout, self._timed_out)

    def data_received(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.data_received(data)
            return
        if self.transport.is_closing():
            return
        self._head += data
        end = self._head.find(b"\r\n\r\n")
        if end < 0:
            if len(self._head) > MAX_HEAD:
                self._reject()
            return
        if end > MAX_HEAD or not valid_head(bytes(self._head[:end])):
            self._reject()
            return
        self._cancel_timer()
        buffered, self._head = bytes(self._head), bytearray()
        self._inner = self._admission.make_handler()
        self._inner.connection_made(self.transport)
        self._inner.data_received(buffered)

    def _reject(self) -> None:
        self._admission.tally.count("requests refused (not the WebSocket upgrade)")
        self._cancel_timer()
        self.transport.write(BAD_REQUEST)
        self.transport.close()

    def _timed_out(self) -> None:
        self._timer = None
        if self._inner is None and not self.transport.is_closing():
            self._admission.tally.count("connections closed (no upgrade in time)")
            self.transport.abort()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def eof_received(self) -> bool | None:
        if self._inner is not None:
            return self._inner.eof_received()
        return None  # closes the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        self._admission._closed(self)
        if self._inner is not None:
            self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()


def valid_head(head: bytes) -> bool:
    """True if ``head`` (without the final empty line) could be the relay's WebSocket upgrade request."""
    lines = head.split(b"\r\n")
    if lines[0] != REQUEST_LINE:
        return False
    hosts = 0
    for line in lines[1:]:
        match = _HEADER.fullmatch(line)
        if match is None:
            return False
        name = match.group(1).lower()
        if name in _BODY_HEADERS:
            return False
        hosts += name == b"host"
    return hosts == 1
