"""The node's data directory: ``node.json``, ``identity.key``, ``node.db``.

The directory is mode 0700 and every file in it 0600. ``status.json`` is
written by a running node (see ``node.status``). An onion-mode node also has
``onion.key`` (the 32-byte Ed25519 seed of its onion service, which fixes its
``.onion`` name) and, once run with a tor of its own, ``tor/`` (that tor's
DataDirectory).
"""

import os
import socket
from dataclasses import dataclass, replace
from pathlib import Path

from onionpost.proto import NodeAddress
from onionpost.proto import crypto

from onionpost.torconfig.onion_keys import onion_address_of_key
from onionpost.torconfig.onionbalance import MAX_INSTANCES
from onionpost.torconfig.process import replace_private

from .config import ConfigError, NodeConfig, OnionConfig, check_access_key, check_store_url, parse_listen

CONFIG_FILE = "node.json"
IDENTITY_FILE = "identity.key"
ONION_KEY_FILE = "onion.key"
DB_FILE = "node.db"
STATUS_FILE = "status.json"
TOR_DIR = "tor"
SEED_SIZE = 32


class DataDirError(Exception):
    """The data directory is missing, incomplete or corrupted; the message says how."""


@dataclass(frozen=True)
class Identity:
    """The node's Ed25519 identity: signs hellos, opens forwarding envelopes."""

    public: bytes
    secret: bytes

    @classmethod
    def from_seed(cls, seed: bytes) -> "Identity":
        public, secret = crypto.signing_keypair(lambda _n: seed)
        return cls(public, secret)


