"""Workload: the node's stores side by side: SQLite (1 process), PostgreSQL (1 backend), PostgreSQL (2 backends).

The relay workload's load (``bench.loadgen``: K sender/recipient pairs, a
window of undelivered messages per pair) against three nodes in one run:
delivered messages/s and CPU per delivered message of the node's processes
(all workers) and, for PostgreSQL, of the database server (all its processes:
its CPU does the storage work the SQLite node does in-process). With two
backends (``node run --workers 2``, SO_REUSEPORT) a pair's sender and
recipient may land on different backends: their pushes then go through
LISTEN/NOTIFY. Scaling efficiency = msgs/s with N backends / (N × msgs/s with
one). The throwaway PostgreSQL cluster (``tests.pg_helpers``) runs with
fsync on, like the SQLite store's ``synchronous=FULL``.
"""

from __future__ import annotations

from pathlib import Path

from .common import NodeProcess, Result, Row, Skipped, ratio, tree_cpu_seconds
from .relay import run_load


def run(quick: bool, workdir: Path) -> Result:
    try:
        from tests.pg_helpers import PostgresCluster, PostgresMissing
    except ImportError as exc:  # psycopg (the postgres extra) is missing
        raise Skipped(f"the postgres extra is not installed ({exc})") from None
    ks = [10] if quick else [10, 50]
    seconds = 4.0 if quick else 10.0
    pool = 64 if quick else 128
    result = Result("stores")
    try:
        cluster = PostgresCluster(fsync=True).start()
    except PostgresMissing as exc:
        raise Skipped(str(exc)) from None
    nodes = []
    try:
        setups = [
            ("SQLite, 1 process", None, 1),
            ("PostgreSQL, 1 backend", cluster.url("bench1"), 1),
            ("PostgreSQL, 2 backends", cluster.url("bench2"), 2),
        ]
        figures: dict[tuple[str, int], dict] = {}
        for name, store, workers in setups:
            node = NodeProcess.init(workdir / f"node-{len(nodes)}", store=store, quota=100_000)
            nodes.append(node)
            node.start(args=("--workers", str(workers)) if workers > 1 else ())
            cpu_of = {"node": lambda pid=node.pid: tree_cpu_seconds(pid)}
            if store is not None:
                cpu_of["database"] = lambda: tree_cpu_seconds(cluster.proc.pid)
            for k in ks:
                figures[name, k] = run_load("node", node.address, node.pid, k, seconds, pool, workdir, cpu_of=cpu_of)
            node.check_log()
            node.stop()
        for k in ks:
            one = figures["PostgreSQL, 1 backend", k]["msgs_per_s"]
            sqlite = figures["SQLite, 1 process", k]
            for name, store, workers in setups:
                f = figures[name, k]
                db = f.get("database_cpu_us_per_msg", 0.0)
                result.details[f"{name}, K={k}"] = f
                result.rows.append(Row(
                    "stores", f"K={k} {name}: delivered msgs/s", f["msgs_per_s"], sqlite["msgs_per_s"], "SQLite, 1 process", "msg/s",
                    ratio(f["msgs_per_s"], sqlite["msgs_per_s"]),
                    note=f"p50 {f['p50_ms']:.1f} ms, p99 {f['p99_ms']:.1f} ms"
                    + (f"; scaling efficiency {f['msgs_per_s'] / (workers * one):.2f} (target ≥ 0.8)" if workers > 1 else ""),
                ))
                result.rows.append(Row(
                    "stores", f"K={k} {name}: node + database CPU per delivered msg", f["node_cpu_us_per_msg"] + db,
                    sqlite["node_cpu_us_per_msg"], "SQLite, 1 process", "µs",
                    ratio(f["node_cpu_us_per_msg"] + db, sqlite["node_cpu_us_per_msg"]),
                    note=f"node processes {f['node_cpu_us_per_msg']:.0f} µs" + (f", PostgreSQL {db:.0f} µs" if store else ""),
                ))
    finally:
        for node in nodes:
            node.stop()
        cluster.stop()
    return result
