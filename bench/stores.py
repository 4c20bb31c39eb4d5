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

from .common import NodeProcess, Result, Row, Skipped, ratio, rss_bytes, settle_rss, tree_cpu_seconds
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
        restart = _restart_with_queues(nodes[1], cluster, "bench1", 100_000 if quick else 1_000_000)
        result.details["restart"] = restart
        result.rows.append(Row(
            "stores", f"PostgreSQL: restart with {restart['queues']:,} queues (spawn→listening)", restart["restart_s"],
            restart["empty_s"], "same node, empty store", "s", ratio(restart["restart_s"], restart["empty_s"]),
            note=f"node RSS {restart['rss_mib']:.0f} MiB (empty: {restart['empty_rss_mib']:.0f} MiB); queues table + indexes "
                 f"{restart['bytes_per_queue']:.0f} B/queue on disk",
        ))
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


def _restart_with_queues(node: NodeProcess, cluster, database: str, count: int) -> dict:
    """Start ``node`` (stopped) on its store as it is, then with ``count`` more queues: time to listening, RSS, disk per queue.

    Nothing is loaded at startup on either store; this shows what the database adds (connection, schema check).
    """
    import psycopg

    node.start()
    empty_s, empty_rss = node.started_in, settle_rss(node.pid)
    node.stop()
    with psycopg.connect(cluster.url(database), autocommit=True) as db:
        db.execute(
            "INSERT INTO queues (rid, snd, rkey, skey, queue_key) SELECT substr(sha256(int8send(i)), 1, 24), "
            "substr(sha256(int8send(-i)), 1, 24), sha256(int8send(i + 1)), sha256(int8send(i + 2)), sha256(int8send(i + 3)) "
            "FROM generate_series(1, %s) AS i",
            (count,),
        )
        db.execute("VACUUM ANALYZE queues")
        total = db.execute("SELECT pg_total_relation_size('queues'), count(*) FROM queues").fetchone()
    node.start()
    try:
        restart_s, rss = node.started_in, settle_rss(node.pid)
    finally:
        node.stop()
    return {"queues": total[1], "empty_s": empty_s, "restart_s": restart_s, "empty_rss_mib": empty_rss / 2**20,
            "rss_mib": rss / 2**20, "bytes_per_queue": total[0] / total[1]}
