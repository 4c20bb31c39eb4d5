"""Lab scenarios: the TOML a researcher writes, checked, resolved and mapped onto a population run.

A scenario file has six tables (every field is documented in docs/lab.md,
and ``tests/unit/lab/test_scenario.py`` keeps that page equal to the
dataclasses below): ``[population]``, ``[traffic]``, ``[client]``,
``[defences]``, ``[network]`` and any number of ``[[variant]]`` tables, each a
name plus overrides of ``client`` and ``defences`` fields (the ``defences``
built-in sweeps one defence or isolation mode per variant). Top-level keys are
``name``, ``description``, ``seed`` and ``repeat``.

``load_scenario`` refuses bad input with one line that names the field;
``to_toml`` writes every resolved value back (the run's ``scenario.toml``).
"""

from __future__ import annotations

import math
import random
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

ISOLATION_MODES = ("queue", "contact", "profile", "shared")
GRAPHS = ("random", "listed")
PATTERNS = ("poisson", "onoff")
RECEIPTS = ("delay", "next", "off")


class ScenarioError(ValueError):
    """A scenario that cannot run; the message names the file and the field."""


@dataclass(frozen=True)
class Population:
    users: int = 4
    """Scripted people, each a client daemon with its own home (and its own tor on the Tor network)."""
    relays: int = 1
    """Relay nodes; every user's profile trusts them all, so new queues spread over them."""
    graph: str = "random"
    """Contact graph: 'random' (edges drawn to reach mean_degree) or 'listed' (the edges in contacts)."""
    mean_degree: float = 2.0
    """Mean contacts per user for graph = 'random'."""
    contacts: tuple[tuple[int, int], ...] = ()
    """Edges [a, b] between user numbers (0-based) for graph = 'listed'."""


@dataclass(frozen=True)
class Traffic:
    pattern: str = "poisson"
    """'poisson' (messages at a constant mean rate) or 'onoff' (Poisson bursts at the rate, silent between)."""
    rate: float = 2.0
    """Messages per minute per conversation direction (during a burst for 'onoff')."""
    on: float = 60.0
    """'onoff': mean seconds of a burst (exponential)."""
    off: float = 120.0
    """'onoff': mean seconds of silence between bursts (exponential)."""
    reply_probability: float = 0.5
    """Chance a message is answered."""
    reply_delay: float = 20.0
    """Mean seconds before a reply, after reply_min (exponential)."""
    reply_min: float = 5.0
    """Least seconds before a reply."""
    duration: float = 120.0
    """Seconds of observed traffic, after every conversation is connected."""
    churn_rate: float = 0.5
    """Times per minute a user goes offline (Poisson); 0 for no churn."""
    offline: float = 20.0
    """Mean seconds offline, after offline_min (exponential)."""
    offline_min: float = 25.0
    """Least seconds offline."""


@dataclass(frozen=True)
class Client:
    isolation: str = "queue"
    """Circuit isolation: 'queue', 'contact', 'profile', or the lab-only 'shared' (one socket for everything)."""
    link_spread: float = 20.0
    """Daemon --link-spread: seconds over which links open and close independently."""
    receipts: str = "delay"
    """Daemon --receipts: 'delay', 'next' or 'off'."""
    receipt_delay: float = 30.0
    """Daemon --receipt-delay: mean seconds before a delivery receipt."""
    link_lifetime: float = 30.0
    """Daemon --link-lifetime: mean seconds a queue's link stays open before its gap (or replacement)."""
    link_gap: float = 20.0
    """Daemon --link-gap: mean seconds a queue's link stays closed between lifetimes; 0: always connected."""
    send_link_idle: float = 15.0
    """Daemon --send-link-idle: mean seconds a link used only for sending stays open after a send."""


@dataclass(frozen=True)
class Defences:
    send_delay: float = 0.0
    """Mean random delay in seconds before each send (daemon --send-delay); 0 is off."""
    cover_rate: float = 0.0
    """Dummy messages per minute per link, indistinguishable on the wire (daemon --cover-rate); 0 is off."""
    reconnect_jitter: float = 0.0
    """Seconds of random jitter on resubscription after a reconnect (daemon --reconnect-jitter); 0 is off."""
    batch: float = 0.0
    """Seconds the client holds sends to leave them together (daemon --batch); 0 is off."""


