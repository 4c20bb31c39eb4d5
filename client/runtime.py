"""ClientRuntime: one home, opened once. It owns the store, the home lock, tor, and one agent per profile.

The CLI (one-shot), the daemon, the demo and the tests all build a client
through it (docs/daemon.md). Nothing else opens a home for writing.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from pathlib import Path

from onionpost.proto import parse_node_address
from onionpost.torconfig.progress import print_progress
from onionpost.transport import Connector, DirectConnector

from .agent import Agent, Event
from .db import Database, open_database
from .home import HomeLock
from .profiles import Profile, get_profile, list_profiles, list_relays
from .timing import TimingPolicy
from .tor import ClientTor, TorSettings, TorUnavailable


class OnDemandTor:
    """The runtime's connector: loopback relays directly, onion relays through tor, started when first needed."""

    def __init__(self, runtime: ClientRuntime):
        self.runtime = runtime
        self.direct = DirectConnector()

    async def open(self, address, isolation: str = ""):
        if address.is_loopback:
            return await self.direct.open(address, isolation)
        connector = await self.runtime.tor_connector()
        return await connector.open(address, isolation)


class ClientRuntime:
    def __init__(
        self,
        home: Path,
        db: Database,
        *,
        tor_settings: TorSettings | None = None,
        isolation: str = "queue",
        timing: TimingPolicy | None = None,
        timeout: float = 30.0,
        connector: Connector | None = None,
        clock: Callable[[], float] = time.time,
        rng: Callable[[int], bytes] = os.urandom,
        progress=print_progress,
    ):
        self.home = Path(home)
        self.db = db
        self.tor_settings = tor_settings or TorSettings()
        self.isolation = isolation
        self.timing = timing or TimingPolicy.immediate()
        self.timeout = timeout
        self.clock, self.rng = clock, rng
        self.progress = progress
        self.lock = HomeLock(self.home)
        self.tor: ClientTor | None = None
        self.connector = connector or OnDemandTor(self)
        self._tor_lock = asyncio.Lock()
        self.tor_restarts = 0
        self.listeners: list[Callable[[Event], None]] = []
        self._agents: dict[int, Agent] = {}
        self._runs: dict[int, asyncio.Task] = {}
        self._running = False
        self._failure: asyncio.Future | None = None

    @classmethod
    def open(cls, home: Path, password: str, *, create: bool = False, lock: bool = True, **options) -> ClientRuntime:
        """Open ``home`` (taking its lock first when ``lock``, so two writers never meet)."""
        home = Path(home)
        owner = HomeLock(home)
        if lock:
            owner.acquire()
        try:
            db = open_database(home, password, create=create)
        except BaseException:
            owner.release()
            raise
        runtime = cls(home, db, **options)
        runtime.lock = owner
        return runtime

    # --- network -------------------------------------------------------------

    def needs_tor(self, profiles: list[Profile] | None = None) -> bool:
        profiles = list_profiles(self.db) if profiles is None else profiles
        return any(parse_node_address(r.address).is_onion for p in profiles for r in list_relays(self.db, p))

    async def start_network(self, profiles: list[Profile] | None = None) -> None:
        """Start (or attach to) tor now if any relay of ``profiles`` (default: all) is an onion service.

        Without this call tor starts on the first connection to an onion relay, so a command
        that fails before it needs the network never waits for tor.
        """
        if self.needs_tor(profiles):
            await self.tor_connector()

    async def tor_connector(self) -> Connector:
        """Tor's connector, starting tor on first use, and again if the tor this client started has died.

        Links through a dead tor close; each queue's keeper reopens its link (on its own schedule,
        client/timing.py) and so arrives here, where the first of them starts a new tor.
        """
        async with self._tor_lock:
            if self.tor is not None and not self.tor.alive:
                self.progress("the client's tor stopped; starting it again", 0)
                await asyncio.to_thread(self.tor.stop)
                self.tor = None
                self.tor_restarts += 1
            if self.tor is None:
                tor = ClientTor(self.home, self.tor_settings)
                try:
                    await tor.start(progress=self.progress)
                except RuntimeError as exc:
                    raise TorUnavailable(str(exc)) from None
                self.tor = tor
            return self.tor.connector

    # --- agents ----------------------------------------------------------------

    def profile(self, name: str | None = None) -> Profile:
        return get_profile(self.db, name)

    def agent(self, profile: str | Profile | None = None) -> Agent:
        """The agent of ``profile`` (a name, or the current profile), built once."""
        chosen = profile if isinstance(profile, Profile) else get_profile(self.db, profile)
        agent = self._agents.get(chosen.id)
        if agent is None:
            agent = Agent(self.db, chosen, connector=self.connector, clock=self.clock, rng=self.rng,
                          timeout=self.timeout, isolation=self.isolation, timing=self.timing)
            agent.listeners.append(self._publish)
            self._agents[chosen.id] = agent
            if self._running:
                self._start(agent)
        return agent

    def agents(self) -> list[Agent]:
        return [self.agent(p) for p in list_profiles(self.db)]

    def forget_profile(self, profile_id: int) -> asyncio.Future | None:
        """Stop and drop a deleted profile's agent."""
        agent = self._agents.pop(profile_id, None)
        task = self._runs.pop(profile_id, None)
        if task is not None:
            task.cancel()
        return asyncio.ensure_future(agent.close()) if agent is not None else None

    def refresh_relays(self, profile: Profile) -> None:
        """A relay was added or removed: the profile's agent uses the new list from now on."""
        agent = self._agents.get(profile.id)
        if agent is not None:
            agent.reload_relays()

    def _publish(self, event: Event) -> None:
        for listener in list(self.listeners):
            listener(event)

    # --- running ---------------------------------------------------------------------

    async def run(self) -> None:
        """Run every profile's agent (and those created later) until cancelled."""
        self._running = True
        self._failure = asyncio.get_running_loop().create_future()
        try:
            for agent in self.agents():
                self._start(agent)
            await self._failure  # an agent that stops by itself has hit a bug: stop everything, say why
        finally:
            self._running = False
            for task in self._runs.values():
                task.cancel()
            await asyncio.gather(*self._runs.values(), return_exceptions=True)
            self._runs.clear()

    def _start(self, agent: Agent) -> None:
        task = asyncio.create_task(agent.run())
        task.add_done_callback(self._agent_stopped)
        self._runs[agent.profile.id] = task

    def _agent_stopped(self, task: asyncio.Task) -> None:
        if task.cancelled() or self._failure is None or self._failure.done():
            return
        self._failure.set_exception(task.exception() or RuntimeError("an agent stopped unexpectedly"))

    async def close(self, *, spread_closes: bool = False) -> None:
        """Close everything; the daemon spreads its links' closing over time (client/timing.py)."""
        await asyncio.gather(*(agent.close(spread_closes=spread_closes) for agent in self._agents.values()))
        self._agents.clear()
        if self.tor is not None:
            await asyncio.to_thread(self.tor.stop)
            self.tor = None
        self.db.close()
        self.lock.release()
