"""``onionpost demo``: a private Tor network, two onion relays, two people, one conversation.

Everything runs on 127.0.0.1 in a temporary directory and is stopped by PID
at the end, also on Ctrl-C. The relays are real ``onionpost node run``
processes published as onion services; the two people are real clients with
separate homes, each with its own tor, talking only to their own relay, which
forwards to the other's.
"""

import asyncio
import os
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import AsyncExitStack
from pathlib import Path

from onionpost.client.profiles import add_relay, create_profile
from onionpost.client.qr import qr_png, qr_terminal, read_qr_image
from onionpost.client.runtime import ClientRuntime
from onionpost.client.tor import TorSettings
from onionpost.torconfig.socks import isolation_credentials
from onionpost.torconfig.testnet import DEFAULT_RELAYS, PrivateTorNetwork

MESSAGES = [
    ("alice", "Hi Bob, this came through two onion relays."),
    ("bob", "Hi Alice! Neither relay knows it is us talking."),
    ("alice", "And no socket carries both directions."),
    ("bob", "See you on the other side of the QR code."),
]


def say(text: str = "") -> None:
    print(text, flush=True)


def progress_line(prefix: str):
    last = {"percent": -10.0}

    def report(summary: str, percent: float) -> None:
        if percent >= 100 or percent - last["percent"] >= 10:
            last["percent"] = percent
            print(f"  {prefix}: {percent:3.0f}% {summary}", file=sys.stderr, flush=True)

    return report


class RelayProcess:
    """One ``onionpost node run`` child process, stopped by PID."""

    def __init__(self, data: Path, testnet: Path, init_args: Sequence[str] = ("--onion",)):
        self.data, self.testnet, self.init_args = data, testnet, tuple(init_args)
        self.proc: subprocess.Popen | None = None
        self.address = ""
        self.stopping = False

    COMMAND = [sys.executable, "-m", "onionpost", "node"]

    def init(self) -> None:
        init = subprocess.run([*self.COMMAND, "init", "--data", str(self.data), *self.init_args], capture_output=True, text=True)
        if init.returncode != 0:
            raise RuntimeError(f"node init failed: {init.stderr.strip()}")

    def start(self) -> None:
        self.stopping = False
        self.log = open(self.data.parent / f"{self.data.name}.log", "ab")
        self.proc = subprocess.Popen(
            [*self.COMMAND, "run", "--data", str(self.data), "--testnet", str(self.testnet)],
            stdout=subprocess.PIPE, stderr=self.log, start_new_session=True,
        )

    def wait_listening(self, timeout: float = 180) -> str:
        """Read the relay's listening line (in a worker thread; ``stop`` may run meanwhile)."""
        deadline = time.monotonic() + timeout
        line = b""
        while b"\n" not in line:
            if self.stopping or self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"relay {self.data.name} did not start; see {self.log.name}")
            # Never block for long: stop() closes the pipe, and its descriptor may be reused.
            if select.select([self.proc.stdout], [], [], 0.2)[0]:
                line += os.read(self.proc.stdout.fileno(), 1)
        self.address = line.decode().split(" address ")[-1].strip()
        return self.address

    def stop(self) -> None:
        self.stopping = True
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        if self.proc is not None:
            self.proc.stdout.close()
            self.log.close()


class Person:
    """One person's client, built like every client: a ClientRuntime on its own home."""

    def __init__(self, name: str, home: Path, relay: str, testnet: Path):
        self.name, self.home = name, home
        self.runtime = ClientRuntime.open(home, secrets.token_urlsafe(16), create=True,
                                          tor_settings=TorSettings(testnet=testnet), timeout=60,
                                          progress=progress_line(f"{name}'s tor"))
        profile = create_profile(self.runtime.db, name.lower(), name)
        add_relay(self.runtime.db, profile, relay)
        self.agent = self.runtime.agent(profile)

    @property
    def tor(self):
        return self.runtime.tor

    async def start(self) -> None:
        await self.runtime.start_network()

    async def close(self) -> None:
        await self.runtime.close()


async def _settle(*people: Person, rounds: int = 3, wait: float = 1.5) -> None:
    for _ in range(rounds):
        for person in people:
            await person.agent.receive(wait=wait)


def _short(address: str) -> str:
    host = address.split("@")[-1]
    return host[:12] + "…" + host[-12:] if len(host) > 30 else host


