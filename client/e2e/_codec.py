"""Versioned msgpack records for persisted state (private to :mod:`client.e2e`).

Every persisted object is a msgpack map with a type tag ``"t"`` and a version
``"v"``; readers check both, reject unknown or missing fields, and check the
type and length of every field, so garbage or a record of another type gives a
clear :class:`StateError` instead of a half-built object.
"""

from __future__ import annotations

from typing import Any

import msgpack

from .errors import StateError

#: Upper bound on any persisted record (a full ratchet state is ~150 KB).
MAX_RECORD_SIZE = 1 << 20


def pack_record(record_type: str, version: int, fields: dict[str, Any]) -> bytes:
    return msgpack.packb({"t": record_type, "v": version, **fields}, use_bin_type=True)


class Record:
    """Field accessor for one unpacked record; every getter validates."""

    def __init__(self, data: object, record_type: str, version: int, field_names: frozenset[str]):
        self.record_type = record_type
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise StateError(f"{record_type} state must be bytes, got {type(data).__name__}")
        data = bytes(data)
        if len(data) > MAX_RECORD_SIZE:
            raise StateError(f"{record_type} state is {len(data)} bytes, more than the {MAX_RECORD_SIZE}-byte limit")
        try:
            obj = msgpack.unpackb(
                data,
                raw=False,
                use_list=True,
                strict_map_key=True,
            )
        except (ValueError, msgpack.exceptions.UnpackException, RecursionError, OverflowError) as exc:
            # ExtraData, FormatError, StackError, bad UTF-8, non-string map keys...
            raise StateError(f"{record_type} state is not a valid msgpack record ({type(exc).__name__})") from None
        if not isinstance(obj, dict):
            raise StateError(f"{record_type} state is not a msgpack map")
        found_type = obj.get("t")
        if found_type != record_type:
            raise StateError(f"expected a {record_type!r} record, found type tag {found_type!r}")
        found_version = obj.get("v")
        if found_version != version:
            raise StateError(
                f"unsupported {record_type} state version {found_version!r} (this code reads version {version})"
            )
        keys = set(obj) - {"t", "v"}
        if keys != field_names:
            missing = sorted(field_names - keys)
            extra = sorted(str(k) for k in keys - field_names)
            raise StateError(f"{record_type} state has missing fields {missing} / unknown fields {extra}")
        self._obj = obj

    def _fail(self, name: str, why: str) -> StateError:
        return StateError(f"{self.record_type} state field {name!r} {why}")

    def raw(self, name: str) -> Any:
        return self._obj[name]

    def bytes_(self, name: str, size: int | None = None, *, optional: bool = False, max_size: int = MAX_RECORD_SIZE) -> bytes | None:
        value = self._obj[name]
        if value is None and optional:
            return None
        if not isinstance(value, bytes):
            raise self._fail(name, f"must be bytes, got {type(value).__name__}")
        if size is not None and len(value) != size:
            raise self._fail(name, f"must be {size} bytes, got {len(value)}")
        if len(value) > max_size:
            raise self._fail(name, f"is longer than {max_size} bytes")
        return value

    def int_(self, name: str, lo: int, hi: int) -> int:
        value = self._obj[name]
        if not isinstance(value, int) or isinstance(value, bool):
            raise self._fail(name, f"must be an integer, got {type(value).__name__}")
        if not lo <= value <= hi:
            raise self._fail(name, f"must be between {lo} and {hi}, got {value}")
        return value

    def bool_(self, name: str) -> bool:
        value = self._obj[name]
        if not isinstance(value, bool):
            raise self._fail(name, f"must be a boolean, got {type(value).__name__}")
        return value

    def list_(self, name: str, max_len: int) -> list:
        value = self._obj[name]
        if not isinstance(value, list):
            raise self._fail(name, f"must be a list, got {type(value).__name__}")
        if len(value) > max_len:
            raise self._fail(name, f"has {len(value)} entries, more than {max_len}")
        return value
