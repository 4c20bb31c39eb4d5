"""A node that forwards over Tor, for the Tor workload (``python -m bench.onion_node``).

It runs the node's own aiohttp application (``node.server.make_app``) from a
data directory made by ``onionpost node init``, with a
``transport.tor.TorConnector`` as its forwarding connector (so FWD to
``.onion`` nodes goes through the client tor's SOCKS port). It listens on
127.0.0.1 only; the benchmark publishes it as an onion service pointing at
that port. ``onionpost node run`` has an onion mode of its own
(``node/onion.py``: it launches or attaches to a tor and publishes the
service itself); the benchmark does not use it so that it controls every
onion service of the private network the same way, the bare HTTP server's
included.
"""

import argparse
import asyncio
import logging
import signal
import sys

from aiohttp import web

from onionpost.node.datadir import DataDir
from onionpost.node.server import make_app
from onionpost.node.sqlite_store import SQLiteQueueStore
from onionpost.transport.tor import TorConnector


async def main(args) -> None:
    directory = DataDir(args.data)
    config = directory.load_config()
    identity = directory.load_identity()
    app = make_app(config, identity, SQLiteQueueStore(directory.db_path), connector=TorConnector(socks_port=args.socks_port))
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, config.host, config.port).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"onion node listening on {config.host}:{config.port} key {identity.public.hex()}", flush=True)
    await stop.wait()
    await runner.cleanup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True)
    parser.add_argument("--socks-port", type=int, required=True)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    asyncio.run(main(parser.parse_args()))
