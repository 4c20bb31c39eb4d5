"""Workload 6: the client daemon (``onionpost daemon``), against one-shot commands and bare onion legs.

Every home is made in this process (``open_database`` + ``create_profile`` +
``add_relay``, as ``tests/client/conftest.py`` does); every daemon is a real
``python -m onionpost daemon`` process on its home, stopped by PID (SIGTERM,
then SIGKILL). One password for all homes, given to daemons and one-shot
commands as ``ONIONPOST_PASSWORD``.

Figures:

* **CLI send, loopback.** One ``onionpost node run`` relay, two homes (alice,
  bob) connected through their daemons (``--link-spread 1 --receipt-delay
  0.2``). The wall time of ``onionpost --home alice send bob TEXT`` (the venv's
  console script, as a user runs it) as a subprocess: with alice's daemon
  running, and one-shot (alice's daemon stopped; bob's keeps running in both
  modes, so the background work is the same). Blocks alternate daemon,
  one-shot, daemon, one-shot, each after one uncounted warm-up command. In the
  daemon blocks every CLI send is followed by one API ``send`` from this
  process (``DaemonClient.connect`` + ``call`` + close, what the CLI does after
  its start). After every send the bench waits for bob's ``message`` event
  (its arrival time gives send → message) and then 0.9 s, so bob's receipt
  (at most 4 × 0.2 s) has left before the next command is timed. Also timed:
  ``python -c pass`` and ``python -c "import onionpost.cli"`` (the CLI's start
  before it parses anything).
* **Idle daemon, 50 contacts, loopback.** Home "hub" with one profile and 50
  connected contacts, set up in this process before any daemon starts: the
  hub's ``Agent`` makes 50 invitations (auto-accept), 50 profiles of a second
  home ("peers", one ``Agent`` each) connect at once, then hub and peers
  ``receive`` in rounds until all 100 sides are connected. Then the hub's
  daemon starts (``--link-spread 2 --link-gap 0``: always connected, so
  there is one link per queue to count; links renewed after 30 s on average,
  receipts delayed) next to a daemon whose profile
  has no contact (the baseline, same options, same window). Once the hub has
  one relay link per watched queue (``status`` → ``queues_watched``; links are
  the daemon's established TCP sockets to the relay, from ``/proc/PID/fd`` and
  ``/proc/net/tcp``), both are left alone for 60 s (quick: 15 s): CPU =
  utime+stime delta from ``/proc/PID/stat`` over the window, as % of one core
  (and the live threads' ``schedstat``, in ns); wake-ups = context switches of
  all threads (``/proc/PID/task/*/status``) per second (an idle asyncio loop
  with no polling makes almost none); RSS (VmRSS) at the end; links at the end,
  and how many of them were opened during the window (link renewals). Then the
  hub sends one message to each contact through the API (the peers are not
  running: nothing comes back) and, once its outbox is empty, a second window
  is measured the same way: a daemon that has talked keeps its outbound
  links until their own idle time (mean 15 s) ends.
  Last, the hub's daemon restarts with the default schedule (each queue's
  link lives ~30 s, then closes for a gap of ~20 s: never idle), runs
  ``PRESENCE_SETTLE`` seconds, and a third window measures what that costs.
* **Tor** (only when the Tor workloads run). A private Tor network
  (``torconfig.testnet``), two relays started as ``onionpost node init
  --onion`` / ``node run --testnet`` (each with its own tor, published as an
  onion service; A forwards to B over Tor), and one tor per daemon started
  here and given to it with ``--tor-socks``/``--tor-control`` (a tor used by
  that daemon alone). Alice trusts relay A, bob relay B; they connect through
  their daemons (``--link-spread 1 --receipt-delay 0.2``). Then: API ``send``
  on alice's daemon → ``message`` event on bob's (both subscribed from this
  process), one uncounted first message, then N messages, each after alice's
  ``delivered`` event for the previous one (receipts never overlap a timed
  message). Baseline, same run: ``bench.tor.delivery`` on fresh sessions —
  S through alice's tor to A, R through bob's tor to B, PING round trips on
  each and A→B as S's FWD round trip minus its PING — giving the bare one-way
  legs (RTT_SA + RTT_AB + RTT_BR) / 2, and the protocol's own send → deliver
  with bare clients on the same path.
* **Idle daemon over Tor, 50 contacts** (full runs): the same hub on relay A
  (peers on relay B, setup over a separate tor), its daemon on a fresh tor of
  its own (``--link-spread 5 --link-gap 0``); the same two windows (just started, after one
  message to each contact); CPU, wake-ups, RSS of the daemon and of its tor,
  and its tor's circuits through the control port after each window (as
  ``scripts/count_circuits.py``: circuits carrying streams, all built circuits
  by purpose). Baseline: alice's daemon and tor (one contact) over the same
  windows.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

from .common import REPO, BenchError, NodeProcess, Result, Row, cpu_seconds, median, percentile, ratio, rss_bytes, stop_pid

TOR_PART = True
"""bench.py passes ``tor=`` to this workload: its Tor figures run only when the Tor workloads do."""

PASSWORD = "bench-" + secrets.token_hex(12)
FAST = ("--link-spread", "1", "--receipt-delay", "0.2", "--link-gap", "0")
RECEIPT_PAUSE = 0.9
"""Seconds after a delivery before the next send is timed: a receipt waits at most 4 × 0.2 s."""
CONTACTS = 50


# --- homes and daemons ---------------------------------------------------------------------


def client_env() -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("ONIONPOST_HOME", "ONIONPOST_TESTNET", "ONIONPOST_RECEIPT_DELAY", "PYTHONASYNCIODEBUG")}
    env["ONIONPOST_PASSWORD"] = PASSWORD
    return env


def make_home(home: Path, profiles: list[str], relay: str) -> None:
    """A home with these profiles, each trusting ``relay``."""
    from onionpost.client.db import open_database
    from onionpost.client.profiles import add_relay, create_profile

    db = open_database(home, PASSWORD, create=True)
    try:
        for name in profiles:
            add_relay(db, create_profile(db, name, name.capitalize()), relay)
    finally:
        db.close()


class Daemon:
    """``python -m onionpost daemon --home HOME ARGS``, output in a log file, stopped by PID."""

    def __init__(self, home: Path, *args: str):
        self.home, self.args = Path(home), list(args)
        self.log_path = self.home.parent / f"{self.home.name}-daemon.log"
        self.proc: subprocess.Popen | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self, timeout: float = 120.0) -> "Daemon":
        offset = len(self._log())
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "onionpost", "daemon", "--home", str(self.home), *self.args],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO, env=client_env(),
            )
        deadline = time.monotonic() + timeout
        while "onionpost daemon ready" not in self._log()[offset:]:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise BenchError(f"the daemon of {self.home.name} did not start: {self._log()[offset:][-1500:].strip()}")
            time.sleep(0.05)
        return self

    def call(self, method: str, **params):
        from onionpost.client.rpc import DaemonClient

        client = DaemonClient.connect(self.home, timeout=30)
        if client is None:
            raise BenchError(f"no daemon answers for {self.home.name}")
        with client:
            return client.call(method, params)

    def stop(self) -> None:
        if self.proc is not None:
            stop_pid(self.proc, timeout=30)
            self.proc = None

    def check_log(self) -> None:
        text = self._log()
        if "Traceback" in text:
            raise BenchError(f"the daemon of {self.home.name} logged a traceback: {text[-2000:]}")


def stop_all(*things) -> None:
    """Stop each (daemons, nodes, tors, relays) by PID; every one is tried even if another fails."""
    errors = []
    for thing in things:
        if thing is None:
            continue
        try:
            thing.stop()
        except Exception as exc:  # noqa: BLE001 - keep stopping the others
            errors.append(exc)
    if errors:
        raise errors[0]


def connect_daemons(inviter: Daemon, joiner: Daemon, timeout: float) -> tuple[str, str]:
    """invite (auto-accept) → connect → both connected; (inviter's alias for joiner, joiner's for inviter)."""
    link = inviter.call("invite", link_only=True, auto_accept=True)["link"]
    joiner.call("connect", link=link)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        theirs = [c["alias"] for c in inviter.call("contacts") if c["state"] == "connected"]
        mine = [c["alias"] for c in joiner.call("contacts") if c["state"] == "connected"]
        if theirs and mine:
            return theirs[-1], mine[-1]
        time.sleep(0.2)
    raise BenchError(f"{inviter.home.name} and {joiner.home.name} did not connect within {timeout:.0f} s")


class Events:
    """One daemon's events as they arrive here: (time.perf_counter() at arrival, event)."""

    def __init__(self, client):
        self.client = client
        self.queue: asyncio.Queue = asyncio.Queue()
        self.task = asyncio.create_task(self._pump())

    @classmethod
    async def open(cls, home: Path) -> "Events":
        from onionpost.client.rpc import AsyncDaemonClient

        client = await AsyncDaemonClient.connect(home)
        await client.call("events.subscribe")
        return cls(client)

    async def _pump(self) -> None:
        async for event in self.client.events():
            self.queue.put_nowait((time.perf_counter(), event))

    async def wait(self, predicate, timeout: float, what: str) -> tuple[float, dict]:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                if left <= 0:
                    raise TimeoutError
                arrived, event = await asyncio.wait_for(self.queue.get(), left)
            except TimeoutError:
                raise BenchError(f"timed out after {timeout:.0f} s waiting for {what}") from None
            if predicate(event):
                return arrived, event

    async def close(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        await self.client.close()


def message_text(text: str):
    return lambda e: e["kind"] == "message" and e["text"] == text


# --- /proc --------------------------------------------------------------------------------------


def context_switches(pid: int) -> int:
    """Voluntary + involuntary context switches of all threads of a process so far."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                for line in f:
                    if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                        total += int(line.split()[1])
        except FileNotFoundError:  # a thread that just ended
            continue
    return total


def sched_seconds(pid: int) -> float:
    """CPU time of the live threads of a process, in ns resolution (``/proc/PID/task/*/schedstat``)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total / 1e9


def link_sockets(pid: int, remote_port: int) -> set[str]:
    """Socket inodes of the established TCP connections of process ``pid`` to 127.0.0.1:``remote_port``."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "01" and fields[9] in inodes and int(fields[2].rsplit(":", 1)[1], 16) == remote_port:
                found.add(fields[9])
    return found


def tcp_links(pid: int, remote_port: int) -> int:
    return len(link_sockets(pid, remote_port))


def idle_window(pids: dict[str, int], seconds: float, ports: dict[str, int] | None = None) -> dict:
    """CPU (% of one core), wake-ups per second and final RSS of each process over one window.

    For the processes named in ``ports``, also their links (TCP connections to that port) at the
    end, and how many of them were not there at the start (links replaced or opened meanwhile).
    """
    ports = ports or {}
    links_before = {name: link_sockets(pids[name], port) for name, port in ports.items()}
    before = {name: (cpu_seconds(pid), context_switches(pid), sched_seconds(pid)) for name, pid in pids.items()}
    t0 = time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - t0
    out = {}
    for name, pid in pids.items():
        cpu, switches, sched = cpu_seconds(pid), context_switches(pid), sched_seconds(pid)
        out[name] = {
            "cpu_pct": 100 * (cpu - before[name][0]) / elapsed,
            "cpu_s": cpu - before[name][0],
            "sched_cpu_ms": 1000 * (sched - before[name][2]),
            "wakeups_per_s": (switches - before[name][1]) / elapsed,
            "rss_mib": rss_bytes(pid) / 2**20,
        }
        if name in ports:
            after = link_sockets(pid, ports[name])
            out[name]["links"] = len(after)
            out[name]["links_new"] = len(after - links_before[name])
    out["window_s"] = elapsed
    return out


def send_to_all(daemon: Daemon, timeout: float) -> dict:
    """One API send to each contact of the daemon's profile; wait until its outbox is empty."""
    t0 = time.monotonic()
    aliases = [c["alias"] for c in daemon.call("contacts")]
    for alias in aliases:
        daemon.call("send", contact=alias, text=f"hello {alias}")
    while (outbox := sum(p["outbox"] for p in daemon.call("status")["profiles"])) > 0:
        if time.monotonic() - t0 > timeout:
            raise BenchError(f"the daemon of {daemon.home.name} still had {outbox} messages to send after {timeout:.0f} s")
        time.sleep(0.25)
    return {"sent": len(aliases), "seconds": time.monotonic() - t0}


# --- 1. CLI send on loopback ---------------------------------------------------------------------


def onionpost_command() -> list[str]:
    script = Path(sys.executable).parent / "onionpost"
    return [str(script)] if script.exists() else [sys.executable, "-m", "onionpost"]


def timed_run(cmd: list[str], cwd: Path) -> tuple[float, float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=cwd, env=client_env(),
                          stdin=subprocess.DEVNULL)
    return t0, time.perf_counter(), done


def api_send(home: Path, contact: str, text: str) -> tuple[float, float]:
    from onionpost.client.rpc import DaemonClient

    t0 = time.perf_counter()
    client = DaemonClient.connect(home)
    if client is None:
        raise BenchError("alice's daemon is not running")
    with client:
        client.call("send", {"contact": contact, "text": text})
    return t0, time.perf_counter()


async def _cli_rounds(workdir: Path, alice: Daemon, bob: Daemon, to_bob: str, runs: int) -> dict:
    command = onionpost_command()
    counter = itertools.count()
    samples: dict[str, list[float]] = {k: [] for k in ("daemon", "oneshot", "api", "daemon_e2e", "oneshot_e2e", "api_e2e",
                                                       "python", "import")}
    for _ in range(max(4, runs // 2)):
        for key, code in (("python", "pass"), ("import", "import onionpost.cli")):
            t0, t1, done = await asyncio.to_thread(timed_run, [sys.executable, "-c", code], workdir)
            if done.returncode != 0:
                raise BenchError(f"python -c {code!r} failed: {done.stderr.strip()}")
            samples[key].append(t1 - t0)
    events = await Events.open(bob.home)
    try:

        async def delivered(text: str) -> float:
            arrived, _ = await events.wait(message_text(text), 30, f"bob's message event for {text!r}")
            await asyncio.sleep(RECEIPT_PAUSE)
            return arrived

        async def cli(mode: str, counted: bool) -> None:
            text = f"bench {mode} {next(counter)} {os.urandom(3).hex()}"
            t0, t1, done = await asyncio.to_thread(timed_run, [*command, "--home", str(alice.home), "send", to_bob, text], workdir)
            if done.returncode != 0:
                raise BenchError(f"onionpost send ({mode}) failed: {done.stderr.strip()}")
            through_daemon = "the daemon delivers it" in done.stdout
            if through_daemon != (mode == "daemon"):
                raise BenchError(f"onionpost send in {mode} mode printed {done.stdout.strip()!r}")
            arrived = await delivered(text)
            if counted:
                samples[mode].append(t1 - t0)
                samples[f"{mode}_e2e"].append(arrived - t0)

        async def api(counted: bool) -> None:
            text = f"bench api {next(counter)} {os.urandom(3).hex()}"
            t0, t1 = await asyncio.to_thread(api_send, alice.home, to_bob, text)
            arrived = await delivered(text)
            if counted:
                samples["api"].append(t1 - t0)
                samples["api_e2e"].append(arrived - t0)

        per_block = max(1, runs // 2)
        for block in range(2):
            # Daemon block: alice's daemon runs (started before, or again after a one-shot block).
            if alice.proc is None:
                await asyncio.to_thread(alice.start)
            await cli("daemon", counted=False)
            await api(counted=False)
            for _ in range(per_block):
                await cli("daemon", counted=True)
                await api(counted=True)
            # One-shot block: alice's daemon stopped (it holds alice's home), bob's still running.
            await asyncio.to_thread(alice.stop)
            await cli("oneshot", counted=False)
            for _ in range(per_block):
                await cli("oneshot", counted=True)
    finally:
        await events.close()
    return samples


def cli_send(workdir: Path, quick: bool) -> dict:
    runs = 8 if quick else 20
    node = NodeProcess.init(workdir / "cli-relay").start()
    alice = bob = None
    try:
        for name in ("alice", "bob"):
            make_home(workdir / name, [name], node.address)
        alice = Daemon(workdir / "alice", *FAST).start()
        bob = Daemon(workdir / "bob", *FAST).start()
        to_bob, _ = connect_daemons(alice, bob, timeout=60)
        samples = asyncio.run(_cli_rounds(workdir, alice, bob, to_bob, runs))
        for d in (alice, bob):
            d.check_log()
        node.check_log()
    finally:
        stop_all(alice, bob, node)
    ms = {k: [1000 * v for v in vals] for k, vals in samples.items()}
    return {
        "runs": {k: len(v) for k, v in ms.items()},
        **{f"{k}_median_ms": median(v) for k, v in ms.items()},
        **{f"{k}_p95_ms": percentile(v, 95) for k, v in ms.items()},
        "raw_ms": {k: [round(x, 1) for x in v] for k, v in ms.items()},
    }


# --- 3. idle daemon with 50 contacts --------------------------------------------------------


async def make_contacts(hub_home: Path, peers_home: Path, count: int, *, hub_connector=None, peers_connector=None,
                        timeout: float = 30.0, deadline_s: float = 300.0) -> dict:
    """Connect ``count`` peer profiles to the hub's one profile, in this process (no daemon runs meanwhile)."""
    from onionpost.client.agent import Agent
    from onionpost.client.db import open_database
    from onionpost.client.profiles import get_profile

    started = time.monotonic()
    hub_db = open_database(hub_home, PASSWORD, create=False)
    peers_db = open_database(peers_home, PASSWORD, create=False)
    hub = Agent(hub_db, get_profile(hub_db, "hub"), connector=hub_connector, timeout=timeout)
    peers = [Agent(peers_db, get_profile(peers_db, f"p{i:02d}"), connector=peers_connector, timeout=timeout)
             for i in range(count)]
    gate = asyncio.Semaphore(10)

    async def gated(coro):
        async with gate:
            return await coro

    def connected() -> tuple[int, int]:
        return (sum(c.state == "connected" for c in hub.contacts()),
                sum(any(c.state == "connected" for c in p.contacts()) for p in peers))

    try:
        async with asyncio.timeout(deadline_s):
            invitations = await asyncio.gather(*(gated(hub.invite(auto_accept=True)) for _ in range(count)))
            await asyncio.gather(*(gated(p.connect(link, via="link", alias="hub")) for p, (_, link) in zip(peers, invitations)))
            rounds = 0
            for rounds in range(1, 16):
                await hub.receive(wait=0.5)
                await asyncio.gather(*(p.receive(wait=0.5) for p in peers))
                if connected() == (count, count):
                    break
            hub_side, peer_side = connected()
            if (hub_side, peer_side) != (count, count):
                raise BenchError(f"only {hub_side} hub-side and {peer_side} peer-side contacts connected after {rounds} rounds")
    except TimeoutError:
        raise BenchError(f"setting up {count} contacts took over {deadline_s:.0f} s (connected so far: {connected()})") from None
    finally:
        await asyncio.gather(hub.close(), *(p.close() for p in peers), return_exceptions=True)
        hub_db.close()
        peers_db.close()
    return {"contacts": count, "rounds": rounds, "setup_s": time.monotonic() - started}


def wait_links(daemon: Daemon, port: int, timeout: float) -> tuple[int, int, float]:
    """Wait until the daemon has one open link per watched queue; (queues watched, links, seconds)."""
    t0 = time.monotonic()
    watched = links = 0
    while time.monotonic() - t0 < timeout:
        watched = sum(p["queues_watched"] for p in daemon.call("status")["profiles"])
        links = tcp_links(daemon.pid, port)
        if watched and links >= watched:
            return watched, links, time.monotonic() - t0
        time.sleep(0.25)
    raise BenchError(f"the daemon of {daemon.home.name} opened {links} links for {watched} queues in {timeout:.0f} s")


PRESENCE_SETTLE = 60.0
"""Seconds the default-schedule daemon runs before its window: a few link lifetimes and gaps."""


def idle_loopback(workdir: Path, quick: bool) -> dict:
    window = 15.0 if quick else 60.0
    node = NodeProcess.init(workdir / "idle-relay").start()
    hub = empty = None
    try:
        make_home(workdir / "hub", ["hub"], node.address)
        make_home(workdir / "peers", [f"p{i:02d}" for i in range(CONTACTS)], node.address)
        make_home(workdir / "empty", ["empty"], node.address)
        setup = asyncio.run(make_contacts(workdir / "hub", workdir / "peers", CONTACTS))
        spread = ("--link-spread", "2", "--link-gap", "0")  # always connected: one link per queue to count
        hub = Daemon(workdir / "hub", *spread).start()
        empty = Daemon(workdir / "empty", *spread).start()
        port = int(node.address.rsplit(":", 1)[1])
        watched, _, links_up_s = wait_links(hub, port, timeout=60)
        time.sleep(2.0)  # let the last subscriptions settle
        pids, ports = {"hub": hub.pid, "empty": empty.pid, "relay": node.pid}, {"hub": port, "empty": port}
        fresh = idle_window(pids, window, ports)
        sent = send_to_all(hub, timeout=60)
        time.sleep(2.0)
        talked = idle_window(pids, window, ports)
        status = hub.call("status")["profiles"][0]
        hub.check_log()
        stop_all(hub)
        # The default schedule: every queue's link lives ~30 s and closes for a gap of ~20 s, so the
        # daemon is never idle; measured once the links have cycled a few times.
        hub = Daemon(workdir / "hub").start()
        time.sleep(PRESENCE_SETTLE)
        pids["hub"] = hub.pid
        presence = idle_window(pids, window, ports)
        hub.check_log()
        empty.check_log()
        node.check_log()
    finally:
        stop_all(hub, empty, node)
    return {"fresh": fresh, "after_send": talked, "presence": presence, "send": sent, "setup": setup,
            "queues_watched": watched, "links_up_s": links_up_s, "hub_contacts": status["contacts"]}


# --- 2. and 3. over Tor ---------------------------------------------------------------------


def start_relay(directory: Path, testnet: Path):
    from onionpost.demo import RelayProcess

    relay = RelayProcess(directory, testnet)
    relay.init()
    relay.start()
    return relay


async def _tor_messages(alice: Daemon, bob: Daemon, to_bob: str, count: int) -> dict:
    bob_events = await Events.open(bob.home)
    alice_events = await Events.open(alice.home)
    from onionpost.client.rpc import AsyncDaemonClient

    client = await AsyncDaemonClient.connect(alice.home)
    latencies, receipts = [], []
    first_ms = None
    try:
        for i in range(count + 1):
            text = f"tor bench {i} {os.urandom(3).hex()}"
            t0 = time.perf_counter()
            row = await client.call("send", contact=to_bob, text=text)
            arrived, _ = await bob_events.wait(message_text(text), 120, f"bob's message event ({i})")
            got_receipt, _ = await alice_events.wait(lambda e: e["kind"] == "delivered" and e.get("message") == row["id"],
                                                     120, f"alice's delivered event ({i})")
            if i == 0:
                first_ms = 1000 * (arrived - t0)
            else:
                latencies.append(1000 * (arrived - t0))
                receipts.append(1000 * (got_receipt - t0))
            await asyncio.sleep(0.2)
    finally:
        await client.close()
        await bob_events.close()
        await alice_events.close()
    return {"first_ms": first_ms, "send_to_message_ms": latencies, "send_to_delivered_ms": receipts,
            "median_ms": median(latencies), "p95_ms": percentile(latencies, 95)}


def tor_part(workdir: Path, quick: bool) -> dict:
    from onionpost.proto import parse_node_address
    from onionpost.torconfig.errors import TorError
    from onionpost.torconfig.launch import start_tor
    from onionpost.torconfig.testnet import PrivateTorNetwork

    from . import tor as tor_workload

    if (not shutil.which("tor") and not Path("/usr/sbin/tor").exists()) or not shutil.which("tor-gencert"):
        return {"skipped": "tor and tor-gencert are not installed (scripts/setup.sh installs them)"}
    out: dict = {}
    network = PrivateTorNetwork(workdir / "testnet")
    relays, tors, daemons = [], [], []
    t0 = time.perf_counter()
    try:
        network.up()
        out["network_up_s"] = time.perf_counter() - t0
        for name in ("relay-a", "relay-b"):
            relays.append(start_relay(workdir / name, network.directory))
        t0 = time.perf_counter()
        addresses = [r.wait_listening(timeout=240) for r in relays]
        out["relays_published_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        for name in ("alice-tor", "bob-tor"):
            tors.append(start_tor(workdir / name, testnet_dir=network.directory, socks=True))
        out["client_tors_up_s"] = time.perf_counter() - t0
        for name, address in zip(("alice", "bob"), addresses):
            make_home(workdir / name, [name], address)
        for name, tor in zip(("alice", "bob"), tors):
            daemons.append(Daemon(workdir / name, *FAST, "--tor-socks", f"127.0.0.1:{tor.socks_port}",
                                  "--tor-control", str(tor.control_port)).start())
        alice, bob = daemons
        t0 = time.perf_counter()
        to_bob, _ = connect_daemons(alice, bob, timeout=240)
        out["connect_s"] = time.perf_counter() - t0
        out["daemon"] = asyncio.run(_tor_messages(alice, bob, to_bob, 5 if quick else 10))
        a_address, b_address = (parse_node_address(a) for a in addresses)
        out["bare"] = asyncio.run(tor_workload.delivery(a_address, b_address, tors[0].socks_port, 3 if quick else 6,
                                                        recipient_socks_port=tors[1].socks_port))
        if not quick:
            try:
                out["idle"] = tor_idle(workdir, network.directory, addresses, alice, tors[0])
            except BenchError as exc:
                out["idle"] = {"skipped": str(exc)}
        for d in daemons:
            d.check_log()
    except TorError as exc:
        raise RuntimeError(f"the private Tor network failed: {exc}") from None
    finally:
        try:
            stop_all(*daemons, *relays, *tors)
        finally:
            network.down()
    return out


def tor_idle(workdir: Path, testnet: Path, addresses: list[str], alice: Daemon, alice_tor) -> dict:
    """The 50-contact hub on relay A with a tor of its own; alice (one contact) is the baseline."""
    from onionpost.torconfig.launch import start_tor
    from onionpost.transport.tor import TorConnector

    window = 60.0
    setup_tor = hub_tor = hub = None
    try:
        setup_tor = start_tor(workdir / "setup-tor", testnet_dir=testnet, socks=True)
        make_home(workdir / "tor-hub", ["hub"], addresses[0])
        make_home(workdir / "tor-peers", [f"p{i:02d}" for i in range(CONTACTS)], addresses[1])
        connector = TorConnector(socks_port=setup_tor.socks_port)
        setup = asyncio.run(make_contacts(workdir / "tor-hub", workdir / "tor-peers", CONTACTS, hub_connector=connector,
                                          peers_connector=connector, timeout=90, deadline_s=300))
        setup_tor.stop()
        setup_tor = None
        hub_tor = start_tor(workdir / "hub-tor", testnet_dir=testnet, socks=True)
        hub = Daemon(workdir / "tor-hub", "--link-spread", "5", "--link-gap", "0",
                     "--tor-socks", f"127.0.0.1:{hub_tor.socks_port}", "--tor-control", str(hub_tor.control_port)).start()
        watched, _, links_up_s = wait_links(hub, hub_tor.socks_port, timeout=180)
        time.sleep(5.0)  # short-lived circuits (descriptor fetches, introductions) close
        pids = {"hub": hub.pid, "hub_tor": hub_tor.pid, "alice": alice.pid, "alice_tor": alice_tor.pid}
        ports = {"hub": hub_tor.socks_port, "alice": alice_tor.socks_port}
        phases = {}
        for phase in ("fresh", "after_send"):
            if phase == "after_send":
                sent = send_to_all(hub, timeout=180)
                time.sleep(5.0)
            figures = idle_window(pids, window, ports)
            figures["hub_circuits"] = asyncio.run(count_circuits(hub_tor))
            figures["alice_circuits"] = asyncio.run(count_circuits(alice_tor))
            phases[phase] = figures
        hub.check_log()
    finally:
        stop_all(hub, hub_tor, setup_tor)
    return {**phases, "send": sent, "setup": setup, "queues_watched": watched, "links_up_s": links_up_s}


async def count_circuits(tor) -> dict:
    """As scripts/count_circuits.py: circuits carrying streams, and every built circuit by purpose."""
    from onionpost.torconfig.control import TorControl

    control = await TorControl.connect(tor.control_port, cookie_path=tor.control_cookie_path)
    try:
        streams = [s for s in await control.streams() if s.circuit_id]
        built = [c for c in await control.circuits() if c.status == "BUILT"]
    finally:
        await control.close()
    return {"streams": len(streams), "carrying_streams": len({s.circuit_id for s in streams}), "built": len(built),
            "by_purpose": {p: sum(1 for c in built if (c.purpose or "?") == p) for p in sorted({c.purpose or "?" for c in built})}}


# --- the table --------------------------------------------------------------------------------


def run(quick: bool, workdir: Path, tor: bool = False) -> Result:
    result = Result("daemon")
    for part in ("cli", "idle"):
        (workdir / part).mkdir()
    cli = cli_send(workdir / "cli", quick)
    result.details["cli"] = cli
    idle = idle_loopback(workdir / "idle", quick)
    result.details["idle"] = idle
    rows = result.rows
    m = lambda k: cli[f"{k}_median_ms"]  # noqa: E731
    p = lambda k: cli[f"{k}_p95_ms"]  # noqa: E731
    n = cli["runs"]
    rows += [
        Row("daemon", "CLI send wall time, loopback (median)", m("daemon"), m("oneshot"), "one-shot (no daemon)", "ms",
            ratio(m("daemon"), m("oneshot")), "≤ 300 ms with the daemon", m("daemon") <= 300,
            f"{n['daemon']} + {n['oneshot']} runs in alternating blocks; p95 {p('daemon'):.0f} vs {p('oneshot'):.0f} ms"),
        Row("daemon", "CLI send wall time, loopback (p95)", p("daemon"), p("oneshot"), "one-shot (no daemon)", "ms",
            ratio(p("daemon"), p("oneshot"))),
        Row("daemon", "API send round trip (DaemonClient connect + call)", m("api"), m("daemon"), "CLI send with the daemon", "ms",
            ratio(m("api"), m("daemon")), note=f"the CLI's own start ≈ {m('daemon') - m('api'):.0f} ms (CLI − API); p95 {p('api'):.1f} ms"),
        Row("daemon", "CLI start: python + import onionpost.cli", m("import"), m("python"), "python -c pass", "ms",
            ratio(m("import"), m("python")), note="before argument parsing; the venv's python"),
        Row("daemon", "send → bob's message event, loopback (median)", m("daemon_e2e"), m("oneshot_e2e"), "one-shot CLI send", "ms",
            ratio(m("daemon_e2e"), m("oneshot_e2e")),
            note=f"from the CLI's spawn; API send → message: {m('api_e2e'):.0f} ms"),
    ]
    rows += idle_rows(idle)
    if tor:
        (workdir / "tor").mkdir()
        data = tor_part(workdir / "tor", quick)
        result.details["tor"] = data
        rows += tor_rows(data)
    return result


def tor_rows(data: dict) -> list[Row]:
    if "skipped" in data:
        return [Row("daemon", "Tor figures", f"skipped: {data['skipped']}", None)]
    d, bare = data["daemon"], data["bare"]
    trials = "; ".join(f"{r['deliver_ms']:.0f}/{r['bare_budget_ms']:.0f} ms [{r['modes']}]" for r in bare["trials"])
    rows = [
        Row("daemon", "Tor: API send → message event on the other daemon (median)", d["median_ms"], bare["bare_budget_ms"],
            "bare one-way legs (RTT_SA+RTT_AB+RTT_BR)/2", "ms", ratio(d["median_ms"], bare["bare_budget_ms"]), "≤ 1.2×",
            (ratio(d["median_ms"], bare["bare_budget_ms"]) or 99) <= 1.2,
            f"{len(d['send_to_message_ms'])} messages after 1 uncounted (first: {d['first_ms']:.0f} ms), p95 {d['p95_ms']:.0f} ms; "
            f"--link-spread 1 (links up before), --receipt-delay 0.2, each send after the previous receipt; "
            f"bare legs: {len(bare['trials'])} trials on fresh sessions (deliver/budget): {trials}"),
        Row("daemon", "Tor: API send → message event vs the protocol's bare send → deliver", d["median_ms"], bare["deliver_ms"],
            "bench.tor delivery, bare clients, same relays", "ms", ratio(d["median_ms"], bare["deliver_ms"]),
            note=f"send → alice's delivered event: median {median(d['send_to_delivered_ms']):.0f} ms"),
        Row("daemon", "Tor: set-up (network up / relays published / daemons connected)", data["network_up_s"], data["relays_published_s"],
            "relays published", "s", None, note=f"daemons connected in {data['connect_s']:.1f} s"),
    ]
    idle = data.get("idle")
    if idle is None:
        rows.append(Row("daemon", "idle daemon over Tor", "not run", None, note="full runs only"))
    elif "skipped" in idle:
        rows.append(Row("daemon", "idle daemon over Tor", f"skipped: {idle['skipped']}", None))
    else:
        rows += tor_idle_rows(idle)
    return rows


PHASES = {"fresh": "just started", "after_send": "after one message to each"}


def _wakeups(hub: dict, other: dict, other_name: str) -> str:
    return (f"utime+stime; schedstat {hub['sched_cpu_ms']:.1f} ms CPU ({other_name}: {other['sched_cpu_ms']:.1f}); "
            f"wake-ups {hub['wakeups_per_s']:.2f}/s ({other_name}: {other['wakeups_per_s']:.2f}/s); "
            f"{hub['links_new']} of its {hub['links']} links opened during the window")


def idle_rows(idle: dict) -> list[Row]:
    n = idle["hub_contacts"]
    rows = []
    for phase, label in PHASES.items():
        f = idle[phase]
        hub, empty, relay = f["hub"], f["empty"], f["relay"]
        note = f"{_wakeups(hub, empty, '0 contacts')}; relay node {relay['cpu_pct']:.2f} %"
        if phase == "fresh":
            note += "; --link-spread 2 --link-gap 0 (always connected), other timing defaults"
        else:
            note += f"; {idle['send']['sent']} API sends, outbox empty after {idle['send']['seconds']:.1f} s"
        rows.append(Row("daemon", f"idle daemon, {n} contacts, loopback, {label}: CPU over {f['window_s']:.0f} s", hub["cpu_pct"],
                        empty["cpu_pct"], "idle daemon, 0 contacts, same window", "% of a core",
                        ratio(hub["cpu_pct"], empty["cpu_pct"]), "< 1 %", hub["cpu_pct"] < 1, note))
    if "presence" in idle:
        f = idle["presence"]
        hub, empty = f["hub"], f["empty"]
        rows.append(Row("daemon", f"daemon with the default presence schedule, {n} contacts, loopback: CPU over {f['window_s']:.0f} s",
                        hub["cpu_pct"], empty["cpu_pct"], "idle daemon, 0 contacts, same window", "% of a core",
                        ratio(hub["cpu_pct"], empty["cpu_pct"]), "< 1 %", hub["cpu_pct"] < 1,
                        f"{_wakeups(hub, empty, '0 contacts')}; {hub['links']} links open at the end "
                        f"(each queue's link lives ~30 s, then a gap of ~20 s); relay node {f['relay']['cpu_pct']:.2f} %"))
    fresh, talked = idle["fresh"], idle["after_send"]
    rows += [
        Row("daemon", f"idle daemon, {n} contacts, loopback: RSS", talked["hub"]["rss_mib"], talked["empty"]["rss_mib"],
            "idle daemon, 0 contacts", "MiB", ratio(talked["hub"]["rss_mib"], talked["empty"]["rss_mib"]),
            note=f"after one message to each: {1024 * (talked['hub']['rss_mib'] - talked['empty']['rss_mib']) / n:.0f} KiB per contact; "
                 f"just started: {fresh['hub']['rss_mib']:.1f} MiB ({1024 * (fresh['hub']['rss_mib'] - fresh['empty']['rss_mib']) / n:.0f} KiB per contact)"),
        Row("daemon", f"idle daemon, {n} contacts, loopback: open relay links", talked["hub"]["links"], idle["queues_watched"],
            "queues watched (status)", "links", ratio(talked["hub"]["links"], idle["queues_watched"]),
            note=f"after one message to each; just started: {fresh['hub']['links']}; 0-contact daemon: {talked['empty']['links']}; "
                 f"TCP sockets to the relay; contacts set up in {idle['setup']['setup_s']:.0f} s, links up {idle['links_up_s']:.1f} s after start"),
    ]
    return rows


def tor_idle_rows(idle: dict) -> list[Row]:
    rows = []
    for phase, label in PHASES.items():
        f = idle[phase]
        hub, alice = f["hub"], f["alice"]
        note = (f"{_wakeups(hub, alice, 'alice')}; its tor {f['hub_tor']['cpu_pct']:.2f} % (alice's tor {f['alice_tor']['cpu_pct']:.2f} %)"
                + ("; --link-spread 5 --link-gap 0" if phase == "fresh" else f"; {idle['send']['sent']} API sends, outbox empty after {idle['send']['seconds']:.0f} s"))
        rows.append(Row("daemon", f"idle daemon over Tor, {CONTACTS} contacts, {label}: CPU over {f['window_s']:.0f} s", hub["cpu_pct"],
                        alice["cpu_pct"], "alice's daemon (1 contact), same window", "% of a core",
                        ratio(hub["cpu_pct"], alice["cpu_pct"]), "< 1 %", hub["cpu_pct"] < 1, note))
    for phase, label in PHASES.items():
        f = idle[phase]
        hc, ac = f["hub_circuits"], f["alice_circuits"]
        note = (f"{f['hub']['links']} SOCKS links, {hc['streams']} streams; built circuits {hc['built']} {hc['by_purpose']}; "
                f"alice (1 contact): {ac['carrying_streams']} carrying, {ac['built']} built")
        if phase == "fresh":
            note += f"; contacts set up over Tor in {idle['setup']['setup_s']:.0f} s, links up {idle['links_up_s']:.0f} s after start"
        rows.append(Row("daemon", f"idle daemon over Tor, {CONTACTS} contacts, {label}: tor circuits carrying its links",
                        hc["carrying_streams"], idle["queues_watched"], "queues watched (status)", "circuits",
                        ratio(hc["carrying_streams"], idle["queues_watched"]), note=note))
    f = idle["after_send"]
    rows.append(Row("daemon", f"idle daemon over Tor, {CONTACTS} contacts: RSS daemon / its tor", f["hub"]["rss_mib"], f["hub_tor"]["rss_mib"],
                    "its tor's RSS", "MiB", None,
                    note=f"after one message to each; just started: {idle['fresh']['hub']['rss_mib']:.1f} / {idle['fresh']['hub_tor']['rss_mib']:.1f} MiB; "
                         f"alice (1 contact): {f['alice']['rss_mib']:.1f} / {f['alice_tor']['rss_mib']:.1f} MiB"))
    return rows
