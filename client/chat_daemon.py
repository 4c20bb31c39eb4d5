"""The daemon ``onionpost chat`` talks to: the home's running daemon, or one it starts in its own process.

Either way the chat is a client of ``HOME/daemon.sock`` (docs/api.md) and
nothing else: its own daemon serves the socket like ``onionpost daemon`` would,
so other commands can use the home while the chat runs, and it stops (socket
removed, lock released, tor stopped) when the chat exits.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from .daemon import Daemon
from .rpc import AsyncDaemonClient, RpcError
from .runtime import ClientRuntime

LOST = -1
"""``RpcError.code`` when the connection to the daemon is gone (not a JSON-RPC code)."""


class NoDaemon(Exception):
    """No daemon answers on the home's socket, and the chat may not start one."""


class OwnDaemon:
    """A daemon run inside the chat's event loop for as long as the chat runs."""

    def __init__(self, runtime: ClientRuntime, server: Daemon, task: asyncio.Task):
        self.runtime, self.server, self.task = runtime, server, task

    @classmethod
    async def start(cls, open_runtime: Callable[[], ClientRuntime], *,
                    progress: Callable[..., None] | None = None) -> OwnDaemon:
        """Open the home (its lock, its store), start tor if a relay needs it, serve the socket."""
        runtime = open_runtime()
        if progress is not None:
            runtime.progress = progress  # tor's bootstrap progress, instead of lines on the terminal
        task = waiting = None
        try:
            await runtime.start_network()
            server = Daemon(runtime)
            ready = asyncio.Event()
            task = asyncio.create_task(server.run(ready.set))
            waiting = asyncio.create_task(ready.wait())
            await asyncio.wait({task, waiting}, return_when=asyncio.FIRST_COMPLETED)
            if not ready.is_set():
                task.result()  # raises what stopped it
                raise RuntimeError("the daemon stopped before it served")
        except BaseException:
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            await runtime.close()
            raise
        finally:
            if waiting is not None:
                waiting.cancel()
        return cls(runtime, server, task)

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        await self.runtime.close()

    def failure(self) -> str | None:
        """Why the daemon stopped by itself, if it did."""
        if not self.task.done() or self.task.cancelled():
            return None
        exc = self.task.exception()
        return f"{type(exc).__name__}: {exc}" if exc else "it stopped"


async def _connect(home: Path) -> AsyncDaemonClient | None:
    try:
        return await AsyncDaemonClient.connect(home)
    except (FileNotFoundError, ConnectionRefusedError):
        return None  # no socket, or one left by a daemon that died


class Session:
    """The chat's connections to the daemon: one for events, one for calls, and one more per slow call."""

    def __init__(self, home: Path, calls: AsyncDaemonClient, events: AsyncDaemonClient, own: OwnDaemon | None):
        self.home, self._calls, self._events, self.own = home, calls, events, own

    @classmethod
    async def open(cls, home: Path, open_runtime: Callable[[], ClientRuntime] | None = None, *,
                   progress: Callable[..., None] | None = None) -> Session:
        """Connect to the home's daemon; without one, start our own (if ``open_runtime`` is given)."""
        own = None
        calls = await _connect(home)
        if calls is None:
            if open_runtime is None:
                raise NoDaemon(f"no daemon answers on {home}")
            own = await OwnDaemon.start(open_runtime, progress=progress)
            calls = await _connect(home)
        try:
            events = await _connect(home)
            if calls is None or events is None:
                raise NoDaemon(f"the daemon of {home} stopped answering")
        except BaseException:
            if calls is not None:
                await calls.close()
            if own is not None:
                await own.stop()
            raise
        return cls(home, calls, events, own)

    async def call(self, method: str, **params: Any) -> Any:
        """One method on the shared connection (answered in order: keep it for quick ones)."""
        return await _checked(self._calls.call(method, **_given(params)))

    async def call_alone(self, method: str, **params: Any) -> Any:
        """One method on its own connection: a slow one (the network) holds up nothing else."""
        client = await _connect(self.home)
        if client is None:
            raise RpcError(LOST, "the daemon is not running any more")
        try:
            return await _checked(client.call(method, **_given(params)))
        finally:
            await client.close()

    async def subscribe(self, since: int | None = None) -> dict:
        """Events from now on (and those after ``since``) arrive on the events connection."""
        return await _checked(self._events.call("events.subscribe", **_given({"since": since})))

    async def events(self) -> AsyncIterator[dict]:
        """Every event after ``subscribe``, until the connection closes."""
        async for event in self._events.events():
            yield event

    async def close(self) -> None:
        for client in (self._calls, self._events):
            await client.close()
        if self.own is not None:
            await self.own.stop()


def _given(params: dict) -> dict:
    return {k: v for k, v in params.items() if v is not None}


async def _checked(call) -> Any:
    """A lost connection becomes an ``RpcError`` too, so callers handle one kind of failure."""
    try:
        return await call
    except (ConnectionError, OSError) as exc:
        raise RpcError(LOST, f"lost the connection to the daemon ({exc})") from None