@dataclass(frozen=True)
class Network:
    tor: bool = True
    """Run on a fresh private Tor network (onion relay, a tor per user); false: everything on loopback TCP."""
    latency_ms: float = 0.0
    """Added one-way delay on loopback with tc netem (needs CAP_NET_ADMIN; recorded as not applied otherwise)."""
    jitter_ms: float = 0.0
    """Jitter on the added delay (tc netem)."""
    tcp_nodelay: bool = False
    """Ask for TCP_NODELAY on tor's own connections; tor has no such option, so the report records it as not applied."""


@dataclass(frozen=True)
class Variant:
    name: str = "default"
    """A label for this variant in the report."""
    client: Client = field(default_factory=Client)
    defences: Defences = field(default_factory=Defences)


@dataclass(frozen=True)
class LabScenario:
    name: str = "custom"
    """The scenario's name."""
    description: str = ""
    """One line shown by 'onionpost lab list'."""
    seed: int = 1
    """Seed of the schedule and the contact graph; run k of --repeat uses seed + k."""
    repeat: int = 1
    """Independent runs, each on a freshly started network (--repeat overrides)."""
    population: Population = field(default_factory=Population)
    traffic: Traffic = field(default_factory=Traffic)
    client: Client = field(default_factory=Client)
    defences: Defences = field(default_factory=Defences)
    network: Network = field(default_factory=Network)
    variants: tuple[Variant, ...] = ()
    """The [[variant]] tables; none means one variant, the scenario's own client and defences."""

    def resolved_variants(self) -> tuple[Variant, ...]:
        return self.variants or (Variant("default", self.client, self.defences),)


SECTIONS = {"population": Population, "traffic": Traffic, "client": Client, "defences": Defences, "network": Network}
TOP_LEVEL = ("name", "description", "seed", "repeat")


# -- checking -----------------------------------------------------------------------

def _value(where: str, key: str, value: Any, default: Any) -> Any:
    name = f"{where}.{key}" if where else key
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ScenarioError(f"{name} must be true or false, got {value!r}")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ScenarioError(f"{name} must be an integer, got {value!r}")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ScenarioError(f"{name} must be a number, got {value!r}")
        return float(value)
    if isinstance(default, str):
        if not isinstance(value, str):
            raise ScenarioError(f"{name} must be a string, got {value!r}")
        return value
    if isinstance(default, tuple):  # population.contacts
        if not isinstance(value, list) or not all(
                isinstance(e, list) and len(e) == 2 and all(isinstance(x, int) and not isinstance(x, bool) for x in e)
                for e in value):
            raise ScenarioError(f"{name} must be a list of [a, b] user numbers, got {value!r}")
        return tuple(tuple(e) for e in value)
    raise ScenarioError(f"{name}: unsupported value {value!r}")


def _section(cls, where: str, table: Any, base=None):
    if not isinstance(table, dict):
        raise ScenarioError(f"[{where}] must be a table, got {table!r}")
    base = base if base is not None else cls()
    known = {f.name for f in fields(cls)}
    for key in table:
        if key not in known:
            raise ScenarioError(f"unknown field {where}.{key} (known: {', '.join(sorted(known))})")
    return replace(base, **{k: _value(where, k, v, getattr(base, k)) for k, v in table.items()})


