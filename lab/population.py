"""A scripted population of onionpost users, as a relay operator sees them (docs/privacy.md).

People are real client daemons (``onionpost daemon``, each with its own home)
driven through their JSON-RPC API; the relay is a real node process recording
its view with ``--trace``. The schedule is random and seeded: each
conversation's messages arrive as a Poisson process, some are answered after
a random delay, and people go offline (their daemon stops) and come back
(it starts again, so every queue is subscribed again).

``run_population(scenario, workdir)`` returns the paths of the trace and the
ground truth (which queue belongs to whom and to which conversation), in the
formats ``onionpost.lab.relayview`` reads.
"""

from __future__ import annotations

import json
import os
import random
import select
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from onionpost.client.db import open_database
from onionpost.client.profiles import add_relay, create_profile
from onionpost.client.queues import InboundQueue, OutboundQueue
from onionpost.client.rpc import DaemonClient, RpcError

PASSWORD = "population password"
CONNECTING_AT_ONCE = 16  # conversations set up at the same time: each handshake step may wait a gap


@dataclass(frozen=True)
class Scenario:
    people: int = 10
    degree: int = 3
    """Contacts per person (a random regular graph where possible)."""
    duration: float = 240.0
    """Seconds of observed traffic, after the connections are set up."""
    message_rate: float = 1.0
    """Messages per minute per conversation direction (Poisson)."""
    reply_probability: float = 0.5
    reply_delay: float = 20.0
    """Mean seconds before a reply, after ``reply_min`` (exponential)."""
    reply_min: float = 5.0
    """Least seconds to read and type a reply: people do not answer in half a second."""
    churn_rate: float = 0.5
    """Times per minute a person goes offline (Poisson)."""
    offline: float = 20.0
    """Mean seconds offline (exponential), after ``offline_min``."""
    offline_min: float = 25.0
    """Least seconds offline: a stopping daemon takes up to --link-spread seconds to close its links."""
    daemon_args: tuple[str, ...] = ()
    """Extra ``onionpost daemon`` options (the timing settings under test); () means the defaults."""
    seed: int = 1
    relays: int = 1
    """Relay nodes, each recording its own trace; every profile trusts them all, so queues spread over them."""
    testnet: str | None = None
    """A private Tor network's folder ('onionpost testnet up'): the relay is then an onion service and every
    daemon reaches it through its own tor, a circuit per queue. None: all on loopback."""
    extra: dict = field(default_factory=dict)
    edges: tuple[tuple[int, int], ...] = ()
    """The conversations as pairs of person numbers; () means a random ``degree``-regular graph."""
    pattern: str = "poisson"
    """'poisson', or 'onoff': Poisson messages only during bursts (mean ``on`` s) separated by silences (mean ``off`` s)."""
    on: float = 60.0
    off: float = 120.0

    def to_json(self) -> dict:
        return asdict(self)


