"""What an observer of one client's Tor guard link sees: packet times and sizes.

The observer (the client's ISP, a compromised router, anyone on the path to
its guard) sees the TCP connections from the client's tor to the relays it
talks to directly, which for a client are its entry guards. It cannot read
the cells, only when they pass and how big the segments are.

Two capture sources, recorded in the flow's header:

- ``tcpdump``: a packet capture on the loopback interface of the traffic to
  and from the relays' ORPorts (from the client tor's consensus), headers
  only. The client tor's own connections are told apart by their local ports,
  read from ``/proc`` at the start and then every second (``POLL``), so a
  connection it opens during the capture is followed too; one that opens and
  closes between two looks is missed. Parsed with dpkt: one record per TCP
  segment that carries data, microsecond timestamps. Needs tcpdump and the
  right to capture (CAP_NET_RAW).
- ``control``: tor's control-port events, where capturing is not allowed.
  ``CONN_BW`` gives the bytes read and written per OR connection each second
  (one record per direction and second: resolution 1 s); ``CELL_STATS`` gives
  the cells per circuit and is kept beside the flow (``<name>.cells.jsonl``,
  parsed, with the event line as tor wrote it).
  Both events exist only with ``TestingEnableConnBwEvent 1`` and
  ``TestingEnableCellStatsEvent 1``, which the client torrc sets on the
  private Tor network only (``torconfig/templates/client.torrc``).

A flow file is JSON Lines: a header object, then one record per packet (or
per bin) in time order::

    {"flow": NAME, "source": "tcpdump"|"control", "resolution": SECONDS,
     "start": T, "end": T, "connections": [...], "fallback_reasons": [...]}
    {"t": UNIX_SECONDS, "size": SIGNED_BYTES}

``size`` is positive for bytes the client sent (towards its guard), negative
for bytes it received. ``resolution`` is 0 for per-packet records.
``connections`` are the client tor's OR connections seen (local port, the
relay's ORPort and fingerprint, whether it is a first hop of its circuits,
when it was first seen); ``fallback_reasons`` say why tcpdump was not used.
"""

from __future__ import annotations

import json
import math
import os
import pwd
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import dpkt
import numpy as np
import stem
import stem.connection
import stem.control
from stem.control import EventType

from onionpost.torconfig import process

SOURCES = ("tcpdump", "control")
CONTROL_RESOLUTION = 1.0
SNAPLEN = 128  # headers only: the observer cannot read the cells anyway
START_TIMEOUT = 10.0
POLL = 1.0  # seconds between looks at the client tor's connections
QUIET, SETTLE = 0.5, 5.0  # tcpdump is stopped after its file is still this long (at most SETTLE s)
STOP_TIMEOUT = 10.0
_TCP_ESTABLISHED = "01"
_KEYWORD = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)')


class CaptureError(RuntimeError):
    """A capture that cannot start, or a flow file that does not follow the format."""


@dataclass(frozen=True, slots=True)
class Connection:
    """One TCP connection from the client's tor (``local_port``) to a relay's ORPort."""

    local_port: int
    remote_port: int
    fingerprint: str | None = None
    guard: bool = False
    first_seen: float | None = None


@dataclass(slots=True)
class Flow:
    """A read flow: the header, and the records as numpy arrays in time order."""

    header: dict
    t: np.ndarray
    size: np.ndarray

    @property
    def source(self) -> str:
        return self.header["source"]


# -- finding the client's OR connections ----------------------------------------

def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in fd_dir.iterdir():
        try:
            target = os.readlink(fd)
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def parse_proc_tcp(text: str) -> list[tuple[str, int, str, int, str, int]]:
    """Rows of ``/proc/net/tcp``: (local ip, local port, remote ip, remote port, state, inode)."""

    def endpoint(hexed: str) -> tuple[str, int]:
        ip, port = hexed.split(":")
        raw = bytes.fromhex(ip)[::-1]  # IPv4, stored little-endian
        return ".".join(str(b) for b in raw), int(port, 16)

    rows = []
    for line in text.splitlines()[1:]:
        cols = line.split()
        if len(cols) < 10:
            continue
        (lip, lport), (rip, rport) = endpoint(cols[1]), endpoint(cols[2])
        rows.append((lip, lport, rip, rport, cols[3], int(cols[9])))
    return rows


