"""``onionpost node``: create, run and inspect a relay node.

Mounted by ``onionpost/cli.py``. Errors are one line on stderr and a
non-zero exit status, never a traceback.
"""

import asyncio
import json
import logging
import sqlite3
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from .config import ConfigError
from .datadir import DataDir, DataDirError
from .store import StoreError

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)

DataOption = Annotated[Path, typer.Option("--data", help="The node's data directory.", show_default=False)]


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=1)


def _guard(action):
    """Run ``action``, turning the errors users can cause into one line on stderr."""
    try:
        return action()
    except (DataDirError, ConfigError, StoreError) as exc:
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
) -> None:
    """Create a new node: identity key, node.json and an empty database in DATA."""
    directory = DataDir(data)
    _guard(lambda: directory.init(listen, access_key or ()))
    typer.echo(str(_guard(directory.address)))


@app.command()
def address(data: DataOption) -> None:
    """Print the node's address (onionpost://KEY@HOST:PORT)."""
    typer.echo(str(_guard(DataDir(data).address)))


@app.command()
def run(
    data: DataOption,
    log_level: Annotated[str, typer.Option(help="Logging level: DEBUG, INFO, WARNING or ERROR.")] = "INFO",
) -> None:
    """Run the node in the foreground until Ctrl-C or SIGTERM (exit status 0)."""
    from .server import run as serve

    level = getattr(logging, log_level.upper(), None)
    if not isinstance(level, int):
        _fail(f"unknown log level {log_level!r}")
    logging.basicConfig(level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    directory = DataDir(data)
    _guard(directory.load_config)

    def listening(node_address) -> None:
        print(f"onionpost node listening on {node_address.host}:{node_address.port} address {node_address}", flush=True)

    try:
        _guard(lambda: asyncio.run(serve(directory, listening)))
    except KeyboardInterrupt:
        pass


@app.command()
def status(
    data: DataOption,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Print aggregate counts: queues and stored messages (read from the database, running or not); sessions and active subscriptions only while the node runs (it publishes them in status.json every second)."""
    from .status import read_status

    directory = DataDir(data)
    _guard(directory.load_config)
    result = _guard(lambda: read_status(directory))
    if as_json:
        typer.echo(json.dumps(result))
        return
    typer.echo(f"running: {'yes' if result['running'] else 'no'}")
    typer.echo(f"queues: {result['queues']}")
    typer.echo(f"messages: {result['messages']}")
    if result["running"]:
        typer.echo(f"sessions: {result['sessions']}")
        typer.echo(f"subscriptions: {result['subscriptions']}")
    else:
        typer.echo("sessions: - (node not running)")
        typer.echo("subscriptions: - (node not running)")
