"""Coalescing (dht/coalesce.py): what one turn sends to a peer, packed into as few datagrams as fit.

Pure: ``pack`` and ``split`` are driven directly. The shell's use of them (a
bundle's messages take the path of lone datagrams) is tested in
test_protocol_limits.py and over UDP in tests/integration.
"""

from __future__ import annotations

import os

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workmesh.dht.coalesce import BUNDLE_MARK_BYTE, BUNDLE_MESSAGES_MAX, BundleError, bundle, is_bundle, pack, split

BOUND = 60_000


def envelope_like(size: int) -> bytes:
    """Bytes that start as an envelope does (a 9-array): all a bundle checks of its items."""
    return b"\x99" + os.urandom(size - 1)


messages = st.lists(st.integers(min_value=1, max_value=3000).map(lambda n: b"\x99" + b"m" * n), max_size=200)


def unpacked(datagrams: list[bytes], bound: int = BOUND) -> list[bytes]:
    return [m for d in datagrams for m in (split(d, bound) if is_bundle(d) else [d])]


@settings(max_examples=200, deadline=None)
@given(messages, st.sampled_from([600, 5_000, BOUND]), st.integers(min_value=2, max_value=BUNDLE_MESSAGES_MAX))
def test_any_messages_within_the_bound_round_trip_in_order_and_each_datagram_fits(msgs, bound, count_max):
    msgs = [m for m in msgs if len(m) <= bound]
    datagrams = pack(msgs, bound, count_max)
    assert [m for d in datagrams for m in (split(d, bound, count_max) if is_bundle(d) else [d])] == msgs
    assert all(len(d) <= bound for d in datagrams)
    # As few as going in order allows: no datagram could have taken the next one's first message.
    groups = [split(d, bound, count_max) if is_bundle(d) else [d] for d in datagrams]
    for this, following in zip(groups, groups[1:]):
        joined = this + following[:1]
        assert len(joined) > count_max or len(bundle(joined)) > bound


def test_a_lone_message_is_sent_as_it_is():
    lone = envelope_like(300)
    assert pack([lone], BOUND) == [lone]
    assert pack([], BOUND) == []


def test_many_small_messages_share_datagrams_up_to_the_count_bound():
    msgs = [envelope_like(200) for _ in range(150)]
    datagrams = pack(msgs, BOUND)
    assert [len(split(d, BOUND)) for d in datagrams] == [64, 64, 22]
    assert unpacked(datagrams) == msgs


def test_messages_that_do_not_fit_together_go_alone():
    big = [envelope_like(BOUND // 2 + 1) for _ in range(3)]
    assert pack(big, BOUND) == big
    # A message at the bound never shares a datagram, and never grows.
    full = envelope_like(BOUND)
    small = envelope_like(100)
    assert pack([small, full, small], BOUND) == [small, full, small]


def good_bundle(n: int = 3) -> bytes:
    return bundle([envelope_like(150) for _ in range(n)])


REFUSED = {
    # name: (datagram, reason)
    "mark only": (BUNDLE_MARK_BYTE, "bad_bundle"),
    "not an array": (BUNDLE_MARK_BYTE + msgspec.msgpack.encode({"a": 1}), "bad_bundle"),
    "truncated": (good_bundle()[:-10], "bad_bundle"),
    "trailing bytes": (good_bundle() + b"\x00", "bad_bundle"),
    "an item that is not bytes": (BUNDLE_MARK_BYTE + msgspec.msgpack.encode([b"\x99ab", "\x99cd"]), "bad_bundle"),
    "an item that is not an envelope": (bundle([envelope_like(50), b"\xa7" + os.urandom(60)]), "bad_bundle"),
    "an empty item": (bundle([envelope_like(50), b""]), "bad_bundle"),
    "a header longer than needed": (BUNDLE_MARK_BYTE + b"\xdc\x00\x02" + msgspec.msgpack.encode([b"\x99a", b"\x99b"])[1:], "bad_bundle"),
    "a bundle inside a bundle": (bundle([envelope_like(50), good_bundle(2)]), "nested_bundle"),
    "one item": (bundle([envelope_like(50)]), "bundle_count"),
    "no item": (bundle([]), "bundle_count"),
    "more items than the bound": (bundle([envelope_like(20) for _ in range(BUNDLE_MESSAGES_MAX + 1)]), "bundle_count"),
    "a count far beyond the items": (BUNDLE_MARK_BYTE + b"\xdc\xff\xff" + b"\xc4\x02\x99a", "bundle_count"),
    "over the datagram bound": (bundle([envelope_like(BOUND // 2) for _ in range(2)]), "oversized"),
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_a_bad_bundle_is_refused_with_its_reason(name):
    data, reason = REFUSED[name]
    assert is_bundle(data)
    with pytest.raises(BundleError) as caught:
        split(data, BOUND)
    assert caught.value.reason == reason


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_garbage_after_the_mark_is_refused_with_a_reason_never_another_error(tail):
    try:
        items = split(BUNDLE_MARK_BYTE + tail, BOUND)
    except BundleError as exc:
        assert exc.reason in {"bad_bundle", "nested_bundle", "bundle_count", "oversized"}
    else:  # only a valid frame is accepted: it is what the sender would have made of its items
        assert bundle(items) == BUNDLE_MARK_BYTE + tail and all(i[:1] == b"\x99" for i in items)


def test_an_envelope_and_a_token_tag_are_not_bundles():
    assert not is_bundle(b"\x99" + os.urandom(40))
    assert not is_bundle(b"\xa7" + os.urandom(40))
    assert not is_bundle(b"")