async def _circuits(person: Person) -> list[str]:
    paths = await person.tor.circuits_by_username()
    lines = []
    for row in person.agent.queue_tags():
        username = isolation_credentials(row["tag"])[0]
        path = paths.get(username)
        hops = " > ".join(nick or fp[:8] for fp, nick in path) if path else "(no open circuit)"
        if row["direction"] == "from":
            what = f"queue from {row['contact']:<6} (read at {_short(row['relay'])})"
        else:
            what = f"queue to   {row['contact']:<6} (sent through {person.name}'s relay)"
        lines.append(f"  {person.name:<5} {what}  circuit {hops}")
    return lines


async def run_demo(workdir: Path, *, deleted_at_end: bool = True) -> None:
    async with AsyncExitStack() as stack:
        say(f"Working in {workdir}")
        say(f"1. Starting a private Tor network on 127.0.0.1 (3 directory authorities + {DEFAULT_RELAYS} relays)...")
        network = PrivateTorNetwork(workdir / "tor-network")
        started = time.monotonic()
        stack.callback(network.down)
        await asyncio.to_thread(network.up, progress_line("network"))
        say(f"   up in {time.monotonic() - started:.1f} s")

        say("2. Starting two onionpost relays as onion services...")
        relays = [RelayProcess(workdir / name, network.directory) for name in ("relay-alice", "relay-bob")]
        for relay in relays:
            stack.callback(relay.stop)
            relay.init()
            relay.start()
        started = time.monotonic()
        addresses = await asyncio.gather(*(asyncio.to_thread(r.wait_listening) for r in relays))
        say(f"   published in {time.monotonic() - started:.1f} s")
        for name, address in zip(("Alice", "Bob"), addresses):
            say(f"   {name}'s relay: {address}")

        say("3. Two people, each with an encrypted home, their own relay and their own tor...")
        alice = Person("Alice", workdir / "alice", addresses[0], network.directory)
        bob = Person("Bob", workdir / "bob", addresses[1], network.directory)
        for person in (alice, bob):
            stack.push_async_callback(person.close)
        await asyncio.gather(alice.start(), bob.start())

        say("4. Alice makes an invitation; here is its QR code:")
        _, link = await alice.agent.invite(auto_accept=True)
        png = workdir / "invitation.png"
        qr_png(link, png)
        say(qr_terminal(link))
        fate = "the demo's folder is deleted at the end unless you pass --keep" if deleted_at_end else "kept"
        say(f"   (also saved as {png}; {fate})")

        say("5. Bob scans it from the PNG and sends a connection request; Alice's client accepts it.")
        started = time.monotonic()
        await bob.agent.connect(read_qr_image(png), via="qr-image", alias="Alice")
        for _ in range(20):  # each side receives briefly until both are connected
            await _settle(alice, bob, rounds=1, wait=0.3)
            states = [c.state for c in alice.agent.contacts() + bob.agent.contacts()]
            if states == ["connected", "connected"]:
                break
        if states != ["connected", "connected"]:
            raise RuntimeError(f"the connection did not complete (states: {states})")
        say(f"   connected in {time.monotonic() - started:.1f} s")

        say("6. They talk:")
        people = {"alice": alice, "bob": bob}
        peer = {"alice": "bob", "bob": "alice"}
        for sender, text in MESSAGES:
            aliases = [c.alias for c in people[sender].agent.contacts()]
            await people[sender].agent.send(aliases[0], text)
            await people[sender].agent.flush()
            await _settle(people[peer[sender]], people[sender], rounds=1, wait=1.0)
        await _settle(alice, bob, rounds=1)

        say("\nThe conversation, as stored (encrypted) on Alice's device:")
        contact = alice.agent.contacts()[0].alias
        for message in alice.agent.history(contact):
            who = "Alice" if message["direction"] == "out" else "Bob"
            say(f"  {who:>5}: {message['text']}  [{message['state']}]")

        code_a = alice.agent.security_code(contact)
        code_b = bob.agent.security_code(bob.agent.contacts()[0].alias)
        same = "the same on both sides" if code_a == code_b else "DIFFERENT on the two sides"
        say(f"\nSecurity code ({same}): {code_a}")

        say("\nWhich Tor circuit carries each one-directional queue:")
        for person in (alice, bob):
            for line in await _circuits(person):
                say(line)
        say("\nShutting down: clients, tors, relays and the Tor network, by PID.")
    say("Done.")


def main(keep: bool = False, workdir: Path | None = None) -> int:
    directory = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="onionpost-demo-"))
    directory.mkdir(parents=True, exist_ok=True)
    try:
        asyncio.run(run_demo(directory, deleted_at_end=not keep and workdir is None))
        return 0
    except KeyboardInterrupt:
        print("\nInterrupted: everything was stopped.", file=sys.stderr)
        return 130
    except RuntimeError as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1
    finally:
        if not keep and workdir is None:
            shutil.rmtree(directory, ignore_errors=True)
