"""The node as an aiohttp application, and running it from a data directory.

``make_app`` builds the application from a config, an identity and a store,
with the clock, randomness and forwarding connector injected (tests move
time; Tor plugs in as a connector). ``run`` serves a data directory until
SIGINT/SIGTERM; in onion mode it runs the node's tor too (``node.onion``).
"""

import asyncio
import contextlib
import logging
import os
import resource
import signal
import socket
import time
from collections.abc import Callable
from functools import partial

from aiohttp import web

from onionpost.proto import MAX_VERSION, Message, NodeAddress, NodeSession
from onionpost.proto import crypto
from onionpost.transport import Connector
from onionpost.transport.connector import MAX_MESSAGE, WEBSOCKET_PATH
from onionpost.transport.tor import TorConnector

from .admission import Admission
from .commands import Dispatcher
from .committer import Committer
from .config import NodeConfig
from .connection import Connection
from .datadir import DataDir, Identity
from .forwarder import Forwarder
from .mailbox import Mailbox
from .onion import NodeTor, Progress, TorOptions, print_progress
from .onion import _Stopped as TorStopped
from .status import remove_status, write_status
from .store import QueueStore, is_postgres, open_store
from .subscriptions import Subscriptions
from .tally import Tally
from .throttle import TokenBucket

log = logging.getLogger(__name__)

