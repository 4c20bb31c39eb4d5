"""A thin async layer over stem's blocking Controller (run in threads)."""

import asyncio
import base64
import logging
import queue
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import stem
import stem.connection
import stem.control
import stem.response
from stem.control import EventType, Signal
from stem.descriptor.hidden_service import HiddenServiceDescriptorV3

from onionpost.torconfig import onion_keys
from onionpost.torconfig.errors import ControlError

# stem sets its own logger to TRACE and logs every control message (and a line per
# closed control socket): keep what it says below WARNING out of our logs and test output.
logging.getLogger("stem").setLevel(logging.WARNING)

log = logging.getLogger(__name__)

T = TypeVar("T")
PUBLISH_TIMEOUT = 90.0
POW_OPTIONS = "PoWDefensesEnabled=1"
"""tor's proof-of-work defence for an onion service (tor 0.4.8+ built with it; ``tor --list-modules``
shows ``pow: yes``); tor's default queue rate (250/s) and burst (2500) apply."""
_PHASE = re.compile(r'PROGRESS=(\d+) TAG=(\S+) SUMMARY="((?:[^"\\]|\\.)*)"(?:.*WARNING="((?:[^"\\]|\\.)*)")?')


@dataclass(frozen=True)
class Bootstrap:
    """Bootstrap state: percent done, phase tag and summary (plus a warning, if any)."""

    progress: int
    tag: str
    summary: str
    warning: str | None = None


@dataclass(frozen=True)
class Circuit:
    """One circuit; ``socks_username``/``password`` are its isolation credentials."""

    id: str
    status: str
    purpose: str | None
    path: tuple[tuple[str, str | None], ...]
    socks_username: str | None
    socks_password: str | None


@dataclass(frozen=True)
class Stream:
    """One stream; ``source_port`` is the local port of the SOCKS client, if seen."""

    id: str
    status: str
    circuit_id: str | None
    target: str
    source_port: int | None


def parse_bootstrap_phase(text: str) -> Bootstrap:
    """Parse ``GETINFO status/bootstrap-phase`` (or a BOOTSTRAP status event)."""
    match = _PHASE.search(text)
    if not match:
        raise ControlError(f"unexpected bootstrap status: {text!r}")
    return Bootstrap(int(match[1]), match[2], match[3], match[4])


