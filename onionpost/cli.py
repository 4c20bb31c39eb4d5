"""``onionpost``: the project's one command. Mounts the node, testnet and client commands.

This module only composes the sub-apps; each lives with its package
(``node.cli``, ``torconfig.cli``, ``client.cli``), and node and client never
import each other.
"""

import signal
from pathlib import Path
from typing import Annotated, Optional

import typer

from onionpost.client.cli import register as register_client
from onionpost.lab.cli import app as lab_app
from onionpost.node.cli import app as node_app
from onionpost.torconfig.cli import app as testnet_app

app = typer.Typer(
    name="onionpost",
    help="Private chat over one-directional queues on Tor onion relays.\n\n"
    "The password for your data comes from a prompt, or from $ONIONPOST_PASSWORD.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: on/off flags show as flags, not '<bool>'
    add_completion=False,
)
app.add_typer(node_app, name="node", help="Run and inspect a relay node.")
app.add_typer(testnet_app, name="testnet", help="A private Tor network on 127.0.0.1 for tests and the demo.")
app.add_typer(lab_app, name="lab", help="The traffic-correlation lab: scripted users, attacks, reports (docs/lab.md).")
register_client(app)


@app.command()
def demo(
    keep: Annotated[bool, typer.Option("--keep", help="Keep the working directory (logs, homes, invitation PNG).")] = False,
    workdir: Annotated[Optional[Path], typer.Option("--dir", help="Work in this directory instead of a temporary one.")] = None,
) -> None:
    """Private Tor network + two onion relays + two people: invite, connect, talk, show the circuits."""
    from .demo import main as run_demo

    raise typer.Exit(run_demo(keep=keep, workdir=workdir))


def main() -> None:
    # Ctrl-C stops a command even when the parent started us with SIGINT ignored (a shell's
    # background job, some CI runners): Python only installs its handler when SIGINT is not ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    app()


if __name__ == "__main__":
    main()
