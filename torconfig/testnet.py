"""A private Tor network on 127.0.0.1: 3 directory authorities + N relays.

Layout of the network directory (keys survive ``down``; everything else in a
node's data directory is wiped at each ``up``)::

    DIR/network.json        state: PIDs, ports, settings to join (while up)
    DIR/identities.json     fingerprints of the kept keys
    DIR/nodes/NAME/         DataDirectory (keys/, torrc, tor.out, notice.log)
"""

import contextlib
import fcntl
import json
import math
import os
import random
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from onionpost.torconfig import process
from onionpost.torconfig.errors import TorError
from onionpost.torconfig.torrc import render_join, render_torrc

Progress = Callable[[str, float], None]

AUTHORITIES = 3
DEFAULT_RELAYS = 8
"""With 4, onion services stalled for 3-5 minutes in 4 of 10 runs of the relay-failure test (and
sometimes right after start): tor's path rules (vanguards-lite layer-2 guards, distinct intro
points for two descriptors) found no usable node, intro circuits failed, and the service hit tor's
cap of about 28 intro circuits per 300 s. With 8, 4 of 4 runs recovered in 16-19 s; the network
is up as fast (about 12 s) and costs about 70 MB of RAM per extra relay."""
MIN_TOTAL_RELAYS = 4  # fewer and rendezvous never completes (research note)
VOTING_INTERVAL = 10
VOTE_DELAY = DIST_DELAY = 2
# Least seconds from launch to the first vote (gotcha 4). All descriptors
# reached the authorities 1.8-2.7 s after launch on a 2-core machine; a
# relay that misses the first vote costs a whole voting interval.
FIRST_VOTE_LEAD = 3.0
LAUNCH_ATTEMPTS = 3
BANDWIDTH = 1000
UP_TIMEOUT = 90.0
STATE_FILE = "network.json"
IDENTITIES_FILE = "identities.json"
REQUIRED_FLAGS = {"Running", "Valid", "HSDir"}
APPROVED_ROUTERS = "approved-routers"  # an authority's list of rejected relays (tor(1), DataDirectory)


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise TorError(f"unreadable {path}: {exc}") from exc


class _PortTaken(TorError):
    """A chosen port was taken before tor could bind it."""


def _port_range() -> range:
    """Ports outside the kernel's ephemeral range, so that no outgoing
    connection of a starting tor can take a port chosen for a listener."""
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999
    return range(10000, low) if low > 12000 else range(high + 1, 65536)


def _free_ports(count: int) -> list[int]:
    """Return distinct free TCP ports on 127.0.0.1 (each held until all are chosen)."""
    candidates = random.sample(_port_range(), k=min(len(_port_range()), count * 20))
    with contextlib.ExitStack() as stack:
        ports: list[int] = []
        for port in candidates:
            sock = stack.enter_context(socket.socket())
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            ports.append(port)
            if len(ports) == count:
                return ports
    raise TorError("no free TCP ports on 127.0.0.1")


def fetch_consensus(dir_port: int, timeout: float = 2.0) -> str | None:
    """Return the microdescriptor consensus an authority serves, or None."""
    url = f"http://127.0.0.1:{dir_port}/tor/status-vote/current/consensus-microdesc"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as response:
            return response.read().decode(errors="replace")
    except (urllib.error.URLError, OSError):
        return None


def parse_consensus(text: str) -> dict:
    """Return ``valid_after`` and ``{nickname: set of flags}`` from a consensus."""
    routers: dict[str, set[str]] = {}
    valid_after, nickname = None, None
    for line in text.splitlines():
        if line.startswith("valid-after "):
            valid_after = line.split(" ", 1)[1]
        elif line.startswith("r "):
            nickname = line.split()[1]
            routers[nickname] = set()
        elif line.startswith("s ") and nickname is not None:
            routers[nickname] = set(line.split()[1:])
    return {"valid_after": valid_after, "routers": routers}


def load_state(directory: Path) -> dict | None:
    """Return the state of the network in ``directory`` (None if none recorded)."""
    return _read_json(Path(directory) / STATE_FILE)


def consensus_served(state: dict) -> bool:
    """Return True if any authority of ``state`` serves a consensus."""
    return any(fetch_consensus(n["dir_port"], 1.0) for n in state["nodes"] if n["role"] == "authority")