class Person:
    def __init__(self, name: str, home: Path, daemon_args: tuple[str, ...]):
        self.name, self.home, self.daemon_args = name, home, daemon_args
        self.proc: subprocess.Popen | None = None
        self.away = False
        self.log = home.parent / f"{name}.log"

    def start(self, timeout: float = 240) -> None:
        self.launch()
        self.wait_ready(timeout)

    def launch(self) -> None:
        self.away = False
        log = open(self.log, "a")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "onionpost", "daemon", "--home", str(self.home), *self.daemon_args],
            stdout=subprocess.PIPE, stderr=log, text=True,
            env=dict(os.environ, ONIONPOST_PASSWORD=PASSWORD, ONIONPOST_LAB="1"),  # the lab may use --isolation shared
        )
        log.close()

    def wait_ready(self, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                raise RuntimeError(f"{self.name}'s daemon did not start (see {self.log})")
            if select.select([self.proc.stdout], [], [], min(left, 0.5))[0] and "ready" in self.proc.stdout.readline():
                return

    @property
    def online(self) -> bool:
        return self.proc is not None and self.proc.poll() is None and not self.away

    def leave(self) -> None:
        """Go offline: SIGTERM, without waiting (the daemon closes its links over several seconds)."""
        if self.online:
            self.away = True
            self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 60) -> None:
        """Go offline and wait until the daemon has exited."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            if not self.away:  # a second SIGTERM would cut its spread-out closing short
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if not self.proc.stdout.closed:
            self.proc.stdout.close()

    def call(self, method: str, **params):
        client = DaemonClient.connect(self.home)
        if client is None:
            raise ConnectionError(f"{self.name} is offline")
        with client:
            return client.call(method, params)


def _graph(people: int, degree: int, rng: random.Random) -> list[tuple[int, int]]:
    """A random graph where everyone has ``degree`` contacts (the configuration model, retried)."""
    for _ in range(1000):
        stubs = [p for p in range(people) for _ in range(degree)]
        rng.shuffle(stubs)
        edges = {tuple(sorted(stubs[i:i + 2])) for i in range(0, len(stubs) - 1, 2)}
        if len(edges) * 2 == len(stubs) and all(a != b for a, b in edges):
            return sorted(edges)
    raise ValueError(f"no simple {degree}-regular graph on {people} people found")


def _wait(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out: {what}")
        time.sleep(0.2)
    return result


def _retry_unreachable(call, timeout: float = 300):
    """``call()``, again while the relay is unreachable: a fresh onion service on a loaded machine can take
    minutes to be reachable from every user's tor. Any other error, or the deadline, is raised."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return call()
        except RpcError as exc:
            if "cannot reach" not in str(exc) or time.monotonic() > deadline:
                raise
        time.sleep(2.0)


def _truth(people: list[Person]) -> dict:
    """Every queue's ids, reader, writer and conversation, from the people's own stores."""
    queues = []
    for person in people:
        db = open_database(person.home, PASSWORD, create=False)
        try:
            for alias, inbound, outbound in db.fetch_all(
                "SELECT alias, inbound, outbound FROM contacts WHERE state = 'connected' ORDER BY id"
            ):
                queue = InboundQueue.from_bytes(inbound)
                conversation = "+".join(sorted((person.name, alias)))
                queues.append({"name": f"{alias}->{person.name}", "rid": queue.rid.hex(), "snd": queue.snd.hex(),
                               "reader": person.name, "writer": alias, "conversation": conversation,
                               "writes_to": OutboundQueue.from_bytes(outbound).snd.hex()})
        finally:
            db.close()
    return {"queues": queues}


def _percentiles(values: list[float]) -> dict:
    if not values:
        return {"count": 0, "p50": None, "p95": None}
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"count": len(ordered), "p50": round(pick(0.5), 3), "p95": round(pick(0.95), 3)}


def _latencies(people: list[Person], sent: dict[str, float], online_at: dict[str, list[float]],
               messages: list[dict] | None = None) -> dict:
    """What the defences cost: send -> received, send -> receipt back, and a waking client's first message.

    ``messages``, if given, gets one record per message received: its text, recipient, send and receive times.
    """
    delivery, receipt, wake = [], [], []
    for person in people:
        db = open_database(person.home, PASSWORD, create=False)
        try:
            events = [(kind, json.loads(data)) for kind, data in db.fetch_all("SELECT kind, data FROM events ORDER BY id")]
            texts = dict(db.fetch_all("SELECT id, text FROM messages WHERE direction = 'out'"))
            received = []
            for kind, data in events:
                if kind == "message":
                    text = db.fetch_one("SELECT text FROM messages WHERE id = ?", (data["message"],))
                    if text and text[0] in sent:
                        delivery.append(data["at"] - sent[text[0]])
                        if messages is not None:
                            messages.append({"text": text[0], "to": person.name, "sent": sent[text[0]],
                                             "received": data["at"]})
                        received.append((data["at"], sent[text[0]]))
                elif kind == "delivered" and texts.get(data["message"]) in sent:
                    receipt.append(data["at"] - sent[texts[data["message"]]])
            for woke in online_at.get(person.name, []):
                waiting = [at for at, sent_at in received if sent_at < woke <= at]
                if waiting:
                    wake.append(min(waiting) - woke)
        finally:
            db.close()
    return {"delivery": _percentiles(delivery), "receipt": _percentiles(receipt), "first_message_after_waking": _percentiles(wake)}


