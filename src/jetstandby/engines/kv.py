"""A small key-value engine, for tests and the docs.

Commands (payloads are msgpack maps):

- ``Put`` v1 ``{"key": str, "value": str}`` → ``{"ok": true, "previous": str | null}``
- ``Delete`` v1 ``{"key": str}`` → ``{"ok": bool}`` (false if the key was absent)
- ``Add`` v1 ``{"key": str, "amount": int}`` → ``{"ok": true, "value": int}``; adds to an
  integer counter stored as its decimal string; a non-integer value is a rejection.

A malformed payload is a deterministic rejection ``{"ok": false, "error": ...}``.
"""

from __future__ import annotations

import hashlib
from typing import Any, Final

import msgspec

from jetstandby.engine import Command

_encode: Final = msgspec.msgpack.encode


class _Put(msgspec.Struct, forbid_unknown_fields=True):
    key: str
    value: str


class _Delete(msgspec.Struct, forbid_unknown_fields=True):
    key: str


class _Add(msgspec.Struct, forbid_unknown_fields=True):
    key: str
    amount: int


_DECODERS: Final[dict[str, msgspec.msgpack.Decoder[Any]]] = {
    "Put": msgspec.msgpack.Decoder(_Put),
    "Delete": msgspec.msgpack.Decoder(_Delete),
    "Add": msgspec.msgpack.Decoder(_Add),
}


class KeyValueEngine:
    """A string map with an integer counter operation. Deterministic; no clock, no I/O."""

    name = "kv"
    version = 1
    accepts = {"Put": frozenset({1}), "Delete": frozenset({1}), "Add": frozenset({1})}

    def __init__(self) -> None:
        self.data: dict[str, str] = {}
        self.last_timestamp_ns = 0

    def apply(self, command: Command) -> bytes:
        self.last_timestamp_ns = command.timestamp_ns
        try:
            request: Any = _DECODERS[command.command_type].decode(command.payload)
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:
            return _encode({"ok": False, "error": f"bad {command.command_type} payload: {exc}"})
        if isinstance(request, _Put):
            previous = self.data.get(request.key)
            self.data[request.key] = request.value
            return _encode({"ok": True, "previous": previous})
        if isinstance(request, _Delete):
            return _encode({"ok": self.data.pop(request.key, None) is not None})
        current = self.data.get(request.key, "0")
        if not current.lstrip("-").isdigit():
            return _encode({"ok": False, "error": f"{request.key!r} is not an integer"})
        value = int(current) + request.amount
        self.data[request.key] = str(value)
        return _encode({"ok": True, "value": value})

    def snapshot(self) -> bytes:
        return _encode({"data": self.data, "last_timestamp_ns": self.last_timestamp_ns})

    def restore(self, data: bytes) -> None:
        state = msgspec.msgpack.decode(data, type=dict[str, Any])
        self.data = dict(state["data"])
        self.last_timestamp_ns = int(state["last_timestamp_ns"])

    def digest(self) -> bytes:
        return hashlib.sha256(_encode(sorted(self.data.items()))).digest()


def put(key: str, value: str) -> bytes:
    """The payload of a ``Put``."""
    return _encode({"key": key, "value": value})


def add(key: str, amount: int) -> bytes:
    """The payload of an ``Add``."""
    return _encode({"key": key, "amount": amount})
