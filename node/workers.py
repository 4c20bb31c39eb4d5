"""``onionpost node run --workers N``: N backend processes of one node on one machine.

The parent forks N workers. Each opens its own connection to the node's
PostgreSQL store and its own listening socket on the node's port with
SO_REUSEPORT, so the kernel spreads new connections among them (no process
in front of them, no file descriptor passing). A worker that crashes after
it started is started again; a worker that fails within ``MIN_UPTIME`` of its
start stops the node (its error is already on stderr). SIGTERM or SIGINT to
the parent stops every worker (SIGTERM by PID) and the parent exits 0 once
they have.
"""

import logging
import os
import select
import signal
import sys
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

MIN_UPTIME = 5.0
"""Seconds a worker must have run for a crash to be answered by a restart."""

ServeOne = Callable[[int, Callable[[object], None]], None]


def run_workers(count: int, serve_one: ServeOne, on_ready: Callable[[], None]) -> int:
    """Run ``serve_one(worker, ready)`` in ``count`` forked processes; ``on_ready()`` once every one called ``ready``.

    Returns the exit status for the parent.
    """
    read_fd, write_fd = os.pipe()
    stopping = False
    status = 0
    children: dict[int, tuple[int, float]] = {}

    def stop(signum, frame) -> None:
        nonlocal stopping
        stopping = True
        for pid in children:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def spawn(worker: int) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the worker
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            os.close(read_fd)
            code = 0
            try:
                serve_one(worker, lambda _address: os.write(write_fd, b"1"))
            except KeyboardInterrupt:
                code = 0
            except BaseException as exc:  # typer.Exit carries the status of a one-line error already printed
                code = getattr(exc, "exit_code", 1)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                logging.shutdown()
                os._exit(code)
        children[pid] = (worker, time.monotonic())

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for worker in range(count):
        spawn(worker)
    ready = 0
    announced = False
    while children:
        try:
            readable, _, _ = select.select([read_fd], [], [], 0.2)
        except InterruptedError:
            readable = []
        if readable:
            ready += len(os.read(read_fd, 64))
        if ready >= count and not announced:
            announced = True
            on_ready()
        while children:
            pid, wait_status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            worker, started = children.pop(pid)
            code = os.waitstatus_to_exitcode(wait_status)
            if stopping:
                status = status or (code if code > 0 else 0)
                continue
            if announced and time.monotonic() - started >= MIN_UPTIME:
                log.error("worker %d exited (%s); starting it again", worker, _describe(code))
                spawn(worker)
                continue
            log.error("worker %d exited (%s) while starting; stopping the node", worker, _describe(code))
            status = code if code > 0 else 1
            stop(None, None)
    os.close(read_fd)
    os.close(write_fd)
    return status


def _describe(code: int) -> str:
    return f"signal {-code}" if code < 0 else f"status {code}"