def _bursts(scenario: Scenario, rng: random.Random) -> list[tuple[float, float]]:
    """The intervals in which a conversation direction talks: all the time, or on/off bursts."""
    if scenario.pattern == "poisson":
        return [(0.0, scenario.duration)]
    spans, t = [], rng.expovariate(1 / scenario.off)
    while t < scenario.duration:
        end = t + rng.expovariate(1 / scenario.on)
        spans.append((t, min(end, scenario.duration)))
        t = end + rng.expovariate(1 / scenario.off)
    return spans


def _schedule(scenario: Scenario, edges: list[tuple[int, int]], rng: random.Random) -> list[tuple[float, str, tuple]]:
    """(time offset, action, arguments), sorted: sends, replies and offline periods."""
    events = []
    for a, b in edges:
        for sender, receiver in ((a, b), (b, a)):
            for begin, until in _bursts(scenario, rng):
                t = begin + rng.expovariate(scenario.message_rate / 60)
                while t < until:
                    events.append((t, "send", (sender, receiver)))
                    if rng.random() < scenario.reply_probability:
                        reply = t + scenario.reply_min + rng.expovariate(1 / scenario.reply_delay)
                        if reply < scenario.duration:
                            events.append((reply, "send", (receiver, sender)))
                    t += rng.expovariate(scenario.message_rate / 60)
    for person in range(scenario.people):
        t = rng.expovariate(scenario.churn_rate / 60) if scenario.churn_rate > 0 else scenario.duration
        while t < scenario.duration:
            back = t + scenario.offline_min + rng.expovariate(1 / scenario.offline)
            events.append((t, "offline", (person,)))
            events.append((min(back, scenario.duration - 1), "online", (person,)))
            t = back + rng.expovariate(scenario.churn_rate / 60)
    return sorted(events, key=lambda e: e[0])