class PrivateTorNetwork:
    """Start, inspect and stop a private Tor network kept in one directory.

    Args:
        directory: where keys, state and data directories live.
        relays: ordinary relays besides the 3 authorities. Authorities carry
            almost no path weight, so with fewer than 3 relays clients retry
            doomed paths and building circuits is slow (gotcha 1).
    """

    def __init__(self, directory: Path, relays: int = DEFAULT_RELAYS):
        if AUTHORITIES + relays < MIN_TOTAL_RELAYS:
            least = MIN_TOTAL_RELAYS - AUTHORITIES
            raise ValueError(f"need at least {least} relay(s) besides the {AUTHORITIES} authorities")
        self.directory = Path(directory).resolve()
        self.relays = relays
        self._children: list[subprocess.Popen] = []

    @property
    def state_path(self) -> Path:
        return self.directory / STATE_FILE

    def _names(self) -> list[tuple[str, str]]:
        return [(f"auth{i}", "authority") for i in range(AUTHORITIES)] + [
            (f"relay{i}", "relay") for i in range(self.relays)
        ]

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.directory / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    # ---- keys -------------------------------------------------------------

    def _ensure_keys(self) -> dict:
        """Create missing authority and relay keys once; return fingerprints."""
        ids_path = self.directory / IDENTITIES_FILE
        ids = _read_json(ids_path) or {}
        missing = []
        for name, role in self._names():
            keys = self.directory / "nodes" / name / "keys"
            needed = ["secret_id_key", "ed25519_master_id_secret_key"]
            if role == "authority":
                needed += ["authority_certificate", "authority_signing_key"]
            if name not in ids or not all((keys / f).exists() for f in needed):
                missing.append((name, role))
        if not missing:
            return ids
        if not shutil.which("tor-gencert"):
            raise TorError("tor-gencert was not found (it comes with tor)")
        gencerts = []
        for name, role in missing:
            keys = process.make_private_dir(self.directory / "nodes" / name / "keys")
            if role == "authority":
                for stale in ("authority_certificate", "authority_signing_key", "authority_identity_key"):
                    (keys / stale).unlink(missing_ok=True)
                gencerts.append(subprocess.Popen(
                    ["tor-gencert", "--create-identity-key", "-m", "12", "--passphrase-fd", "0"],
                    cwd=keys, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                ))
        for proc in gencerts:
            _, err = proc.communicate(b"\n", timeout=60)  # empty passphrase
            if proc.returncode:
                raise TorError(f"tor-gencert failed: {err.decode(errors='replace').strip()}")
        with ThreadPoolExecutor(len(missing)) as pool:
            fingerprints = dict(zip(missing, pool.map(lambda nr: self._fingerprint(nr[0]), missing)))
        for (name, role), fingerprint in fingerprints.items():
            ids[name] = {"fingerprint": fingerprint}
            if role == "authority":
                cert = (self.directory / "nodes" / name / "keys" / "authority_certificate").read_text()
                ids[name]["v3ident"] = next(
                    line.split()[1] for line in cert.splitlines() if line.startswith("fingerprint ")
                )
        _write_json(ids_path, ids)
        return ids

    def _fingerprint(self, name: str) -> str:
        """Create the relay identity keys (if missing) and return the RSA fingerprint."""
        data_dir = self.directory / "nodes" / name
        empty = self.directory / "empty"
        empty.touch()
        result = subprocess.run(
            [process.tor_binary(), "--list-fingerprint", "--defaults-torrc", str(empty), "-f", str(empty),
             "--DataDirectory", str(data_dir), "--ORPort", "127.0.0.1:1", "--Address", "127.0.0.1",
             "--Nickname", name, "--Log", "err stderr"],
            capture_output=True, text=True, timeout=60,
        )
        lines = result.stdout.strip().splitlines()
        if result.returncode or not lines or not lines[-1].startswith(name + " "):
            raise TorError(f"tor --list-fingerprint failed for {name}: {result.stderr.strip()}")
        return lines[-1].split(" ", 1)[1].replace(" ", "")

    # ---- lifecycle ----------------------------------------------------------

    def up(self, progress: Progress | None = None, timeout: float = UP_TIMEOUT) -> dict:
        """Start the network; return its status once onion services can use it.

        A healthy network already running here with the same size is kept. A
        stale one (state file left behind, processes dead or alive) is stopped.

        Args:
            progress: called with (message, percent 0-100).
            timeout: seconds to wait for a usable consensus.

        Raises:
            TorError: keys could not be made or tor did not come up in time.
        """
        report = progress or (lambda message, percent: None)
        with self._locked():
            if self._healthy():
                report("network already running", 100.0)
                return self.status()
            if self._clean():
                report("stopped a stale network", 1.0)
            report("preparing keys", 2.0)
            ids = self._ensure_keys()
            for attempt in range(LAUNCH_ATTEMPTS):
                report("starting tor processes", 10.0)
                try:
                    state = self._launch(ids)
                    self._wait_usable(state, report, timeout)
                    break
                except _PortTaken:
                    self._clean()
                    if attempt == LAUNCH_ATTEMPTS - 1:
                        raise
                except BaseException:
                    self._clean()
                    raise
            state["status"] = "ready"
            _write_json(self.state_path, state)
            report("network is up", 100.0)
        return self.status()

    def _launch(self, ids: dict) -> dict:
        names = self._names()
        auth_count = sum(1 for _, role in names if role == "authority")
        ports = iter(_free_ports(len(names) + auth_count))
        geoip = self.directory / "empty"
        geoip.touch()
        nodes = []
        for name, role in names:
            node = {"name": name, "role": role, "or_port": next(ports), "dir_port": None, **ids[name]}
            if role == "authority":
                node["dir_port"] = next(ports)
            data_dir = self.directory / "nodes" / name
            node["data_dir"] = str(data_dir)
            node["torrc"] = str(data_dir / "torrc")
            nodes.append(node)
        dir_authorities = [
            f"DirAuthority {n['name']} orport={n['or_port']} no-v2 v3ident={n['v3ident']} "
            f"127.0.0.1:{n['dir_port']} {n['fingerprint']}"
            for n in nodes if n["role"] == "authority"
        ]
        join = render_join(dir_authorities, str(geoip))
        bandwidths = self.directory / "bandwidths"
        bandwidths.write_text(
            f"{int(time.time())}\n" + "".join(f"node_id=${n['fingerprint']} bw={BANDWIDTH}\n" for n in nodes)
        )
        # Votes fall where (seconds since midnight UTC - offset) % interval == 0,
        # at valid-after minus both delays (gotcha 4).
        first_valid_after = math.ceil(time.time() + FIRST_VOTE_LEAD) + VOTE_DELAY + DIST_DELAY
        offset = first_valid_after % VOTING_INTERVAL
        for node in nodes:
            data_dir = Path(node["data_dir"])
            process.make_private_dir(data_dir)
            for entry in data_dir.iterdir():  # keep keys/, wipe all other state
                if entry.is_dir() and entry.name != "keys":
                    shutil.rmtree(entry)
                elif not entry.is_dir():
                    entry.unlink()
            values = {
                "data_dir": data_dir, "control_port": "auto", "control_port_file": data_dir / "control-port",
                "log_file": data_dir / "notice.log", "nickname": node["name"], "contact": "onionpost-testnet",
                "or_port": node["or_port"], "dir_port": node["dir_port"], "voting_start_offset": offset,
                "bandwidths_file": bandwidths,
            }
            Path(node["torrc"]).write_text(render_torrc(node["role"], values, join))
        for node in nodes:
            data_dir = Path(node["data_dir"])
            proc = process.spawn_tor(Path(node["torrc"]), data_dir / "tor.out")
            self._children.append(proc)
            node["pid"] = proc.pid
        state = {
            "version": 1,
            "status": "starting",
            "started_at": time.time(),
            "first_valid_after": first_valid_after,
            "relays": self.relays,
            "authorities": auth_count,
            "nodes": nodes,
            "dir_authorities": dir_authorities,
            "join_torrc": join,
        }
        _write_json(self.state_path, state)
        return state

    def _wait_usable(self, state: dict, report: Progress, timeout: float) -> None:
        start = time.time()
        deadline = start + timeout
        expected = max(state["first_valid_after"] + 1 - start, 1.0)
        nodes = state["nodes"]
        while time.time() < deadline:
            for node in nodes:
                if node.get("control_port") is None:
                    node["control_port"] = process.read_control_port_file(Path(node["data_dir"]) / "control-port")
                if not process.pid_alive(node["pid"]):
                    output = (Path(node["data_dir"]) / "tor.out").read_text(errors="replace")
                    error = _PortTaken if "Address already in use" in output else TorError
                    raise error(f"{node['name']} exited: {self._tail(node)}")
            if self._consensus_complete(state):
                _write_json(self.state_path, state)
                return
            elapsed = time.time() - start
            report("waiting for the first consensus", 15.0 + 80.0 * min(elapsed / expected, 1.0))
            time.sleep(0.1)
        raise TorError(f"no usable consensus after {timeout:.0f} s: " + self._tail(nodes[0]))

    def _consensus_complete(self, state: dict) -> bool:
        """True when every authority serves a consensus listing every node as usable."""
        names = {n["name"] for n in state["nodes"]}
        for node in state["nodes"]:
            if node["role"] != "authority":
                continue
            text = fetch_consensus(node["dir_port"])
            if text is None:
                return False
            routers = parse_consensus(text)["routers"]
            if not names <= routers.keys() or any(not REQUIRED_FLAGS <= routers[n] for n in names):
                return False
        return True

    @staticmethod
    def _tail(node: dict) -> str:
        data_dir = Path(node["data_dir"])
        return process.log_tail(data_dir / "tor.out", data_dir / "notice.log") or "no output"

    def kill_relay(self, name: str, timeout: float = UP_TIMEOUT) -> float:
        """Kill relay ``name`` (SIGKILL) and have the authorities drop it from the consensus.

        On the real network authorities stop listing a relay once their
        reachability tests fail, which takes them up to 45 minutes; ours run
        with ``AssumeReachable`` (for the fast start) and never would. So each
        authority is told to reject the relay's fingerprint (its
        ``approved-routers`` file, reloaded on SIGHUP): the same outcome at
        the next vote. The relay stays down until the next ``up``.

        Returns:
            Seconds from the kill until every authority serves a consensus without it.

        Raises:
            ValueError: ``name`` is not a running relay of this network.
            TorError: the authorities still list it after ``timeout`` seconds.
        """
        with self._locked():
            state = load_state(self.directory)
            node = next((n for n in (state or {}).get("nodes", []) if n["name"] == name), None)
            if node is None:
                raise ValueError(f"no node named {name!r} in the network in {self.directory}")
            if node["role"] != "relay":
                raise ValueError(f"{name} is a directory authority; only relays can be killed")
            if node.get("removed"):
                raise ValueError(f"{name} was already killed")
            start = time.monotonic()
            process.kill_pids([node["pid"]])
            node["removed"] = True
            _write_json(self.state_path, state)
            for authority in (n for n in state["nodes"] if n["role"] == "authority"):
                rejected = Path(authority["data_dir"]) / APPROVED_ROUTERS
                previous = rejected.read_text() if rejected.exists() else ""
                rejected.write_text(previous + f"!reject {node['fingerprint']}\n")
                os.kill(authority["pid"], signal.SIGHUP)
            while time.monotonic() - start < timeout:
                if self._dropped_everywhere(state, name):
                    return time.monotonic() - start
                time.sleep(0.2)
        raise TorError(f"the authorities still list {name} after {timeout:.0f} s")

    @staticmethod
    def _dropped_everywhere(state: dict, name: str) -> bool:
        for authority in (n for n in state["nodes"] if n["role"] == "authority"):
            text = fetch_consensus(authority["dir_port"])
            if text is None or name in parse_consensus(text)["routers"]:
                return False
        return True

    def _live_pids(self, state: dict | None) -> list[int]:
        pids = set(process.tor_pids_under(self.directory / "nodes"))
        for node in (state or {}).get("nodes", []):
            if node.get("pid") and process.is_tor_with(node["pid"], Path(node["torrc"])):
                pids.add(node["pid"])
        return sorted(pids)

    def _healthy(self) -> bool:
        state = load_state(self.directory)
        if not state or state.get("status") != "ready" or state.get("relays") != self.relays:
            return False
        if not all(process.is_tor_with(n["pid"], Path(n["torrc"])) for n in state["nodes"]):
            return False  # a killed relay too: ``up`` starts the whole network again
        return consensus_served(state)

    def _clean(self) -> bool:
        """Stop every tor of this directory; return True if anything was there."""
        state = load_state(self.directory)
        pids = self._live_pids(state)
        process.stop_pids(pids)
        for child in self._children:
            child.poll()
        self._children = [c for c in self._children if c.returncode is None]
        self.state_path.unlink(missing_ok=True)
        return bool(state or pids)

    def down(self) -> bool:
        """Stop every process of the network; return False if nothing was running."""
        if not self.directory.is_dir():
            return False
        with self._locked():
            return self._clean()

    def status(self) -> dict:
        """Return a JSON-serialisable description of the network."""
        state = load_state(self.directory)
        result = {"directory": str(self.directory), "status": "down", "nodes": [], "consensus": None}
        if state is None:
            stray = self._live_pids(None)
            if stray:
                result["status"] = "stale"
                result["stray_pids"] = stray
            return result
        nodes = []
        for n in state["nodes"]:
            alive = bool(n.get("pid")) and process.is_tor_with(n["pid"], Path(n["torrc"]))
            nodes.append({k: n.get(k) for k in ("name", "role", "pid", "or_port", "dir_port", "control_port",
                                                 "fingerprint")} | {"alive": alive, "removed": bool(n.get("removed"))})
        all_alive = all(n["alive"] or n["removed"] for n in nodes)
        result.update(
            status=state["status"] if all_alive else "stale",
            started_at=state["started_at"],
            authorities=state["authorities"],
            relays=state["relays"],
            nodes=nodes,
            dir_authorities=state["dir_authorities"],
        )
        for n in state["nodes"]:
            text = fetch_consensus(n["dir_port"], 1.0) if n["role"] == "authority" else None
            if text:
                parsed = parse_consensus(text)
                result["consensus"] = {"valid_after": parsed["valid_after"], "routers": len(parsed["routers"])}
                break
        return result
