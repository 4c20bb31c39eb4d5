"""Workload 3: node memory at scale and restart time.

* per stored idle queue: N queues written straight into the node's database
  through ``node.sqlite_store.SQLiteQueueStore`` (for speed; the same rows NEW would
  write), then the node process is started and its RSS compared with an
  empty node's started the same way (baseline: the empty node).
* per connected idle client: C WebSocket sessions that completed the relay
  handshake (``transport.RelayLink``), RSS of the node before/after; the
  baseline is the raw aiohttp relay with the same number of idle WebSockets.
* per active subscription: S queues (inserted as above, with real recipient
  keys) subscribed with signed SUBs over 50 sessions (batched, 32 per block);
  RSS after the sessions opened vs after the SUBs. Baseline: the raw relay
  holding S subscriptions over 50 WebSockets.
* restart: time from spawning ``onionpost node run`` on a database holding N
  queues to its "listening" line and to a first PING answered, vs the same
  for an empty database.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import aiohttp

from .common import NodeProcess, Result, Row, ServerProcess, free_port, ratio, rss_bytes, settle_rss

KIB = 1024


def fill_queues(data_dir: Path, count: int, keys: list[tuple[bytes, bytes]] | None = None) -> list[bytes]:
    """Write ``count`` secured, idle queues into a (stopped) node's database; return their rids."""
    from onionpost.node.sqlite_store import SQLiteQueueStore
    from onionpost.node.store import QueueRecord

    store = SQLiteQueueStore(data_dir / "node.db")
    rids = []
    try:
        for start in range(0, count, 50_000):
            with store.transaction():
                for i in range(start, min(count, start + 50_000)):
                    r = os.urandom(112)
                    rkey = keys[i][0] if keys else r[48:80]
                    store.add_queue(QueueRecord(rid=r[:24], snd=r[24:48], rkey=rkey, skey=r[80:112], queue_key=r[56:88]))
                    if keys:
                        rids.append(r[:24])
    finally:
        store.close()
    return rids


async def _ping_time(address: str) -> float:
    from onionpost.proto import Ping, parse_node_address
    from onionpost.transport import RelayLink

    t0 = time.perf_counter()
    link = await RelayLink.connect(parse_node_address(address))
    await link.request(Ping())
    await link.close()
    return time.perf_counter() - t0


def start_timed(node: NodeProcess) -> tuple[float, float]:
    """Start ``node``; return (seconds to the listening line, seconds to the first PONG)."""
    t0 = time.perf_counter()
    node.start(timeout=300)
    listening = time.perf_counter() - t0
    asyncio.run(_ping_time(node.address))
    return listening, time.perf_counter() - t0


async def _open_links(address: str, count: int) -> list:
    from onionpost.proto import parse_node_address
    from onionpost.transport import RelayLink

    addr = parse_node_address(address)
    links = []
    for i in range(0, count, 100):
        links += await asyncio.gather(*(RelayLink.connect(addr) for _ in range(min(100, count - i))))
    return links


async def _open_raw(address: str, count: int) -> list:
    async def one():
        http = aiohttp.ClientSession()
        ws = await http.ws_connect(f"http://{address}/onionpost", max_msg_size=16385)
        await ws.send_bytes(b"N" + bytes(16383))
        await ws.receive()
        return http, ws

    conns = []
    for i in range(0, count, 100):
        conns += await asyncio.gather(*(one() for _ in range(min(100, count - i))))
    return conns


async def _close_raw(conns) -> None:
    for http, ws in conns:
        await ws.close()
        await http.close()


def idle_clients(workdir: Path, counts: list[int]) -> dict:
    out = {}
    for count in counts:
        node = NodeProcess.init(workdir / f"idle-node-{count}").start()
        raw = ServerProcess(["-m", "bench.raw_relay", "--port", str(free_port())], workdir / f"idle-raw-{count}.log").start()
        raw_address = raw.line.split(" on ")[1].strip()
        try:

            async def measure():
                before = settle_rss(node.pid)
                links = await _open_links(node.address, count)
                await asyncio.sleep(1.0)
                after = rss_bytes(node.pid)
                alive = sum(1 for l in links if l.is_open)
                for i in range(0, len(links), 200):
                    await asyncio.gather(*(l.close() for l in links[i : i + 200]))
                raw_before = settle_rss(raw.pid)
                conns = await _open_raw(raw_address, count)
                await asyncio.sleep(1.0)
                raw_after = rss_bytes(raw.pid)
                await _close_raw(conns)
                return before, after, alive, raw_before, raw_after

            before, after, alive, raw_before, raw_after = asyncio.run(measure())
            out[count] = {
                "node_rss_before_mib": before / 2**20, "node_rss_after_mib": after / 2**20, "sessions_open": alive,
                "node_bytes_per_client": (after - before) / count,
                "raw_bytes_per_client": (raw_after - raw_before) / count,
            }
        finally:
            node.stop()
            raw.stop()
    return out


