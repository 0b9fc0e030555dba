"""The canonical encoding accepts and refuses exactly what its rule says.

``crypto/canonical.py`` is checked against a plain reference model of the
rule (a faster implementation must pass the same tests): None, bool, 64-bit
int, str, bytes and lists/tuples of those, nested at most 16 deep; on
decoding, also exactly one byte form.
"""

from __future__ import annotations

import math

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workmesh.crypto.canonical import canonical_pack, canonical_unpack
from workmesh.crypto.errors import EncodingError

DEPTH_MAX = 16


def reference_ok(value, depth: int = 0) -> bool:
    """The rule, written the obvious way."""
    kind = type(value)
    if kind in (type(None), bool, str, bytes):
        return True
    if kind is int:
        return -(2**63) <= value <= 2**64 - 1
    if kind in (list, tuple):
        return depth < DEPTH_MAX and all(reference_ok(v, depth + 1) for v in value)
    return False


def reference_unpack_ok(data: bytes) -> bool:
    try:
        value = msgpack.unpackb(data, raw=False, strict_map_key=False, use_list=True)
    except Exception:
        return False
    return reference_ok(value) and msgpack.packb(value, use_bin_type=True) == data


scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**65), max_value=2**65), st.text(max_size=8),
    st.binary(max_size=8), st.floats(allow_nan=True), st.just(bytearray(b"x")),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.tuples(inner, inner),
        st.dictionaries(st.text(max_size=3), inner, max_size=2), st.frozensets(st.integers(), max_size=2),
    ),
    max_leaves=20,
)


def nested(depth: int) -> list:
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


@settings(max_examples=200, deadline=None)
@given(values)
def test_pack_accepts_exactly_the_rule(value):
    if reference_ok(value):
        assert canonical_unpack(canonical_pack(value)) == msgpack.unpackb(msgpack.packb(value), raw=False)
    else:
        with pytest.raises(EncodingError):
            canonical_pack(value)


@settings(max_examples=200, deadline=None)
@given(values)
def test_unpack_accepts_exactly_the_rule(value):
    try:
        data = msgpack.packb(value, use_bin_type=True)
    except (TypeError, OverflowError, ValueError):
        return
    if reference_unpack_ok(data):
        assert canonical_unpack(data) == msgpack.unpackb(data, raw=False)
    else:
        with pytest.raises(EncodingError):
            canonical_unpack(data)


@pytest.mark.parametrize(
    "data",
    [
        b"\xcb" + msgpack.packb(1.5)[1:],  # float64
        b"\xca\x3f\xc0\x00\x00",  # float32
        msgpack.packb([1, [math.nan]]),  # a float inside a list
        b"\xcf" + (1).to_bytes(8, "big"),  # a wide form of 1
        b"\x81\xa1a\x01",  # a map
        b"\xd4\x01\x00",  # an ext type
        b"\xd6\xff\x00\x00\x00\x01",  # a timestamp ext
        msgpack.packb("x", use_bin_type=False)[:1] + b"",  # truncated
        msgpack.packb([1]) + b"\x00",  # trailing bytes
    ],
)
def test_unpack_refuses_non_canonical_bytes(data):
    with pytest.raises(EncodingError):
        canonical_unpack(data)


def test_depth_bound_is_sixteen_levels():
    assert canonical_unpack(canonical_pack(nested(DEPTH_MAX - 1))) == nested(DEPTH_MAX - 1)
    with pytest.raises(EncodingError, match="deeper"):
        canonical_pack(nested(DEPTH_MAX))
    with pytest.raises(EncodingError, match="deeper"):
        canonical_unpack(msgpack.packb(nested(DEPTH_MAX)))


def test_integer_bounds():
    for ok in (-(2**63), 2**64 - 1):
        assert canonical_unpack(canonical_pack([ok])) == [ok]
    for bad in (-(2**63) - 1, 2**64):
        with pytest.raises(EncodingError, match="64-bit"):
            canonical_pack([bad])
