"""The node as an aiohttp application, and running it from a data directory.

``make_app`` builds the application from a config, an identity and a store,
with the clock, randomness and forwarding connector injected (tests move
time; Tor plugs in as a connector). ``run`` serves a data directory until
SIGINT/SIGTERM.
"""

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from collections.abc import Callable

from aiohttp import web

from onionproto import NodeAddress, NodeSession
from onionproto import crypto
from transport import Connector
from transport.connector import MAX_MESSAGE, WEBSOCKET_PATH

from .commands import Dispatcher
from .committer import Committer
from .config import NodeConfig
from .connection import Connection
from .datadir import DataDir, Identity
from .forwarder import Forwarder
from .mailbox import Mailbox
from .status import remove_status, write_status
from .store import QueueStore, SQLiteQueueStore
from .subscriptions import Subscriptions
from .throttle import TokenBucket

log = logging.getLogger(__name__)

STATUS_INTERVAL = 1.0
CHECKPOINT_EVERY = 10
"""Sweeps between WAL truncations (so deleted rows do not linger in the WAL file)."""


class Node:
    """Everything the sessions of one running node share."""

    def __init__(
        self,
        config: NodeConfig,
        identity: Identity,
        store: QueueStore,
        *,
        clock: Callable[[], float] = time.time,
        rng: crypto.Rng = os.urandom,
        connector: Connector | None = None,
        status_path=None,
    ):
        self.config = config
        self.identity = identity
        self.clock = clock
        self.rng = rng
        self.status_path = status_path
        self.mailbox = Mailbox(store, config, clock=clock, rng=rng)
        self.committer = Committer(store)
        self.subscriptions = Subscriptions()
        self.forwarder = Forwarder(connector)
        self.dispatcher = Dispatcher(identity, self.mailbox, self.committer, self.subscriptions, self.forwarder, clock=clock, rng=rng)
        self.connections: set[Connection] = set()
        self._tasks: list[asyncio.Task] = []
        self._sweeps = 0

    def address(self, host: str, port: int) -> NodeAddress:
        return NodeAddress(self.identity.public, host, port)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(max_msg_size=4 * MAX_MESSAGE, compress=False, heartbeat=60.0)
        if not ws.can_prepare(request).ok:
            return web.Response(status=400, text="onionpost relay: WebSocket only\n")
        await ws.prepare(request)
        sock = request.transport.get_extra_info("socket") if request.transport else None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        session = NodeSession(self.identity.public, self.identity.secret, rng=self.rng)
        throttle = TokenBucket(self.config.throttle.rate, self.config.throttle.burst)
        conn = Connection(ws, session, self.dispatcher, throttle)
        self.connections.add(conn)
        try:
            await conn.serve()
        except Exception as exc:  # a bug in session handling: one line in the log, never a traceback
            log.error("session failed: %s", type(exc).__name__)
        finally:
            self.connections.discard(conn)
        return ws

    async def sweep(self) -> int:
        """Delete expired messages and envelope keys now; return how many messages went."""
        removed = await self.committer.call(self.mailbox.sweep)
        self._sweeps += 1
        if self._sweeps % CHECKPOINT_EVERY == 0:
            try:
                await self.committer.run_alone(self.mailbox.store.checkpoint)
            except Exception as exc:  # a busy reader (e.g. `node status`) only delays the truncation
                log.warning("WAL checkpoint failed: %s", type(exc).__name__)
        return removed if isinstance(removed, int) else 0

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.sweep_interval)
            removed = await self.sweep()
            if removed:
                log.info("expired %d message(s)", removed)

    async def _status_loop(self) -> None:
        while True:
            self.write_status()
            await asyncio.sleep(STATUS_INTERVAL)

    def write_status(self) -> None:
        if self.status_path is not None:
            try:
                write_status(self.status_path, subscriptions=len(self.subscriptions), sessions=len(self.connections))
            except OSError as exc:
                log.warning("cannot write the status file: %s", exc.strerror or type(exc).__name__)

    async def start(self, app: web.Application) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._sweep_loop())]
        if self.status_path is not None:
            self._tasks.append(loop.create_task(self._status_loop()))

    async def close_sessions(self, app: web.Application) -> None:
        await asyncio.gather(*(conn.close() for conn in list(self.connections)), return_exceptions=True)

    async def stop(self, app: web.Application) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.forwarder.close()
        await self.committer.close()
        if self.status_path is not None:
            remove_status(self.status_path)


NODE_KEY = web.AppKey("node", Node)


def make_app(
    config: NodeConfig,
    identity: Identity,
    store: QueueStore,
    *,
    clock: Callable[[], float] = time.time,
    rng: crypto.Rng = os.urandom,
    connector: Connector | None = None,
    status_path=None,
) -> web.Application:
    """The node's aiohttp application; it owns ``store`` and closes it on cleanup.

    ``app[NODE_KEY]`` is the ``Node`` (for tests: ``sweep()``, counts).
    """
    node = Node(config, identity, store, clock=clock, rng=rng, connector=connector, status_path=status_path)
    app = web.Application()
    app[NODE_KEY] = node
    app.router.add_get(WEBSOCKET_PATH, node.handle)
    app.on_startup.append(node.start)
    app.on_shutdown.append(node.close_sessions)
    app.on_cleanup.append(node.stop)
    return app


async def run(data_dir: DataDir, on_listening: Callable[[NodeAddress], None]) -> None:
    """Serve ``data_dir`` until SIGINT or SIGTERM.

    Raises:
        DataDirError, StoreError: the data directory cannot be used.
        OSError: the listen address cannot be bound.
    """
    config = data_dir.load_config()
    identity = data_dir.load_identity()
    store = SQLiteQueueStore(data_dir.db_path)
    app = make_app(config, identity, store, status_path=data_dir.status_path)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, config.host, config.port, shutdown_timeout=5.0)
        await site.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        on_listening(NodeAddress(identity.public, config.host, config.port))
        await stop.wait()
        log.info("stopping")
    finally:
        await runner.cleanup()