def tor_connections(pid: int, or_ports: Iterable[int]) -> list[tuple[int, int]]:
    """(local port, remote port) of ``pid``'s established TCP connections to
    127.0.0.1 on one of ``or_ports``, sorted."""
    wanted = set(or_ports)
    try:
        inodes = _socket_inodes(pid)
    except FileNotFoundError:
        raise CaptureError(f"no process {pid}") from None
    except PermissionError:
        raise CaptureError(f"cannot read /proc/{pid}/fd (not our process?)") from None
    rows = parse_proc_tcp(Path("/proc/net/tcp").read_text())
    return sorted({(lport, rport) for lip, lport, rip, rport, state, inode in rows
                   if inode in inodes and state == _TCP_ESTABLISHED and rip == "127.0.0.1" and rport in wanted})


@dataclass(frozen=True, slots=True)
class TorLinks:
    """The relays a client tor knows and which of them are its circuits' first hops."""

    or_ports: dict[int, str]  # ORPort -> fingerprint, for relays on 127.0.0.1
    guards: frozenset[str]


def query_tor(control_port: int, cookie_path: Path | None = None) -> TorLinks:
    """Ask the client's tor (control port) for the relays' ORPorts and its first hops."""
    try:
        controller = stem.control.Controller.from_port(port=control_port)
    except stem.SocketError as exc:
        raise CaptureError(f"cannot reach tor's control port {control_port}: {exc}") from None
    try:
        info = stem.connection.get_protocolinfo(controller)
        if cookie_path is not None:
            info.cookie_path = str(cookie_path)
        controller.authenticate(protocolinfo_response=info)
        ports = {int(s.or_port): s.fingerprint for s in controller.get_network_statuses()
                 if s.address == "127.0.0.1"}
        guards = frozenset(c.path[0][0] for c in controller.get_circuits() if c.path)
    except (stem.ControllerError, stem.connection.AuthenticationFailure) as exc:
        raise CaptureError(f"tor's control port {control_port}: {exc}") from None
    finally:
        controller.close()
    return TorLinks(ports, guards)


def _connections(pairs: list[tuple[int, int]], links: TorLinks, at: float) -> list[Connection]:
    return [Connection(lp, rp, links.or_ports.get(rp), links.or_ports.get(rp) in links.guards, at)
            for lp, rp in pairs]


# -- control-port events ----------------------------------------------------------

def parse_keywords(line: str) -> tuple[str, dict[str, str]]:
    """An event line ``[650 ]NAME K=V K="quoted" ...`` as (NAME, {K: V})."""
    text = line.strip()
    if text.startswith("650"):
        text = text[4:]
    name, _, rest = text.partition(" ")
    if not name:
        raise ValueError(f"not a control event line: {line!r}")
    return name, {k: v[1:-1] if v.startswith('"') else v for k, v in _KEYWORD.findall(rest)}


def parse_conn_bw(line: str) -> tuple[str, str, int, int]:
    """A ``CONN_BW`` event as (connection id, type, bytes read, bytes written)."""
    name, kw = parse_keywords(line)
    if name != "CONN_BW":
        raise ValueError(f"not a CONN_BW event: {line!r}")
    try:
        return kw["ID"], kw["TYPE"], int(kw["READ"]), int(kw["WRITTEN"])
    except (KeyError, ValueError):
        raise ValueError(f"malformed CONN_BW event: {line!r}") from None


def _cell_counts(value: str) -> dict[str, int]:
    counts = {}
    for item in filter(None, value.split(",")):
        kind, _, n = item.partition(":")
        counts[kind] = int(n)
    return counts


