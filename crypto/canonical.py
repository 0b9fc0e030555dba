"""The one canonical encoding of everything that is signed or hashed.

Canonical values are built from ``None``, ``bool``, ``int`` (64-bit), ``str``,
``bytes`` and ``list``/``tuple`` of those. Maps are refused because their key
order is not canonical; floats are refused because the same number has several
encodings and NaN is not equal to itself. Decoding checks that re-encoding the
result gives back the exact input bytes, so a record has exactly one byte
form and its hash is a stable identity.
"""

from __future__ import annotations

from typing import Any

import msgpack

from crypto.errors import EncodingError

_INT_MIN = -(2**63)
_INT_MAX = 2**64 - 1


def _check(value: Any, depth: int) -> None:
    if depth > 16:
        raise EncodingError("value nested deeper than 16 levels")
    if value is None or isinstance(value, (bool, str, bytes)):
        return
    if isinstance(value, int):
        if not _INT_MIN <= value <= _INT_MAX:
            raise EncodingError("integer out of 64-bit range")
        return
    if isinstance(value, (list, tuple)):
        for item in value:
            _check(item, depth + 1)
        return
    raise EncodingError(f"type {type(value).__name__} has no canonical encoding")


def canonical_pack(value: Any) -> bytes:
    """Encode ``value`` canonically; raise :class:`EncodingError` otherwise."""
    _check(value, 0)
    return msgpack.packb(value, use_bin_type=True)


def canonical_unpack(data: bytes, *, max_len: int = 1 << 20) -> Any:
    """Decode canonical bytes; refuse anything that is not canonical.

    Tuples come back as lists. Raises :class:`EncodingError` for truncated,
    trailing, non-canonical or oversized input.
    """
    if len(data) > max_len:
        raise EncodingError(f"{len(data)} bytes exceed the {max_len} byte bound")
    try:
        value = msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            use_list=True,
        )
    except Exception as exc:  # msgpack raises several unrelated types
        raise EncodingError(f"not msgpack: {exc.__class__.__name__}") from None
    try:
        again = canonical_pack(value)
    except EncodingError:
        raise
    if again != data:
        raise EncodingError("bytes are msgpack but not in canonical form")
    return value


def signing_bytes(domain: str, fields: list | tuple) -> bytes:
    """The bytes a signature covers: the domain tag, then the fields."""
    return canonical_pack([domain, *fields])
