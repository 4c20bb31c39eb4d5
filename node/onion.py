"""Running a node as a Tor v3 onion service (``onionpost node run`` in onion mode).

``NodeTor`` gives an onion-mode node its tor and keeps the node's onion
service published:

- by default it launches a tor of its own (DataDirectory ``DATA/tor``),
  shows its bootstrap on stderr and owns it: the tor is stopped by PID when
  the node stops, also when startup fails half-way or is interrupted;
- or it attaches to an existing tor through its control port
  (``--tor-control`` with cookie or password authentication) and forwards
  through that tor's SOCKS port (``--tor-socks``); that tor is left running.

The service is published with the node's persistent key (``onion.key``), so
the ``.onion`` name never changes, mapping the virtual port (80) to the
node's loopback listen address; ``publish`` returns once a descriptor is
uploaded. ``watch`` notices a launched tor that died (or a lost control
connection), says so in the log, restarts it and re-publishes; if that keeps
failing it raises ``NodeTorError`` and the node exits non-zero.

Stem is never imported here: ``torconfig`` does all the talking to tor.
"""

import asyncio
import contextlib
import functools
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from onionpost.torconfig import TorError, process
from onionpost.torconfig.control import TorControl
from onionpost.torconfig.launch import START_TIMEOUT, TorProcess, start_tor
from onionpost.torconfig.onion_keys import onion_address_of_key
from onionpost.torconfig.onionbalance import instance_service_conf, write_instance_dir
from onionpost.torconfig.progress import print_progress

from .datadir import DataDir

log = logging.getLogger(__name__)

T = TypeVar("T")
Progress = Callable[[str, float], None]

REAL_START_TIMEOUT = 300.0
"""Seconds allowed to bootstrap a tor on the real network (the private network uses ``START_TIMEOUT``)."""
TESTNET_PUBLISH_TIMEOUT = 90.0
REAL_PUBLISH_TIMEOUT = 300.0
WATCH_INTERVAL = 0.5
CONTROL_CHECK_EVERY = 10
"""Watch ticks between checks of the control connection (a dead PID is seen at the next tick)."""
RESTART_ATTEMPTS = 3
RESTART_BACKOFF = (1.0, 5.0)
"""Seconds before the 2nd and 3rd attempt."""
RESTART_WINDOW = 600.0
MAX_RESTARTS_IN_WINDOW = 5
RECONNECT_WINDOW = 60.0
"""Seconds an attached (external) tor may stay unreachable before the node gives up."""
RECONNECT_INTERVAL = 3.0
SELF_CHECK_EVERY = {"testnet": 60, "real": 1200}
"""Watch ticks between checks that the network can find the service's descriptor: 30 s on the
private network, 10 min on the real one (each check asks up to 3 HSDirs)."""
SELF_CHECK_FAILURES = 2
"""Failed checks in a row after which the service is published again."""
ABORT_TIMEOUT = 20.0


class NodeTorError(Exception):
    """Tor could not be started, reached or kept running; the message says what to do."""


class _Stopped(Exception):
    """The node was asked to stop while waiting on tor."""


@dataclass(frozen=True)
class TorOptions:
    """The ``--testnet``/``--tor-*`` options of ``node run``."""

    testnet: Path | None = None
    control_port: int | None = None
    cookie: Path | None = None
    password: str | None = None
    socks_port: int | None = None

    @property
    def external(self) -> bool:
        """True: attach to an existing tor; False: launch one."""
        return self.control_port is not None

    def given(self) -> list[str]:
        """The options set, as their flags (for the warning a loopback node gives)."""
        flags = {"--testnet": self.testnet, "--tor-control": self.control_port, "--tor-cookie": self.cookie,
                 "--tor-password": self.password, "--tor-socks": self.socks_port}
        return [flag for flag, value in flags.items() if value is not None]

    def check(self) -> list[str]:
        """Refuse contradictory options; return warnings about ignored ones.

        Raises:
            NodeTorError: the combination cannot work.
        """
        if self.cookie is not None and self.password is not None:
            raise NodeTorError("--tor-cookie and --tor-password exclude each other (pick the authentication tor expects)")
        if not self.external:
            if self.cookie is not None or self.password is not None:
                raise NodeTorError("--tor-cookie/--tor-password authenticate to --tor-control; give --tor-control PORT too")
            if self.socks_port is not None:
                raise NodeTorError(
                    "--tor-socks is for an existing tor given with --tor-control; the tor the node launches uses its own SOCKS port"
                )
            return []
        if self.socks_port is None:
            raise NodeTorError("--tor-control needs --tor-socks PORT too: node-to-node forwarding goes through tor's SOCKS port")
        if self.testnet is not None:
            return ["--testnet (or ONIONPOST_TESTNET) is ignored with --tor-control: the existing tor decides which network it joins"]
        return []