class DataDir:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def identity_path(self) -> Path:
        return self.path / IDENTITY_FILE

    @property
    def db_path(self) -> Path:
        return self.path / DB_FILE

    @property
    def status_path(self) -> Path:
        return self.path / STATUS_FILE

    @property
    def onion_key_path(self) -> Path:
        return self.path / ONION_KEY_FILE

    @property
    def tor_dir(self) -> Path:
        """DataDirectory of the tor a running onion node launches."""
        return self.path / TOR_DIR

    def init(
        self,
        listen: str | None = None,
        access_keys: list[str] | tuple[str, ...] = (),
        rng=os.urandom,
        *,
        onion: bool = False,
        store: str | None = None,
        balanced: bool = False,
        backend_of: "DataDir | None" = None,
    ) -> NodeConfig:
        """Create a new node here: identity, configuration and an empty database.

        With ``onion``, also a persistent onion service key (``onion.key``);
        the node is then published as ``<name>.onion:80`` when it runs.
        ``store``: a ``postgresql://`` URL instead of ``node.db``; the database
        is checked (and its tables created) before anything is written here.

        Behind one ``.onion`` (Onionbalance): ``balanced`` makes the frontend,
        whose ``onion.key`` is the master key clients reach; ``backend_of``
        (a frontend's directory) makes a backend with the frontend's node
        identity and an instance key of its own, and lists that instance in
        the frontend's ``node.json``.

        Raises:
            DataDirError: a node already exists here, the directory cannot be made,
                or ``backend_of`` is not a frontend.
            ConfigError: bad listen address or access key, or contradictory options.
        """
        if (balanced or backend_of is not None) and not onion:
            raise ConfigError(f"{'--balanced' if balanced else '--backend-of'} is for onion nodes: add --onion")
        if balanced and backend_of is not None:
            raise ConfigError("--balanced makes a frontend and --backend-of a backend; a node is one of them")
        host, port = parse_listen(listen or "")
        keys = tuple(check_access_key(k) for k in access_keys)
        if store is not None:
            store = check_store_url(store)
        if self.config_path.exists() or self.identity_path.exists() or self.onion_key_path.exists():
            raise DataDirError(f"a node already exists in {self.path}; refusing to overwrite it")
        identity_seed = rng(SEED_SIZE)
        onion_config = OnionConfig(instances=()) if balanced else OnionConfig() if onion else None
        front_config = None
        if backend_of is not None:
            front_config = backend_of.load_config()
            if front_config.onion is None or not front_config.onion.frontend:
                raise DataDirError(f"{backend_of.path} is not a balanced frontend (create one with "
                                   "'onionpost node init --onion --balanced')")
            if len(front_config.onion.instances) >= MAX_INSTANCES:
                raise DataDirError(f"{backend_of.path} has {MAX_INSTANCES} backends already, as many as fit "
                                   "in one descriptor")
            backend_of.load_identity()  # checks it
            identity_seed = backend_of.identity_path.read_bytes()
            master = onion_address_of_key(backend_of.load_onion_key())
            onion_config = OnionConfig(virtual_port=front_config.onion.virtual_port, master=master)
        if port == 0:
            port = free_port(host)
        config = NodeConfig(host=host, port=port, access_keys=keys, onion=onion_config, store=store)
        from .store import open_store  # local import: the store is not needed to read a config

        if store is not None:  # a wrong URL fails before the directory is touched
            open_store(store, identity=Identity.from_seed(identity_seed).public).close()
        try:
            self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(self.path, 0o700)
            write_private(self.identity_path, identity_seed)
            if onion:
                write_private(self.onion_key_path, rng(SEED_SIZE))
            write_private(self.config_path, config.dumps().encode())
        except OSError as exc:
            raise DataDirError(f"cannot create the node in {self.path}: {exc.strerror or exc}") from None
        if store is None:
            open_store(self.db_path).close()
        if backend_of is not None:
            instances = (*front_config.onion.instances, self.instance_address())
            front_onion = replace(front_config.onion, instances=instances)
            replace_private(backend_of.config_path, replace(front_config, onion=front_onion).dumps().encode())
        return config

    def store_location(self, config: NodeConfig | None = None) -> str | Path:
        """Where the node's queues are: its PostgreSQL URL, else ``node.db`` here."""
        config = config or self.load_config()
        return config.store if config.store is not None else self.db_path

    def instance_address(self) -> str:
        """A balanced backend's own ``.onion`` (its onion.key), which only the frontend uses."""
        return onion_address_of_key(self.load_onion_key())

    def load_config(self) -> NodeConfig:
        self._check_exists()
        try:
            text = self.config_path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise DataDirError(f"cannot read {self.config_path}: {exc}") from None
        try:
            return NodeConfig.loads(text)
        except ConfigError as exc:
            raise DataDirError(f"corrupted configuration {self.config_path}: {exc}") from None

    def load_identity(self) -> Identity:
        self._check_exists()
        try:
            seed = self.identity_path.read_bytes()
        except OSError as exc:
            raise DataDirError(f"cannot read {self.identity_path}: {exc.strerror or exc}") from None
        if len(seed) != SEED_SIZE:
            raise DataDirError(f"corrupted identity {self.identity_path}: expected {SEED_SIZE} bytes, found {len(seed)}")
        return Identity.from_seed(seed)

    def load_onion_key(self) -> bytes:
        """The onion service's 32-byte Ed25519 seed (onion mode only).

        Raises:
            DataDirError: the key file is missing or not 32 bytes.
        """
        self._check_exists()
        try:
            seed = self.onion_key_path.read_bytes()
        except FileNotFoundError:
            raise DataDirError(
                f"{self.onion_key_path} is missing: node.json is in onion mode but the onion service key is gone "
                "(restore it from a backup to keep the node's .onion address)"
            ) from None
        except OSError as exc:
            raise DataDirError(f"cannot read {self.onion_key_path}: {exc.strerror or exc}") from None
        if len(seed) != SEED_SIZE:
            raise DataDirError(f"corrupted onion key {self.onion_key_path}: expected {SEED_SIZE} bytes, found {len(seed)}")
        return seed

    def address(self) -> NodeAddress:
        """The address clients use: ``<name>.onion:<virtual port>`` in onion mode (computed, no Tor needed; a
        balanced backend's is the master's), else the listen address."""
        config = self.load_config()
        identity = self.load_identity()
        if config.onion is not None and config.onion.master is not None:
            return NodeAddress(identity.public, config.onion.master, config.onion.virtual_port)
        if config.onion is not None:
            return NodeAddress(identity.public, onion_address_of_key(self.load_onion_key()), config.onion.virtual_port)
        return NodeAddress(identity.public, config.host, config.port)

    def _check_exists(self) -> None:
        if not self.path.is_dir():
            raise DataDirError(f"no node data directory at {self.path} (create one with 'onionpost node init --data {self.path}')")
        if not self.config_path.exists() or not self.identity_path.exists():
            raise DataDirError(f"{self.path} holds no node (create one with 'onionpost node init --data {self.path}')")


def write_private(path: Path, data: bytes) -> None:
    """Create ``path`` with mode 0600 (failing if it exists) and write ``data`` durably."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def free_port(host: str) -> int:
    """A TCP port that is free on ``host`` now (recorded so the address stays stable)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]