STATUS_INTERVAL = 1.0
LISTEN_BACKLOG = 1024
AIOHTTP_LOGGERS = ("aiohttp.access", "aiohttp.client", "aiohttp.internal", "aiohttp.server", "aiohttp.web", "aiohttp.websocket")
PURGE_DELAY = 1.0
"""Seconds from a deletion (DEL, ACK, expiry) to the WAL checkpoint that empties the WAL file, so
deleted rows leave every file of the node within about this long (relay.md "DEL")."""


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
        loopback_forwarding: bool | None = None,
    ):
        self.config = config
        self.identity = identity
        self.clock = clock
        self.rng = rng
        self.status_path = status_path
        self.tally = Tally()
        self.mailbox = Mailbox(store, config, clock=clock, rng=rng)
        self.committer = Committer(store)
        self.cluster = None
        """Set on a PostgreSQL store: hears the other backends of this node (``node.cluster``)."""
        if is_postgres(getattr(store, "url", None)):
            from .cluster import Cluster

            self.cluster = Cluster(store.url, store.origin, self._oldest)
            self.subscriptions = self.cluster.subscriptions
        else:
            self.subscriptions = Subscriptions()
        if loopback_forwarding is None:
            loopback_forwarding = config.onion is None
        self.forwarder = Forwarder(connector, tally=self.tally, loopback=loopback_forwarding)
        self.dispatcher = Dispatcher(identity, self.mailbox, self.committer, self.subscriptions, self.forwarder, clock=clock, rng=rng)
        self.connections: set[Connection] = set()
        """WebSocket sessions, established or still in their handshake."""
        self.max_version = MAX_VERSION
        """Highest protocol version offered to new sessions (tests lower it to act as an older node)."""
        self.admission: Admission | None = None
        """Set by ``run``: the gate in front of aiohttp, which counts every open TCP connection."""
        self.status_extra: Callable[[], dict] | None = None
        """Extra fields for status.json (an onion node's service state)."""
        self._tasks: list[asyncio.Task] = []
        self._purge: asyncio.TimerHandle | asyncio.Task | None = None
        self.dispatcher.on_delete = self.purge_soon

    async def _oldest(self, rid: bytes) -> Message | None:
        result = await self.committer.call(partial(self.mailbox.oldest, rid))
        return result if isinstance(result, Message) else None

    def address(self, host: str, port: int) -> NodeAddress:
        return NodeAddress(self.identity.public, host, port)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(max_msg_size=4 * MAX_MESSAGE, compress=False, heartbeat=60.0)
        if not ws.can_prepare(request).ok:
            refusal = web.Response(status=400, text="onionpost relay: WebSocket only\n")
            refusal.force_close()
            return refusal
        # No Nagle: over an onion service the peer is tor on loopback, and Nagle + delayed ACK
        # turns a 1 ms round trip into ~88 ms.
        sock = request.transport.get_extra_info("socket") if request.transport else None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            await ws.prepare(request)
        except (ConnectionError, OSError, RuntimeError):  # the client left before the answer
            self.tally.count("upgrades abandoned by the client")
            raise web.HTTPBadRequest() from None  # aiohttp ends the request without logging it
        session = NodeSession(self.identity.public, self.identity.secret, rng=self.rng, max_version=self.max_version)
        throttle = TokenBucket(self.config.throttle.rate, self.config.throttle.burst)
        transport = request.transport
        conn = Connection(
            ws, session, self.dispatcher, throttle, tally=self.tally,
            hello_timeout=self.config.connections.handshake_timeout,
            on_established=lambda: self.admission is not None and self.admission.established(transport),
        )
        self.connections.add(conn)
        trace = self.dispatcher.trace
        if trace is not None:
            trace.opened(conn)
        try:
            await conn.serve()
        except Exception as exc:  # a bug in session handling: one line in the log, never a traceback
            log.error("session failed: %s", type(exc).__name__)
            self.tally.count("sessions failed")
        finally:
            self.connections.discard(conn)
            if trace is not None:
                trace.closed(conn)
        return ws

    async def sweep(self) -> int:
        """Delete expired messages and envelope keys now; return how many messages went."""
        removed = await self._expire()
        self.purge_soon()  # also keeps the WAL file short
        return removed

    def purge_soon(self) -> None:
        """Something was deleted: empty the WAL file within ``PURGE_DELAY`` (one checkpoint for all deletions meanwhile)."""
        if self._purge is None and not self.committer.closing:
            self._purge = asyncio.get_running_loop().call_later(PURGE_DELAY, self._start_purge)

    def _start_purge(self) -> None:
        self._purge = asyncio.get_running_loop().create_task(self.purge())

    async def purge(self) -> None:
        """Checkpoint now and truncate the WAL: deleted rows, already overwritten in the database, leave the WAL too."""
        try:
            await self.committer.run_alone(self.mailbox.store.checkpoint)
        except Exception as exc:  # a busy reader (e.g. `node status`) only delays the truncation: try again
            self.tally.count(f"WAL checkpoints failed ({type(exc).__name__})")
            self._purge = None
            self.purge_soon()
            return
        self._purge = None

    async def _expire(self) -> int:
        removed = await self.committer.call(self.mailbox.sweep)
        return removed if isinstance(removed, int) else 0

    async def _sweep_loop(self) -> None:
        # At start too: messages may have expired while the node was down.
        removed = await self._expire()
        while True:
            if removed:
                log.info("expired %d message(s)", removed)
            await asyncio.sleep(self.config.sweep_interval)
            removed = await self.sweep()

    async def _status_loop(self) -> None:
        while True:
            self.write_status()
            await asyncio.sleep(STATUS_INTERVAL)

    async def _rewrite_loop(self) -> None:
        written = self.mailbox.store.changes()
        while True:
            await asyncio.sleep(self.config.rewrite_interval)
            if self.mailbox.store.changes() != written:
                await self.rewrite()
                written = self.mailbox.store.changes()

    async def rewrite(self) -> None:
        """Rebuild the database in key order (``QueueStore.rewrite``), between two batches of commands."""
        started = time.monotonic()
        try:
            await self.committer.run_alone(self.mailbox.store.rewrite)
        except Exception as exc:  # a busy reader: the next interval tries again
            self.tally.count(f"database rewrites failed ({type(exc).__name__})")
            return
        self.tally.count("database rewrites")
        self.tally.count("database rewrite milliseconds", round((time.monotonic() - started) * 1000))

    async def _tally_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.log_interval)
            self.tally.flush(self.config.log_interval)

    def counts(self) -> dict[str, int]:
        """Live figures: open TCP connections, established sessions, subscriptions."""
        sessions = sum(1 for conn in self.connections if conn.established)
        connections = self.admission.open if self.admission is not None else len(self.connections)
        return {"connections": connections, "sessions": sessions, "subscriptions": len(self.subscriptions)}

    def write_status(self) -> None:
        if self.status_path is not None:
            try:
                extra = self.status_extra() if self.status_extra is not None else {}
                write_status(self.status_path, **self.counts(), **extra)
            except OSError as exc:
                self.tally.count(f"status file not written ({exc.strerror or type(exc).__name__})")

    async def start(self, app: web.Application) -> None:
        if self.cluster is not None:
            await self.cluster.start()
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(t) for t in (self._sweep_loop(), self._tally_loop(), self._rewrite_loop())]
        if self.status_path is not None:
            self._tasks.append(loop.create_task(self._status_loop()))

    async def close_sessions(self, app: web.Application) -> None:
        await asyncio.gather(*(conn.close() for conn in list(self.connections)), return_exceptions=True)

    async def stop(self, app: web.Application) -> None:
        if self._purge is not None:
            self._purge.cancel()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.forwarder.close()
        if self.cluster is not None:
            await self.cluster.stop()
        await self.committer.close()  # SQLite checkpoints and removes the WAL as the last connection closes
        self.tally.flush(self.config.log_interval)
        if self.status_path is not None:
            remove_status(self.status_path)
        if self.dispatcher.trace is not None:
            self.dispatcher.trace.close()


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
    trace=None,
    loopback_forwarding: bool | None = None,
) -> web.Application:
    """The node's aiohttp application; it owns ``store`` and closes it on cleanup.

    ``app[NODE_KEY]`` is the ``Node`` (for tests: ``sweep()``, counts). ``loopback_forwarding``:
    may FWD reach loopback nodes (default: only if this node is a loopback node itself, not an onion one).
    """
    node = Node(config, identity, store, clock=clock, rng=rng, connector=connector, status_path=status_path,
                loopback_forwarding=loopback_forwarding)
    node.dispatcher.trace = trace
    app = web.Application()
    app[NODE_KEY] = node
    app.on_response_prepare.append(_anonymous)
    app.router.add_get(WEBSOCKET_PATH, node.handle)
    app.on_startup.append(node.start)
    app.on_shutdown.append(node.close_sessions)
    app.on_cleanup.append(node.stop)
    return app