def run_population(scenario: Scenario, workdir: Path, *, progress=print, on_ready=None, on_done=None) -> dict:
    """Set up, run and record one scenario; returns paths and counts (also written to ``workdir/run.json``).

    ``on_ready(people)`` is called once everyone is connected, before the schedule (a vantage point
    starts capturing there); ``on_done(people)`` after the schedule, before anyone stops.
    """
    rng = random.Random(scenario.seed)
    began = time.monotonic()
    phases: dict[str, float] = {}  # seconds since the start at the end of each phase (wall-time costs, docs/lab.md)
    workdir.mkdir(parents=True, exist_ok=True)
    onion = ["--onion"] if scenario.testnet else []
    testnet = ["--testnet", scenario.testnet] if scenario.testnet else []
    # The first relay keeps the single-relay names (relay/, trace.jsonl); more are relay1/, trace1.jsonl, ...
    suffixes = ["", *(str(k) for k in range(1, scenario.relays))]
    traces = [workdir / f"trace{k}.jsonl" for k in suffixes]
    addresses, relays = [], []
    people: list[Person] = []
    try:
        for k, trace in zip(suffixes, traces):
            relay_dir = workdir / f"relay{k}"
            subprocess.run([sys.executable, "-m", "onionpost", "node", "init", "--data", str(relay_dir), *onion],
                           check=True, capture_output=True, timeout=60)
            addresses.append(subprocess.run(
                [sys.executable, "-m", "onionpost", "node", "address", "--data", str(relay_dir)],
                check=True, capture_output=True, text=True, timeout=60).stdout.strip())
            relays.append(subprocess.Popen(
                [sys.executable, "-m", "onionpost", "node", "run", "--data", str(relay_dir), "--trace", str(trace),
                 *testnet], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True))
        for relay in relays:
            if "listening" not in relay.stdout.readline():
                raise RuntimeError("a relay did not start")
        daemon_args = (*scenario.daemon_args, *testnet)
        for index in range(scenario.people):
            name = f"user{index}"
            db = open_database(workdir / name, PASSWORD, create=True)
            profile = create_profile(db, name)
            for address in addresses:
                add_relay(db, profile, address)
            db.close()
            people.append(Person(name, workdir / name, daemon_args))
        for person in people:
            person.launch()
        for person in people:  # started together: over Tor each bootstraps its own tor
            person.wait_ready()
        edges = list(scenario.edges) or _graph(scenario.people, scenario.degree, rng)
        phases["people_ready"] = time.monotonic() - began
        progress(f"{len(people)} people online; connecting {len(edges)} conversations")

        def introduce(edge: tuple[int, int]) -> None:
            a, b = edge
            link = _retry_unreachable(lambda: people[a].call("invite", link_only=True, auto_accept=True))["link"]
            _retry_unreachable(lambda: people[b].call("connect", link=link, alias=people[a].name))

        # Many at once: over Tor each step builds circuits and may wait for a queue's gap (a daemon serves
        # concurrent calls). list() re-raises the first failure.
        with ThreadPoolExecutor(CONNECTING_AT_ONCE, thread_name_prefix="introduce") as pool:
            list(pool.map(introduce, edges))

        def all_connected() -> bool:
            expected = {p.name: sum(index in edge for edge in edges) for index, p in enumerate(people)}
            return all(sum(c["state"] == "connected" for c in p.call("contacts")) == expected[p.name] for p in people)

        # Each handshake step may wait for a queue's gap (client/timing.py, presence): minutes, not seconds.
        _wait(all_connected, 600 + 20 * len(edges), "every conversation connected")
        phases["connected"] = time.monotonic() - began
        truth = _truth(people)
        (workdir / "truth.json").write_text(json.dumps(truth, indent=1))
        if on_ready is not None:
            on_ready(people)
        start = time.time()
        progress(f"connected; running the schedule for {scenario.duration:.0f} s")
        sent = failed = offline_periods = 0
        sent_at: dict[str, float] = {}
        messages: list[dict] = []
        online_at: dict[str, list[float]] = {}
        for offset, action, args in _schedule(scenario, edges, rng):
            delay = start + offset - time.time()
            if delay > 0:
                time.sleep(delay)
            if action == "send":
                sender, receiver = people[args[0]], people[args[1]]
                if not sender.online:
                    continue
                text = f"{sender.name} to {receiver.name} at {offset:.3f}"
                try:
                    sent_at[text] = time.time()
                    sender.call("send", contact=receiver.name, text=text)
                    sent += 1
                except (RpcError, ConnectionError, OSError):
                    failed += 1
            elif action == "offline":
                if people[args[0]].online:
                    people[args[0]].leave()
                    offline_periods += 1
            else:
                people[args[0]].stop()  # the old daemon may still be closing its links
                people[args[0]].start()
                online_at.setdefault(people[args[0]].name, []).append(time.time())
        time.sleep(min(30.0, scenario.duration / 4))  # let the last messages and receipts arrive
        observed_until = time.time()
        phases["schedule_done"] = time.monotonic() - began
        if on_done is not None:
            on_done(people)
        phases["captures_stopped"] = time.monotonic() - began
        for person in people:
            person.leave()
        for person in people:
            person.stop()
        phases["people_stopped"] = time.monotonic() - began
        result = {"scenario": scenario.to_json(), "trace": str(traces[0]), "traces": [str(t) for t in traces],
                  "truth": str(workdir / "truth.json"),
                  "observed_from": start, "observed_until": observed_until, "messages_sent": sent,
                  "send_failures": failed, "offline_periods": offline_periods, "queues": len(truth["queues"]),
                  "latency": _latencies(people, sent_at, online_at, messages), "messages": messages, "sent_at": sent_at,
                  "edges": [list(e) for e in edges], "phases": {k: round(v, 1) for k, v in phases.items()}}
        (workdir / "run.json").write_text(json.dumps(result, indent=1))
        return result
    finally:
        for person in people:
            person.leave()
        for person in people:
            person.stop()
        for relay in relays:
            relay.send_signal(signal.SIGTERM)
        for relay in relays:
            try:
                relay.wait(30)
            except subprocess.TimeoutExpired:
                relay.kill()
                relay.wait(10)
            relay.stdout.close()
