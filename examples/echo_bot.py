#!/usr/bin/env python3
"""An onionpost bot: answers every message with "echo: " and its text.

It talks to a running ``onionpost daemon`` over its JSON-RPC socket
(docs/api.md) and remembers the id of the last event it handled in a state
file, so that after a restart (its own, or the daemon's) it resubscribes with
``since`` and misses nothing.

    python examples/echo_bot.py --home ~/.local/share/onionpost [--state echo-bot.state]
"""

import argparse
import asyncio
import sys
from pathlib import Path

from onionpost.client.rpc import AsyncDaemonClient, RpcError


def load(state: Path) -> int | None:
    try:
        return int(state.read_text())
    except (FileNotFoundError, ValueError):
        return None


def save(state: Path, event_id: int) -> None:
    temporary = state.with_suffix(".tmp")
    temporary.write_text(str(event_id))
    temporary.replace(state)  # atomic: a crash leaves the old id or the new one


async def serve(home: Path, state: Path) -> None:
    delay = 0.5
    while True:
        try:
            client = await AsyncDaemonClient.connect(home)
        except OSError:
            await asyncio.sleep(delay)  # the daemon is not (yet) running
            delay = min(delay * 2, 10.0)
            continue
        delay = 0.5
        try:
            await client.call("events.subscribe", since=load(state))
            print("echo bot: listening", flush=True)
            async for event in client.events():
                if event["kind"] == "message":
                    try:
                        await client.call("send", profile=event["profile"], contact=event["contact"],
                                          text=f"echo: {event['text']}")
                    except RpcError as exc:
                        print(f"echo bot: could not answer {event['contact']}: {exc}", file=sys.stderr, flush=True)
                save(state, event["id"])
        except ConnectionError:
            pass  # the daemon went away: reconnect and resume from the saved id
        finally:
            await client.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", required=True, type=Path, help="the daemon's home folder")
    parser.add_argument("--state", type=Path, help="where to keep the last event id (default: HOME/echo-bot.state)")
    args = parser.parse_args()
    try:
        asyncio.run(serve(args.home, args.state or args.home / "echo-bot.state"))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
