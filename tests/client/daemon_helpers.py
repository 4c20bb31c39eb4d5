"""Client daemons as real processes: started on a home, stopped by PID, their logs checked."""

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

from onionpost.client.rpc import DaemonClient

from .conftest import PASSWORD, REPO


class DaemonProcess:
    def __init__(self, home: Path, *args: str, env: dict | None = None):
        self.home, self.args = Path(home), list(args)
        self.env = dict(os.environ, ONIONPOST_PASSWORD=PASSWORD, **(env or {}))
        self.proc: subprocess.Popen | None = None
        self.output = ""

    def start(self, timeout: float = 60) -> "DaemonProcess":
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "onionpost", "daemon", "--home", str(self.home), *self.args],
            cwd=REPO, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        deadline = time.monotonic() + timeout
        while "daemon ready" not in self.output:
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                self.kill()
                raise AssertionError(f"daemon did not start: {self.output}")
            if select.select([self.proc.stdout], [], [], min(left, 0.5))[0]:
                self.output += self.proc.stdout.readline()
        return self

    def call(self, method: str, **params):
        client = DaemonClient.connect(self.home)
        assert client is not None, "no daemon socket"
        with client:
            return client.call(method, params)

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, wait; returns the exit status (and keeps the rest of the output)."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGUSR2)  # its asyncio tasks' stacks, for the failure message
            time.sleep(1)
            self.kill()
            raise AssertionError(f"the daemon did not stop on SIGTERM:\n{self.output[-6000:]}") from None
        finally:
            self.kill()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if self.proc is not None and not self.proc.stdout.closed:
            self.output += self.proc.stdout.read()
            self.proc.stdout.close()

    def assert_clean_log(self) -> None:
        assert "Traceback" not in self.output, self.output[-3000:]


def stop_all(daemons: list[DaemonProcess]) -> None:
    """Stop every daemon (all of them, even if one fails to stop), then check their logs."""
    failures = []
    for daemon in daemons:
        try:
            daemon.stop()
        except AssertionError as exc:
            failures.append(str(exc))
        finally:
            daemon.kill()
    assert not failures, failures
    for daemon in daemons:
        daemon.assert_clean_log()


def wait_until(condition, timeout: float = 30, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def connect_daemons(inviter: DaemonProcess, joiner: DaemonProcess, timeout: float = 60) -> tuple[str, str]:
    """invite (auto-accept) -> connect -> both connected; returns (inviter's alias for joiner, joiner's for inviter)."""
    link = inviter.call("invite", link_only=True, auto_accept=True)["link"]
    joined = joiner.call("connect", link=link)["contact"]
    before = {c["alias"] for c in inviter.call("contacts")}

    def connected():
        theirs = [c for c in inviter.call("contacts") if c["state"] == "connected" and c["alias"] not in before]
        mine = [c for c in joiner.call("contacts") if c["state"] == "connected"]
        return (theirs[0]["alias"], mine[-1]["alias"]) if theirs and mine else None

    aliases = wait_until(connected, timeout, "both daemons connected")
    assert joined  # the joiner's first name for the contact, before the profile exchange
    return aliases


def event_kinds(events: list[dict]) -> list[str]:
    return [e["kind"] for e in events]


def dumps(data) -> str:
    return json.dumps(data, sort_keys=True)
