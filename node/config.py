"""Node configuration: the ``node.json`` file of a data directory.

Limits follow docs/protocol/relay.md, "Limits". Every field has a default, so
a minimal file only names the listen address. An onion-mode node also has
``"onion": {"virtual_port": 80}``: it is reached as a Tor onion service on
that port, and its (loopback) listen address is only the service's local
target.
"""

import ipaddress
import json
import math
from dataclasses import asdict, dataclass, field

from onionpost.proto import AddressError
from onionpost.proto.address import check_host
from onionpost.proto.versions import MAX_ACCESS_KEY_LENGTH
from onionpost.torconfig.onion_keys import is_valid_onion_address

DEFAULT_HOST = "127.0.0.1"
DAY = 86400
DEFAULT_VIRTUAL_PORT = 80


class ConfigError(ValueError):
    """A configuration value that is malformed or not allowed; the message says which."""


@dataclass(frozen=True)
class Throttle:
    """Per-session token bucket: ``rate`` commands per second, bursts of ``burst``."""

    rate: float = 20000.0
    burst: int = 40000


@dataclass(frozen=True)
class Connections:
    """Admission of new connections (relay.md "Transport": limits).

    ``max``: open connections at once (None: the descriptor limit less a
    reserve, see ``node.admission``); ``max_pending``: of those, how many may
    still be before their session (None: a quarter of ``max``);
    ``handshake_timeout``: seconds for the HTTP upgrade, then again for the
    client hello; ``rate``/``burst``: new connections per second, all sources
    together (a token bucket).
    """

    max: int | None = None
    max_pending: int | None = None
    handshake_timeout: float = 20.0
    rate: float = 200.0
    burst: int = 400


@dataclass(frozen=True)
class OnionConfig:
    """Onion mode: the node is published as a v3 onion service on ``virtual_port``.

    Behind one ``.onion`` (Onionbalance, docs/operations.md), a data directory is either the
    frontend (``instances``: the backends' own onion addresses; its ``onion.key`` is the master
    key) or a backend (``master``: the address clients use; its ``onion.key`` is its instance key).
    """

    virtual_port: int = DEFAULT_VIRTUAL_PORT
    master: str | None = None
    instances: tuple[str, ...] | None = None

    @property
    def frontend(self) -> bool:
        return self.instances is not None

    @property
    def backend(self) -> bool:
        return self.master is not None


@dataclass(frozen=True)
class NodeConfig:
    host: str = DEFAULT_HOST
    port: int = 0
    access_keys: tuple[str, ...] = ()
    quota: int = 128
    ttl: int = 21 * DAY
    unsecured_limit: int = 3
    throttle: Throttle = field(default_factory=Throttle)
    sweep_interval: float = 60.0
    """Seconds between sweeps of expired messages and seen envelope keys."""
    connections: Connections = field(default_factory=Connections)
    rewrite_interval: float = 3600.0
    """Seconds between two rewrites of the database in key order (after writes only): the file's layout
    keeps the order in which queues and messages arrived for at most this long (relay.md "Threat model")."""
    log_interval: float = 60.0
    """Seconds between two summary lines of routine failures (refused connections, failed sessions)."""
    onion: OnionConfig | None = None
    """None: a loopback node (reached directly). Set: an onion service (see ``OnionConfig``)."""
    store: str | None = None
    """None: the SQLite database ``node.db`` in the data directory. Else a ``postgresql://`` URL
    (``node.store``), which several processes of this node may share."""

    def to_json(self) -> dict:
        data = asdict(self)
        listen = {"host": data.pop("host"), "port": data.pop("port")}
        data["access_keys"] = list(self.access_keys)
        if self.onion is None:
            del data["onion"]  # loopback nodes keep the node.json they always had
        if self.store is None:
            del data["store"]  # and SQLite nodes too
        if self.onion is not None:  # and onion nodes that are not balanced too
            data["onion"] = {k: list(v) if isinstance(v, tuple) else v for k, v in data["onion"].items() if v is not None}
        return {"listen": listen, **data}

    @classmethod
    def from_json(cls, data: object) -> "NodeConfig":
        """Build a config from decoded ``node.json``.

        Raises:
            ConfigError: a field is missing, unknown or invalid.
        """
        if not isinstance(data, dict):
            raise ConfigError("the configuration must be a JSON object")
        known = {
            "listen", "access_keys", "quota", "ttl", "unsecured_limit", "throttle", "sweep_interval", "onion",
            "connections", "log_interval", "rewrite_interval", "store",
        }
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown configuration field(s): {', '.join(sorted(unknown))}")
        listen = data.get("listen")
        if not isinstance(listen, dict) or set(listen) != {"host", "port"}:
            raise ConfigError('"listen" must be {"host": ..., "port": ...}')
        throttle = data.get("throttle", {})
        if not isinstance(throttle, dict) or set(throttle) - {"rate", "burst"}:
            raise ConfigError('"throttle" must be {"rate": ..., "burst": ...}')
        keys = data.get("access_keys", [])
        if not isinstance(keys, list):
            raise ConfigError('"access_keys" must be a list of strings')
        return cls(
            host=check_listen_host(listen["host"]),
            port=_integer("listen.port", listen["port"], 1, 65535),
            access_keys=tuple(check_access_key(k) for k in keys),
            quota=_integer("quota", data.get("quota", cls.quota), 1, 1_000_000),
            ttl=_integer("ttl", data.get("ttl", cls.ttl), 1, 10 * 365 * DAY),
            unsecured_limit=_integer("unsecured_limit", data.get("unsecured_limit", cls.unsecured_limit), 0, 1000),
            throttle=Throttle(
                rate=_number("throttle.rate", throttle.get("rate", Throttle.rate)),
                burst=_integer("throttle.burst", throttle.get("burst", Throttle.burst), 1, 10**9),
            ),
            sweep_interval=_number("sweep_interval", data.get("sweep_interval", cls.sweep_interval)),
            connections=_connections(data.get("connections", {})),
            log_interval=_number("log_interval", data.get("log_interval", cls.log_interval)),
            rewrite_interval=_number("rewrite_interval", data.get("rewrite_interval", cls.rewrite_interval)),
            onion=None if data.get("onion") is None else _onion(data["onion"]),
            store=None if data.get("store") is None else check_store_url(data["store"]),
        )

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2) + "\n"

    @classmethod
    def loads(cls, text: str) -> "NodeConfig":
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ConfigError(f"not valid JSON ({exc})") from None
        return cls.from_json(data)


