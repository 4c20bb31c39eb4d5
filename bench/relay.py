"""Workload 1: relay throughput and cost, onionpost node vs the raw aiohttp relay.

K sender/recipient pairs through one server process on loopback (see
``bench.loadgen`` for the client pattern); the node is also run with clients
limited to protocol 1.1 (every ACK signed), for the 1.2 saving in the same run.
For each server and each K:
delivered messages/s in a fixed window, p50/p99 send->deliver latency, the
server's CPU microseconds per delivered message (utime+stime of the server
process from /proc, all threads, read at the window's start and end) and its
RSS at the end of the window.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from onionpost.proto.versions import PROTOCOL_V1_1

from .common import (
    REPO,
    BenchError,
    NodeProcess,
    Result,
    Row,
    ServerProcess,
    cpu_seconds,
    free_port,
    percentile,
    python_env,
    ratio,
    rss_bytes,
    stop_pid,
    thread_cpu_seconds,
)

WINDOW = 8
"""Messages sent but not yet delivered, per pair."""


def workers_for(pairs: int) -> int:
    return 1 if pairs < 10 else 2


def run_load(mode: str, address: str, server_pid: int, pairs: int, seconds: float, pool: int, workdir: Path, window: int = WINDOW, extra: dict | None = None,
             cpu_of: dict | None = None) -> dict:
    """Run K pairs against a server; return throughput, latency and server cost.

    ``cpu_of``: more CPU counters read at the window's edges, ``{name: () -> seconds}``
    (e.g. a node's worker processes, or the database); each gives ``<name>_cpu_us_per_msg``.
    """
    cpu_of = cpu_of or {}
    nworkers = workers_for(pairs)
    shares = [pairs // nworkers + (1 if i < pairs % nworkers else 0) for i in range(nworkers)]
    procs = []
    try:
        for i, share in enumerate(shares):
            log = open(workdir / f"loadgen-{mode}-{pairs}-{i}.log", "ab")
            proc = subprocess.Popen(
                [sys.executable, "-m", "bench.loadgen"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, cwd=REPO, env=python_env(), text=True,
            )
            log.close()
            config = {"mode": mode, "address": address, "pairs": share, "window": window, "pool": pool, **(extra or {})}
            proc.stdin.write(json.dumps(config) + "\n")
            proc.stdin.flush()
            procs.append(proc)
        for proc in procs:
            line = proc.stdout.readline()
            if line.strip() != "ready":
                raise BenchError(f"load generator ({mode}, K={pairs}) failed during setup: {_log_tail(workdir, mode, pairs)}")
        rss_before = rss_bytes(server_pid)
        t0 = time.monotonic() + 0.5
        t1 = t0 + seconds
        for proc in procs:
            proc.stdin.write(f"go {t0} {t1}\n")
            proc.stdin.flush()
        time.sleep(max(0.0, t0 - time.monotonic()))
        cpu0 = cpu_seconds(server_pid)
        others0 = {name: read() for name, read in cpu_of.items()}
        threads0 = thread_cpu_seconds(server_pid)
        client_cpu0 = sum(cpu_seconds(p.pid) for p in procs)
        time.sleep(max(0.0, t1 - time.monotonic()))
        cpu1 = cpu_seconds(server_pid)
        others1 = {name: read() for name, read in cpu_of.items()}
        threads1 = thread_cpu_seconds(server_pid)
        client_cpu1 = sum(cpu_seconds(p.pid) for p in procs)
        rss_after = rss_bytes(server_pid)
        results = []
        for proc in procs:
            try:
                out, _ = proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                raise BenchError(f"load generator ({mode}, K={pairs}) did not finish") from None
            lines = [l for l in out.splitlines() if l.startswith("{")]
            if proc.returncode != 0 or not lines:
                raise BenchError(f"load generator ({mode}, K={pairs}) failed: {_log_tail(workdir, mode, pairs)}")
            results.append(json.loads(lines[-1]))
    finally:
        for proc in procs:
            stop_pid(proc, 5)
    delivered = sum(r["delivered"] for r in results)
    errors = [e for r in results for e in r["errors"]]
    if errors:
        raise BenchError(f"{mode}, K={pairs}: {sum(r['error_count'] for r in results)} error(s), e.g. {errors[0]}")
    if delivered == 0:
        raise BenchError(f"{mode}, K={pairs}: no message was delivered")
    latencies = [x for r in results for x in r["latencies"]]
    return {
        "pairs": pairs,
        "seconds": seconds,
        "delivered": delivered,
        "msgs_per_s": delivered / seconds,
        "p50_ms": 1000 * percentile(latencies, 50),
        "p99_ms": 1000 * percentile(latencies, 99),
        "server_cpu_us_per_msg": 1e6 * (cpu1 - cpu0) / delivered,
        "server_cpu_share": (cpu1 - cpu0) / seconds,
        "server_main_thread_us_per_msg": 1e6 * (threads1[0] - threads0[0]) / delivered,
        "server_other_threads_us_per_msg": 1e6 * (threads1[1] - threads0[1]) / delivered,
        "client_cpu_us_per_msg": 1e6 * (client_cpu1 - client_cpu0) / delivered,
        "server_rss_mib": rss_after / 2**20,
        "server_rss_before_mib": rss_before / 2**20,
        "client_processes": len(procs),
        **{f"{name}_cpu_us_per_msg": 1e6 * (others1[name] - others0[name]) / delivered for name in cpu_of},
    }


def _log_tail(workdir: Path, mode: str, pairs: int) -> str:
    text = ""
    for path in sorted(workdir.glob(f"loadgen-{mode}-{pairs}-*.log")):
        text += path.read_text(errors="replace")
    return text.strip()[-1500:] or "(no output)"


def run(quick: bool, workdir: Path) -> Result:
    ks = [1, 10] if quick else [1, 10, 100]
    seconds = 4.0 if quick else 10.0
    pool = 64 if quick else 128
    result = Result("relay")
    node = NodeProcess.init(workdir / "relay-node")
    raw = ServerProcess(["-m", "bench.raw_relay", "--port", str(free_port())], workdir / "raw-relay.log")
    try:
        node.start()
        raw.start()
        raw_address = raw.line.split(" on ")[1].strip()
        for k in ks:
            ours = run_load("node", node.address, node.pid, k, seconds, pool, workdir)
            old = run_load("node", node.address, node.pid, k, seconds, pool, workdir, extra={"max_version": PROTOCOL_V1_1})
            base = run_load("raw", raw_address, raw.pid, k, seconds, pool, workdir)
            result.details[f"K={k}"] = {"onionpost": ours, "onionpost_1_1": old, "raw": base}
            result.rows += [
                Row("relay", f"K={k}: delivered msgs/s", ours["msgs_per_s"], base["msgs_per_s"], "raw aiohttp relay", "msg/s",
                    ratio(ours["msgs_per_s"], base["msgs_per_s"]), "≥ 10,000 msg/s" if k == ks[-1] else "",
                    ours["msgs_per_s"] >= 10000 if k == ks[-1] else None,
                    f"{ours['client_processes']} client process(es); client CPU {ours['client_cpu_us_per_msg']:.0f} µs/msg (raw: {base['client_cpu_us_per_msg']:.0f})"),
                Row("relay", f"K={k}: server CPU per delivered msg", ours["server_cpu_us_per_msg"], base["server_cpu_us_per_msg"],
                    "raw aiohttp relay", "µs", ratio(ours["server_cpu_us_per_msg"], base["server_cpu_us_per_msg"]), "≤ 2× raw",
                    ratio(ours["server_cpu_us_per_msg"], base["server_cpu_us_per_msg"]) <= 2.0,
                    f"node busy {100 * ours['server_cpu_share']:.0f}% of a core (event loop {ours['server_main_thread_us_per_msg']:.0f} µs/msg, "
                    f"store thread {ours['server_other_threads_us_per_msg']:.0f} µs/msg); node-CPU-bound ceiling ≈ {1e6 / ours['server_cpu_us_per_msg']:,.0f} msg/s per core"),
                Row("relay", f"K={k}: server CPU per delivered msg, protocol 1.2 vs 1.1", ours["server_cpu_us_per_msg"],
                    old["server_cpu_us_per_msg"], "the same node, clients limited to 1.1 (every ACK signed)", "µs",
                    ratio(ours["server_cpu_us_per_msg"], old["server_cpu_us_per_msg"]), "≤ 350 µs at K=10" if k == 10 else "",
                    ours["server_cpu_us_per_msg"] <= 350 if k == 10 else None,
                    f"1.2: GET and ACK of a subscribed queue unsigned (relay.md \"Signatures\"); 1.1 run: {old['msgs_per_s']:,.0f} msg/s"),
                Row("relay", f"K={k}: send→deliver p50", ours["p50_ms"], base["p50_ms"], "raw aiohttp relay", "ms",
                    ratio(ours["p50_ms"], base["p50_ms"]), note=f"window {WINDOW} undelivered msgs per pair"),
                Row("relay", f"K={k}: send→deliver p99", ours["p99_ms"], base["p99_ms"], "raw aiohttp relay", "ms",
                    ratio(ours["p99_ms"], base["p99_ms"])),
                Row("relay", f"K={k}: server RSS", ours["server_rss_mib"], base["server_rss_mib"], "raw aiohttp relay", "MiB",
                    ratio(ours["server_rss_mib"], base["server_rss_mib"])),
            ]
        node.check_log()
    finally:
        node.stop()
        raw.stop()
    return result


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("-k", type=int, action="append")
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="onionpost-bench-") as tmp:
        workdir = Path(tmp)
        node = NodeProcess.init(workdir / "node").start()
        raw = ServerProcess(["-m", "bench.raw_relay", "--port", str(free_port())], workdir / "raw.log").start()
        try:
            for k in args.k or [1, 10]:
                runs = (("node", node.address, node.pid, None), ("node-1.1", node.address, node.pid, {"max_version": PROTOCOL_V1_1}),
                        ("raw", raw.line.split(" on ")[1].strip(), raw.pid, None))
                for name, addr, pid, extra in runs:
                    r = run_load(name.split("-")[0], addr, pid, k, args.seconds, 64, workdir, extra=extra)
                    print(name, json.dumps(r))
        finally:
            node.stop()
            raw.stop()
