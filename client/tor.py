"""The client's Tor: its own tor under the home directory, or one already running.

Onion relays are reached through Tor's SOCKS port with one credential pair per
isolation tag (``transport.tor.TorConnector``), hence one circuit per tag.
Isolation modes (``--isolation``), from most to least private:

| mode | one circuit and socket per | cost |
|---|---|---|
| ``queue`` (default) | one-directional queue | one onion rendezvous (~6 hops) per queue: on the real network ~5 s median to open, more memory in tor |
| ``contact`` | contact (its two queues share) | half the circuits; a relay that hosts both queues of a contact can link them by circuit |
| ``profile`` | profile | fewest circuits; a relay can link all of a profile's queues on it |
| ``shared`` (lab only) | everything: every profile, every queue, new queues too | a baseline for the correlation lab: a relay links everything; refused unless ``--testnet`` or ``ONIONPOST_LAB=1`` |
"""

import os

import asyncio
import threading
from dataclasses import dataclass
from pathlib import Path

from onionpost.torconfig import TorError
from onionpost.torconfig.control import TorControl
from onionpost.torconfig.launch import TorProcess, start_tor
from onionpost.torconfig.progress import print_progress
from onionpost.transport.tor import TorConnector

ISOLATION_MODES = ("queue", "contact", "profile", "shared")
LAB_ISOLATION_MODES = ("shared",)
LAB_ENV = "ONIONPOST_LAB"


def check_isolation(mode: str, *, testnet: bool) -> None:
    """Refuse an unknown mode, and a lab-only mode outside a private network or the lab."""
    if mode not in ISOLATION_MODES:
        raise ValueError(f"--isolation must be one of {', '.join(ISOLATION_MODES)}, not {mode!r}")
    if mode in LAB_ISOLATION_MODES and not testnet and os.environ.get(LAB_ENV) != "1":
        raise ValueError(f"--isolation {mode} puts all your queues on one circuit, so a relay links them all: it is a "
                         f"lab baseline, allowed only with --testnet or {LAB_ENV}=1")


class TorUnavailable(Exception):
    """Tor was needed (an onion relay) and could not be started or reached."""


@dataclass(frozen=True)
class TorSettings:
    socks: tuple[str, int] | None = None  # an existing tor's SOCKS port
    control: int | None = None  # an existing tor's control port (circuit information)
    testnet: Path | None = None  # join this private network instead of the real one


def parse_host_port(text: str, what: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    host = host or "127.0.0.1"
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{what} must be [HOST:]PORT, got {text!r}")
    return host, int(port)


class ClientTor:
    """Start (or attach to) the tor a client uses; ``connector`` reaches onion relays through it."""

    def __init__(self, home: Path, settings: TorSettings):
        self.home, self.settings = home, settings
        self.process: TorProcess | None = None
        self.connector: TorConnector | None = None
        self.control_port: int | None = settings.control
        self._cookie: Path | None = None

    async def start(self, progress=print_progress) -> TorConnector:
        if self.settings.socks is not None:
            host, port = self.settings.socks
            refresh = self.refresh_circuits if self.control_port is not None else None
            self.connector = TorConnector(host, port, on_unreachable=refresh)
            return self.connector
        abort = threading.Event()
        try:
            self.process = await asyncio.to_thread(
                start_tor, self.home / "tor", testnet_dir=self.settings.testnet, socks=True, progress=progress,
                abort=abort,
            )
        except TorError as exc:
            raise RuntimeError(f"could not start tor: {exc}") from None
        except asyncio.CancelledError:  # Ctrl-C while tor bootstraps: its thread stops it at once
            abort.set()
            raise
        self.control_port, self._cookie = self.process.control_port, self.process.control_cookie_path
        self.connector = TorConnector("127.0.0.1", self.process.socks_port, on_unreachable=self.refresh_circuits)
        return self.connector

    async def refresh_circuits(self) -> None:
        """NEWNYM: new circuits for new streams, and forget which onion introduction points failed.

        Called when an onion relay cannot be reached. Established queue links keep their circuits.
        """
        async with await TorControl.connect(self.control_port, cookie_path=self._cookie) as control:
            await control.new_identity()

    async def circuits_by_username(self) -> dict[str, list[str]]:
        """SOCKS username -> path (relay nicknames or fingerprints) of its built circuits."""
        if self.control_port is None:
            return {}
        control = await TorControl.connect(self.control_port, cookie_path=self._cookie)
        try:
            circuits = await control.circuits()
        finally:
            await control.close()
        return {c.socks_username: c.path for c in circuits if c.socks_username}

    @property
    def alive(self) -> bool:
        """False once a tor this client started has exited (an existing tor given by --tor-socks counts as alive)."""
        return self.process is None or self.process.alive()

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None