def _check(s: LabScenario) -> LabScenario:
    p, t, n = s.population, s.traffic, s.network

    def need(ok: bool, message: str) -> None:
        if not ok:
            raise ScenarioError(message)

    need(bool(s.name.strip()), "name must not be empty")
    need(s.repeat >= 1, f"repeat must be at least 1, got {s.repeat}")
    need(p.users >= 2, f"population.users must be at least 2, got {p.users}")
    need(p.relays in (1, 2), f"population.relays must be 1 or 2, got {p.relays}")
    need(p.graph in GRAPHS, f"population.graph must be one of {', '.join(GRAPHS)}, got {p.graph!r}")
    if p.graph == "random":
        need(0 < p.mean_degree <= p.users - 1,
             f"population.mean_degree must be in (0, users - 1 = {p.users - 1}], got {p.mean_degree}")
    else:
        need(bool(p.contacts), "population.contacts must list edges when graph = 'listed'")
        for a, b in p.contacts:
            need(0 <= a < p.users and 0 <= b < p.users and a != b,
                 f"population.contacts: [{a}, {b}] is not a pair of two users in 0..{p.users - 1}")
        need(len({tuple(sorted(e)) for e in p.contacts}) == len(p.contacts), "population.contacts repeats an edge")
    need(t.pattern in PATTERNS, f"traffic.pattern must be one of {', '.join(PATTERNS)}, got {t.pattern!r}")
    for key in ("rate", "duration", "on", "off", "reply_delay", "offline"):
        need(getattr(t, key) > 0, f"traffic.{key} must be positive, got {getattr(t, key)}")
    for key in ("reply_min", "churn_rate", "offline_min"):
        need(getattr(t, key) >= 0, f"traffic.{key} must not be negative, got {getattr(t, key)}")
    need(0 <= t.reply_probability <= 1, f"traffic.reply_probability must be in [0, 1], got {t.reply_probability}")
    need(n.latency_ms >= 0 and n.jitter_ms >= 0, "network.latency_ms and network.jitter_ms must not be negative")
    names = [v.name for v in s.resolved_variants()]
    need(len(set(names)) == len(names), f"variant names repeat: {names}")
    for v in s.resolved_variants():
        need(bool(v.name) and "/" not in v.name and v.name not in (".", ".."),
             f"variant name {v.name!r} must be a plain non-empty name")
        c, d = v.client, v.defences
        need(c.isolation in ISOLATION_MODES,
             f"variant {v.name}: client.isolation must be one of {', '.join(ISOLATION_MODES)}, got {c.isolation!r}")
        need(c.receipts in RECEIPTS, f"variant {v.name}: client.receipts must be one of {', '.join(RECEIPTS)}")
        for key in ("link_spread", "receipt_delay", "link_lifetime", "link_gap", "send_link_idle"):
            need(getattr(c, key) >= 0, f"variant {v.name}: client.{key} must not be negative")
        for f in fields(Defences):
            need(getattr(d, f.name) >= 0, f"variant {v.name}: defences.{f.name} must not be negative")
    return s


def parse_scenario(data: dict, *, origin: str = "scenario") -> LabScenario:
    """A checked ``LabScenario`` from a decoded TOML document."""
    try:
        return _parse(data)
    except ScenarioError as exc:
        raise ScenarioError(f"{origin}: {exc}") from None


def _parse(data: dict) -> LabScenario:
    s = LabScenario()
    top: dict[str, Any] = {}
    variants_raw = None
    for key, value in data.items():
        if key in SECTIONS:
            s = replace(s, **{key: _section(SECTIONS[key], key, value)})
        elif key == "variant":
            variants_raw = value
        elif key in TOP_LEVEL:
            top[key] = _value("", key, value, getattr(s, key))
        else:
            raise ScenarioError(f"unknown field {key} (known: {', '.join([*TOP_LEVEL, *SECTIONS, 'variant'])})")
    s = replace(s, **top)
    if variants_raw is not None:
        if not isinstance(variants_raw, list) or not variants_raw:
            raise ScenarioError("variant must be a list of [[variant]] tables")
        variants = []
        for i, raw in enumerate(variants_raw):
            if not isinstance(raw, dict):
                raise ScenarioError(f"variant #{i + 1} must be a table")
            unknown = set(raw) - {"name", "client", "defences"}
            if unknown:
                raise ScenarioError(f"unknown field variant.{sorted(unknown)[0]} (known: client, defences, name)")
            if not isinstance(raw.get("name"), str):
                raise ScenarioError(f"variant #{i + 1} needs a name")
            variants.append(Variant(raw["name"], _section(Client, "variant.client", raw.get("client", {}), s.client),
                                    _section(Defences, "variant.defences", raw.get("defences", {}), s.defences)))
        s = replace(s, variants=tuple(variants))
    return _check(s)


def load_scenario(spec: str) -> LabScenario:
    """A built-in by name, or a TOML file by path."""
    if spec in BUILTINS:
        return BUILTINS[spec]
    path = Path(spec)
    if not path.suffix == ".toml" and not path.exists():
        raise ScenarioError(f"unknown scenario {spec!r}: not a built-in ({', '.join(BUILTINS)}) nor a TOML file")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ScenarioError(f"cannot read scenario {spec}: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{spec}: not valid TOML ({exc})") from None
    return parse_scenario(data, origin=spec)


# -- writing -----------------------------------------------------------------------

