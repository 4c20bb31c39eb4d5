"""One ``.onion`` for several backends: Onionbalance v3's files and process.

Onionbalance (https://onionbalance.readthedocs.io, the ``balance`` extra or
Debian's ``onionbalance`` package) holds the master onion key. Through a
frontend tor's control port it fetches each backend instance's descriptor
(HSFETCH), copies their introduction points into one descriptor signed with
the master key and uploads it (HSPOST). A client that looks up the master
address gets introduction points of every backend and is introduced to one
of them. A backend's tor must accept introductions made for the master
address: its service has ``HiddenServiceOnionbalanceInstance 1`` and an
``ob_config`` file naming the master (``write_instance_dir``).

Files of a frontend (``write_frontend``): ``master.pem`` (the master key,
PKCS#8 PEM as ``onionbalance-config`` writes it) and ``config.yaml``.
"""

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from onionpost.torconfig import onion_keys, process
from onionpost.torconfig.errors import TorError

CONFIG_FILE = "config.yaml"
MASTER_KEY_FILE = "master.pem"
LOG_FILE = "onionbalance.log"
OB_CONFIG_FILE = "ob_config"
SECRET_KEY_FILE = "hs_ed25519_secret_key"
PR_SET_PDEATHSIG = 1
MAX_INSTANCES = 8
"""A v3 descriptor holds at most 20 introduction points and Onionbalance takes up to 2 of each
backend's (``N_INTROS_PER_INSTANCE``): beyond 10 backends some are never in the descriptor.
8 leaves room for a backend's intro points to change between two fetches."""


def _check_address(address: str, what: str) -> str:
    if not onion_keys.is_valid_onion_address(address):
        raise ValueError(f"{what} {address!r} is not a v3 onion address (56 characters and .onion)")
    return address if address.endswith(onion_keys.ONION_SUFFIX) else address + onion_keys.ONION_SUFFIX


def master_key_pem(seed: bytes) -> bytes:
    """The master key (32-byte Ed25519 seed) in the PEM format Onionbalance loads."""
    return Ed25519PrivateKey.from_private_bytes(seed).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def render_config(key_file: str, instances: Sequence[str]) -> str:
    """Onionbalance's ``config.yaml`` for one master key and its backend instances.

    JSON is YAML, so no YAML writer is needed.

    Raises:
        ValueError: no instance, too many, a repeated or malformed address.
    """
    if not instances:
        raise ValueError("a balanced node needs at least one backend instance (add one with "
                         "'onionpost node init --onion --backend-of FRONTEND')")
    if len(instances) > MAX_INSTANCES:
        raise ValueError(f"{len(instances)} backend instances; at most {MAX_INSTANCES} fit in one descriptor "
                         "(2 introduction points each, 20 at most)")
    checked = [_check_address(address, "backend instance") for address in instances]
    if len(set(checked)) != len(checked):
        raise ValueError("a backend instance is listed twice")
    service = {"key": key_file, "instances": [{"address": onion_keys.service_id(address), "name": f"backend{i + 1}"}
                                              for i, address in enumerate(checked)]}
    return json.dumps({"services": [service]}, indent=2) + "\n"


def write_frontend(directory: Path, master_seed: bytes, instances: Sequence[str]) -> Path:
    """Write ``master.pem`` and ``config.yaml`` into ``directory`` (mode 0700, files 0600); return the config path."""
    text = render_config(MASTER_KEY_FILE, instances)  # checked before anything is written
    directory = process.make_private_dir(Path(directory))
    process.replace_private(directory / MASTER_KEY_FILE, master_key_pem(master_seed))
    process.replace_private(directory / CONFIG_FILE, text.encode())
    return directory / CONFIG_FILE


def render_ob_config(master_address: str) -> str:
    """The ``ob_config`` file of a backend's HiddenServiceDir."""
    return f"MasterOnionAddress {_check_address(master_address, 'master address')}\n"


def write_instance_dir(directory: Path, instance_seed: bytes, master_address: str) -> Path:
    """Make a backend's HiddenServiceDir: its own key and the ``ob_config`` naming the master."""
    text = render_ob_config(master_address)
    directory = process.make_private_dir(Path(directory))
    process.replace_private(directory / SECRET_KEY_FILE, onion_keys.to_secret_key_file(instance_seed))
    process.replace_private(directory / OB_CONFIG_FILE, text.encode())
    return directory


def instance_service_conf(virtual_port: int, target: int | str) -> dict[str, object]:
    """Tor's options for a backend's service (the value of its HiddenServiceDir in stem's hidden service conf)."""
    where = f"127.0.0.1:{target}" if isinstance(target, int) else target
    return {"HiddenServicePort": [f"{virtual_port} {where}"], "HiddenServiceVersion": "3",
            "HiddenServiceOnionbalanceInstance": "1"}


def command(testnet: bool = False) -> list[str]:
    """How to start Onionbalance: the one installed next to this Python (the ``balance`` extra), else Debian's.
    On a private network, through ``onionbalance_testnet`` (Onionbalance must be importable here).

    Raises:
        TorError: Onionbalance is not installed.
    """
    if testnet:
        if importlib.util.find_spec("onionbalance") is None:
            raise TorError("a balanced frontend on a private network needs Onionbalance in this Python "
                           "(pip install 'onionpost[balance]')")
        return [sys.executable, "-m", "onionpost.torconfig.onionbalance_testnet"]
    beside = Path(sys.executable).parent / "onionbalance"
    if beside.exists():
        return [str(beside)]
    found = shutil.which("onionbalance")
    if found:
        return [found]
    raise TorError("onionbalance is not installed (pip install 'onionpost[balance]', or apt-get install onionbalance)")


def start(config_path: Path, control_port: int, log_path: Path, *, testnet: bool) -> subprocess.Popen:
    """Start Onionbalance against the frontend tor's control port (cookie authentication); stop it by PID.

    ``testnet``: ``--is-testnet``, instance descriptors are fetched every 20 s instead of 10 min
    and the master descriptor lives 20 s instead of 1 h; run through ``onionbalance_testnet``,
    which needs Onionbalance importable here (the ``balance`` extra).
    """
    argv = [*command(testnet), "--config", str(config_path), "--ip", "127.0.0.1", "--port", str(control_port),
            "--socket", str(Path(config_path).parent / "no-control-socket"), "--verbosity", "info"]
    if testnet:
        argv.append("--is-testnet")
    with open(log_path, "ab") as log:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, preexec_fn=_die_with_parent)


def _die_with_parent() -> None:
    """In the child: SIGKILL when the process that started it ends, even by SIGKILL (Linux; the frontend's
    tor goes the same way through ``__OwningControllerProcess``). Call ``start`` from the main thread: the
    signal follows the starting thread. Not SIGTERM: Onionbalance's handler closes its control connection
    and exits, which hung (stem's threads) when its tor was going away at the same moment; it keeps no
    state to save."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
