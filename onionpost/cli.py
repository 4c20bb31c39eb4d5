"""``onionpost``: the project's one command. Mounts the node, testnet and client commands.

This module only composes the sub-apps; each lives with its package
(``node.cli``, ``torconfig.cli``, ``client.cli``), and node and client never
import each other.
"""

import importlib

import typer

app = typer.Typer(
    name="onionpost",
    help="Private chat over one-directional queues on Tor onion relays.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _mount(module: str, name: str, help_text: str) -> None:
    try:
        sub = importlib.import_module(module).app
    except (ImportError, AttributeError):
        return  # that part is not built yet
    app.add_typer(sub, name=name, help=help_text)


_mount("node.cli", "node", "Run and inspect a relay node.")
_mount("torconfig.cli", "testnet", "A private Tor network on 127.0.0.1 for tests and the demo.")

try:
    from client.cli import register as _register_client
except ImportError:
    _register_client = None
if _register_client is not None:
    _register_client(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
