"""Field types for msgpack maps, with strict validation.

Each frame in docs/protocol/relay.md lists its fields with one of these types.
Validation failures raise ``FieldError`` with the field name and the reason.
"""

from dataclasses import dataclass


class FieldError(ValueError):
    pass


@dataclass(frozen=True)
class Bin:
    """Bytes of exactly ``size`` bytes (or of one of the ``also`` sizes), or at most ``max_size`` bytes."""

    size: int | None = None
    max_size: int | None = None
    also: tuple[int, ...] = ()

    def check(self, name: str, value: object) -> bytes:
        if not isinstance(value, bytes):
            raise FieldError(f"field {name!r} must be bin, got {type(value).__name__}")
        if self.size is not None and len(value) != self.size and len(value) not in self.also:
            sizes = " or ".join(str(n) for n in (self.size, *self.also))
            raise FieldError(f"field {name!r} must be {sizes} bytes, got {len(value)}")
        if self.max_size is not None and len(value) > self.max_size:
            raise FieldError(f"field {name!r} must be at most {self.max_size} bytes, got {len(value)}")
        return value

    def describe(self) -> str:
        if self.size is None:
            return f"bin≤{self.max_size}"
        return " or ".join(f"bin{n}" for n in (self.size, *self.also))


@dataclass(frozen=True)
class Str:
    max_length: int

    def check(self, name: str, value: object) -> str:
        if not isinstance(value, str):
            raise FieldError(f"field {name!r} must be str, got {type(value).__name__}")
        if len(value) > self.max_length:
            raise FieldError(f"field {name!r} must be at most {self.max_length} characters")
        return value

    def describe(self) -> str:
        return f"str≤{self.max_length}"


@dataclass(frozen=True)
class Int:
    minimum: int = 0
    maximum: int = 2**63 - 1

    def check(self, name: str, value: object) -> int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise FieldError(f"field {name!r} must be int, got {type(value).__name__}")
        if not self.minimum <= value <= self.maximum:
            raise FieldError(f"field {name!r} must be from {self.minimum} to {self.maximum}")
        return value

    def describe(self) -> str:
        return "uint"


@dataclass(frozen=True)
class Optional:
    inner: Bin | Str | Int

    def check(self, name: str, value: object):
        return None if value is None else self.inner.check(name, value)

    def describe(self) -> str:
        return self.inner.describe() + "?"


def check_map(value: object, spec: dict, what: str) -> dict:
    """Validate a decoded msgpack map against ``spec`` (name -> type).

    Fields whose type is Optional may be absent (read as None); any field not in
    the spec is an error, so every frame has one reading.
    """
    if not isinstance(value, dict):
        raise FieldError(f"{what} must be a map, got {type(value).__name__}")
    if not value.keys() <= spec.keys():
        unknown = value.keys() - spec.keys()
        raise FieldError(f"{what} has unknown field(s) {sorted(map(str, unknown))}")
    result = {}
    for name, kind in spec.items():
        if name not in value and not isinstance(kind, Optional):
            raise FieldError(f"{what} lacks field {name!r}")
        result[name] = kind.check(name, value.get(name))
    return result
