"""A flood of new sessions from one source, and what it does to subscribed clients.

    python -m bench.flood [--pairs 20] [--interval 0.05] [--seconds 8] [--flooders 2] [--nice 10] [--kinds handshake,silent,idle]
                          [--nofile 1024]

Loopback only, bounded in time and count. For each flood kind and for two node settings (the
defaults of ``connections`` in node.json, and admission limits lifted), it starts a node, connects
``pairs`` subscribed recipient/sender pairs (each sender sends one message every ``interval``
seconds), then measures send-to-delivery latency before the flood, during it (``flooders``
processes opening connections as fast as they can for ``seconds``) and after it. Flood kinds:

* ``handshake``: open, complete the handshake, close, again;
* ``silent``: open TCP connections and say nothing (held until the end);
* ``idle``: complete the handshake and keep the session open (at most 20,000).

Prints, per run: latency p50/p99/max in each phase, the node's CPU share in each phase, and the
flood's attempts, completed handshakes and 503 refusals per second; then the node's CPU time per
completed handshake.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import REPO, NodeProcess, cpu_seconds, percentile, python_env, stop_pid

LIFTED = {"max_pending": 1_000_000, "rate": 1_000_000.0, "burst": 1_000_000}
MAX_HELD = 20_000


# --- the flooder (a child process) -------------------------------------------------------------


async def flood(address: str, seconds: float, kind: str, concurrency: int) -> dict:
    import aiohttp

    from onionpost.proto import NEED_DATA, BLOCK_SIZE, ClientSession, Connected, parse_node_address
    from onionpost.transport.connector import WEBSOCKET_PATH

    node = parse_node_address(address)
    counts = {"attempts": 0, "handshakes": 0, "refused": 0, "failed": 0}
    held: list = []
    deadline = time.monotonic() + seconds
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, force_close=True))

    async def one() -> None:
        counts["attempts"] += 1
        if kind == "silent":
            try:
                _, writer = await asyncio.wait_for(asyncio.open_connection(node.host, node.port), 5)
            except (OSError, asyncio.TimeoutError):
                counts["failed"] += 1
                return
            if len(held) < MAX_HELD:
                held.append(writer)
            else:
                writer.close()
            return
        try:
            ws = await http.ws_connect(f"http://{node.host}:{node.port}{WEBSOCKET_PATH}", max_msg_size=BLOCK_SIZE + 1, timeout=aiohttp.ClientWSTimeout(ws_close=1))
        except aiohttp.WSServerHandshakeError as exc:
            counts["refused" if exc.status == 503 else "failed"] += 1
            return
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError):
            counts["failed"] += 1
            return
        session = ClientSession(node.key)
        try:
            while True:
                msg = await asyncio.wait_for(ws.receive(), 10)
                if msg.type != aiohttp.WSMsgType.BINARY:
                    counts["failed"] += 1
                    await ws.close()
                    return
                session.receive_data(msg.data)
                event = session.next_event()
                out = session.data_to_send()
                if out:
                    await ws.send_bytes(out)
                if isinstance(event, Connected):
                    counts["handshakes"] += 1
                    break
                assert event is NEED_DATA
        except Exception:  # noqa: BLE001 - a flooder counts failures, whatever they are
            counts["failed"] += 1
            await ws.close()
            return
        if kind == "idle" and len(held) < MAX_HELD:
            held.append(ws)
        else:
            await ws.close()

    async def worker() -> None:
        while time.monotonic() < deadline:
            await one()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    for item in held:
        if isinstance(item, asyncio.StreamWriter):
            item.close()
        else:
            await item.close()
    await http.close()
    return counts


# --- the measured clients ------------------------------------------------------------------------


class Pairs:
    def __init__(self) -> None:
        self.latencies: list[tuple[float, float]] = []
        """(sent at, latency) of every delivery."""
        self.links: list = []
        self.sending = True
        self.acks: set[asyncio.Task] = set()

    def _acked(self, task: asyncio.Task) -> None:
        self.acks.discard(task)
        if not task.cancelled():
            task.exception()  # a lost ACK only means a redelivery; the bench does not care

    async def start(self, address: str, count: int) -> list:
        from onionpost.proto import Ack, New, SecureQueue, Subscribe, crypto, parse_node_address
        from onionpost.transport import RelayLink

        node = parse_node_address(address)
        senders = []
        for _ in range(count):
            rkey, rsecret = crypto.signing_keypair()
            dh_public, _ = crypto.dh_keypair()
            box: dict = {}

            def on_push(queue, response, box=box, rsecret=rsecret) -> None:
                if getattr(response, "mid", None) is None:
                    return
                sent = box["sent"].pop(0) if box["sent"] else None
                if sent is not None:
                    self.latencies.append((sent, time.perf_counter() - sent))
                ack = box["recipient"].request_many([(Ack(response.mid), queue, rsecret)], timeout=30)
                task = asyncio.get_running_loop().create_task(ack)  # not awaited here: the push comes from the read loop
                self.acks.add(task)
                task.add_done_callback(self._acked)

            recipient = await RelayLink.connect(node, on_push=on_push)
            box["recipient"], box["sent"] = recipient, []
            ids = await recipient.request(New(rkey, dh_public), None, rsecret)
            skey, ssecret = crypto.signing_keypair()
            await recipient.request(SecureQueue(skey), ids.rid, rsecret)
            await recipient.request(Subscribe(), ids.rid, rsecret)
            sender = await RelayLink.connect(node)
            self.links += [recipient, sender]
            senders.append((sender, ids.snd, ssecret, box))
        return senders

    async def send_loop(self, senders: list, interval: float) -> None:
        from onionpost.proto import Send

        body = os.urandom(15232)

        async def one(sender, snd, secret, box) -> None:
            while self.sending:
                box["sent"].append(time.perf_counter())
                try:
                    await sender.request(Send(body), snd, secret, timeout=30)
                except Exception:  # noqa: BLE001 - a failed send shows as a missing delivery
                    box["sent"].pop()
                await asyncio.sleep(interval)

        await asyncio.gather(*(one(*s) for s in senders))

    async def close(self) -> None:
        for link in self.links:
            await link.close()


def summary(latencies: list[tuple[float, float]], start: float, end: float) -> str:
    values = [lat * 1000 for sent, lat in latencies if start <= sent < end]
    if not values:
        return "no deliveries"
    return (f"{len(values):>5} delivered, p50 {percentile(values, 50):6.1f} ms, p99 {percentile(values, 99):7.1f} ms, "
            f"max {max(values):7.1f} ms")


async def measure(address: str, pid: int, args, kind: str) -> dict:
    pairs = Pairs()
    senders = await pairs.start(address, args.pairs)
    sending = asyncio.ensure_future(pairs.send_loop(senders, args.interval))
    marks = {}

    async def phase(name: str, seconds: float, flooders: list | None = None) -> None:
        cpu, t0 = cpu_seconds(pid), time.perf_counter()
        if flooders is None:
            await asyncio.sleep(seconds)
        else:
            await asyncio.gather(*(asyncio.to_thread(p.wait, seconds + 60) for p in flooders))
        t1 = time.perf_counter()
        marks[name] = (t0, t1, (cpu_seconds(pid) - cpu) / (t1 - t0))

    await phase("before", 4)
    started = time.perf_counter()
    flooders = [
        subprocess.Popen(["nice", "-n", str(args.nice), sys.executable, "-m", "bench.flood", "--flooder", address,
                          "--seconds", str(args.seconds), "--kinds", kind, "--concurrency", str(args.concurrency)],
                         stdout=subprocess.PIPE, cwd=REPO, env=python_env())
        for _ in range(args.flooders)
    ]
    try:
        await phase("during", args.seconds, flooders)
    finally:
        for proc in flooders:
            stop_pid(proc)
    flood_seconds = time.perf_counter() - started
    counts = {"attempts": 0, "handshakes": 0, "refused": 0, "failed": 0}
    for proc in flooders:
        for key, value in json.loads(proc.stdout.read() or b"{}").items():
            counts[key] += value
        proc.stdout.close()
    await phase("after", 4)
    pairs.sending = False
    await asyncio.wait({sending}, timeout=40)
    await asyncio.sleep(1)
    await pairs.close()
    return {"marks": marks, "latencies": pairs.latencies, "counts": counts, "flood_seconds": flood_seconds}


def run_one(args, kind: str, lifted: bool, workdir: Path) -> None:
    connections = dict(LIFTED) if lifted else {}
    node = NodeProcess.init(workdir / f"{kind}-{'lifted' if lifted else 'default'}", connections=connections, log_interval=5.0)
    node.start(prefix=("prlimit", f"--nofile={args.nofile}:{args.nofile}") if args.nofile else (), log_level="INFO")
    try:
        result = asyncio.run(measure(node.address, node.pid, args, kind))
    finally:
        node.stop()
    label = "admission limits lifted" if lifted else "default limits"
    counts, seconds = result["counts"], result["flood_seconds"]
    print(f"\n{kind} flood, {label}: {counts['attempts'] / seconds:.0f} attempts/s, "
          f"{counts['handshakes'] / seconds:.0f} handshakes/s, {counts['refused'] / seconds:.0f} refused (503)/s, "
          f"{counts['failed'] / seconds:.0f} failed/s")
    base_cpu = result["marks"]["before"][2]
    for name, (t0, t1, cpu) in result["marks"].items():
        print(f"  {name:<7} node CPU {cpu * 100:5.1f} %  {summary(result['latencies'], t0, t1)}")
    if counts["handshakes"]:
        during = result["marks"]["during"]
        extra = max(0.0, during[2] - base_cpu) * (during[1] - during[0])
        print(f"  node CPU per completed flood handshake: {extra / counts['handshakes'] * 1e6:.0f} µs")
    lines = node.log_path.read_text().splitlines()
    summaries = [line.split(": ", 1)[1] for line in lines if "in the last" in line]
    print(f"  node log: {len(lines)} lines, {len(node.log_path.read_text())} bytes" + (f"; last summary: {summaries[-1][:300]}" if summaries else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=20)
    parser.add_argument("--interval", type=float, default=0.05, help="seconds between two sends of a pair")
    parser.add_argument("--seconds", type=float, default=8.0, help="length of the flood")
    parser.add_argument("--flooders", type=int, default=2, help="flooding processes")
    parser.add_argument("--kinds", default="handshake,silent,idle")
    parser.add_argument("--concurrency", type=int, default=64, help="connections each flooder opens at once")
    parser.add_argument("--nice", type=int, default=10,
                        help="niceness of the flooders: on a real node the flood's own crypto runs on the attacker's machines, "
                        "not on the node's cores (0: let them compete with the node)")
    parser.add_argument("--flooder", metavar="ADDRESS", help=argparse.SUPPRESS)
    parser.add_argument("--no-lifted", action="store_true", help="only the default limits")
    parser.add_argument("--nofile", type=int, default=0, help="run the node with this RLIMIT_NOFILE (soft and hard), e.g. 1024")
    args = parser.parse_args()
    if args.flooder:
        print(json.dumps(asyncio.run(flood(args.flooder, args.seconds, args.kinds, args.concurrency))), flush=True)
        return
    print(f"{args.pairs} subscribed pairs, one 15 KB message per pair every {args.interval * 1000:.0f} ms; "
          f"{args.flooders} flooding processes (nice {args.nice}, {args.concurrency} connections at once each) "
          f"for {args.seconds:g} s; loopback, {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.kinds.split(","):
            for lifted in (False,) if args.no_lifted else (False, True):
                run_one(args, kind, lifted, Path(tmp))


if __name__ == "__main__":
    main()