class TorControl:
    """An authenticated control connection; create with ``await TorControl.connect(...)``."""

    def __init__(self, controller: stem.control.Controller):
        self._controller = controller
        self._sources: dict[str, int] = {}  # stream id -> SOCKS client port
        self._lock = threading.Lock()
        controller.add_event_listener(self._on_stream, EventType.STREAM)

    @classmethod
    async def connect(cls, port: int, *, password: str | None = None,
                      cookie_path: Path | None = None, host: str = "127.0.0.1") -> "TorControl":
        """Connect to a control port and authenticate (cookie, or password).

        Args:
            port: the control port on ``host``.
            password: for HashedControlPassword; otherwise cookie auth is used.
            cookie_path: cookie file to use instead of the one tor announces.
        """
        def connect() -> "TorControl":
            controller = stem.control.Controller.from_port(address=host, port=port)
            try:
                info = stem.connection.get_protocolinfo(controller)
                if cookie_path is not None:
                    info.cookie_path = str(cookie_path)
                controller.authenticate(password=password, protocolinfo_response=info)
                return cls(controller)
            except BaseException:
                controller.close()
                raise

        return await _run(connect)

    def _on_stream(self, event) -> None:
        # GETINFO stream-status has no source address; only STREAM NEW events do.
        with self._lock:
            if event.source_port:
                self._sources[event.id] = int(event.source_port)
            if event.status in (stem.StreamStatus.CLOSED, stem.StreamStatus.FAILED):
                self._sources.pop(event.id, None)

    async def bootstrap_progress(self) -> Bootstrap:
        """Return tor's current bootstrap state."""
        return parse_bootstrap_phase(await _run(self._controller.get_info, "status/bootstrap-phase"))

    async def publish_onion(self, key: bytes, port_map: Mapping[int, int | str],
                            await_publication: bool = True, *, timeout: float = PUBLISH_TIMEOUT,
                            detached: bool = False, pow_defense: bool = False) -> str:
        """Publish an onion service whose address is fixed by ``key``.

        Args:
            key: 32-byte Ed25519 seed or tor's 64-byte expanded secret key.
            port_map: virtual port -> local target (a port or "host:port").
            await_publication: wait until a descriptor is uploaded (gotcha 6).
            timeout: seconds to wait for the upload.
            detached: keep the service after this control connection closes.
            pow_defense: turn on tor's proof-of-work defence for the service
                (``PoWDefensesEnabled``, tor's default queue rate and burst);
                a tor built without it publishes the service without it.

        Returns:
            The ``<56 chars>.onion`` address.
        """
        address = onion_keys.onion_address_of_key(key)
        if pow_defense:
            try:
                service_id = await _run(self._add_onion, key, port_map, detached, await_publication, timeout, POW_OPTIONS)
            except ControlError as exc:
                if "PoW" not in str(exc):
                    raise
                log.warning("tor cannot defend the onion service with proof of work (%s); published without it", exc)
                service_id = await _run(self._add_onion, key, port_map, detached, await_publication, timeout, "")
        else:
            response = await _run(
                self._controller.create_ephemeral_hidden_service,
                dict(port_map), key_type="ED25519-V3", key_content=onion_keys.tor_key_blob(key),
                detached=detached, await_publication=await_publication,
                timeout=timeout if await_publication else None,
            )
            service_id = response.service_id
        if service_id + onion_keys.ONION_SUFFIX != address:
            raise ControlError(f"tor published {service_id}, expected {address}")
        return address

    def _add_onion(self, key: bytes, port_map: Mapping[int, int | str], detached: bool,
                   await_publication: bool, timeout: float, options: str) -> str:
        """ADD_ONION with ``options`` stem does not know (blocking); return the service id.

        With ``await_publication``, return once an HSDir took the descriptor (HS_DESC UPLOADED);
        raise if every HSDir it went to refused it, or after ``timeout`` seconds.
        """
        events: queue.Queue = queue.Queue()
        if await_publication:
            self._controller.add_event_listener(events.put, EventType.HS_DESC)
        try:
            request = f"ADD_ONION ED25519-V3:{onion_keys.tor_key_blob(key)}"
            request += " Flags=Detach" if detached else ""
            request += f" {options}" if options else ""
            request += "".join(f" Port={virtual},{target}" for virtual, target in port_map.items())
            response = self._controller.msg(request)
            stem.response.convert("ADD_ONION", response)
            service_id = response.service_id
            if await_publication:
                _await_upload(events, service_id, time.monotonic() + timeout)
            return service_id
        finally:
            if await_publication:
                self._controller.remove_event_listener(events.put)

    async def publish_instance(self, hs_dir: Path, options: Mapping[str, object], *,
                               timeout: float = PUBLISH_TIMEOUT) -> str:
        """Publish a service kept in ``hs_dir`` (an Onionbalance backend instance, which ADD_ONION cannot make).

        Args:
            hs_dir: the HiddenServiceDir, holding the key (and ``ob_config``) already.
            options: the service's options (``onionbalance.instance_service_conf``).
            timeout: seconds to wait for the descriptor upload.

        Returns:
            The ``<56 chars>.onion`` address, once an HSDir took the descriptor. Other services
            configured in this tor are kept.
        """
        address = onion_keys.onion_address_of_key(
            onion_keys.from_secret_key_file((Path(hs_dir) / "hs_ed25519_secret_key").read_bytes()))

        def publish() -> None:
            events: queue.Queue = queue.Queue()
            self._controller.add_event_listener(events.put, EventType.HS_DESC)
            try:
                conf = self._controller.get_hidden_service_conf()
                conf[str(hs_dir)] = dict(options)
                self._controller.set_hidden_service_conf(conf)
                _await_upload(events, onion_keys.service_id(address), time.monotonic() + timeout)
            finally:
                self._controller.remove_event_listener(events.put)

        await _run(publish)
        return address

    async def listen_uploads(self, address: str) -> asyncio.Queue:
        """A queue that receives the HSDir fingerprint of every accepted upload of ``address``'s descriptor
        from now on, whoever made it (Onionbalance's HSPOST on this tor too), until ``close``."""
        service_id = onion_keys.service_id(address)
        loop = asyncio.get_running_loop()
        uploads: asyncio.Queue = asyncio.Queue()

        def on_event(event) -> None:
            if event.address == service_id and event.action == stem.HSDescAction.UPLOADED:
                loop.call_soon_threadsafe(uploads.put_nowait, str(event.directory_fingerprint))

        await _run(self._controller.add_event_listener, on_event, EventType.HS_DESC)
        return uploads

    async def remove_instance(self, hs_dir: Path) -> None:
        """Stop a service published by ``publish_instance`` (its files stay)."""
        def remove() -> None:
            conf = self._controller.get_hidden_service_conf()
            if conf.pop(str(hs_dir), None) is None:
                raise ControlError(f"no onion service in {hs_dir}")
            self._controller.set_hidden_service_conf(conf)

        await _run(remove)

    async def remove_onion(self, address: str) -> None:
        """Stop an onion service published by ``publish_onion``."""
        if not await _run(self._controller.remove_ephemeral_hidden_service, onion_keys.service_id(address)):
            raise ControlError(f"no such onion service: {address}")

    async def circuits(self) -> list[Circuit]:
        """Return the circuits tor has now."""
        return [
            Circuit(c.id, str(c.status), None if c.purpose is None else str(c.purpose), tuple(c.path),
                    c.socks_username, c.socks_password)
            for c in await _run(self._controller.get_circuits)
        ]

    async def streams(self) -> list[Stream]:
        """Return the open streams (source ports of streams opened since connect)."""
        streams = await _run(self._controller.get_streams)
        with self._lock:
            return [Stream(s.id, str(s.status), s.circ_id, s.target, self._sources.get(s.id)) for s in streams]

    async def descriptor_findable(self, address: str, *, asks: int = 3, timeout: float = 30.0) -> bool | None:
        """Ask the network for an onion's descriptor (HSFETCH), as a client would.

        Each HSFETCH asks one responsible HSDir, tor picking one not asked
        recently, so up to ``asks`` different HSDirs are asked in turn.

        Returns:
            True as soon as one hands the descriptor over; False if two said
            NOT_FOUND and none had it; None if that cannot be told (tor has no
            HSDir left to ask for now, other errors, or ``timeout`` seconds
            per ask passed). The local cache is not used.
        """
        service_id = onion_keys.service_id(address)
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()

        def on_event(event) -> None:
            if event.address == service_id and str(event.action) in ("RECEIVED", "FAILED"):
                loop.call_soon_threadsafe(events.put_nowait, (str(event.action), str(event.reason)))

        await _run(self._controller.add_event_listener, on_event, EventType.HS_DESC)
        try:
            not_found = 0
            for _ in range(asks):
                await _run(self._controller.msg, f"HSFETCH {service_id}")
                try:
                    action, reason = await asyncio.wait_for(events.get(), timeout)
                except asyncio.TimeoutError:
                    return None
                if action == "RECEIVED":
                    return True
                if reason == "QUERY_NO_HSDIR":
                    break
                not_found += reason == "NOT_FOUND"
            return False if not_found >= 2 else None
        finally:
            await _run(self._controller.remove_event_listener, on_event)

    async def intro_point_keys(self, address: str, *, timeout: float = 30.0) -> set[str]:
        """Fetch ``address``'s descriptor from the network, as a client would, and return the
        authentication keys (base64) of its introduction points: they are per service and intro
        point, so they tell which backend an intro point of a master descriptor leads to.

        Raises:
            ControlError: the descriptor could not be fetched or decrypted.
        """
        if not await self.descriptor_findable(address, timeout=timeout):
            raise ControlError(f"could not fetch the descriptor of {address}")
        text = await _run(self._controller.get_info, f"hs/client/desc/id/{onion_keys.service_id(address)}")
        try:
            inner = HiddenServiceDescriptorV3.from_str(text).decrypt(onion_keys.service_id(address))
        except ValueError as exc:
            raise ControlError(f"the descriptor of {address} does not decrypt: {exc}") from None
        return {base64.b64encode(point.auth_key_cert.key).decode() for point in inner.introduction_points}

    async def new_identity(self) -> None:
        """Send NEWNYM: new circuits for new streams, and clear cached onion lookups."""
        await _run(self._controller.signal, Signal.NEWNYM)

    async def close(self) -> None:
        """Close the connection (ephemeral, non-detached onions go with it)."""
        await asyncio.to_thread(self._controller.close)

    async def __aenter__(self) -> "TorControl":
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.close()


