"""What clients say to each other inside the end-to-end encryption (docs/client.md, "Agent messages").

Every payload is a msgpack map with a type ``t``. Decoding checks types and
sizes strictly: a payload from a contact is untrusted input.
"""

from dataclasses import dataclass

import msgpack

from .profiles import MAX_BIO, MAX_DISPLAY_NAME


class PayloadError(ValueError):
    pass


_KINDS = {
    # the connection request (inside the e2e request): our reply queue and the key to secure theirs
    "request": {"reply": str, "snd": bytes, "skey": bytes, "via": str},
    # the inviter's accept (first ratchet message): the key to secure our reply queue, their profile
    "accept": {"skey": bytes, "profile": dict},
    "profile": {"profile": dict},
    "msg": {"text": str, "ts": int},
    "rcpt": {"seq": int},
    "qnew": {"relay": str, "snd": bytes, "skey": bytes},  # rotation: write to this queue from now on
    "qdone": {},  # rotation: the last message on the old queue
    "cover": {},  # cover traffic (client/timing.py): the recipient drops it silently
}
VIA = frozenset({"qr-image", "link"})


@dataclass(frozen=True)
class Payload:
    kind: str
    fields: dict

    def __getitem__(self, name):
        return self.fields[name]


def encode(kind: str, **fields) -> bytes:
    spec = _KINDS[kind]
    if set(fields) != set(spec):
        raise ValueError(f"{kind} payload needs fields {sorted(spec)}")
    return msgpack.packb({"t": kind, **fields}, use_bin_type=True)


def decode(data: bytes, *, expect: set[str] | None = None) -> Payload:
    try:
        raw = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception:  # any msgpack failure means the same: not a payload
        raise PayloadError("not a valid payload (msgpack)") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("t"), str) or raw["t"] not in _KINDS:
        raise PayloadError("payload of unknown type")
    kind = raw.pop("t")
    if expect is not None and kind not in expect:
        raise PayloadError(f"unexpected {kind!r} payload here")
    spec = _KINDS[kind]
    if set(raw) != set(spec):
        raise PayloadError(f"{kind} payload has wrong fields")
    for name, kind_type in spec.items():
        if not isinstance(raw[name], kind_type) or isinstance(raw[name], bool):
            raise PayloadError(f"{kind} payload field {name!r} has the wrong type")
    if kind == "request" and raw["via"] not in VIA:
        raise PayloadError("request payload field 'via' is unknown")
    if "profile" in raw:
        raw["profile"] = _check_profile(raw["profile"])
    return Payload(kind, raw)


def _check_profile(profile: dict) -> dict:
    name, bio = profile.get("name"), profile.get("bio", "")
    if not isinstance(name, str) or not isinstance(bio, str) or set(profile) - {"name", "bio"}:
        raise PayloadError("profile must be {name: str, bio: str}")
    clean = lambda text, limit: "".join(c for c in text if c.isprintable())[:limit]  # noqa: E731
    return {"name": clean(name, MAX_DISPLAY_NAME) or "(no name)", "bio": clean(bio, MAX_BIO)}
