"""RelayLink: one live session with one node, over one WebSocket.

Requests are matched to responses by correlation id; pushes (MSG deliveries,
END) go to the ``on_push`` callback. docs/protocol/relay.md, "Transport".
"""

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable, Sequence

import aiohttp

from onionpost.proto import (
    MAX_VERSION,
    NEED_DATA,
    BLOCK_SIZE,
    ClientSession,
    Command,
    Connected,
    Error,
    ErrorCode,
    NodeAddress,
    ProtocolError,
    Reply,
    Response,
)

from .connector import Connector, DirectConnector

log = logging.getLogger(__name__)

PushHandler = Callable[[bytes | None, Response], Awaitable[None] | None]


def _reason(exc: BaseException) -> str:
    """Why a connection failed, in plain words (not aiohttp's "ssl:default [Connect call failed ...]")."""
    if isinstance(exc, aiohttp.ClientConnectorError) and exc.os_error is not None:
        error = exc.os_error
        if error.errno:
            return os.strerror(error.errno).lower()
        return (error.strerror or str(error) or type(error).__name__).lower()
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__


class LinkClosed(ConnectionError):
    """The connection to the node ended (or never started); ``code`` is the protocol error that ended it, if one did."""

    def __init__(self, message: str | None = None, code: ErrorCode | None = None):
        super().__init__(message)
        self.code = code


class RelayError(Exception):
    """The node answered ERR."""

    def __init__(self, code: str, detail: str | None):
        super().__init__(f"{code}: {detail}" if detail else code)
        self.code = code
        self.detail = detail

    @property
    def retry_later(self) -> bool:
        return self.code in (ErrorCode.QUOTA, ErrorCode.THROTTLED, ErrorCode.UNREACHABLE, ErrorCode.INTERNAL)