def parse_cell_stats(line: str) -> dict:
    """A ``CELL_STATS`` event: the circuit id and the cells added to and removed
    from its queues since the last event, per direction and cell type.

    Returns ``{"circuit", "inbound_conn", "outbound_conn", "inbound_added",
    "inbound_removed", "outbound_added", "outbound_removed", "outbound_cells",
    "inbound_cells"}``; the ``*_cells`` are the totals removed (sent on) each way.
    For a client's own circuit, outbound is towards its guard.
    """
    name, kw = parse_keywords(line)
    if name != "CELL_STATS":
        raise ValueError(f"not a CELL_STATS event: {line!r}")
    try:
        out = {
            "circuit": kw.get("ID"),
            "inbound_conn": kw.get("InboundConn"),
            "outbound_conn": kw.get("OutboundConn"),
            "inbound_added": _cell_counts(kw.get("InboundAdded", "")),
            "inbound_removed": _cell_counts(kw.get("InboundRemoved", "")),
            "outbound_added": _cell_counts(kw.get("OutboundAdded", "")),
            "outbound_removed": _cell_counts(kw.get("OutboundRemoved", "")),
        }
    except ValueError:
        raise ValueError(f"malformed CELL_STATS event: {line!r}") from None
    out["outbound_cells"] = sum(out["outbound_removed"].values())
    out["inbound_cells"] = sum(out["inbound_removed"].values())
    return out


# -- pcap -------------------------------------------------------------------------

def pcap_packets(path: str | os.PathLike[str], connections: Iterable[tuple[int, int]]) -> list[tuple[float, int]]:
    """(timestamp, signed TCP payload size) of every data-carrying segment in a
    pcap on one of ``connections`` (client port, relay port): + from the client
    to the relay, - back. (Two processes may use one local port towards
    different relays, so the pair is what tells a connection.)"""
    return packets_on(pcap_segments(path), connections)


def packets_on(segments: dict[tuple[int, int], list[tuple[float, int]]],
               connections: Iterable[tuple[int, int]]) -> list[tuple[float, int]]:
    """The records of ``pcap_packets`` from segments already read with ``pcap_segments``."""
    out = []
    for client, relay in set(connections):
        out += segments.get((client, relay), [])
        out += [(t, -size) for t, size in segments.get((relay, client), [])]
    return sorted(out)


def pcap_segments(path: str | os.PathLike[str]) -> dict[tuple[int, int], list[tuple[float, int]]]:
    """Every data-carrying TCP segment of a pcap as (timestamp, payload size), by (source port,
    destination port): read once, shared by every capture of one tcpdump."""
    out: dict[tuple[int, int], list[tuple[float, int]]] = {}
    with open(path, "rb") as fh:
        try:
            reader = dpkt.pcap.Reader(fh)
        except (ValueError, dpkt.NeedData) as exc:
            raise CaptureError(f"{path}: not a pcap file ({exc})") from None
        link = reader.datalink()
        for ts, buf in reader:
            ip = _ip_of(link, buf)
            if ip is None or not isinstance(ip.data, dpkt.tcp.TCP):
                continue
            tcp = ip.data
            # Payload from the IP lengths: with a snaplen the captured data is cut short.
            payload = ip.len - ip.hl * 4 - tcp.off * 4
            if payload > 0:
                out.setdefault((tcp.sport, tcp.dport), []).append((float(ts), payload))
    return out


def _ip_of(link: int, buf: bytes):
    try:
        if link == dpkt.pcap.DLT_EN10MB:
            frame = dpkt.ethernet.Ethernet(buf).data
        elif link == dpkt.pcap.DLT_LINUX_SLL:
            frame = dpkt.sll.SLL(buf).data
        elif link in (dpkt.pcap.DLT_RAW, 101):  # LINKTYPE_RAW is 101 in files
            frame = dpkt.ip.IP(buf)
        elif link == dpkt.pcap.DLT_NULL:
            frame = dpkt.loopback.Loopback(buf).data
        else:
            raise CaptureError(f"unsupported pcap link type {link}")
    except (dpkt.UnpackError, dpkt.NeedData):
        return None
    return frame if isinstance(frame, dpkt.ip.IP) else None


# -- flow files -------------------------------------------------------------------

def write_flow(path: Path, header: dict, records: Iterable[tuple[float, int]]) -> Path:
    """Write a flow file atomically (a temporary file renamed into place)."""
    rows = sorted(records)
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(json.dumps(header) + "\n")
        for t, size in rows:
            fh.write(json.dumps({"t": round(t, 6), "size": int(size)}) + "\n")
    os.replace(tmp, path)
    return path


