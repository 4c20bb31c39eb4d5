"""Workload 2: the same relay workload through Prosody, the XMPP server a user might run instead.

Prosody (Debian's package; installed with apt-get if missing) runs as a child
process with its own config file in a temp directory: one VirtualHost,
anonymous login, no TLS (like onionpost on loopback, where Tor would provide
transport security), c2s on a free 127.0.0.1 port, s2s and HTTP off, no
offline storage or archive (so Prosody keeps messages for online recipients
in memory only, while the onionpost node stores every message durably before
answering). Server tuning for a fair fight: Nagle off and 64 KB reads.

Clients are slixmpp (installed with pip if missing); see ``bench.loadgen``.
The onionpost node runs the very same K pairs in the same run, so the two
are side by side.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from .common import NodeProcess, Result, Row, Skipped, free_port, ratio, stop_pid
from .relay import run_load

DOMAIN = "bench.localhost"

CONFIG = """-- written by onionpost's bench/prosody.py; loopback only
pidfile = "{dir}/prosody.pid"
data_path = "{dir}/data"
certificates = "{dir}/certs"
run_as_root = true
interfaces = {{ "127.0.0.1" }}
local_interfaces = {{ "127.0.0.1" }}
c2s_ports = {{ {port} }}
c2s_direct_tls_ports = {{ }}
s2s_ports = {{ }}
s2s_direct_tls_ports = {{ }}
component_ports = {{ }}
http_ports = {{ }}
https_ports = {{ }}
c2s_require_encryption = false
authentication = "anonymous"
storage = "internal"
network_settings = {{ nagle = false; read_size = 65536 }}
log = {{ warn = "{dir}/prosody.log" }}
modules_enabled = {{ "roster"; "saslauth"; "disco"; "ping"; "posix" }}
modules_disabled = {{ "s2s"; "offline"; "tls"; "http"; "admin_shell"; "admin_socket" }}
VirtualHost "{domain}"
"""


def ensure_prosody() -> str:
    """Path of the prosody binary, installing Debian's package if needed; else Skipped."""
    found = shutil.which("prosody")
    if found:
        return found
    if not shutil.which("apt-get"):
        raise Skipped("prosody is not installed and there is no apt-get to install it")
    if os.geteuid() != 0:
        raise Skipped("prosody is not installed; installing it needs root (sudo apt-get install prosody)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    # Keep the package's maintainer scripts from starting a system-wide prosody service:
    # the benchmark runs its own instance and nothing else. (Removed again after the install.)
    policy = Path("/usr/sbin/policy-rc.d")
    ours = not policy.exists()
    try:
        if ours:
            policy.write_text("#!/bin/sh\nexit 101\n")
            policy.chmod(0o755)
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=300)
        result = subprocess.run(["apt-get", "install", "-y", "-qq", "prosody"], env=env, capture_output=True, text=True, timeout=600)
    finally:
        if ours:
            policy.unlink(missing_ok=True)
    found = shutil.which("prosody")
    if not found:
        raise Skipped(f"apt-get install prosody failed: {(result.stderr or result.stdout).strip()[-300:]}")
    return found


def ensure_slixmpp() -> None:
    if importlib.util.find_spec("slixmpp") is not None:
        return
    result = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "slixmpp"], capture_output=True, text=True, timeout=600)
    if result.returncode != 0 or importlib.util.find_spec("slixmpp") is None:
        raise Skipped(f"pip install slixmpp failed: {result.stderr.strip()[-300:]}")


class Prosody:
    def __init__(self, binary: str, workdir: Path):
        self.binary = binary
        self.dir = workdir / "prosody"
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30.0) -> "Prosody":
        for sub in ("data", "certs"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        config = self.dir / "prosody.cfg.lua"
        config.write_text(CONFIG.format(dir=self.dir, port=self.port, domain=DOMAIN))
        out = open(self.dir / "stdout.log", "ab")
        self.proc = subprocess.Popen([self.binary, "-F", "--config", str(config)], stdout=out, stderr=out, stdin=subprocess.DEVNULL)
        out.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise Skipped(f"prosody exited at start (status {self.proc.returncode}): {self.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), 0.5):
                    return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise Skipped(f"prosody did not listen on 127.0.0.1:{self.port} within {timeout:.0f} s: {self.log_tail()}")

    def log_tail(self) -> str:
        text = ""
        for name in ("stdout.log", "prosody.log"):
            path = self.dir / name
            if path.exists():
                text += path.read_text(errors="replace")
        return text.strip()[-600:]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc is not None:
            stop_pid(self.proc, 10)


def run(quick: bool, workdir: Path) -> Result:
    result = Result("prosody")
    try:
        binary = ensure_prosody()
        ensure_slixmpp()
    except Skipped as exc:
        result.skipped = str(exc)
        return result
    ks = [1, 10] if quick else [1, 10, 100]
    seconds = 4.0 if quick else 10.0
    pool = 32 if quick else 64
    prosody = Prosody(binary, workdir)
    node = NodeProcess.init(workdir / "prosody-cmp-node")
    try:
        try:
            prosody.start()
        except Skipped as exc:
            result.skipped = str(exc)
            return result
        node.start()
        for k in ks:
            xmpp = run_load("xmpp", f"127.0.0.1:{prosody.port}", prosody.pid, k, seconds, pool, workdir, extra={"domain": DOMAIN})
            ours = run_load("node", node.address, node.pid, k, seconds, pool, workdir)
            result.details[f"K={k}"] = {"onionpost": ours, "prosody": xmpp}
            result.rows += [
                Row("prosody", f"K={k}: delivered msgs/s", ours["msgs_per_s"], xmpp["msgs_per_s"], "Prosody", "msg/s",
                    ratio(ours["msgs_per_s"], xmpp["msgs_per_s"]),
                    note=f"client CPU {ours['client_cpu_us_per_msg']:.0f} µs/msg (slixmpp: {xmpp['client_cpu_us_per_msg']:.0f})"),
                Row("prosody", f"K={k}: server CPU per delivered msg", ours["server_cpu_us_per_msg"], xmpp["server_cpu_us_per_msg"],
                    "Prosody", "µs", ratio(ours["server_cpu_us_per_msg"], xmpp["server_cpu_us_per_msg"]), "< Prosody",
                    ours["server_cpu_us_per_msg"] < xmpp["server_cpu_us_per_msg"],
                    "Prosody: in-memory delivery, no storage; ours: signatures, re-encryption, fsynced storage"),
                Row("prosody", f"K={k}: send→deliver p50", ours["p50_ms"], xmpp["p50_ms"], "Prosody", "ms", ratio(ours["p50_ms"], xmpp["p50_ms"])),
                Row("prosody", f"K={k}: server RSS", ours["server_rss_mib"], xmpp["server_rss_mib"], "Prosody", "MiB",
                    ratio(ours["server_rss_mib"], xmpp["server_rss_mib"])),
            ]
        node.check_log()
    finally:
        prosody.stop()
        node.stop()
    return result
