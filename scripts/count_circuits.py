#!/usr/bin/env python3
"""How many Tor circuits (and how much tor memory) a client with N contacts holds.

On a private Tor network (started here, or ``--testnet DIR``), one onion relay
and one client tor: the client creates 2 queues per contact (one inbound and
one outbound for each contact, as the agent does) and subscribes all of them
through ``client.network.Network`` over Tor, with the chosen isolation mode.
It then counts, through tor's control port, the circuits that carry the queue
links' streams, all built circuits, and the client tor's RSS.

    python3 scripts/count_circuits.py --contacts 50
    python3 scripts/count_circuits.py --contacts 50 --isolation contact --json

Measurement only: it prints figures and exits 0 unless something breaks.
"""

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path


from onionpost.client.network import Network, TrustedRelay
from onionpost.client.tor import ISOLATION_MODES
from onionpost.demo import RelayProcess
from onionpost.torconfig.control import TorControl
from onionpost.torconfig.launch import start_tor
from onionpost.torconfig.testnet import PrivateTorNetwork
from onionpost.transport.tor import TorConnector


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def measure(testnet: Path, work: Path, contacts: int, isolation: str) -> dict:
    relay = RelayProcess(work / "relay", testnet)
    relay.init()
    relay.start()
    tor = None
    try:
        address = relay.wait_listening()
        tor = await asyncio.to_thread(start_tor, work / "client-tor", testnet_dir=testnet, socks=True)
        baseline_kib = rss_kib(tor.pid)
        control = await TorControl.connect(tor.control_port, cookie_path=tor.control_cookie_path)
        network = Network([TrustedRelay(address)], connector=TorConnector(socks_port=tor.socks_port),
                          isolation=isolation, timeout=120)
        try:
            started = time.monotonic()
            queues = await asyncio.gather(*(network.create_queue(network.trusted[0]) for _ in range(2 * contacts)))
            for index, queue in enumerate(queues):  # queue 2i and 2i+1 belong to contact i
                network.contact_tags[queue.rid] = f"contact:{index // 2}"
            await asyncio.gather(*(network.subscribe(queue) for queue in queues))
            elapsed = time.monotonic() - started
            await asyncio.sleep(2)  # let short-lived circuits (descriptor fetches, introductions) close
            streams = [s for s in await control.streams() if s.circuit_id]
            circuits = await control.circuits()
            built = [c for c in circuits if c.status == "BUILT"]
            carrying = {s.circuit_id for s in streams}
            return {
                "contacts": contacts,
                "queues": len(queues),
                "isolation": isolation,
                "queue_links": sum(1 for link in network._links.values() if link.is_open),  # noqa: SLF001
                "circuits_carrying_queue_streams": len(carrying),
                "circuits_built": len(built),
                "circuits_by_purpose": {p: sum(1 for c in built if c.purpose == p) for p in sorted({c.purpose or "?" for c in built})},
                "tor_rss_kib": rss_kib(tor.pid),
                "tor_rss_kib_before": baseline_kib,
                "seconds_to_create_and_subscribe": round(elapsed, 1),
            }
        finally:
            await network.close()
            await control.close()
    finally:
        if tor is not None:
            tor.stop()
        relay.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--contacts", type=int, default=50, help="contacts (2 queues each); default 50")
    parser.add_argument("--isolation", choices=ISOLATION_MODES, default="queue")
    parser.add_argument("--testnet", type=Path, help="use this running private network instead of starting one")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    if args.contacts < 1:
        parser.error("--contacts must be at least 1")
    with tempfile.TemporaryDirectory(prefix="onionpost-circuits-") as tmp:
        work = Path(tmp)
        network = None
        if args.testnet is None:
            network = PrivateTorNetwork(work / "testnet")
            print("starting a private Tor network ...", file=sys.stderr)
            network.up()
        try:
            result = asyncio.run(measure(args.testnet or network.directory, work, args.contacts, args.isolation))
        finally:
            if network is not None:
                network.down()
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{result['contacts']} contacts, {result['queues']} queues, isolation per {result['isolation']}:")
        print(f"  open queue links:                 {result['queue_links']}")
        print(f"  circuits carrying queue streams:  {result['circuits_carrying_queue_streams']}")
        print(f"  circuits built in all:            {result['circuits_built']}  {result['circuits_by_purpose']}")
        print(f"  client tor RSS:                   {result['tor_rss_kib'] / 1024:.1f} MiB "
              f"(before: {result['tor_rss_kib_before'] / 1024:.1f} MiB)")
        print(f"  create + subscribe all queues:    {result['seconds_to_create_and_subscribe']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
