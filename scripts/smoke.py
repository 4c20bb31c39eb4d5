#!/usr/bin/env python3
"""One loopback conversation through the installed ``onionpost`` command, as a user types it.

Used by scripts/check_latest.sh on a wheel installed with the newest releases
pyproject.toml allows. Standard library only; the relay runs on a free
loopback port and is stopped by PID. Prints each step; exits non-zero on the
first step that fails.

    python3 scripts/smoke.py [--onionpost PATH]
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

PASSWORD = "smoke test password"


class SmokeFailure(Exception):
    pass


def run(command: list[str], *args: str, home: Path | None = None, timeout: float = 60) -> str:
    full = [*command, *(["--home", str(home)] if home else []), *args]
    result = subprocess.run(full, capture_output=True, text=True, timeout=timeout,
                            env=dict(os.environ, ONIONPOST_PASSWORD=PASSWORD))
    if result.returncode != 0:
        raise SmokeFailure(f"{' '.join(args)} exited {result.returncode}: {result.stderr.strip()[-500:]}")
    return result.stdout


def conversation(command: list[str], work: Path) -> None:
    relay = work / "relay"
    run(command, "node", "init", "--data", str(relay))
    address = run(command, "node", "address", "--data", str(relay)).strip()
    node = subprocess.Popen([*command, "node", "run", "--data", str(relay)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = node.stdout.readline()
        if "listening" not in line:
            raise SmokeFailure(f"the relay did not start: {line}{node.stdout.read() if node.poll() is not None else ''}")
        print(f"relay up: {address}")
        alice, bob = work / "alice", work / "bob"
        for home, name in ((alice, "alice"), (bob, "bob")):
            run(command, "profile", "create", name, home=home)
            run(command, "relay", "add", address, home=home)
        link = json.loads(run(command, "invite", "--link-only", "--auto-accept", "--json", home=alice))["link"]
        joined = json.loads(run(command, "connect", link, "--json", home=bob))
        print(f"bob asked to connect: {joined['state']}")
        run(command, "receive", "--wait", "1", home=alice)
        run(command, "receive", "--wait", "1", home=bob)
        run(command, "send", "alice", "hello from the smoke test", home=bob)
        events = json.loads(run(command, "receive", "--wait", "2", "--json", home=alice))
        texts = [event.get("text") for event in events if event.get("kind") == "message"]
        if "hello from the smoke test" not in texts:
            raise SmokeFailure(f"alice did not receive bob's message; she got {events}")
        print("alice received: hello from the smoke test")
    finally:
        node.send_signal(signal.SIGTERM)
        try:
            node.wait(15)
        except subprocess.TimeoutExpired:
            node.kill()
            node.wait(5)
        node.stdout.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--onionpost", help="the onionpost command (default: the one beside this Python, else on PATH)")
    args = parser.parse_args()
    beside = Path(sys.executable).with_name("onionpost")
    found = args.onionpost or (str(beside) if beside.exists() else shutil.which("onionpost"))
    if not found:
        print("error: no 'onionpost' command found", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="onionpost-smoke-") as work:
        try:
            conversation([found], Path(work))
        except (SmokeFailure, subprocess.TimeoutExpired, json.JSONDecodeError, KeyError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    print("smoke conversation: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