def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    if isinstance(value, tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML for {value!r}")


def _table(obj) -> list[str]:
    return [f"{f.name} = {_toml_value(getattr(obj, f.name))}" for f in fields(obj)]


def to_toml(s: LabScenario) -> str:
    """Every value of the scenario (variants resolved, seed included), as TOML that ``parse_scenario`` reads back."""
    lines = [f"{key} = {_toml_value(getattr(s, key))}" for key in TOP_LEVEL]
    for section in SECTIONS:
        lines += ["", f"[{section}]", *_table(getattr(s, section))]
    for v in s.resolved_variants():
        lines += ["", "[[variant]]", f"name = {_toml_value(v.name)}"]
        lines += [f"client.{line}" for line in _table(v.client)]
        lines += [f"defences.{line}" for line in _table(v.defences)]
    return "\n".join(lines) + "\n"


# -- mapping onto a run -------------------------------------------------------------

CLIENT_FLAGS = {"link_spread": "--link-spread", "receipts": "--receipts", "receipt_delay": "--receipt-delay",
                "isolation": "--isolation", "link_lifetime": "--link-lifetime", "link_gap": "--link-gap",
                "send_link_idle": "--send-link-idle"}
DEFENCE_FLAGS = {"send_delay": "--send-delay", "cover_rate": "--cover-rate",
                 "reconnect_jitter": "--reconnect-jitter", "batch": "--batch"}


def daemon_args(variant: Variant) -> tuple[str, ...]:
    """``onionpost daemon`` options for a variant: only the values that differ from the daemon's defaults."""
    args: list[str] = []
    for obj, flags in ((variant.client, CLIENT_FLAGS), (variant.defences, DEFENCE_FLAGS)):
        default = type(obj)()
        for name, flag in flags.items():
            value = getattr(obj, name)
            if value != getattr(default, name):
                args += [flag, f"{value:g}" if isinstance(value, float) else str(value)]
    return tuple(args)


def contact_graph(p: Population, rng: random.Random) -> list[tuple[int, int]]:
    """The conversations: the listed edges, or round(users * mean_degree / 2) distinct random ones."""
    if p.graph == "listed":
        return sorted(tuple(sorted(e)) for e in p.contacts)
    every = [(a, b) for a in range(p.users) for b in range(a + 1, p.users)]
    wanted = max(1, min(len(every), round(p.users * p.mean_degree / 2)))
    return sorted(rng.sample(every, wanted))


# -- built-ins ------------------------------------------------------------------------

_SMOKE = LabScenario(
    name="smoke", description="4 users, 4 conversations, 60 s of traffic with churn on a private Tor network (~2-4 min; CI)",
    population=Population(users=4, mean_degree=2.0),
    traffic=Traffic(rate=4.0, duration=60.0, churn_rate=1.0, offline=5.0, offline_min=25.0),
)
_DEFAULT = LabScenario(
    name="default", description="20 users, mean 3 contacts, 10 minutes of Poisson chat with churn on a private Tor network",
    population=Population(users=20, mean_degree=3.0),
    traffic=Traffic(rate=1.0, duration=600.0, churn_rate=0.5),
)
# Five minutes of traffic a variant, not the default's ten: 11 runs over Tor (about 11 minutes each
# with setup) fit in about two hours on 2 cores.
_DEFENCES = replace(
    _DEFAULT, name="defences",
    description="the default population once per defence and isolation mode, 5 minutes of traffic each (~2 h)",
    traffic=replace(_DEFAULT.traffic, duration=300.0),
    variants=(
        Variant("defaults"),
        # A lower presence duty (a queue online a third of its device's time, not 60 %): less of the
        # device's own offline time shows through, at the cost of longer waits for a gap's end.
        Variant("sparse-presence", Client(link_lifetime=20.0, link_gap=40.0)),
        Variant("no-defences", Client(link_spread=0.0, receipt_delay=0.0, link_lifetime=0.0, link_gap=0.0,
                                      send_link_idle=0.0)),
        # The defaults before the lab measured them: always connected, links renewed every 30 min on average.
        Variant("always-connected", Client(link_lifetime=1800.0, link_gap=0.0, send_link_idle=300.0)),
        Variant("send-delay", defences=Defences(send_delay=5.0)),
        Variant("cover", defences=Defences(cover_rate=1.0)),
        Variant("reconnect-jitter", defences=Defences(reconnect_jitter=30.0)),
        Variant("batch", defences=Defences(batch=10.0)),
        *(Variant(f"isolation-{mode}", Client(isolation=mode)) for mode in ("contact", "profile", "shared")),
    ),
)
BUILTINS: dict[str, LabScenario] = {s.name: _check(s) for s in (_SMOKE, _DEFAULT, _DEFENCES)}