async def _anonymous(request: web.Request, response: web.StreamResponse) -> None:
    """relay.md "Transport": no response names the server software."""
    response.headers.popall("Server", None)


def raise_descriptor_limit() -> int:
    """Raise this process's soft limit of open files to its hard limit; return the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            log.warning("cannot raise the open-file limit from %d to %d", soft, target)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


class _OneLine(logging.Filter):
    """A record with an exception keeps its message and the exception's type, not the traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info:
            exc = record.exc_info[1]
            record.msg = f"{record.getMessage()}: {type(exc).__name__ if exc else 'error'}"
            record.args = ()
            record.exc_info = None
            record.exc_text = None
        return True


def one_line_logs() -> None:
    """No client can make the node log a traceback: aiohttp's and asyncio's records lose theirs."""
    for name in (*AIOHTTP_LOGGERS, "asyncio"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _OneLine) for f in logger.filters):
            logger.addFilter(_OneLine())


def _loop_exception(loop: asyncio.AbstractEventLoop, context: dict) -> None:
    """asyncio's unhandled errors: one line each, never a traceback."""
    exc = context.get("exception")
    log.error("%s%s", context.get("message", "unhandled error"), f": {type(exc).__name__}" if exc is not None else "")


def bind_listener(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """Bind and listen on ``host:port`` now, so a busy port fails at once (not after tor's bootstrap).

    ``reuse_port``: SO_REUSEPORT, so the node's worker processes each listen on
    the same port and the kernel spreads new connections among them.

    Raises:
        OSError: the address cannot be bound; the message names it.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart must not wait for TIME_WAIT
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        shown = f"[{host}]" if ":" in host else host
        raise OSError(exc.errno, f"cannot listen on {shown}:{port}: {(exc.strerror or str(exc)).lower()}") from None
    return sock


async def run(
    data_dir: DataDir,
    on_listening: Callable[[NodeAddress], None],
    tor_options: TorOptions | None = None,
    progress: Progress | None = print_progress,
    trace_path=None,
    *,
    worker: int | None = None,
) -> None:
    """Serve ``data_dir`` until SIGINT or SIGTERM.

    ``worker``: this process is worker number ``worker`` of ``node run --workers``
    (it shares the port with SO_REUSEPORT; only worker 0 writes status.json).

    A loopback node listens and calls ``on_listening`` at once. An onion-mode
    node first gets its tor (``tor_options``: launch one, by default, or
    attach to an existing one), then listens, publishes its onion service and
    calls ``on_listening`` only once the descriptor is uploaded; forwarding
    goes through that tor's SOCKS port. Whatever happens, the onion service is
    removed and a tor the node launched is stopped before this returns.

    Raises:
        DataDirError, StoreError: the data directory cannot be used.
        OSError: the listen address cannot be bound.
        NodeTorError: tor could not be started, reached or kept running.
    """
    config = data_dir.load_config()
    identity = data_dir.load_identity()
    address = data_dir.address()  # the .onion address in onion mode
    seed = data_dir.load_onion_key() if config.onion is not None else None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    tor: NodeTor | None = None
    runner: web.AppRunner | None = None
    node: Node | None = None
    store: QueueStore | None = None
    descriptors = raise_descriptor_limit()
    one_line_logs()
    sock = bind_listener(config.host, config.port, reuse_port=worker is not None)
    try:
        connector = None
        if seed is not None:
            tor = NodeTor(data_dir, seed, config.onion.virtual_port, (config.host, config.port),
                          tor_options or TorOptions(), stop, progress, master=config.onion.master)
            await tor.start()
            connector = TorConnector(socks_port=tor.socks_port, on_unreachable=tor.refresh_circuits)
            tor.on_socks_port = lambda port: setattr(connector, "socks_port", port)
        store = open_store(data_dir.store_location(config), identity=identity.public)
        trace = None
        if trace_path is not None:
            from .trace import RelayTrace

            trace = RelayTrace(trace_path)
        # A loopback node is for development; an onion node reaches loopback nodes only on a private test network.
        loopback = config.onion is None or (tor_options is not None and tor_options.testnet is not None)
        status_path = data_dir.status_path if not worker else None
        app = make_app(config, identity, store, connector=connector, status_path=status_path,
                       loopback_forwarding=loopback, trace=trace)
        if tor is not None:
            node = app[NODE_KEY]
            node.status_extra = lambda: {"onion_service": tor.state}
            tor.on_state = node.write_status
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=5.0)
        await runner.setup()
        store = None  # the app owns it now
        node = app[NODE_KEY]
        node.admission = Admission(runner.server, config.connections, descriptors, node.tally)
        loop.set_exception_handler(_loop_exception)
        node.admission.start(sock)
        watcher = None
        if tor is not None:
            await tor.publish()
            watcher = asyncio.ensure_future(tor.watch())
        on_listening(address)
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait({stopping} | ({watcher} if watcher else set()), return_when=asyncio.FIRST_COMPLETED)
        if watcher is not None:
            if not watcher.done():
                stop.set()
                await asyncio.wait({watcher}, timeout=30.0)
            if watcher.done():
                watcher.result()  # NodeTorError: tor could not be kept running
            else:
                watcher.cancel()
        stopping.cancel()
        log.info("stopping")
    except TorStopped:
        log.info("stopped before the onion service was published")
    finally:
        try:
            if tor is not None:
                tor.on_state = None  # status.json goes with the app; the tor's last states are not news
            if node is not None and node.admission is not None:
                node.admission.close()
            if runner is not None:
                await runner.cleanup()
            if store is not None:
                store.close()
        finally:
            sock.close()
            if tor is not None:
                await tor.close()
