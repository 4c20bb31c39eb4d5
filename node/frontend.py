"""``onionpost node run`` on a balanced frontend: a tor and Onionbalance publish the master ``.onion``.

The frontend serves no client: it launches a tor of its own (DataDirectory
``DATA/tor``, no SOCKS port) and Onionbalance against that tor's control
port (files in ``DATA/onionbalance``, log in ``DATA/onionbalance/onionbalance.log``).
Onionbalance fetches the backends' descriptors and uploads the master
descriptor with their introduction points; the frontend reports once the
first upload is accepted, then watches both processes. If either dies the
frontend stops the other and exits non-zero: clients keep reaching the
backends until the master descriptor expires (1 h; 20 s on a private
network), so a supervisor (systemd) has time to start it again.
"""

import asyncio
import functools
import logging
import subprocess
import threading
import time
from collections.abc import Callable

from onionpost.torconfig import TorError, onionbalance, process
from onionpost.torconfig.control import TorControl
from onionpost.torconfig.launch import START_TIMEOUT, TorProcess, start_tor
from onionpost.torconfig.onion_keys import onion_address_of_key

from .datadir import DataDir
from .onion import REAL_START_TIMEOUT, NodeTorError, Progress, TorOptions
from .status import remove_status, write_status

log = logging.getLogger(__name__)

BALANCE_DIR = "onionbalance"
TESTNET_PUBLISH_TIMEOUT = 240.0
"""Onionbalance's first fetch waits for a consensus event (every 10 s here) and backend descriptors
must be fetched before the master one is built; measured 25-60 s."""
REAL_PUBLISH_TIMEOUT = 900.0
WAIT_REPORT_EVERY = 10.0
WATCH_INTERVAL = 0.5


async def run_frontend(data_dir: DataDir, options: TorOptions, on_published: Callable[[str, int], None],
                       progress: Progress | None, stop: asyncio.Event) -> None:
    """Publish the master address until ``stop`` is set.

    Raises:
        NodeTorError: no backend listed, Onionbalance missing, tor or Onionbalance failed.
    """
    config = data_dir.load_config()
    instances = config.onion.instances
    if not instances:
        raise NodeTorError(f"the frontend {data_dir.path} has no backend yet: add one with "
                           f"'onionpost node init --onion --backend-of {data_dir.path} --data BACKEND'")
    if options.external:
        raise NodeTorError("a frontend launches its own tor (Onionbalance needs a control port with cookie "
                           "authentication); drop --tor-control/--tor-socks")
    seed = data_dir.load_onion_key()
    master = onion_address_of_key(seed)
    balance_dir = data_dir.path / BALANCE_DIR
    testnet = options.testnet
    try:
        config_path = onionbalance.write_frontend(balance_dir, seed, instances)
        onionbalance.command(testnet is not None)
    except (ValueError, TorError) as exc:
        raise NodeTorError(str(exc)) from None
    abort = threading.Event()
    tor: TorProcess | None = None
    balancer: subprocess.Popen | None = None
    control: TorControl | None = None
    status = {"onion_service": "bootstrapping"}

    def set_state(state: str) -> None:
        status["onion_service"] = state
        write_status(data_dir.status_path, connections=0, sessions=0, subscriptions=0, **status)

    set_state("bootstrapping")
    try:
        launch = functools.partial(start_tor, data_dir.tor_dir, testnet_dir=testnet, socks=False, progress=progress,
                                   timeout=START_TIMEOUT if testnet is not None else REAL_START_TIMEOUT, abort=abort)
        task = asyncio.ensure_future(asyncio.to_thread(launch))
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if not task.done():
            abort.set()
        try:
            tor = await task
        except TorError as exc:
            if stop.is_set():
                return
            raise NodeTorError(f"could not start the frontend's tor: {exc}") from None
        if stop.is_set():
            return
        try:
            control = await TorControl.connect(tor.control_port, cookie_path=tor.control_cookie_path)
            uploads = await control.listen_uploads(master)
        except TorError as exc:
            raise NodeTorError(f"cannot use the control port of the frontend's tor: {exc}") from None
        set_state("publishing")
        log_path = balance_dir / onionbalance.LOG_FILE
        balancer = onionbalance.start(config_path, tor.control_port, log_path, testnet=testnet is not None)
        log.info("onionbalance (pid %d) started for %s with %d backend(s); log: %s", balancer.pid, master,
                 len(instances), log_path)
        started = time.monotonic()
        timeout = TESTNET_PUBLISH_TIMEOUT if testnet is not None else REAL_PUBLISH_TIMEOUT
        reported = started
        while uploads.empty():
            problem = _problem(tor, balancer, log_path)
            if problem:
                raise NodeTorError(problem)
            now = time.monotonic()
            if now - started > timeout:
                raise NodeTorError(f"onionbalance did not publish the master descriptor within {timeout:.0f} s "
                                   f"(are the backends running? see {log_path})")
            if now - reported >= WAIT_REPORT_EVERY:
                reported = now
                log.info("waiting for onionbalance to publish the master descriptor (%.0f s so far; it first "
                         "fetches the backends' descriptors)", now - started)
            try:
                await asyncio.wait_for(stop.wait(), WATCH_INTERVAL)
                return
            except asyncio.TimeoutError:
                pass
        log.info("master descriptor of %s published in %.1f s", master, time.monotonic() - started)
        set_state("published")
        on_published(master, len(instances))
        while True:
            try:
                await asyncio.wait_for(stop.wait(), WATCH_INTERVAL)
                return
            except asyncio.TimeoutError:
                pass
            problem = _problem(tor, balancer, log_path)
            if problem:
                raise NodeTorError(problem)
    finally:
        if balancer is not None:
            process.stop_pids([balancer.pid])
            balancer.poll()
        if control is not None:
            await control.close()
        if tor is not None:
            await asyncio.to_thread(tor.stop)
        remove_status(data_dir.status_path)


def _problem(tor: TorProcess, balancer: subprocess.Popen, log_path) -> str | None:
    if balancer.poll() is not None:
        return (f"onionbalance (pid {balancer.pid}) exited with status {balancer.returncode}; its log "
                f"{log_path} ends: {process.log_tail(log_path, lines=2) or 'nothing'}")
    if not tor.alive():
        return f"the frontend's tor (pid {tor.pid}) exited; see {tor.data_dir / 'notice.log'}"
    return None