def subscriptions(workdir: Path, count: int, sessions: int = 50) -> dict:
    from onionpost.proto import Subscribe, crypto

    keys = [crypto.signing_keypair() for _ in range(count)]
    node = NodeProcess.init(workdir / "subs-node")
    rids = fill_queues(node.data_dir, count, keys)
    node.start()
    raw = ServerProcess(["-m", "bench.raw_relay", "--port", str(free_port())], workdir / "subs-raw.log").start()
    raw_address = raw.line.split(" on ")[1].strip()
    try:

        async def measure():
            links = await _open_links(node.address, sessions)
            before = settle_rss(node.pid)
            per = count // sessions

            async def sub(j: int):
                link = links[j]
                mine = range(j * per, count if j == sessions - 1 else (j + 1) * per)
                commands = [(Subscribe(), rids[i], keys[i][1]) for i in mine]
                for k in range(0, len(commands), 256):
                    answers = await link.request_many(commands[k : k + 256])
                    bad = [a for a in answers if type(a).__name__ != "Ok"]
                    if bad:
                        raise RuntimeError(f"SUB answered {bad[0]}")

            await asyncio.gather(*(sub(j) for j in range(sessions)))
            await asyncio.sleep(1.0)
            after = rss_bytes(node.pid)
            await asyncio.gather(*(l.close() for l in links))
            conns = await _open_raw(raw_address, sessions)
            raw_before = settle_rss(raw.pid)

            async def raw_sub(j: int):
                http, ws = conns[j]
                for i in range(j, count, sessions):
                    await ws.send_bytes(b"S" + os.urandom(24) + bytes(16384 - 25))
                    await ws.receive()

            await asyncio.gather(*(raw_sub(j) for j in range(sessions)))
            await asyncio.sleep(1.0)
            raw_after = rss_bytes(raw.pid)
            await _close_raw(conns)
            return before, after, raw_before, raw_after

        before, after, raw_before, raw_after = asyncio.run(measure())
        node.check_log()
    finally:
        node.stop()
        raw.stop()
    return {
        "subscriptions": count, "sessions": sessions,
        "node_bytes_per_sub": (after - before) / count, "raw_bytes_per_sub": (raw_after - raw_before) / count,
    }


def stored_queues(workdir: Path, count: int) -> dict:
    empty = NodeProcess.init(workdir / f"empty-node-{count}")
    full = NodeProcess.init(workdir / f"node-{count}")
    t0 = time.perf_counter()
    fill_queues(full.data_dir, count)
    fill_seconds = time.perf_counter() - t0
    db_bytes = sum(p.stat().st_size for p in full.data_dir.glob("node.db*"))
    try:
        empty_listen, empty_pong = start_timed(empty)
        empty_rss = settle_rss(empty.pid, wait=1.0)
        full_listen, full_pong = start_timed(full)
        full_rss = settle_rss(full.pid, wait=1.0)
        # A restart proper: stop the node holding the queues and start it again.
        full.stop()
        re_listen, re_pong = start_timed(full)
        full.check_log()
    finally:
        empty.stop()
        full.stop()
    return {
        "queues": count, "fill_seconds": fill_seconds, "db_bytes_per_queue": db_bytes / count,
        "empty_rss_mib": empty_rss / 2**20, "full_rss_mib": full_rss / 2**20,
        "bytes_per_queue": (full_rss - empty_rss) / count,
        "empty_start_s": empty_listen, "empty_first_pong_s": empty_pong,
        "first_start_s": full_listen, "restart_s": re_listen, "restart_first_pong_s": re_pong,
    }


def run(quick: bool, workdir: Path) -> Result:
    result = Result("scale")
    queue_counts = [100_000] if quick else [100_000, 1_000_000]
    client_counts = [200] if quick else [1000, 5000]
    sub_count = 1000 if quick else 10_000
    for n in queue_counts:
        q = stored_queues(workdir, n)
        result.details[f"queues={n}"] = q
        result.rows.append(Row("scale", f"node RAM per stored idle queue ({n:,} queues)", q["bytes_per_queue"], None,
                               "", "bytes", None, "≤ 200 B", q["bytes_per_queue"] <= 200,
                               f"RSS {q['full_rss_mib']:.1f} MiB vs {q['empty_rss_mib']:.1f} MiB empty; on disk {q['db_bytes_per_queue']:.0f} B/queue"))
        result.rows.append(Row("scale", f"restart with {n:,} queues (spawn→listening)", q["restart_s"], q["empty_start_s"], "empty node", "s",
                               ratio(q["restart_s"], q["empty_start_s"]), "< 5 s" if n >= 1_000_000 else "", q["restart_s"] < 5 if n >= 1_000_000 else None,
                               f"spawn→first PONG {q['restart_first_pong_s']:.2f} s (empty: {q['empty_first_pong_s']:.2f} s); DB file in page cache"))
    idle = idle_clients(workdir, client_counts)
    for n, d in idle.items():
        result.details[f"idle_clients={n}"] = d
        result.rows.append(Row("scale", f"node RAM per idle client ({n:,} sessions)", d["node_bytes_per_client"] / KIB, d["raw_bytes_per_client"] / KIB,
                               "raw aiohttp relay", "KiB", ratio(d["node_bytes_per_client"], d["raw_bytes_per_client"]), "≤ 20 KiB",
                               d["node_bytes_per_client"] <= 20 * KIB, f"{d['sessions_open']} sessions open after handshake"))
    subs = subscriptions(workdir, sub_count)
    result.details["subscriptions"] = subs
    result.rows.append(Row("scale", f"node RAM per subscription ({sub_count:,} over {subs['sessions']} sessions)", subs["node_bytes_per_sub"] / KIB,
                           subs["raw_bytes_per_sub"] / KIB, "raw aiohttp relay", "KiB", ratio(subs["node_bytes_per_sub"], subs["raw_bytes_per_sub"]),
                           "≤ 0.5 KiB", subs["node_bytes_per_sub"] <= 512))
    return result


if __name__ == "__main__":
    import json
    import sys
    import tempfile

    with tempfile.TemporaryDirectory(prefix="onionpost-bench-") as tmp:
        r = run("--full" not in sys.argv, Path(tmp))
        for row in r.rows:
            print(row)
        print(json.dumps(r.details, indent=1))
