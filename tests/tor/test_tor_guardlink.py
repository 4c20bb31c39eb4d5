"""The guard-link observer on the private Tor network (onionpost.lab.guardlink).

A real onion relay (``node run --testnet --trace``) and two real client
daemons, each with its own tor. Alice's guard link is captured twice at once:
with the best source this machine allows (tcpdump where capturing is
permitted) and with tor's control-port events (the fallback). While she sends
a few messages, both captures must see her link carry data both ways at the
times of the sends (the SEND out, the receipt back).
"""

import subprocess
import sys
import time
from pathlib import Path

import pytest

from onionpost.client.db import open_database
from onionpost.client.profiles import add_relay, create_profile
from onionpost.lab import guardlink
from onionpost.lab.population import PASSWORD, Person
from tests.tor.tor_helpers import assert_all_stopped

pytestmark = [pytest.mark.tor, pytest.mark.timeout(600)]

MESSAGES = 3


def may_capture() -> bool:
    """This process holds CAP_NET_RAW (bit 13), as root does."""
    status = Path("/proc/self/status").read_text()
    effective = next(line.split()[1] for line in status.splitlines() if line.startswith("CapEff:"))
    return bool(int(effective, 16) >> 13 & 1)


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        assert time.monotonic() < deadline, f"timed out: {what}"
        time.sleep(0.3)
    return result


def delivered(person: Person, contact: str, texts: set[str]) -> bool:
    rows = person.call("history", contact=contact, limit=50)
    return texts <= {r["text"] for r in rows if r["direction"] == "out" and r["state"] == "delivered"}


@pytest.fixture
def relay(tor_network, tmp_path):
    data = tmp_path / "relay"
    onionpost = [sys.executable, "-m", "onionpost", "node"]
    subprocess.run([*onionpost, "init", "--data", str(data), "--onion"], check=True, capture_output=True, timeout=60)
    address = subprocess.run([*onionpost, "address", "--data", str(data)], check=True, capture_output=True,
                             text=True, timeout=60).stdout.strip()
    proc = subprocess.Popen([*onionpost, "run", "--data", str(data), "--trace", str(tmp_path / "trace.jsonl"),
                             "--testnet", str(tor_network.directory)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        assert "listening" in proc.stdout.readline(), "the relay did not start"
        yield address
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        proc.stdout.close()


@pytest.fixture
def people(tor_network, relay, tmp_path):
    people = []
    for name in ("alice", "bob"):
        db = open_database(tmp_path / name, PASSWORD, create=True)
        add_relay(db, create_profile(db, name), relay)
        db.close()
        # Always-connected links: the test times each message to its receipt, which gaps would stretch.
        people.append(Person(name, tmp_path / name, ("--testnet", str(tor_network.directory), "--link-gap", "0")))
    try:
        for person in people:
            person.launch()
        for person in people:
            person.wait_ready()
        alice, bob = people
        link = alice.call("invite", link_only=True, auto_accept=True)["link"]
        bob.call("connect", link=link, alias="alice")
        wait_for(lambda: all(c["state"] == "connected" for p in people for c in p.call("contacts"))
                 and all(p.call("contacts") for p in people), 240, "alice and bob connected")
        yield alice, bob
    finally:
        pids = []
        for person in people:
            try:
                pids.append(guardlink.client_tor(person.home)[0])
            except guardlink.CaptureError:
                pass
            person.leave()
        for person in people:
            person.stop()
        assert_all_stopped(pids, timeout=15)


def test_a_guard_link_capture_sees_both_directions_at_the_sends(people, tmp_path):
    alice, bob = people
    pid, port, cookie = guardlink.client_tor(alice.home)
    best = guardlink.start_capture(tmp_path / "flows", name="alice", tor_pid=pid, control_port=port,
                                   cookie_path=cookie)
    events = guardlink.start_capture(tmp_path / "flows", name="alice-events", tor_pid=pid, control_port=port,
                                     cookie_path=cookie, source="control")
    try:
        assert events.source == "control"
        assert any(c.guard for c in best.connections), "no connection to a first hop of alice's circuits"
        spans = []  # (sent, delivered): the link must carry the SEND and the receipt in between
        for k in range(MESSAGES):
            text = f"observed {k}"
            sent = time.time()
            alice.call("send", contact="bob", text=text)
            wait_for(lambda: delivered(alice, "bob", {text}), 120, f"{text!r} delivered")
            spans.append((sent, time.time()))
            time.sleep(1.5)  # apart by more than the control events' 1 s bins
        wait_for(lambda: (events.latest() or 0) > spans[-1][1], 30, "the events' bins after the last receipt")
    finally:
        paths = [best.stop(), events.stop()]
    best_flow, event_flow = (guardlink.read_flow(p) for p in paths)
    if guardlink.tcpdump_usable() and may_capture():
        assert best_flow.source == "tcpdump", best.fallback_reasons
    if best_flow.source == "control":
        assert best.fallback_reasons, "a fallback must say why"
    else:
        assert best.pcap_path.stat().st_size > 0
        assert best._proc.poll() is not None
    for flow in (best_flow, event_flow):
        slack = flow.header["resolution"]  # a 1 s bin is stamped when it ends
        for sent, done in spans:
            near = (flow.t >= sent) & (flow.t <= done + slack)
            assert (flow.size[near] > 0).any(), f"{flow.source}: nothing sent between {sent} and {done}"
            assert (flow.size[near] < 0).any(), f"{flow.source}: nothing received between {sent} and {done}"
    # A 16 KB block each way per message at least.
    assert best_flow.size[best_flow.size > 0].sum() >= MESSAGES * 16384
    assert (tmp_path / "flows" / "alice-events.cells.jsonl").exists()