def read_flow(path: str | os.PathLike[str]) -> Flow:
    """Read a flow file; a malformed one is refused with its line number."""
    with open(path, encoding="utf-8") as fh:
        lines = fh.read().splitlines()
    if not lines:
        raise CaptureError(f"{path}: empty flow file")
    try:
        header = json.loads(lines[0])
    except json.JSONDecodeError as exc:
        raise CaptureError(f"{path} line 1: not JSON ({exc})") from None
    if not isinstance(header, dict) or header.get("source") not in SOURCES:
        raise CaptureError(f"{path} line 1: a header with 'source' one of {SOURCES} is expected")
    t, size = [], []
    for n, line in enumerate(lines[1:], start=2):
        try:
            rec = json.loads(line)
            ts, sz = rec["t"], rec["size"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise CaptureError(f"{path} line {n}: a record {{\"t\", \"size\"}} is expected ({exc})") from None
        if (isinstance(ts, bool) or not isinstance(ts, (int, float)) or not math.isfinite(ts)
                or isinstance(sz, bool) or not isinstance(sz, int)):
            raise CaptureError(f"{path} line {n}: 't' must be a number and 'size' an integer")
        t.append(float(ts))
        size.append(sz)
    order = np.argsort(np.asarray(t), kind="stable")
    return Flow(header, np.asarray(t, dtype=float)[order], np.asarray(size, dtype=np.int64)[order])


# -- capture ----------------------------------------------------------------------

def tcpdump_usable() -> bool:
    """True if tcpdump is installed (whether it may capture shows when it starts)."""
    return shutil.which("tcpdump") is not None


def bpf_filter(or_ports: Iterable[int]) -> str:
    """Traffic to or from any of the relays' ORPorts."""
    ports = sorted(set(or_ports))
    if not ports:
        raise CaptureError("no relay to capture the traffic of")
    return "tcp and (" + " or ".join(f"port {p}" for p in ports) + ")"


@dataclass
class Capture:
    """A running capture of one client's guard link; ``stop()`` writes the flow file."""

    name: str
    out: Path
    source: str
    pid: int
    links: TorLinks
    connections: list[Connection]
    start: float
    clock: Callable[[], float] = time.time
    fallback_reasons: list[str] = field(default_factory=list)
    """Why tcpdump was not used, when the source is ``control``."""
    home: Path | None = None
    """The client daemon's home: with tcpdump, its tor is followed across restarts (a user's churn)."""
    _proc: subprocess.Popen | None = field(default=None, repr=False)
    _control: object | None = field(default=None, repr=False)
    _records: list[tuple[float, int]] = field(default_factory=list, repr=False)
    _cells: list[dict] = field(default_factory=list, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _path: Path | None = field(default=None, repr=False)
    _done: threading.Event = field(default_factory=threading.Event, repr=False)
    _watcher: threading.Thread | None = field(default=None, repr=False)

    @property
    def flow_path(self) -> Path:
        return self.out / f"{self.name}.jsonl"

    @property
    def pcap_path(self) -> Path:
        return self.out / f"{self.name}.pcap"

    def latest(self) -> float | None:
        """Time of the newest record so far (control events only; None before any, or for tcpdump)."""
        with self._lock:
            return max((t for t, _ in self._records), default=None)

    def __enter__(self) -> Capture:
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def stop(self, segments: dict[tuple[int, int], list[tuple[float, int]]] | None = None) -> Path:
        """Stop capturing (by PID, nothing left running) and write the flow file; returns its path.

        ``segments``: a shared tcpdump's file already read (``pcap_segments``), for a capture started
        with ``shared``; otherwise this capture's own tcpdump is stopped and its file read."""
        if self._path is not None:
            return self._path
        end = self.clock()
        self._done.set()
        if self._watcher is not None:
            self._watcher.join()
        self._look()
        if self.source == "tcpdump":
            if segments is None:
                _stop_tcpdump(self._proc, self.pcap_path)
                segments = pcap_segments(self.pcap_path)
            records = [r for r in packets_on(segments, [(c.local_port, c.remote_port) for c in self.connections])
                       if self.start <= r[0] <= end]
        else:
            self._control.close()
            with self._lock:
                records = list(self._records)
            cells = self.out / f"{self.name}.cells.jsonl"
            cells.write_text("".join(json.dumps(c) + "\n" for c in self._cells), encoding="utf-8")
        header = {"flow": self.name, "source": self.source,
                  "resolution": 0.0 if self.source == "tcpdump" else CONTROL_RESOLUTION,
                  "start": self.start, "end": end,
                  "connections": [{"local_port": c.local_port, "remote_port": c.remote_port,
                                   "fingerprint": c.fingerprint, "guard": c.guard, "first_seen": c.first_seen}
                                  for c in self.connections],
                  "fallback_reasons": self.fallback_reasons}
        self._path = write_flow(self.flow_path, header, records)
        return self._path

    def _look(self) -> None:
        """Add the client tor's OR connections not seen before."""
        try:
            pairs = tor_connections(self.pid, self.links.or_ports)
        except CaptureError:  # the tor has gone: nothing more to see, unless the daemon started a new one
            if self.home is None or self.source != "tcpdump":
                return
            try:
                self.pid = client_tor(self.home)[0]
                pairs = tor_connections(self.pid, self.links.or_ports)
            except CaptureError:
                return
        known = {(c.local_port, c.remote_port) for c in self.connections}
        self.connections += _connections([p for p in pairs if p not in known], self.links, self.clock())

    def _watch(self) -> None:
        while not self._done.wait(POLL):
            self._look()

    def _on_event(self, event) -> None:
        line = str(event)
        at = self.clock()
        if line.startswith("CONN_BW"):
            _, kind, read, written = parse_conn_bw(line)
            if kind != "OR":
                return
            with self._lock:
                if written:
                    self._records.append((at, written))
                if read:
                    self._records.append((at, -read))
        elif line.startswith("CELL_STATS"):
            stats = parse_cell_stats(line)
            with self._lock:
                self._cells.append({"t": at, **stats, "line": line})


def _stop_process(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)  # tcpdump flushes its file on SIGTERM
    try:
        proc.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(STOP_TIMEOUT)


def _stop_tcpdump(proc: subprocess.Popen | None, pcap: Path, quiet: float = QUIET, most: float = SETTLE) -> None:
    """Stop tcpdump once its file has stopped growing for ``quiet`` seconds (at
    most ``most``): on SIGTERM it exits without writing what it has not read
    yet, so the last packets would be lost."""
    if proc is None or proc.poll() is not None:
        return
    deadline = time.monotonic() + most
    size, still_since = -1, time.monotonic()
    while time.monotonic() < deadline:
        now = pcap.stat().st_size if pcap.exists() else 0
        if now != size:
            size, still_since = now, time.monotonic()
        elif time.monotonic() - still_since >= quiet:
            break
        time.sleep(0.05)
    _stop_process(proc)


def _start_tcpdump(pcap: Path, ports: Iterable[int], interface: str, timeout: float) -> subprocess.Popen:
    """tcpdump writing ``pcap`` (its messages in ``pcap``.log), once it says it
    listens; CaptureError with what it said if it cannot."""
    # As root tcpdump drops to user 'tcpdump' before opening the file: stay who we are.
    user = pwd.getpwuid(os.getuid()).pw_name
    log = pcap.with_suffix(".tcpdump.log")
    with open(log, "w") as err:
        proc = subprocess.Popen(
            ["tcpdump", "-i", interface, "-n", "-U", "--immediate-mode", "-s", str(SNAPLEN), "-Z", user, "-w", str(pcap),
             bpf_filter(ports)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
        )
    deadline = time.monotonic() + timeout
    while "listening on" not in (said := log.read_text(errors="replace")):
        if proc.poll() is not None:
            pcap.unlink(missing_ok=True)
            raise CaptureError("tcpdump cannot capture: " + " ".join(said.split())[:300])
        if time.monotonic() > deadline:
            _stop_process(proc)
            pcap.unlink(missing_ok=True)
            raise CaptureError(f"tcpdump did not start listening within {timeout:.0f} s")
        time.sleep(0.05)
    return proc


def _start_events(capture: Capture, control_port: int, cookie_path: Path | None) -> None:
    controller = stem.control.Controller.from_port(port=control_port)
    try:
        info = stem.connection.get_protocolinfo(controller)
        if cookie_path is not None:
            info.cookie_path = str(cookie_path)
        controller.authenticate(protocolinfo_response=info)
        controller.add_event_listener(capture._on_event, EventType.CONN_BW, EventType.CELL_STATS)
    except stem.ProtocolError as exc:
        controller.close()
        raise CaptureError(
            f"tor refuses CONN_BW/CELL_STATS events ({exc}); they need TestingEnableConnBwEvent 1 and "
            "TestingEnableCellStatsEvent 1 on a private network") from None
    except BaseException:
        controller.close()
        raise
    capture._control = controller


def client_tor(home: str | os.PathLike[str]) -> tuple[int, int, Path]:
    """(pid, control port, cookie path) of the tor a client daemon with this home runs."""
    data_dir = Path(home).resolve() / "tor"
    port = process.read_control_port_file(data_dir / "control-port")
    pids = process.tor_pids_under(data_dir)
    if port is None or len(pids) != 1:
        raise CaptureError(f"no running tor of a client daemon in {data_dir}")
    return pids[0], port, data_dir / "control_auth_cookie"


def start_capture(out: str | os.PathLike[str], *, name: str, tor_pid: int, control_port: int,
                  cookie_path: str | os.PathLike[str] | None = None, source: str = "auto",
                  interface: str = "lo", clock: Callable[[], float] = time.time,
                  start_timeout: float = START_TIMEOUT, home: str | os.PathLike[str] | None = None,
                  shared: bool = False) -> Capture:
    """Start capturing the guard link of the client tor ``tor_pid`` (a bootstrapped
    tor on the private network, control port ``control_port``) into ``out/name.jsonl``.

    ``source`` is ``auto`` (tcpdump if it may capture, else control-port
    events), ``tcpdump`` or ``control``. With the daemon's ``home``, a tcpdump
    capture follows the tor the daemon starts after a restart (``client_tor``);
    the control-port events end with the tor they were asked of. With ``shared`` (a tcpdump started
    with ``start_shared_tcpdump`` captures every client) the capture starts no tcpdump of its own: it
    only follows the tor's connections, and ``stop`` takes that file's segments. Raises CaptureError with the
    reason if the source asked for cannot run, or the tor has no OR connection yet.
    """
    if source not in ("auto", *SOURCES):
        raise CaptureError(f"source must be 'auto', 'tcpdump' or 'control', got {source!r}")
    if not name or "/" in name or name.startswith("."):
        raise CaptureError(f"a flow name must be a plain file name, got {name!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cookie = Path(cookie_path) if cookie_path is not None else None
    links = query_tor(control_port, cookie)
    pairs = tor_connections(tor_pid, links.or_ports)
    if not pairs:
        raise CaptureError(f"tor {tor_pid} has no connection to a relay yet (is it bootstrapped?)")
    capture = Capture(name=name, out=out, source="tcpdump", pid=tor_pid, links=links,
                      connections=_connections(pairs, links, clock()), start=clock(), clock=clock,
                      home=Path(home) if home is not None else None)
    reasons = []
    if shared:
        _follow(capture, clock)
        return capture
    if source in ("auto", "tcpdump"):
        if not tcpdump_usable():
            reasons.append("tcpdump is not installed")
        else:
            try:
                capture._proc = _start_tcpdump(capture.pcap_path, links.or_ports, interface, start_timeout)
                _follow(capture, clock)
                return capture
            except CaptureError as exc:
                reasons.append(str(exc))
        if source == "tcpdump":
            raise CaptureError("; ".join(reasons))
    capture.source = "control"
    capture.fallback_reasons = reasons
    _start_events(capture, control_port, cookie)
    capture.start = clock()
    return capture


def _follow(capture: Capture, clock: Callable[[], float]) -> None:
    """Start the look at the tor's connections every POLL seconds (a tcpdump capture)."""
    capture.start = clock()
    capture._watcher = threading.Thread(target=capture._watch, name=f"capture-{capture.name}", daemon=True)
    capture._watcher.start()


def start_shared_tcpdump(pcap: Path, control_port: int, cookie_path: Path | None = None, interface: str = "lo",
                         timeout: float = START_TIMEOUT) -> subprocess.Popen:
    """One tcpdump for every client of a private network on this machine: all their guard links run to the
    same relays' ORPorts on loopback, so one capture holds them all and is read once (``pcap_segments``)
    instead of once per client. The ORPorts come from the consensus of the tor at ``control_port``."""
    if not tcpdump_usable():
        raise CaptureError("tcpdump is not installed")
    pcap.parent.mkdir(parents=True, exist_ok=True)
    return _start_tcpdump(pcap, query_tor(control_port, cookie_path).or_ports, interface, timeout)


# -- the lab's "guard" vantage point (registry.Capture) -----------------------------

GUARD_DIR = "guard"  # traces/<variant>/run<k>/guard/<user>.jsonl: one flow file per watched user
SHARED_PCAP = "links.pcap"  # guard/links.pcap: the one tcpdump of a run, every user's guard link in it
_RUNNING: dict[Path, dict[str, Capture]] = {}
_SHARED: dict[Path, subprocess.Popen] = {}


def guard_flow_paths(run_dir: Path) -> list[Path]:
    """The guard-link flow files of one run (not the ``.cells.jsonl`` beside them)."""
    return sorted(p for p in (Path(run_dir) / GUARD_DIR).glob("*.jsonl") if not p.name.endswith(".cells.jsonl"))


def write_guard_flows(run_dir: Path) -> int:
    """``flows/guard.jsonl`` (``flows.write_flows``) from the run's guard flow files, for the exports; returns how many."""
    from onionpost.lab.flows import write_flows

    out = []
    for path in guard_flow_paths(run_dir):
        flow = read_flow(path)
        out.append({"flow": f"guard-{path.stem}", "vantage": "guard", "side": "client", "user": path.stem,
                    "conversation": None, "source": flow.source,
                    "packets": [[t, s] for t, s in zip(flow.t.tolist(), flow.size.tolist())]})
    write_flows(Path(run_dir) / "flows" / "guard.jsonl", out)
    return len(out)


def start_guard(ctx) -> None:
    """One guard-link capture per user on a private Tor network; a note (and nothing captured) on loopback."""
    if ctx.testnet is None:
        ctx.notes["guard"] = {"captured": False, "note": "loopback run: no Tor guard link to observe"}
        return
    running: dict[str, Capture] = {}
    failed: dict[str, str] = {}
    out = Path(ctx.run_dir) / GUARD_DIR
    _RUNNING[Path(ctx.run_dir)] = running  # before starting any: stop_guard stops what did start
    shared = None
    try:
        _, port, cookie = client_tor(ctx.people[0].home)
        shared = _SHARED[Path(ctx.run_dir)] = start_shared_tcpdump(out / SHARED_PCAP, port, cookie)
    except CaptureError:  # each user tries its own tcpdump, then its tor's control-port events, with the reason
        pass
    for person in ctx.people:
        try:
            pid, port, cookie = client_tor(person.home)
            running[person.name] = start_capture(out, name=person.name, tor_pid=pid, control_port=port,
                                                 cookie_path=cookie, home=person.home,
                                                 shared=shared is not None)
        except CaptureError as exc:
            failed[person.name] = str(exc)
    ctx.notes["guard"] = {"captured": bool(running), "failed": failed}


def stop_guard(ctx) -> None:
    """Stop every capture of this run (in parallel: tcpdump waits for its file to settle) and index the flows."""
    running = _RUNNING.pop(Path(ctx.run_dir), {})
    shared = _SHARED.pop(Path(ctx.run_dir), None)
    segments = None
    errors: dict[str, str] = {}
    if shared is not None:
        pcap = Path(ctx.run_dir) / GUARD_DIR / SHARED_PCAP
        _stop_tcpdump(shared, pcap)
        try:
            segments = pcap_segments(pcap)
        except (CaptureError, OSError) as exc:
            errors.update({name: str(exc) for name in running})
            for capture in running.values():
                capture._done.set()  # its watcher ends; there is nothing to write
            running = {}
    if not running and not errors:
        return

    def stop(name: str, capture: Capture) -> None:
        try:
            capture.stop(segments if capture.source == "tcpdump" else None)
        except (CaptureError, OSError) as exc:
            errors[name] = str(exc)

    threads = [threading.Thread(target=stop, args=item, name=f"stop-{item[0]}") for item in running.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    note = ctx.notes.setdefault("guard", {})
    note["failed"] = {**note.get("failed", {}), **errors}
    note["sources"] = {name: c.source for name, c in running.items() if name not in errors}
    note["source"] = "+".join(sorted(set(note["sources"].values()))) or None
    note["fallback_reasons"] = sorted({r for c in running.values() for r in c.fallback_reasons})
    note["flows"] = write_guard_flows(ctx.run_dir)


def register(registry) -> None:
    registry.register_capture(registry.Capture("guard", start_guard, stop_guard))