def _await_upload(events: queue.Queue, service_id: str, deadline: float) -> None:
    """Wait for an HS_DESC UPLOADED event of ``service_id``; raise if all its uploads failed or time runs out."""
    tried: set[str] = set()
    failed: set[str] = set()
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise stem.Timeout(message=f"the descriptor of {service_id}.onion was not uploaded in time")
        try:
            event = events.get(timeout=left)
        except queue.Empty:
            continue
        if event.address != service_id:
            continue
        if event.action == stem.HSDescAction.UPLOAD:
            tried.add(event.directory_fingerprint)
        elif event.action == stem.HSDescAction.UPLOADED:
            return
        elif event.action == stem.HSDescAction.FAILED and event.directory_fingerprint in tried:
            failed.add(event.directory_fingerprint)
            if failed == tried:
                raise stem.OperationFailed(message=f"every HSDir refused the descriptor of {service_id}.onion")


async def _run(function: Callable[..., T], *args, **kwargs) -> T:
    """Run a blocking stem call in a thread; raise ControlError for stem's errors."""
    try:
        return await asyncio.to_thread(function, *args, **kwargs)
    except (stem.ControllerError, stem.connection.AuthenticationFailure) as exc:
        raise ControlError(f"{type(exc).__name__}: {exc}") from exc
