"""``onionpost node``: create, run and inspect a relay node.

Mounted by ``onionpost/cli.py``. Errors are one line on stderr and a
non-zero exit status, never a traceback.
"""

import asyncio
import json
import logging
import os
import sqlite3
import sys
import threading
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

# The node's modules are imported inside the commands: 'onionpost' starts fast for every command.

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False, rich_markup_mode=None)

DataOption = Annotated[Path, typer.Option("--data", help="The node's data directory.", show_default=False)]


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=1)


def _user_errors() -> tuple[type[Exception], ...]:
    from .config import ConfigError
    from .datadir import DataDirError
    from .onion import NodeTorError
    from .store import StoreError

    return DataDirError, ConfigError, StoreError, NodeTorError


def _guard(action):
    """Run ``action``, turning the errors users can cause into one line on stderr."""
    try:
        return action()
    except _user_errors() as exc:
        _fail(str(exc))
    except sqlite3.DatabaseError as exc:
        _fail(f"the node database cannot be read: {exc}")
    except OSError as exc:
        _fail(f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else ""))


@app.command()
def init(
    data: DataOption,
    listen: Annotated[
        Optional[str],
        typer.Option(help="HOST:PORT to listen on; loopback only (127.0.0.0/8 or [::1]). Default: 127.0.0.1 and a free port chosen now."),
    ] = None,
    access_key: Annotated[
        Optional[list[str]],
        typer.Option("--access-key", help="Require this key to create queues (repeatable). Default: open node."),
    ] = None,
    onion: Annotated[
        bool,
        typer.Option(
            "--onion",
            help="Run as a Tor v3 onion service: also create the onion service key (onion.key, which fixes the "
            ".onion name) and record onion mode in node.json. The node is then reached as <name>.onion:80; "
            "--listen stays loopback and is only the service's local target.",
        ),
    ] = False,
    store: Annotated[
        Optional[str],
        typer.Option(
            "--store",
            help="Keep queues and messages in this PostgreSQL database (postgresql://USER@HOST:PORT/DBNAME) instead of "
            "the SQLite file DATA/node.db; several node processes ('run --workers N', or other machines with a copy of "
            "DATA) can then share it. Needs the 'postgres' extra. Default: SQLite, nothing to set up.",
            show_default=False,
        ),
    ] = None,
    balanced: Annotated[
        bool,
        typer.Option(
            "--balanced",
            help="With --onion: make the frontend of one .onion served by several backends (Onionbalance). Its "
            "onion.key is the master key; 'node run' on it runs tor and Onionbalance, no relay. Add backends with "
            "--backend-of.",
        ),
    ] = False,
    backend_of: Annotated[
        Optional[Path],
        typer.Option(
            "--backend-of",
            help="With --onion: make a backend of the frontend in this data directory: same node identity, its own "
            "onion service key, reached by clients through the frontend's address. Lists the backend in the "
            "frontend's node.json (restart the frontend to use it).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Create a new node: identity key, node.json and an empty database in DATA; print its address."""
    from .datadir import DataDir

    directory = DataDir(data)
    front = DataDir(backend_of) if backend_of is not None else None
    _guard(lambda: directory.init(listen, access_key or (), onion=onion, store=store, balanced=balanced,
                                  backend_of=front))
    typer.echo(str(_guard(directory.address)))
    if balanced:
        typer.echo(f"next: add backends with 'onionpost node init --onion --backend-of {data} --data BACKEND', start "
                   f"them ('onionpost node run --data BACKEND'), then the frontend ('onionpost node run --data {data}'); "
                   "people add the address above", err=True)
    elif front is not None:
        typer.echo(f"backend instance {_guard(directory.instance_address)} added to the frontend {backend_of}; "
                   f"start it with 'onionpost node run --data {data}' and restart the frontend", err=True)
    else:
        typer.echo(f"next: start it with 'onionpost node run --data {data}'; people add the address above with "
                   "'onionpost relay add ADDRESS'", err=True)


@app.command()
def address(data: DataOption) -> None:
    """Print the node's address: onionpost://KEY@NAME.onion:80 for an onion node (computed from its key, Tor is not started), else onionpost://KEY@HOST:PORT."""
    from .datadir import DataDir

    typer.echo(str(_guard(DataDir(data).address)))


_TOR_FLAGS = "Tor flags (onion nodes only; a loopback node ignores them with a warning)"


@app.command()
def run(
    data: DataOption,
    log_level: Annotated[str, typer.Option(help="Logging level: DEBUG, INFO, WARNING or ERROR.")] = "INFO",
    testnet: Annotated[
        Optional[Path],
        typer.Option(
            "--testnet",
            envvar="ONIONPOST_TESTNET",
            help="Directory of a private Tor network ('onionpost testnet up') for the tor the node launches to join "
            "instead of the real Tor network.",
            show_default=False,
            rich_help_panel=_TOR_FLAGS,
        ),
    ] = None,
    tor_control: Annotated[
        Optional[int],
        typer.Option(
            "--tor-control",
            help="Use the tor already running with this control PORT (127.0.0.1) instead of launching one; needs "
            "--tor-socks. The node publishes its service there and leaves that tor running when it stops.",
            min=1, max=65535, show_default=False, rich_help_panel=_TOR_FLAGS,
        ),
    ] = None,
    tor_cookie: Annotated[
        Optional[Path],
        typer.Option(
            "--tor-cookie",
            help="Authenticate to --tor-control with this cookie FILE. Default: the cookie file tor announces.",
            show_default=False, rich_help_panel=_TOR_FLAGS,
        ),
    ] = None,
    tor_password: Annotated[
        Optional[str],
        typer.Option(
            "--tor-password",
            envvar="ONIONPOST_TOR_PASSWORD",
            help="Authenticate to --tor-control with this password (HashedControlPassword); the environment "
            "variable keeps it out of the process list.",
            show_default=False, rich_help_panel=_TOR_FLAGS,
        ),
    ] = None,
    tor_socks: Annotated[
        Optional[int],
        typer.Option(
            "--tor-socks",
            help="SOCKS PORT (127.0.0.1) of the --tor-control tor, used to forward to other onion nodes.",
            min=1, max=65535, show_default=False, rich_help_panel=_TOR_FLAGS,
        ),
    ] = None,
    trace: Annotated[
        Optional[Path],
        typer.Option(
            "--trace",
            help="Record what a relay operator sees (sessions, commands, queue ids, times) as JSON lines in FILE, for "
            "privacy measurements (docs/privacy.md). Only on a private test network: a loopback node, or an onion "
            "node with --testnet.",
            show_default=False,
        ),
    ] = None,
    workers: Annotated[
        int,
        typer.Option(
            "--workers",
            help="Run N backend processes that share the listen port (SO_REUSEPORT: the kernel spreads new "
            "connections among them), so all cores are used. Needs a PostgreSQL store (init --store); loopback nodes only.",
            min=1, max=256,
        ),
    ] = 1,
) -> None:
    """Run the node in the foreground until Ctrl-C or SIGTERM (exit status 0).

    An onion node (created with 'init --onion') launches its own tor under DATA/tor by default (bootstrap progress on stderr), or uses an existing one (--tor-control and --tor-socks). It prints the 'listening' line only once its onion service is published, forwards to other onion nodes through tor's SOCKS port (to loopback nodes directly), restarts a launched tor that dies, and on exit removes its service and stops the tor it launched.

    A loopback node ignores the Tor flags, with a warning.

    A balanced frontend ('init --onion --balanced') serves no client: it launches a tor and Onionbalance, which publish the master .onion with the introduction points of its backends ('init --onion --backend-of'), and prints one line once the master descriptor is published. A backend runs as any onion node and announces the master address.
    """
    from .datadir import DataDir
    from .onion import TorOptions
    from .server import run as serve

    level = getattr(logging, log_level.upper(), None)
    if not isinstance(level, int):
        _fail(f"unknown log level {log_level!r}")
    logging.basicConfig(level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("stem").setLevel(max(level, logging.WARNING))  # stem logs every control message
    directory = DataDir(data)
    config = _guard(directory.load_config)
    options = TorOptions(testnet=testnet, control_port=tor_control, cookie=tor_cookie, password=tor_password,
                         socks_port=tor_socks)
    if config.onion is None:
        if options.given():
            typer.echo(f"warning: {', '.join(options.given())} ignored: this node is not an onion node "
                       "(it listens on loopback only; create one with 'onionpost node init --onion')", err=True)
        options = TorOptions()
    else:
        for warning in _guard(options.check):
            typer.echo(f"warning: {warning}", err=True)
    if trace is not None and config.onion is not None and testnet is None:
        _fail("--trace records what a relay operator sees; it is only for a private test network "
              "(a loopback node, or an onion node with --testnet), never for a relay that serves people")

    def listening(node_address) -> None:
        print(f"onionpost node listening on {_host_port(config.host, config.port)} address {node_address}", flush=True)

    from .status import read_status

    if workers > 1 and config.store is None:
        _fail("--workers needs a PostgreSQL store (create the node with 'onionpost node init --store postgresql://...'): "
              "the SQLite store belongs to one process")
    if workers > 1 and config.onion is not None:
        _fail("--workers runs loopback backends; an onion node runs one process (see docs/operations.md)")
    live = _guard(lambda: read_status(directory)) if config.store is not None or directory.db_path.exists() else {}
    if live.get("running"):
        _fail(f"a node is already running on {data} (see 'onionpost node status --data {data}'); stop it first")
    if workers > 1:
        from .workers import run_workers

        node_address = _guard(directory.address)
        code = run_workers(
            workers,
            lambda worker, ready: _guard(lambda: _run_loop(serve(directory, ready, trace_path=trace, worker=worker))),
            lambda: listening(node_address),
        )
        raise typer.Exit(code)
    main = (_frontend(directory, options) if config.onion is not None and config.onion.frontend
            else serve(directory, listening, options, trace_path=trace))
    try:
        _guard(lambda: _run_loop(main))
    except KeyboardInterrupt:
        pass
    except typer.Exit as exc:
        _exit_if_blocked(exc.exit_code)
        raise
    _exit_if_blocked(0)


async def _frontend(directory, options) -> None:
    """Run a balanced frontend (tor and Onionbalance) until SIGINT or SIGTERM."""
    import signal

    from .frontend import run_frontend
    from .onion import print_progress

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    def published(master: str, backends: int) -> None:
        print(f"onionpost frontend published {master} for {backends} backend(s) address {directory.address()}",
              flush=True)

    await run_frontend(directory, options, published, print_progress, stop)


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _run_loop(main) -> None:
    """``asyncio.run`` without its final wait for the worker threads (see ``_exit_if_blocked``)."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(main)
    finally:
        try:
            tasks = asyncio.all_tasks(loop)
            for task in tasks:
                task.cancel()
            if tasks:
                loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            asyncio.set_event_loop(None)
            loop.close()  # shuts the default executor down without waiting


def _exit_if_blocked(code: int, grace: float = 2.0) -> None:
    """Exit now if a thread is still blocked in a tor call the node gave up on.

    Stopping while tor uploads the descriptor leaves stem waiting (up to its
    timeout) in a worker thread, which the interpreter would join at exit. By
    now the node has stopped, removed its service and stopped its tor, so
    nothing is lost by not waiting.
    """
    deadline = time.monotonic() + grace
    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join(max(0.0, deadline - time.monotonic()))
    if any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        logging.getLogger(__name__).info("not waiting for a tor call that was given up on")
        sys.stdout.flush()
        sys.stderr.flush()
        logging.shutdown()
        os._exit(code)


@app.command()
def status(
    data: DataOption,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Print aggregate counts: queues and stored messages (read from the database, running or not); open connections, established sessions and active subscriptions only while the node runs (it publishes them in status.json every second). An onion node also shows its onion address and, while it runs, its service state (bootstrapping, publishing, published, restarting)."""
    from .datadir import DataDir
    from .status import read_status

    directory = DataDir(data)
    config = _guard(directory.load_config)
    result = _guard(lambda: read_status(directory))
    if config.onion is not None:
        result["address"] = str(_guard(directory.address))
        if config.onion.frontend:
            result["instances"] = list(config.onion.instances)
        elif config.onion.backend:
            result["instance"] = _guard(directory.instance_address)
    if as_json:
        typer.echo(json.dumps(result))
        return
    if config.onion is not None:
        typer.echo(f"address: {result['address']}")
        if config.onion.frontend:
            typer.echo(f"role: Onionbalance frontend of {len(config.onion.instances)} backend(s): "
                       f"{', '.join(config.onion.instances) or 'none yet'}")
        elif config.onion.backend:
            typer.echo(f"role: backend (Onionbalance instance {result['instance']})")
        typer.echo(f"onion service: {result.get('onion_service', 'not running')}")
    typer.echo(f"running: {'yes' if result['running'] else 'no'}")
    typer.echo(f"queues: {result['queues']}")
    typer.echo(f"messages: {result['messages']}")
    if result["running"]:
        typer.echo(f"connections: {result['connections']}")
        typer.echo(f"sessions: {result['sessions']}")
        typer.echo(f"subscriptions: {result['subscriptions']}")
    else:
        typer.echo("connections: - (node not running)")
        typer.echo("sessions: - (node not running)")
        typer.echo("subscriptions: - (node not running)")