class RelayLink:
    def __init__(self, address: NodeAddress, session: ClientSession, http, ws, on_push: PushHandler | None):
        self.address = address
        self._session = session
        self._http = http
        self._ws = ws
        self._on_push = on_push
        self._pending: dict[bytes, asyncio.Future] = {}
        self._connected = asyncio.get_running_loop().create_future()
        self._reader = asyncio.create_task(self._read_loop())
        self._write_lock = asyncio.Lock()
        self._closed = asyncio.Event()
        self.closed_reason: str | None = None
        self.closed_code: ErrorCode | None = None

    @classmethod
    async def connect(
        cls,
        address: NodeAddress,
        *,
        connector: Connector | None = None,
        isolation: str = "",
        on_push: PushHandler | None = None,
        timeout: float = 30.0,
        max_version: int = MAX_VERSION,
    ) -> "RelayLink":
        """Open a WebSocket, run the handshake and return a ready link (``max_version``: the highest
        protocol version to offer; lower it to act as an older client).

        Raises:
            LinkClosed: the node could not be reached or the handshake failed.
        """
        connector = connector or DirectConnector()
        try:
            http, ws = await asyncio.wait_for(connector.open(address, isolation), timeout)
        except (OSError, aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise LinkClosed(f"cannot reach node {address.host}:{address.port}: {_reason(exc)}") from None
        link = cls(address, ClientSession(address.key, max_version=max_version), http, ws, on_push)
        try:
            await asyncio.wait_for(asyncio.shield(link._connected), timeout)
        except (asyncio.TimeoutError, LinkClosed) as exc:
            await link.close()
            raise LinkClosed(
                f"handshake with {address.host}:{address.port} failed: {link.closed_reason or exc}", link.closed_code
            ) from None
        return link

    @property
    def version(self) -> int | None:
        """The protocol version of this session."""
        return self._session.version

    @property
    def is_open(self) -> bool:
        return self.closed_reason is None

    async def wait_closed(self) -> str:
        """Return (the reason) once the link has closed, for whatever reason."""
        await self._closed.wait()
        return self.closed_reason or "closed"

    async def request(self, command: Command, queue: bytes | None = None, key: bytes | None = None, *, timeout: float = 60.0) -> Response:
        """Send one command and return its response.

        Raises:
            RelayError: the node answered ERR.
            LinkClosed: the connection ended before the answer.
        """
        [response] = await self.request_many([(command, queue, key)], timeout=timeout)
        if isinstance(response, Error):
            raise RelayError(response.code, response.detail)
        return response

    async def request_many(self, commands: Sequence[tuple[Command, bytes | None, bytes | None]], *, timeout: float = 60.0) -> list[Response]:
        """Send commands batched into as few blocks as fit; return responses in order (ERR included).

        With 1.2, GET and ACK on a queue this session is subscribed to go unsigned (the session
        authenticates them). If the subscription ended before the node read one (another session
        subscribed: the END came first), the node answers AUTH and it is sent again, signed.
        """
        by_session = [key is not None and self._session.signs_by_session(c, q) for c, q, key in commands]
        responses = await self._send_many(commands, timeout)
        again = [i for i, r in enumerate(responses) if by_session[i] and isinstance(r, Error) and r.code == ErrorCode.AUTH.value]
        if again:
            for i, response in zip(again, await self._send_many([commands[i] for i in again], timeout)):
                responses[i] = response
        return responses

    async def _send_many(self, commands: Sequence[tuple[Command, bytes | None, bytes | None]], timeout: float) -> list[Response]:
        if not self.is_open:
            raise LinkClosed(self.closed_reason)
        loop = asyncio.get_running_loop()
        async with self._write_lock:
            data, corrs = self._session.send(commands)
            futures = [loop.create_future() for _ in corrs]
            self._pending.update(zip(corrs, futures))
            try:
                await self._write(data)
            except LinkClosed:
                for c, future in zip(corrs, futures):
                    self._pending.pop(c, None)
                    if future.done():
                        future.exception()  # set by _fail; retrieved so asyncio does not print it
                raise
        try:
            return list(await asyncio.wait_for(asyncio.gather(*futures), timeout))
        finally:
            for c, future in zip(corrs, futures):
                self._pending.pop(c, None)
                if future.done() and not future.cancelled():
                    future.exception()  # the first failure was raised; the others are retrieved here

    async def _write(self, data: bytes) -> None:
        try:
            for start in range(0, len(data), BLOCK_SIZE):
                await self._ws.send_bytes(data[start : start + BLOCK_SIZE])
        except (ConnectionError, aiohttp.ClientError, RuntimeError) as exc:
            self._fail(f"write failed: {exc}")
            raise LinkClosed(self.closed_reason) from None

    async def _read_loop(self) -> None:
        try:
            async for msg in self._ws:
                if msg.type != aiohttp.WSMsgType.BINARY or len(msg.data) != BLOCK_SIZE:
                    self._fail("node sent a message that is not one block")
                    break
                self._session.receive_data(msg.data)
                await self._drain_events()
                if not self.is_open:
                    break
                outgoing = self._session.data_to_send()
                if outgoing:
                    await self._write(outgoing)
            else:
                self._fail("node closed the connection")
        except ProtocolError as exc:
            self._fail(f"protocol error: {exc}", exc.code)
        except (ConnectionError, aiohttp.ClientError, LinkClosed) as exc:
            self._fail(f"connection lost: {exc}")
        except asyncio.CancelledError:
            self._fail("link closed")
            raise
        finally:
            await self._close_transport()

    async def _drain_events(self) -> None:
        while True:
            event = self._session.next_event()
            if event is NEED_DATA:
                return
            if isinstance(event, Connected):
                if not self._connected.done():
                    self._connected.set_result(event)
            elif isinstance(event, Reply):
                await self._dispatch(event)

    async def _dispatch(self, reply: Reply) -> None:
        if reply.corr is not None:
            # An empty corr answers a command whose corr the node could not read: answers come in
            # command order, so it is the oldest one still unanswered (relay.md "Responses").
            corr = reply.corr or next((c for c, f in self._pending.items() if not f.done()), None)
            future = self._pending.get(corr)
            if future is not None and not future.done():
                future.set_result(reply.response)
            return
        error_code = reply.response.error_code if isinstance(reply.response, Error) else None
        if error_code is not None and error_code.fatal:
            self._fail(f"node closed the session: {reply.response.code} {reply.response.detail or ''}".strip())
            return
        if self._on_push is not None:
            result = self._on_push(reply.queue, reply.response)
            if asyncio.iscoroutine(result):
                await result

    def _fail(self, reason: str, code: ErrorCode | None = None) -> None:
        if self.closed_reason is None:
            self.closed_reason, self.closed_code = reason, code
        self._closed.set()
        error = LinkClosed(self.closed_reason, self.closed_code)
        if not self._connected.done():
            self._connected.set_exception(error)
            self._connected.exception()  # mark retrieved
        for future in self._pending.values():
            if not future.done():
                future.set_exception(error)

    async def _close_transport(self) -> None:
        try:
            await self._ws.close()
        finally:
            await self._http.close()

    async def close(self) -> None:
        self._fail("link closed")
        self._reader.cancel()
        try:
            await self._reader
        except (asyncio.CancelledError, Exception):  # the reader already recorded why it stopped
            pass
