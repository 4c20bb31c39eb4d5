"""tcpdump on loopback, for real: a TCP connection's data both ways becomes signed sizes.

Skipped where tcpdump is missing or may not capture (the guard-link capture
then falls back to tor's events; tests/tor/test_tor_guardlink.py covers both).
"""

import socket
import threading
import time

import pytest

from onionpost.lab import guardlink

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def connection():
    server = socket.create_server(("127.0.0.1", 0))
    accepted = []
    thread = threading.Thread(target=lambda: accepted.append(server.accept()[0]))
    thread.start()
    client = socket.create_connection(server.getsockname())
    thread.join(10)
    try:
        yield client, accepted[0], server.getsockname()[1]
    finally:
        for s in (client, accepted[0], server):
            s.close()


def received(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        data += sock.recv(n - len(data))
    return data


def test_tcpdump_sees_a_loopback_connection_both_ways(connection, tmp_path):
    if not guardlink.tcpdump_usable():
        pytest.skip("tcpdump is not installed")
    client, served, port = connection
    pcap = tmp_path / "c.pcap"
    try:
        proc = guardlink._start_tcpdump(pcap, [port], "lo", 10.0)
    except guardlink.CaptureError as exc:
        pytest.skip(f"capturing is not allowed here: {exc}")
    try:
        before = time.time()
        client.sendall(b"u" * 3000)
        received(served, 3000)
        served.sendall(b"d" * 700)
        received(client, 700)
    finally:
        guardlink._stop_tcpdump(proc, pcap)
    assert proc.poll() is not None
    packets = guardlink.pcap_packets(pcap, [(client.getsockname()[1], port)])
    assert sum(s for _, s in packets if s > 0) == 3000
    assert sum(-s for _, s in packets if s < 0) == 700
    assert all(before - 1 <= t <= time.time() + 1 for t, _ in packets)
    # The same pcap read from the server's end: the other connection of the pair is not the client's.
    assert guardlink.pcap_packets(pcap, [(port, client.getsockname()[1])])[0][1] < 0


def test_tcpdump_that_cannot_capture_says_why(tmp_path):
    if not guardlink.tcpdump_usable():
        pytest.skip("tcpdump is not installed")
    with pytest.raises(guardlink.CaptureError, match="tcpdump cannot capture"):
        guardlink._start_tcpdump(tmp_path / "x.pcap", [9], "no-such-if0", 10.0)
    assert not (tmp_path / "x.pcap").exists()
