"""Node addresses: ``onionpost://<node key>@<host>:<port>``.

docs/protocol/relay.md, "Node addresses". The node key is the node's Ed25519
identity public key in unpadded base64url (43 characters); it authenticates
the node's hello and is the key forwarding envelopes are sealed to. The host
is a v3 ``.onion`` name or a loopback IP literal; nothing else is accepted,
so no address ever needs DNS.
"""

import base64
import hashlib
import ipaddress
from dataclasses import dataclass

from .errors import AddressError
from .versions import KEY_SIZE, MAX_ADDRESS_LENGTH

SCHEME = "onionpost://"
_ONION_SUFFIX = ".onion"
_ONION_LABEL_LENGTH = 56  # v3: base32 of 35 bytes


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def from_b64url(text: str) -> bytes:
    if not text or any(c not in _B64URL_CHARS for c in text):
        raise ValueError("not unpadded base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


_B64URL_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


@dataclass(frozen=True)
class NodeAddress:
    key: bytes
    host: str
    port: int

    @property
    def is_onion(self) -> bool:
        return self.host.endswith(_ONION_SUFFIX)

    @property
    def is_loopback(self) -> bool:
        return not self.is_onion

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{SCHEME}{b64url(self.key)}@{host}:{self.port}"


def parse_node_address(text: str) -> NodeAddress:
    """Parse and validate a node address.

    Raises:
        AddressError: with a message naming what is wrong.
    """
    if not isinstance(text, str):
        raise AddressError("a node address must be text")
    text = text.strip()
    if len(text) > MAX_ADDRESS_LENGTH:
        raise AddressError(f"node address longer than {MAX_ADDRESS_LENGTH} characters")
    if not text.startswith(SCHEME):
        raise AddressError(f"node address must start with {SCHEME!r}")
    rest = text[len(SCHEME) :]
    key_text, at, hostport = rest.partition("@")
    if not at:
        raise AddressError("node address has no '@' between the node key and the host")
    try:
        key = from_b64url(key_text)
    except ValueError:
        raise AddressError("node key is not unpadded base64url") from None
    if len(key) != KEY_SIZE:
        raise AddressError(f"node key must be {KEY_SIZE} bytes, got {len(key)}")
    host, port = _split_host_port(hostport)
    return NodeAddress(key=key, host=_check_host(host), port=port)


def check_host(host: str) -> str:
    """Return ``host`` normalised if it is a v3 onion name or a loopback IP, else raise."""
    return _check_host(host)


def _split_host_port(hostport: str) -> tuple[str, int]:
    if hostport.startswith("["):
        host, bracket, after = hostport[1:].partition("]")
        if not bracket or not after.startswith(":"):
            raise AddressError("IPv6 host must be written as [addr]:port")
        port_text = after[1:]
    else:
        host, colon, port_text = hostport.rpartition(":")
        if not colon:
            raise AddressError("node address has no ':port'")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise AddressError(f"port must be a number from 1 to 65535, got {port_text!r}")
    return host, int(port_text)


def _check_host(host: str) -> str:
    host = host.lower()
    if host.endswith(_ONION_SUFFIX):
        label = host[: -len(_ONION_SUFFIX)]
        if not is_valid_onion_v3(label):
            raise AddressError(f"{host!r} is not a valid v3 .onion name")
        return host
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise AddressError(
            f"host {host!r} refused: only .onion names and loopback addresses "
            "(127.0.0.0/8, ::1) are allowed"
        ) from None
    if not ip.is_loopback:
        raise AddressError(
            f"host {host!r} refused: it is not loopback; only .onion names and "
            "loopback addresses (127.0.0.0/8, ::1) are allowed"
        )
    return ip.compressed


def is_valid_onion_v3(label: str) -> bool:
    """True if ``label`` (without '.onion') is a v3 onion name with a valid checksum."""
    if len(label) != _ONION_LABEL_LENGTH:
        return False
    try:
        raw = base64.b32decode(label.upper())
    except ValueError:
        return False
    pubkey, checksum, version = raw[:32], raw[32:34], raw[34:]
    if version != b"\x03":
        return False
    digest = hashlib.sha3_256(b".onion checksum" + pubkey + b"\x03").digest()
    return digest[:2] == checksum
