"""Start a tor that joins the private network or the real Tor network."""

import os
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import stem
import stem.connection
import stem.control
from stem.control import Listener

from onionpost.torconfig import process, testnet
from onionpost.torconfig.control import parse_bootstrap_phase
from onionpost.torconfig.errors import TorError
from onionpost.torconfig.torrc import render_torrc

Progress = Callable[[str, float], None]
START_TIMEOUT = 120.0
CONTROL_PORT_FILE = "control-port"
NETWORK_MARK = "testnet-started-at"


@dataclass
class TorProcess:
    """A running tor started by ``start_tor``; stop it with ``stop()``."""

    data_dir: Path
    pid: int
    control_port: int
    socks_port: int | None
    control_cookie_path: Path
    _popen: subprocess.Popen | None = field(default=None, repr=False)
    _owner: stem.control.Controller | None = field(default=None, repr=False)
    """The control connection that owns tor: tor exits when it closes, however this process ends."""

    def alive(self) -> bool:
        """Return True while the process runs."""
        return process.pid_alive(self.pid)

    def stop(self, timeout: float = process.STOP_TIMEOUT) -> None:
        """Stop tor by PID: SIGTERM, then SIGKILL after ``timeout`` seconds."""
        process.stop_pids([self.pid], timeout)
        if self._owner is not None:
            self._owner.close()
        if self._popen is not None:
            self._popen.poll()


def _prepare_testnet_dir(data_dir: Path, state: dict) -> None:
    """Forget directory info and guards of an earlier private network."""
    mark = data_dir / NETWORK_MARK
    started = str(state["started_at"])
    if mark.exists() and mark.read_text() == started:
        return
    for path in [*data_dir.glob("cached-*"), data_dir / "state"]:
        if path.is_file():
            path.unlink()
    mark.write_text(started)


def _wait(condition: Callable[[], object], popen: subprocess.Popen, deadline: float, what: str, data_dir: Path,
          abort: threading.Event | None):
    while True:
        result = condition()
        if result:
            return result
        if abort is not None and abort.is_set():
            raise TorError(f"tor start aborted while waiting for {what}")
        if popen.poll() is not None:
            tail = process.log_tail(data_dir / "tor.out", data_dir / "notice.log")
            raise TorError(f"tor exited while waiting for {what}: {tail}")
        if time.monotonic() > deadline:
            raise TorError(f"timed out waiting for {what}")
        time.sleep(0.1)


def start_tor(data_dir: Path, *, testnet_dir: Path | None = None, socks: bool = True,
              progress: Progress | None = None, timeout: float = START_TIMEOUT,
              abort: threading.Event | None = None) -> TorProcess:
    """Start tor and return once it has bootstrapped to 100 %.

    Args:
        data_dir: tor's DataDirectory (created with mode 0700, kept).
        testnet_dir: directory of a running PrivateTorNetwork; None joins the real network.
        socks: open a SOCKS port (IsolateSOCKSAuth); False for a pure onion-service host.
        progress: called with (summary, percent 0-100) during bootstrap.
        timeout: seconds allowed for the whole start.
        abort: set it (from another thread) to give up within 0.1 s; tor is
            stopped and TorError raised. For a caller cancelled meanwhile.

    Returns:
        The running TorProcess, owned by this process: tor exits when this
        process ends, even by SIGKILL (``__OwningControllerProcess``, then
        TAKEOWNERSHIP on a control connection kept open until ``stop()``;
        gotcha 2). Call stop().

    Raises:
        TorError: no network in ``testnet_dir``, tor failed, or timeout.
    """
    deadline = time.monotonic() + timeout
    report = progress or (lambda summary, percent: None)
    data_dir = process.make_private_dir(Path(data_dir).resolve())
    values = {
        "data_dir": data_dir,
        "control_port": "auto",
        "control_port_file": data_dir / CONTROL_PORT_FILE,
        "log_file": data_dir / "notice.log",
        "socks_port": "127.0.0.1:auto" if socks else "0",
    }
    state = None
    if testnet_dir is None:
        torrc = render_torrc("real_client", values)
    else:
        state = testnet.load_state(Path(testnet_dir))
        if state is None:
            raise TorError(f"no private Tor network in {testnet_dir} (run: onionpost testnet up)")
        _prepare_testnet_dir(data_dir, state)
        torrc = render_torrc("client" if socks else "onion_host", values, state["join_torrc"])
    (data_dir / CONTROL_PORT_FILE).unlink(missing_ok=True)
    torrc += f"\n# Exit when the process that started this tor ends.\n__OwningControllerProcess {os.getpid()}\n"
    torrc_path = data_dir / "torrc"
    torrc_path.write_text(torrc)
    popen = process.spawn_tor(torrc_path, data_dir / "tor.out")
    controller = None
    try:
        control_port = _wait(lambda: process.read_control_port_file(data_dir / CONTROL_PORT_FILE),
                             popen, deadline, "the control port", data_dir, abort)
        controller = stem.control.Controller.from_port(port=control_port)
        # Cookie auth. stem sends TAKEOWNERSHIP on this first connection: tor exits when it
        # closes, so it is kept until stop() (gotcha 2).
        controller.authenticate()
        if state is not None:
            # Enable the network only once a consensus is served (gotcha 3).
            report("waiting for the private network's consensus", 0.0)
            _wait(lambda: testnet.consensus_served(state), popen, deadline, "a consensus", data_dir, abort)
            controller.set_conf("DisableNetwork", "0")
        last = None

        def bootstrapped() -> bool:
            nonlocal last
            phase = parse_bootstrap_phase(controller.get_info("status/bootstrap-phase"))
            if phase != last:
                report(phase.summary, float(phase.progress))
                last = phase
            return phase.progress >= 100

        _wait(bootstrapped, popen, deadline, "bootstrap", data_dir, abort)
        socks_port = controller.get_listeners(Listener.SOCKS)[0][1] if socks else None
        return TorProcess(data_dir, popen.pid, control_port, socks_port,
                          data_dir / "control_auth_cookie", popen, controller)
    except (stem.ControllerError, stem.connection.AuthenticationFailure) as exc:
        _abandon(popen, controller)
        raise TorError(f"controlling tor failed: {exc}") from exc
    except BaseException:
        _abandon(popen, controller)
        raise


def _abandon(popen: subprocess.Popen, controller: stem.control.Controller | None) -> None:
    process.stop_pids([popen.pid])
    if controller is not None:
        controller.close()


def start_client_and_host(client_dir: Path, host_dir: Path, testnet_dir: Path) -> tuple[TorProcess, TorProcess]:
    """Start a client tor (SOCKS) and an onion-service host tor on the private network, in parallel.

    Raises the first error; then neither tor is left running.
    """
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(start_tor, data_dir, testnet_dir=testnet_dir, socks=socks)
                   for data_dir, socks in ((client_dir, True), (host_dir, False))]
        started, errors = [], []
        for future in futures:  # collect both, so neither is left running
            try:
                started.append(future.result())
            except Exception as exc:
                errors.append(exc)
    if errors:
        for tor in started:
            tor.stop()
        raise errors[0]
    return started[0], started[1]