def check_listen_host(host: object) -> str:
    """Return ``host`` normalised if it is a loopback IP address (this release listens on loopback only)."""
    if not isinstance(host, str):
        raise ConfigError("the listen host must be a string")
    try:
        normal = check_host(host)
        ipaddress.ip_address(normal)  # an .onion name passes check_host but is not something to bind
    except (AddressError, ValueError):
        raise ConfigError(
            f"listen host {host!r} refused: this release listens only on loopback addresses "
            "(127.0.0.0/8 or ::1); to be reached over Tor, create the node with --onion "
            "(the listen address is then the onion service's local target)"
        ) from None
    return normal


def parse_listen(text: str) -> tuple[str, int]:
    """Parse ``HOST:PORT``, ``[V6]:PORT`` or ``HOST`` (port 0 = choose a free port).

    Raises:
        ConfigError: malformed, or the host is not loopback.
    """
    text = text.strip()
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ConfigError(f"--listen {text!r}: write an IPv6 host as [addr]:port")
        port_text = rest[1:]
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:
        host, port_text = text, ""
    port = 0
    if port_text:
        if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
            raise ConfigError(f"--listen {text!r}: port must be a number from 0 to 65535")
        port = int(port_text)
    return check_listen_host(host or DEFAULT_HOST), port


def _onion(value: object) -> OnionConfig:
    if not isinstance(value, dict) or set(value) - {"virtual_port", "master", "instances"}:
        raise ConfigError('"onion" must be {"virtual_port": ...} (a balanced node adds "master" or "instances")')
    master, instances = value.get("master"), value.get("instances")
    if master is not None and instances is not None:
        raise ConfigError('"onion" has both "master" (a backend) and "instances" (a frontend); a node is one of them')
    if master is not None and not (isinstance(master, str) and is_valid_onion_address(master)):
        raise ConfigError('"onion.master" must be a v3 onion address')
    if instances is not None:
        if not isinstance(instances, list) or not all(isinstance(a, str) and is_valid_onion_address(a) for a in instances):
            raise ConfigError('"onion.instances" must be a list of v3 onion addresses')
        instances = tuple(instances)
    return OnionConfig(virtual_port=_integer("onion.virtual_port", value.get("virtual_port", DEFAULT_VIRTUAL_PORT), 1, 65535),
                       master=master, instances=instances)


def _connections(value: object) -> Connections:
    names = {"max", "max_pending", "handshake_timeout", "rate", "burst"}
    if not isinstance(value, dict) or set(value) - names:
        raise ConfigError(f'"connections" must be an object with some of: {", ".join(sorted(names))}')
    default = Connections()

    def optional(name: str) -> int | None:
        return None if value.get(name) is None else _integer(f"connections.{name}", value[name], 1, 10**6)

    return Connections(
        max=optional("max"),
        max_pending=optional("max_pending"),
        handshake_timeout=_number("connections.handshake_timeout", value.get("handshake_timeout", default.handshake_timeout)),
        rate=_number("connections.rate", value.get("rate", default.rate)),
        burst=_integer("connections.burst", value.get("burst", default.burst), 1, 10**6),
    )


def check_store_url(url: object) -> str:
    """A PostgreSQL connection URL (``postgresql://[user[:password]@][host][:port]/dbname[?...]``)."""
    if not isinstance(url, str) or not url.startswith(("postgresql://", "postgres://")):
        raise ConfigError(f"--store {url!r}: give a PostgreSQL URL such as postgresql://user@host:5432/onionpost "
                          "(leave it out for the default SQLite file in the data directory)")
    return url


def check_access_key(key: object) -> str:
    if not isinstance(key, str) or not key or len(key) > MAX_ACCESS_KEY_LENGTH:
        raise ConfigError(f"an access key must be a non-empty string of at most {MAX_ACCESS_KEY_LENGTH} characters")
    return key


def _integer(name: str, value: object, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ConfigError(f'"{name}" must be an integer from {low} to {high}')
    return value


def _number(name: str, value: object) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f'"{name}" must be a positive number')
    return float(value)
