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
import msgspec

from workmesh.crypto.errors import EncodingError

# Encodes the canonical types exactly as ``msgpack.packb(value, use_bin_type=True)``
# (shortest forms; tuples as arrays), in a fifth of its time: packb builds a
# Packer per call. Only values that passed ``_check`` are given to it.
_encode = msgspec.msgpack.Encoder().encode

_INT_MIN = -(2**63)
_INT_MAX = 2**64 - 1


_LEAVES = frozenset({type(None), bool, str, bytes})
_DEPTH_MAX = 16


def _check(value: Any, depth: int = 0) -> None:
    """Refuse anything but canonical types. This runs on every datagram and
    fact: a list's leaves are checked in its own loop, with no allocation per
    element; only nested lists cost a call (at most ``_DEPTH_MAX`` deep)."""
    kind = type(value)
    if kind is list or kind is tuple:
        _check_items(value, depth)
    elif kind is int:
        if not _INT_MIN <= value <= _INT_MAX:
            raise EncodingError("integer out of 64-bit range")
    elif kind not in _LEAVES:
        raise EncodingError(f"type {kind.__name__} has no canonical encoding")


def _check_items(items: list | tuple, level: int) -> None:
    if level >= _DEPTH_MAX:
        raise EncodingError(f"value nested deeper than {_DEPTH_MAX} levels")
    for child in items:
        kind = type(child)
        if kind in _LEAVES:
            continue
        if kind is int:
            if not _INT_MIN <= child <= _INT_MAX:
                raise EncodingError("integer out of 64-bit range")
        elif kind is list or kind is tuple:
            _check_items(child, level + 1)
        else:
            raise EncodingError(f"type {kind.__name__} has no canonical encoding")


def check_canonical_items(items: list | tuple, level: int = 0) -> None:
    """Raise :class:`EncodingError` unless every item of ``items`` (a list at
    nesting ``level``) has a canonical encoding: for a decoder that typed the
    outer fields itself and holds an untyped list."""
    _check_items(items, level)


def canonical_pack(value: Any) -> bytes:
    """Encode ``value`` canonically; raise :class:`EncodingError` otherwise."""
    _check(value, 0)
    return _encode(value)


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
    _check(value)
    if _encode(value) != data:
        raise EncodingError("bytes are msgpack but not in canonical form")
    return value


def signing_bytes(domain: str, fields: list | tuple, *, checked: bool = False) -> bytes:
    """The bytes a signature covers: the domain tag, then the fields.

    ``checked=True`` when the fields came out of :func:`canonical_unpack` (so
    they are canonical already) skips the second type check.
    """
    if checked:
        return _encode([domain, *fields])
    return canonical_pack([domain, *fields])
