"""``onionpost daemon``: the client, kept running, serving the JSON-RPC API on ``HOME/daemon.sock``.

docs/daemon.md has the design, docs/api.md the methods and events. Nothing a
client of the socket sends can stop the daemon or make it print a traceback:
bad requests get a JSON-RPC error, oversized or flooding connections are
closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable

from . import api
from .agent import Event
from .home import socket_path, unix_address
from .rpc import MAX_LINE, RpcError, error_line, notification_line, parse_request, result_line
from .runtime import ClientRuntime
from .store import events_since

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 64
"""Connections served at once; more are answered with an error and closed."""
MAX_QUEUED_EVENTS = 10_000
"""Notifications waiting for a slow subscriber before its connection is closed (it can resubscribe with ``since``)."""


class Daemon:
    def __init__(self, runtime: ClientRuntime, *, max_connections: int = MAX_CONNECTIONS):
        self.runtime = runtime
        self.max_connections = max_connections
        self.path = socket_path(runtime.home)
        self.connections = 0
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> None:
        """Bind the socket (mode 0600 from the start: it is created under a 077 umask)."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # we hold the home's lock: any socket file here is a dead daemon's
        old = os.umask(0o077)
        try:
            with unix_address(self.path) as address:
                self._server = await asyncio.start_unix_server(self._serve, path=address, limit=MAX_LINE)
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)

    async def run(self, ready: Callable[[], None] | None = None) -> None:
        """Serve until cancelled: the agents run, the socket answers."""
        await self.start()
        runner = asyncio.create_task(self.runtime.run())
        try:
            if ready is not None:
                ready()
            await runner
        finally:
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)
            await self.stop()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._tasks.add(task)
        self.connections += 1
        connection = Connection(self, reader, writer)
        try:
            if self.connections > self.max_connections:
                await connection.send(error_line(None, {"code": api.FAILED, "message": "too many connections"}))
                return
            await connection.serve()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away; nothing to answer
        except asyncio.CancelledError:
            pass  # the daemon is stopping (asyncio's stream callback must not see a cancelled task)
        finally:
            self.connections -= 1
            self._tasks.discard(task)
            await connection.close()


class Connection:
    """One client of the socket: requests answered in order, events pushed when subscribed."""

    def __init__(self, daemon: Daemon, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.daemon, self.reader, self.writer = daemon, reader, writer
        self._write_lock = asyncio.Lock()
        self._events: asyncio.Queue[Event | None] | None = None
        self._pusher: asyncio.Task | None = None

    async def serve(self) -> None:
        while True:
            try:
                line = await self.reader.readline()
            except (ValueError, asyncio.LimitOverrunError):
                await self.send(error_line(None, {"code": api.INVALID_REQUEST,
                                                  "message": f"request longer than {MAX_LINE} bytes"}))
                return
            if not line:
                return
            if not line.strip():
                continue
            await self._answer(line)

    async def _answer(self, line: bytes) -> None:
        try:
            request = parse_request(line)
        except RpcError as exc:
            await self.send(error_line(exc.request_id, exc.to_json()))
            return
        ctx = api.Context(self.daemon.runtime, "daemon", extra={"subscribe": self._subscribe, "unsubscribe": self._unsubscribe})
        try:
            result = await api.call(ctx, request.method, request.params)
        except api.ApiError as exc:
            answer = error_line(request.id, exc.to_json())
        except Exception:  # a bug: say so to the caller and in the log, keep serving
            log.exception("method %s failed", request.method)
            answer = error_line(request.id, {"code": api.INTERNAL_ERROR, "message": "internal error (see the daemon's log)"})
        else:
            answer = result_line(request.id, result)
        if not request.is_notification:
            await self.send(answer)

    async def send(self, line: bytes) -> None:
        async with self._write_lock:
            self.writer.write(line)
            await self.writer.drain()

    # --- events --------------------------------------------------------------

    async def _subscribe(self, since: int | None) -> dict:
        if self._events is None:
            self._events = asyncio.Queue()
            self.daemon.runtime.listeners.append(self._queue_event)
        # Listen first, then replay: an event that arrives meanwhile is queued, and skipped if replayed.
        replayed = events_since(self.daemon.runtime.db, since) if since is not None else []
        last = replayed[-1].id if replayed else 0
        for stored in replayed:
            self._events.put_nowait(Event(stored.kind, stored.contact, stored.text, stored.data, stored.id,
                                          self._profile_name(stored.profile_id)))
        if self._pusher is None:
            self._pusher = asyncio.create_task(self._push(0))
        return {"subscribed": True, "last": last}

    def _profile_name(self, profile_id: int | None) -> str | None:
        row = self.daemon.runtime.db.fetch_one("SELECT name FROM profiles WHERE id = ?", (profile_id,))
        return row[0] if row else None

    def _queue_event(self, event: Event) -> None:
        if self._events is None:
            return
        if self._events.qsize() >= MAX_QUEUED_EVENTS:
            self._unsubscribe()
            self.writer.close()  # a subscriber this slow resubscribes with "since"
            return
        self._events.put_nowait(event)

    async def _push(self, seen: int) -> None:
        while self._events is not None:
            event = await self._events.get()
            if event is None:
                return
            if event.id <= seen and event.id:
                continue  # already pushed (a resubscription replayed it)
            seen = max(seen, event.id)
            await self.send(notification_line("event", event.to_json()))

    def _unsubscribe(self) -> None:
        if self._events is not None:
            with contextlib.suppress(ValueError):
                self.daemon.runtime.listeners.remove(self._queue_event)
            self._events.put_nowait(None)
            self._events = None

    async def close(self) -> None:
        self._unsubscribe()
        if self._pusher is not None:
            self._pusher.cancel()
            await asyncio.gather(self._pusher, return_exceptions=True)
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()
