"""JSON-RPC 2.0 over a Unix socket, one JSON object per line (docs/api.md).

``parse_request`` and the ``*_line`` builders are sans I/O. ``DaemonClient``
(blocking, for the CLI) and ``AsyncDaemonClient`` (asyncio, for bots, the chat
UI and the lab) talk to a running ``onionpost daemon``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .home import socket_path, unix_address

MAX_LINE = 1 << 20
"""Longest request line the daemon reads (1 MiB); a longer one is refused and the connection closed."""

PARSE_ERROR = -32700
INVALID_REQUEST = -32600


class RpcError(Exception):
    """An error answer, or a request that could not be understood."""

    def __init__(self, code: int, message: str, data: dict | None = None, request_id: Any = None):
        super().__init__(message)
        self.code, self.message, self.data, self.request_id = code, message, data or {}, request_id

    def to_json(self) -> dict:
        error = {"code": self.code, "message": self.message}
        if self.data:
            error["data"] = self.data
        return error


@dataclass(frozen=True)
class Request:
    id: Any  # None for a notification (no answer is sent)
    method: str
    params: Any
    is_notification: bool


def parse_request(line: bytes) -> Request:
    """One request line -> ``Request``; raises ``RpcError`` (with the request id when it could be read)."""
    try:
        message = json.loads(line)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RpcError(PARSE_ERROR, f"not JSON: {exc}") from None
    if not isinstance(message, dict):
        raise RpcError(INVALID_REQUEST, "a request must be a JSON object (batches are not supported)")
    request_id = message.get("id")
    if request_id is not None and (isinstance(request_id, bool) or not isinstance(request_id, (str, int, float))):
        raise RpcError(INVALID_REQUEST, "id must be a string or a number")
    if message.get("jsonrpc") != "2.0":
        raise RpcError(INVALID_REQUEST, 'jsonrpc must be "2.0"', request_id=request_id)
    method = message.get("method")
    if not isinstance(method, str):
        raise RpcError(INVALID_REQUEST, "method must be a string", request_id=request_id)
    return Request(request_id, method, message.get("params"), "id" not in message)


def _line(payload: dict) -> bytes:
    return json.dumps(payload, ensure_ascii=False, default=str, separators=(",", ":")).encode() + b"\n"


def result_line(request_id: Any, result: Any) -> bytes:
    return _line({"jsonrpc": "2.0", "id": request_id, "result": result})


def error_line(request_id: Any, error: dict) -> bytes:
    return _line({"jsonrpc": "2.0", "id": request_id, "error": error})


def notification_line(method: str, params: Any) -> bytes:
    return _line({"jsonrpc": "2.0", "method": method, "params": params})


def _answer(message: dict, request_id: Any) -> Any:
    if "error" in message and message.get("id") is None:  # an answer to no request in particular (e.g. too many connections)
        error = message["error"]
        raise RpcError(error.get("code", 0), error.get("message", "error"), error.get("data"), request_id)
    if message.get("id") != request_id:
        raise RpcError(INVALID_REQUEST, f"answer for id {message.get('id')!r}, expected {request_id!r}")
    if "error" in message:
        error = message["error"]
        raise RpcError(error.get("code", 0), error.get("message", "error"), error.get("data"), request_id)
    return message.get("result")


class DaemonClient:
    """Blocking client: one request at a time (the CLI)."""

    def __init__(self, sock: socket.socket):
        self._sock = sock
        self._file = sock.makefile("rb")
        self._ids = itertools.count(1)

    @classmethod
    def connect(cls, home: Path, timeout: float | None = 5.0) -> DaemonClient | None:
        """Connect to the daemon of ``home``; None if none is running there."""
        path = socket_path(home)
        deadline = time.monotonic() + (timeout or 0.0)
        while True:
            if not path.exists():
                return None
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            try:
                with unix_address(path) as address:
                    sock.connect(address)
            except (ConnectionRefusedError, FileNotFoundError):
                sock.close()
                return None  # a socket file left by a daemon that died
            except BlockingIOError:  # the daemon's listen queue is full for now: try again shortly
                sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
                continue
            except OSError:
                sock.close()
                raise
            sock.settimeout(None)
            return cls(sock)

    def call(self, method: str, params: dict | None = None) -> Any:
        request_id = next(self._ids)
        self._sock.sendall(_line({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params or {}}))
        while True:
            message = self._read()
            if "method" in message and "id" not in message:
                continue  # a notification; this client does not wait for them here
            return _answer(message, request_id)

    def notifications(self) -> Iterator[dict]:
        """Notifications as they arrive (after ``call("events.subscribe", ...)``)."""
        while True:
            message = self._read()
            if "method" in message and "id" not in message:
                yield message

    def _read(self) -> dict:
        line = self._file.readline(MAX_LINE * 16)
        if not line:
            raise ConnectionError("the daemon closed the connection")
        return json.loads(line)

    def close(self) -> None:
        self._file.close()
        self._sock.close()

    def __enter__(self) -> DaemonClient:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class AsyncDaemonClient:
    """asyncio client: requests may overlap; notifications go to ``events()``."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self._reader, self._writer = reader, writer
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future] = {}
        self._notifications: asyncio.Queue[dict | None] = asyncio.Queue()
        self._read_task = asyncio.create_task(self._read_loop())

    @classmethod
    async def connect(cls, home_or_socket: Path) -> AsyncDaemonClient:
        path = Path(home_or_socket)
        if path.is_dir():
            path = socket_path(path)
        with unix_address(path) as address:
            reader, writer = await asyncio.open_unix_connection(address, limit=MAX_LINE * 16)
        return cls(reader, writer)

    async def call(self, method: str, **params: Any) -> Any:
        request_id = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        self._writer.write(_line({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}))
        await self._writer.drain()
        try:
            return _answer(await future, request_id)
        finally:
            self._pending.pop(request_id, None)

    async def events(self) -> AsyncIterator[dict]:
        """Event notifications' params, in order, until the connection closes."""
        while True:
            message = await self._notifications.get()
            if message is None:
                return
            yield message["params"]

    async def _read_loop(self) -> None:
        try:
            while line := await self._reader.readline():
                message = json.loads(line)
                if "method" in message and "id" not in message:
                    self._notifications.put_nowait(message)
                elif "error" in message and message.get("id") is None:  # e.g. too many connections: for every call
                    for future in self._pending.values():
                        if not future.done():
                            future.set_result(message)
                elif (future := self._pending.get(message.get("id"))) is not None and not future.done():
                    future.set_result(message)
        finally:
            closed = ConnectionError("the daemon closed the connection")
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(closed)
            self._notifications.put_nowait(None)

    async def close(self) -> None:
        self._read_task.cancel()
        await asyncio.gather(self._read_task, return_exceptions=True)
        self._writer.close()
        try:
            await self._writer.wait_closed()
        except (ConnectionError, OSError):
            pass
