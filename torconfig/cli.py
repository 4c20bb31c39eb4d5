"""``onionpost testnet``: manage a private Tor network on 127.0.0.1."""

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import typer

from onionpost.torconfig.progress import print_progress
from onionpost.torconfig.testnet import DEFAULT_RELAYS, PrivateTorNetwork

app = typer.Typer(
    help="Run a private Tor network (3 directory authorities + relays) on 127.0.0.1.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: on/off flags show as flags, not '<bool>'
)

DirOption = typer.Option(..., "--dir", help="Directory holding the network's keys and state.")


def _fail(message: str) -> NoReturn:
    typer.echo("error: " + " ".join(message.split()), err=True)
    raise typer.Exit(1)


@contextlib.contextmanager
def _errors(interrupted: str = "interrupted") -> Iterator[None]:
    """Turn any error into one line on stderr and exit code 1."""
    try:
        yield
    except (typer.Exit, typer.Abort):
        raise
    except KeyboardInterrupt:
        _fail(interrupted)
    except Exception as exc:  # noqa: BLE001 - the CLI must never show a traceback
        _fail(str(exc) or type(exc).__name__)


def _summary(status: dict) -> str:
    lines = [f"network {status['status']} in {status['directory']}"]
    for node in status["nodes"]:
        ports = f"or {node['or_port']}" + (f" dir {node['dir_port']}" if node["dir_port"] else "")
        ports += f" control {node['control_port']}" if node.get("control_port") else ""
        state = "killed" if node.get("removed") else "alive" if node["alive"] else "DEAD"
        lines.append(f"  {node['name']:<8} {node['role']:<9} pid {node['pid']:<7} {state:<6} {ports}")
    if status.get("consensus"):
        lines.append(f"consensus valid-after {status['consensus']['valid_after']} UTC, "
                     f"{status['consensus']['routers']} routers")
    if status.get("stray_pids"):
        lines.append(f"stray tor processes without a state file: {status['stray_pids']}")
    return "\n".join(lines)


@app.command()
def up(directory: Path = DirOption,
       relays: int = typer.Option(DEFAULT_RELAYS, "--relays", help="Relays besides the 3 authorities.")) -> None:
    """Start the network; return once onion services can use it."""
    start = time.monotonic()
    with _errors("interrupted; the network was stopped"):
        network = PrivateTorNetwork(directory, relays)
        status = network.up(lambda message, percent: print_progress(message, percent, label="testnet"))
    typer.echo(_summary(status))
    typer.echo(f"usable after {time.monotonic() - start:.1f} s")


@app.command()
def status(directory: Path = DirOption,
           as_json: bool = typer.Option(False, "--json", help="Print the status as JSON.")) -> None:
    """Show the network's processes, ports and consensus."""
    with _errors():
        result = PrivateTorNetwork(directory).status()
    typer.echo(json.dumps(result, indent=2) if as_json else _summary(result))


@app.command()
def down(directory: Path = DirOption) -> None:
    """Stop every process of the network (keys are kept for a fast restart)."""
    with _errors():
        stopped = PrivateTorNetwork(directory).down()
    typer.echo("network stopped" if stopped else "no network was running")


@app.command("kill-relay")
def kill_relay(name: str = typer.Argument(..., help="Relay to kill, e.g. relay0 (see `testnet status`)."),
               directory: Path = DirOption) -> None:
    """Kill one relay (SIGKILL) and have the authorities drop it, as when a relay dies on the real network."""
    with _errors():
        seconds = PrivateTorNetwork(directory).kill_relay(name)
    typer.echo(f"{name} killed; the authorities dropped it from the consensus after {seconds:.1f} s")