def port_target(host: str, port: int) -> int | str:
    """The onion service's local target for a listen address (a bare port means 127.0.0.1)."""
    if host == "127.0.0.1":
        return port
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class NodeTor:
    """The tor of one running onion-mode node.

    Args:
        data_dir: the node's data directory (a launched tor lives in ``data_dir.tor_dir``).
        seed: the onion service key (32-byte Ed25519 seed).
        virtual_port: the port clients use (80).
        target: the node's listen address (host, port).
        options: ``--testnet``/``--tor-*``.
        master: a balanced backend's master address: the service, ``seed``'s instance, is published
            from ``instance_dir`` with ``HiddenServiceOnionbalanceInstance`` (ADD_ONION cannot do that).
        stopping: set when the node must stop; every wait on tor gives up then.
        progress: bootstrap progress display.
    """

    def __init__(
        self,
        data_dir: DataDir,
        seed: bytes,
        virtual_port: int,
        target: tuple[str, int],
        options: TorOptions,
        stopping: asyncio.Event,
        progress: Progress | None = print_progress,
        master: str | None = None,
    ):
        self.data_dir = data_dir
        self.master = master
        self.seed = seed
        self.virtual_port = virtual_port
        self.target = target
        self.options = options
        self.stopping = stopping
        self.progress = progress
        self.onion = onion_address_of_key(seed)
        self.process: TorProcess | None = None
        self.control: TorControl | None = None
        self.socks_port: int | None = options.socks_port
        self.on_state: Callable[[], None] | None = None
        """Called after every change of ``state`` (the node then rewrites status.json)."""
        self._state = "starting"
        self.published = False
        self.on_socks_port: Callable[[int], None] | None = None
        """Called with the new SOCKS port when a restarted tor has another one."""
        self.timings: dict[str, float] = {}
        self._aborting = False
        self._restarts: list[float] = []
        self._unfindable = 0  # failed descriptor checks in a row

    @property
    def state(self) -> str:
        """starting, bootstrapping, publishing, published, restarting or stopped (shown by ``node status``)."""
        return self._state

    @state.setter
    def state(self, value: str) -> None:
        self._state = value
        if self.on_state is not None:
            self.on_state()

    @property
    def tor_dir(self) -> Path:
        return self.data_dir.tor_dir

    @property
    def instance_dir(self) -> Path:
        """A balanced backend's HiddenServiceDir (key and ``ob_config``)."""
        return self.data_dir.path / "instance"

    @property
    def _testnet(self) -> Path | None:
        return None if self.options.external else self.options.testnet

    # ---- startup ---------------------------------------------------------------------

    async def start(self) -> None:
        """Launch (or attach to) tor and open its control connection; no service yet.

        Raises:
            NodeTorError: tor could not be started or reached.
            _Stopped: ``stopping`` was set meanwhile (nothing is left running).
        """
        if self.options.external:
            await self._attach()
        else:
            self._stop_leftover()
            await self._launch()

    async def publish(self) -> None:
        """Publish the onion service; return once its descriptor is uploaded.

        Raises:
            NodeTorError: tor refused the service or did not upload it in time.
            _Stopped: ``stopping`` was set meanwhile.
        """
        assert self.control is not None
        self.state = "publishing"
        timeout = TESTNET_PUBLISH_TIMEOUT if self._testnet is not None else REAL_PUBLISH_TIMEOUT
        started = time.monotonic()
        log.info("publishing onion service %s (port %d -> %s:%d)", self.onion, self.virtual_port, *self.target)
        port_map = {self.virtual_port: port_target(*self.target)}
        try:
            if self.master is not None:
                log.info("as a backend of %s (Onionbalance instance)", self.master)
                write_instance_dir(self.instance_dir, self.seed, self.master)
                publishing = self.control.publish_instance(
                    self.instance_dir, instance_service_conf(self.virtual_port, port_target(*self.target)), timeout=timeout)
            else:
                publishing = self.control.publish_onion(self.seed, port_map, await_publication=True, timeout=timeout,
                                                        pow_defense=True)
            address = await self._until_stopped(publishing)
        except TorError as exc:
            raise NodeTorError(f"tor did not publish the onion service {self.onion}: {_one_line(exc)}") from None
        self.published = True
        self.state = "published"
        self.timings["publication"] = time.monotonic() - started
        log.info("onion service %s published in %.1f s", address, self.timings["publication"])

    def _stop_leftover(self) -> None:
        """Stop a tor an earlier run of this node left behind (one started before tors were owned by their node;
        a tor owned by a killed node exits by itself)."""
        leftover = process.tor_pids_under(self.tor_dir)
        if leftover:
            log.warning("stopping tor left running by an earlier run of this node (pid %s)", ", ".join(map(str, leftover)))
            process.stop_pids(leftover)

    async def _launch(self) -> None:
        self.state = "bootstrapping"
        self._aborting = False
        testnet = self._testnet
        timeout = START_TIMEOUT if testnet is not None else REAL_START_TIMEOUT
        where = f"the private Tor network in {testnet}" if testnet is not None else "the Tor network"
        log.info("starting tor in %s (joining %s)", self.tor_dir, where)
        started = time.monotonic()
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(
            None,
            functools.partial(start_tor, self.tor_dir, testnet_dir=testnet, socks=True, progress=self._report, timeout=timeout),
        )
        stop = asyncio.ensure_future(self.stopping.wait())
        try:
            await asyncio.wait({future, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if not future.done():
            await self._abort_launch(future)
            raise _Stopped()
        try:
            self.process = future.result()
        except (TorError, OSError) as exc:
            raise NodeTorError(f"could not start tor: {_one_line(exc)}") from None
        self.timings["bootstrap"] = time.monotonic() - started
        log.info("tor (pid %d) bootstrapped in %.1f s; SOCKS port %d", self.process.pid, self.timings["bootstrap"],
                 self.process.socks_port)
        try:
            self.control = await TorControl.connect(self.process.control_port, cookie_path=self.process.control_cookie_path)
        except TorError as exc:
            await self._stop_process()
            raise NodeTorError(f"cannot use the control port of the tor the node started: {_one_line(exc)}") from None
        self._set_socks_port(self.process.socks_port)

    async def _abort_launch(self, future: asyncio.Future) -> None:
        """Stop a tor still starting: kill it (found by its torrc under our directory) until ``start_tor`` gives up."""
        self._aborting = True
        deadline = time.monotonic() + ABORT_TIMEOUT
        while not future.done() and time.monotonic() < deadline:
            await asyncio.to_thread(process.stop_pids, process.tor_pids_under(self.tor_dir))
            await asyncio.wait({future}, timeout=0.2)
        if future.done() and not future.cancelled() and future.exception() is None:
            await asyncio.to_thread(future.result().stop)  # it finished starting just before being killed
        await asyncio.to_thread(process.stop_pids, process.tor_pids_under(self.tor_dir))
        log.info("tor start interrupted; no tor left running")

    def _report(self, summary: str, percent: float) -> None:
        """``start_tor``'s progress callback (runs in its thread); raising aborts the start."""
        if self._aborting:
            raise TorError("the node is stopping")
        if self.progress is not None:
            self.progress(summary, percent)

    async def _attach(self) -> None:
        port = self.options.control_port
        self.state = "bootstrapping"
        if not await asyncio.to_thread(_accepts_connections, self.options.socks_port):
            raise NodeTorError(f"nothing accepts connections on --tor-socks port {self.options.socks_port} (127.0.0.1)")
        try:
            self.control = await TorControl.connect(port, password=self.options.password, cookie_path=self.options.cookie)
        except TorError as exc:
            raise NodeTorError(f"cannot use tor's control port {port}: {_one_line(exc)}") from None
        log.info("attached to the tor with control port %d (SOCKS port %d)", port, self.options.socks_port)
        started = time.monotonic()
        last = None
        while True:
            try:
                phase = await self.control.bootstrap_progress()
            except TorError as exc:
                raise NodeTorError(f"tor's control port {port} stopped answering: {_one_line(exc)}") from None
            if phase.progress >= 100:
                break
            if phase != last and self.progress is not None:
                self.progress(phase.summary, float(phase.progress))
            last = phase
            if time.monotonic() - started > REAL_START_TIMEOUT:
                raise NodeTorError(f"the tor with control port {port} did not bootstrap within {REAL_START_TIMEOUT:.0f} s")
            if await self._stopped_within(0.5):
                raise _Stopped()
        self._set_socks_port(self.options.socks_port)

    def _set_socks_port(self, port: int | None) -> None:
        changed = port != self.socks_port
        self.socks_port = port
        if changed and port is not None and self.on_socks_port is not None:
            self.on_socks_port(port)

    # ---- keeping it up ----------------------------------------------------------------------

    async def refresh_circuits(self) -> None:
        """NEWNYM, when forwarding cannot reach a destination onion (``transport.tor`` says why)."""
        if self.control is not None:
            await self.control.new_identity()

    async def watch(self) -> None:
        """Watch tor until the node stops; recover from a dead tor or a lost control connection.

        Raises:
            NodeTorError: recovery failed; the node must exit.
        """
        ticks = 0
        while not await self._stopped_within(WATCH_INTERVAL):
            ticks += 1
            problem = await self._problem(check_control=ticks % CONTROL_CHECK_EVERY == 0)
            if problem is None:
                if ticks % SELF_CHECK_EVERY["testnet" if self._testnet is not None else "real"] == 0:
                    try:
                        await self._check_findable()
                    except _Stopped:
                        return
                continue
            try:
                if self.options.external:
                    await self._reattach(problem)
                else:
                    await self._restart(problem)
            except _Stopped:
                return

    async def _check_findable(self) -> None:
        """Publish the service again if clients cannot find its descriptor.

        Tor caps how many introduction circuits a service may launch (about 28
        per 300 s). When many fail (a relay died, or a young network's
        consensus changes under it) tor stops trying for up to 5 minutes, the
        descriptor of the next time period is never uploaded, and clients get
        "not found" from every HSDir meanwhile. A fresh service starts over.
        """
        if not self.published or self.control is None:
            return
        try:
            findable = await self.control.descriptor_findable(self.onion)
        except TorError as exc:
            log.info("could not check the onion service's descriptor: %s", _one_line(exc))
            return
        if findable is None:  # tor could not tell (no HSDir left to ask for now, timeouts)
            return
        self._unfindable = 0 if findable else self._unfindable + 1
        if self._unfindable < SELF_CHECK_FAILURES:
            return
        log.warning("clients cannot find onion service %s in the Tor network (%d checks in a row); publishing it again",
                    self.onion, self._unfindable)
        self._unfindable = 0
        try:
            await self._remove()
        except TorError as exc:
            log.info("removing the onion service before publishing it again: %s", _one_line(exc))
        self.published = False
        try:
            await self.publish()
        except NodeTorError as exc:
            log.error("%s; trying again at the next check", exc)

    async def _problem(self, check_control: bool) -> str | None:
        if self.process is not None and not self.process.alive():
            last = process.log_tail(self.tor_dir / "notice.log", lines=1)
            return (f"tor (pid {self.process.pid}) exited unexpectedly (its log, {self.tor_dir / 'notice.log'}, "
                    f"ends: {last or 'nothing'})")
        if check_control and self.control is not None:
            try:
                await asyncio.wait_for(self.control.bootstrap_progress(), 30.0)
            except (TorError, asyncio.TimeoutError) as exc:
                return f"lost the control connection to tor ({_one_line(exc) or 'no answer'})"
        return None

    async def _restart(self, problem: str) -> None:
        log.error("%s; restarting it and re-publishing %s", problem, self.onion)
        self.state = "restarting"
        self.published = False
        now = time.monotonic()
        self._restarts = [t for t in self._restarts if now - t < RESTART_WINDOW] + [now]
        if len(self._restarts) > MAX_RESTARTS_IN_WINDOW:
            raise NodeTorError(f"tor died {len(self._restarts)} times in {RESTART_WINDOW / 60:.0f} minutes; giving up "
                               f"(see {self.tor_dir / 'notice.log'})")
        last = problem
        for attempt in range(RESTART_ATTEMPTS):
            await self._close_control()
            await self._stop_process()
            try:
                await self._launch()
                await self.publish()
            except NodeTorError as exc:
                last = str(exc)
                log.error("tor restart attempt %d of %d failed: %s", attempt + 1, RESTART_ATTEMPTS, last)
                if attempt + 1 < RESTART_ATTEMPTS and await self._stopped_within(RESTART_BACKOFF[attempt]):
                    raise _Stopped() from None
                continue
            log.warning("tor restarted (pid %d); onion service %s is published again", self.process.pid, self.onion)
            return
        await self._close_control()
        await self._stop_process()
        raise NodeTorError(f"tor died and could not be restarted ({RESTART_ATTEMPTS} attempts): {last}")

    async def _reattach(self, problem: str) -> None:
        log.error("%s (control port %d); reconnecting and re-publishing %s", problem, self.options.control_port, self.onion)
        self.state = "restarting"
        self.published = False
        await self._close_control()
        deadline = time.monotonic() + RECONNECT_WINDOW
        last = problem
        while time.monotonic() < deadline:
            try:
                await self._attach()
                await self.publish()
            except NodeTorError as exc:
                last = str(exc)
                await self._close_control()
                if await self._stopped_within(RECONNECT_INTERVAL):
                    raise _Stopped() from None
                continue
            log.warning("reconnected to tor; onion service %s is published again", self.onion)
            return
        raise NodeTorError(f"lost the tor with control port {self.options.control_port} and could not reconnect "
                           f"within {RECONNECT_WINDOW:.0f} s: {last}")

    # ---- stopping -------------------------------------------------------------------------------

    async def close(self) -> None:
        """Remove the onion service, close the control connection and stop the tor this node launched."""
        self.state = "stopped"
        if self.control is not None and self.published:
            try:
                await asyncio.wait_for(self._remove(), 5.0)
                log.info("onion service %s removed", self.onion)
            except (TorError, asyncio.TimeoutError) as exc:
                log.warning("could not remove the onion service: %s", _one_line(exc) or "no answer")
        self.published = False
        await self._close_control()
        await self._stop_process()
        if not self.options.external:
            # Belt and braces: nothing started from our torrc may outlive the node.
            await asyncio.to_thread(process.stop_pids, process.tor_pids_under(self.tor_dir))

    async def _remove(self) -> None:
        if self.master is not None:
            await self.control.remove_instance(self.instance_dir)
        else:
            await self.control.remove_onion(self.onion)

    async def _close_control(self) -> None:
        control, self.control = self.control, None
        if control is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(control.close(), 5.0)

    async def _stop_process(self) -> None:
        tor, self.process = self.process, None
        if tor is not None:
            try:
                await asyncio.to_thread(tor.stop)
            except TorError as exc:
                log.error("could not stop tor (pid %d): %s", tor.pid, _one_line(exc))
            else:
                log.info("tor (pid %d) stopped", tor.pid)

    # ---- helpers ----------------------------------------------------------------------------------

    async def _stopped_within(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; True as soon as the node is stopping."""
        try:
            await asyncio.wait_for(self.stopping.wait(), seconds)
        except asyncio.TimeoutError:
            return False
        return True

    async def _until_stopped(self, awaitable: Awaitable[T]) -> T:
        """Await ``awaitable`` unless the node stops first (then raise ``_Stopped``; a blocked tor call is abandoned)."""
        task = asyncio.ensure_future(awaitable)
        stop = asyncio.ensure_future(self.stopping.wait())
        try:
            await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if not task.done():
            task.cancel()
            raise _Stopped()
        return task.result()


def _accepts_connections(port: int | None, timeout: float = 5.0) -> bool:
    if port is None:
        return False
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())
