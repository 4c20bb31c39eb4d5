"""The /proc helpers of the daemon benchmark (bench/daemon.py): links, wake-ups, CPU time."""

import os
import socket
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # bench/ is not installed

from bench import daemon  # noqa: E402


def test_link_sockets_counts_established_connections_to_one_port():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
    accepted = [server.accept()[0] for _ in clients]
    try:
        links = daemon.link_sockets(os.getpid(), port)
        assert len(links) == 3  # the accepted ends have the client's port as remote port, not ``port``
        clients.pop().close()
        assert daemon.link_sockets(os.getpid(), port) < links
        assert daemon.tcp_links(os.getpid(), port + 1 if port < 65535 else port - 1) == 0
    finally:
        for s in clients + accepted + [server]:
            s.close()


def test_cpu_and_wakeup_counters_of_this_process():
    before_switches, before_cpu = daemon.context_switches(os.getpid()), daemon.sched_seconds(os.getpid())
    sum(i * i for i in range(200_000))
    assert daemon.sched_seconds(os.getpid()) > before_cpu
    assert daemon.context_switches(os.getpid()) >= before_switches


def test_bench_passes_the_tor_switch_only_to_workloads_with_a_tor_part():
    assert daemon.TOR_PART is True
    import inspect

    assert "tor" in inspect.signature(daemon.run).parameters
