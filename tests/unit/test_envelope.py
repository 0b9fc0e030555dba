"""The signed RPC envelope: sealing, opening, replay detection, third-party contacts.

``open_envelope`` runs on every datagram from anyone, so besides the round
trips the properties that matter are: it raises nothing but
:class:`EnvelopeError`, and no change to a sealed envelope survives it.
"""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workmesh.crypto import domains
from workmesh.crypto.canonical import canonical_pack
from workmesh.crypto.identity import NODE_ID_BYTES, Identity, node_id_of
from workmesh.dht.envelope import (
    MSG_ID_BYTES,
    TARGET_HINT_BYTES,
    REPLY,
    REQUEST,
    Envelope,
    EnvelopeError,
    ReplayGuard,
    check_contact,
    pack_contact,
    open_envelope,
    seal,
)

ALICE = Identity.from_seed(b"\xa1" * 32)
BOB = Identity.from_seed(b"\xb0" * 32)
CAROL = Identity.from_seed(b"\xc0" * 32)
MAX = 60_000
NOW = 1_700_000_000_000
MID = b"\x07" * MSG_ID_BYTES


def signed(args=(1, b"x", "y", None, True, [2, [3]]), method="find_node", kind=REQUEST, target=b"") -> bytes:
    return seal(ALICE, kind, MID, NOW, target, method, list(args))


def maced(args=(1, b"x"), method="store", kind=REQUEST) -> bytes:
    return seal(ALICE, kind, MID, NOW, BOB.node_id, method, list(args), BOB.public_key)


def reason(data: bytes, identity: Identity | None = BOB, max_len: int = MAX) -> str:
    with pytest.raises(EnvelopeError) as caught:
        open_envelope(data, datagram_bytes_max=max_len, identity=identity)
    return caught.value.reason


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("target", [b"", BOB.node_id])
def test_a_signed_envelope_opens_to_what_was_sealed(target):
    env = open_envelope(signed(target=target), datagram_bytes_max=MAX)
    assert env == Envelope(REQUEST, MID, ALICE.public_key, ALICE.node_id, NOW, target, "find_node",
                           [1, b"x", "y", None, True, [2, [3]]])


def test_a_maced_envelope_opens_only_for_its_recipient():
    data = maced(kind=REPLY)
    env = open_envelope(data, datagram_bytes_max=MAX, identity=BOB)
    assert (env.kind, env.sender_id, env.target_id, env.args) == (REPLY, ALICE.node_id, BOB.node_id, [1, b"x"])
    assert len(data) < len(signed(args=(1, b"x"), method="store"))  # 16-byte MAC instead of a 64-byte signature
    assert reason(data, identity=CAROL) == "misdirected"
    assert reason(data, identity=None) == "misdirected"


def test_a_mac_made_for_another_pair_does_not_open():
    fields = [1, REQUEST, MID, ALICE.public_key, NOW, BOB.node_id[:TARGET_HINT_BYTES], "ping", []]
    tag = CAROL.mac(BOB.public_key, domains.RPC, fields)  # Carol's pair key with Bob, claiming to be Alice
    assert reason(canonical_pack([*fields, tag])) == "bad_signature"


def test_a_maced_envelope_names_its_recipient_by_a_4_byte_hint_the_mac_covers():
    data = maced()
    assert BOB.node_id[:TARGET_HINT_BYTES] in data and BOB.node_id not in data
    whole = [1, REQUEST, MID, ALICE.public_key, NOW, BOB.node_id, "store", [1, b"x"]]
    with_id = canonical_pack([*whole, ALICE.mac(BOB.public_key, domains.RPC, whole)])
    assert len(with_id) - len(data) == NODE_ID_BYTES - TARGET_HINT_BYTES  # 16 bytes a message
    assert reason(with_id) == "malformed"  # one form only: a MAC'd envelope carries the hint
    # The hint is covered: another recipient's hint under Bob's pair key does not open.
    other = [*whole[:5], CAROL.node_id[:TARGET_HINT_BYTES], *whole[6:]]
    hinted = [*whole[:5], BOB.node_id[:TARGET_HINT_BYTES], *whole[6:]]
    swapped = canonical_pack([*hinted, ALICE.mac(BOB.public_key, domains.RPC, other)])
    assert reason(swapped) == "bad_signature"
    # A signed envelope still names the whole id, or none (a first ping).
    assert reason(canonical_pack([*hinted, ALICE.sign(domains.RPC, hinted)])) == "malformed"


def test_the_sender_id_comes_from_the_key_never_from_an_argument():
    fields = [1, REQUEST, MID, BOB.public_key, NOW, b"", "ping", [ALICE.node_id]]
    forged = canonical_pack([*fields, ALICE.sign(domains.RPC, fields)])  # Alice signs, claims Bob's key
    assert reason(forged) == "bad_signature"


def test_a_signature_from_another_domain_is_refused():
    fields = [1, REQUEST, MID, ALICE.public_key, NOW, b"", "ping", []]
    assert reason(canonical_pack([*fields, ALICE.sign(domains.SUBMIT, fields)])) == "bad_signature"


def test_bounds_and_versions():
    assert reason(signed(), max_len=len(signed()) - 1) == "oversized"
    fields = [2, REQUEST, MID, ALICE.public_key, NOW, b"", "ping", []]
    assert reason(canonical_pack([*fields, ALICE.sign(domains.RPC, fields)])) == "bad_version"
    assert reason(seal(ALICE, REQUEST, MID, NOW, b"", "m" * 33, [])) == "malformed"
    assert reason(seal(ALICE, 7, MID, NOW, b"", "ping", [])) == "malformed"
    assert reason(seal(ALICE, REQUEST, MID[:-1], NOW, b"", "ping", [])) == "malformed"
    assert reason(seal(ALICE, REQUEST, MID, -1, b"", "ping", [])) == "malformed"
    assert reason(seal(ALICE, REQUEST, MID, NOW, b"\x01" * 19, "ping", [])) == "malformed"
    assert reason(canonical_pack([1, REQUEST, MID, ALICE.public_key, NOW, b"", "ping", []])) == "malformed"
    assert reason(b"") == "malformed"


# --------------------------------------------------------------------------- hostile input


@settings(max_examples=500)
@given(st.binary(max_size=400))
def test_random_bytes_raise_only_envelope_error(data):
    try:
        open_envelope(data, datagram_bytes_max=MAX, identity=BOB)
    except EnvelopeError:
        pass


canonical_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=40) | st.binary(max_size=40),
    lambda inner: st.lists(inner, max_size=10),
    max_leaves=30,
)


@settings(max_examples=300)
@given(st.lists(canonical_values, min_size=0, max_size=11))
def test_any_canonical_array_raises_only_envelope_error(outer):
    try:
        open_envelope(canonical_pack(outer), datagram_bytes_max=MAX, identity=BOB)
    except EnvelopeError:
        pass


sealed = st.sampled_from([signed(), maced(), signed(target=BOB.node_id), maced(kind=REPLY)])


@settings(max_examples=1000)
@given(sealed, st.data())
def test_no_single_byte_change_survives(data, draw):
    index = draw.draw(st.integers(0, len(data) - 1))
    delta = draw.draw(st.integers(1, 255))
    changed = data[:index] + bytes([data[index] ^ delta]) + data[index + 1:]
    with pytest.raises(EnvelopeError):
        open_envelope(changed, datagram_bytes_max=MAX, identity=BOB)


@given(sealed, st.data())
def test_no_truncation_or_extension_survives(data, draw):
    cut = draw.draw(st.integers(0, len(data) - 1))
    with pytest.raises(EnvelopeError):
        open_envelope(data[:cut], datagram_bytes_max=MAX, identity=BOB)
    with pytest.raises(EnvelopeError):
        open_envelope(data + draw.draw(st.binary(min_size=1, max_size=8)), datagram_bytes_max=MAX, identity=BOB)


# --------------------------------------------------------------------------- replay guard


def env(sender: Identity = ALICE, msg_id: bytes = MID, ts_ms: int = NOW) -> Envelope:
    return Envelope(REQUEST, msg_id, sender.public_key, sender.node_id, ts_ms, b"", "ping", [])


def test_replay_guard_drops_repeats_per_sender():
    guard = ReplayGuard(window_s=60, size_max=100)
    assert guard.check(env(), NOW) is None
    assert guard.check(env(), NOW + 1) == "replayed"
    assert guard.check(env(sender=BOB), NOW + 1) is None  # same id, other sender
    assert guard.check(env(msg_id=b"\x08" * 16), NOW + 1) is None


def test_replay_guard_drops_envelopes_outside_the_window_both_ways():
    guard = ReplayGuard(window_s=60, size_max=100)
    assert guard.check(env(ts_ms=NOW - 60_001), NOW) == "stale"
    assert guard.check(env(ts_ms=NOW + 60_001), NOW) == "stale"
    assert guard.check(env(ts_ms=NOW - 60_000, msg_id=b"\x01" * 16), NOW) is None
    assert guard.check(env(ts_ms=NOW + 60_000, msg_id=b"\x02" * 16), NOW) is None


def test_a_stale_envelope_is_not_remembered():
    guard = ReplayGuard(window_s=60, size_max=100)
    assert guard.check(env(ts_ms=NOW - 120_000), NOW) == "stale"
    assert guard.check(env(ts_ms=NOW), NOW) is None


def test_what_the_guard_is_told_not_to_remember_is_checked_but_not_kept():
    """Replies are not remembered (a reply is accepted once, by its request's
    entry), so a node reading hard does not hold every reply for the window."""
    guard = ReplayGuard(window_s=60, size_max=100)
    assert guard.check(env(ts_ms=NOW - 120_000), NOW, remember=False) == "stale"
    for _ in range(3):
        assert guard.check(env(msg_id=b"\x05" * 16), NOW, remember=False) is None
    assert len(guard._seen) == 0
    assert guard.check(env(msg_id=b"\x05" * 16), NOW) is None
    assert guard.check(env(msg_id=b"\x05" * 16), NOW, remember=False) == "replayed"


def test_replay_guard_memory_is_bounded_oldest_first():
    guard = ReplayGuard(window_s=60, size_max=3)
    ids = [bytes([i]) * 16 for i in range(4)]
    for i, mid in enumerate(ids):
        assert guard.check(env(msg_id=mid), NOW + i) is None
    # The oldest fell out of the bounded memory; the newest three are still known.
    assert guard.check(env(msg_id=ids[0]), NOW + 10) is None
    for mid in ids[2:]:
        assert guard.check(env(msg_id=mid), NOW + 10) == "replayed"


@settings(max_examples=300)
@given(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 5), st.integers(0, 120_000)), max_size=80))
def test_replay_guard_matches_a_model_while_memory_suffices(events):
    """With room for every id, an envelope is accepted iff it is fresh and unseen in the window."""
    guard = ReplayGuard(window_s=60, size_max=1000)
    senders = (ALICE, BOB, CAROL)
    seen: dict[tuple[bytes, bytes], int] = {}
    now = NOW
    for sender, mid, age in events:
        now += 1000
        e = env(sender=senders[sender], msg_id=bytes([mid]) * 16, ts_ms=now - age)
        key = (e.sender_id, e.msg_id)
        got = guard.check(e, now)
        if age > 60_000:
            assert got == "stale"
        elif key in seen and now - seen[key] <= 60_000:
            assert got == "replayed"
        elif key in seen:
            # Seen before the window: the guard may still remember it (memory is
            # swept when something new arrives). Refusing is safe: a genuine new
            # message never reuses a random 16-byte id.
            assert got in (None, "replayed")
            if got is None:
                seen[key] = now
        else:
            assert got is None
            seen[key] = now


# --------------------------------------------------------------------------- third-party contacts


def test_a_contact_packs_to_38_or_50_bytes_and_its_id_comes_from_its_key():
    v4 = pack_contact(BOB.public_key, "127.0.0.1", 4000)
    v6 = pack_contact(BOB.public_key, "::1", 65535)
    assert (len(v4), len(v6)) == (38, 50)  # the old list form was about 70 bytes a contact
    assert check_contact(v4) == (BOB.node_id, "127.0.0.1", 4000, BOB.public_key)
    assert check_contact(v6) == (BOB.node_id, "::1", 65535, BOB.public_key)
    # No id travels: a peer cannot name a made-up id for a real key.
    assert node_id_of(check_contact(v4)[3]) == check_contact(v4)[0]


def test_an_address_without_a_packed_form_is_not_named():
    for ip, port in [("localhost", 4000), ("fe80::1%eth0", 4000), ("", 4000), ("127.0.0.1", 0), ("127.0.0.1", 65536)]:
        assert pack_contact(BOB.public_key, ip, port) is None, (ip, port)


def test_check_contact_refuses_anything_but_a_packed_contact():
    good = pack_contact(BOB.public_key, "127.0.0.1", 4000)
    bad = [
        good[:-1],
        good + b"\x00",
        good[:-2] + b"\x00\x00",  # port 0
        bytearray(good),  # only bytes come off the wire
        [BOB.node_id, "127.0.0.1", 4000, BOB.public_key],  # the old list form
        None,
        "contact",
    ]
    for entry in bad:
        assert check_contact(entry) is None, entry


@given(canonical_values)
def test_check_contact_never_raises_and_never_accepts_a_made_up_id(entry):
    checked = check_contact(entry)
    if checked is not None:
        assert node_id_of(checked[3]) == checked[0]


@given(st.binary(min_size=32, max_size=32), st.ip_addresses(), st.integers(1, 65535))
def test_a_packed_contact_reads_back_as_it_was(key, ip, port):
    entry = pack_contact(key, str(ip), port)
    node_id, text, got_port, got_key = check_contact(entry)
    # The same address (an IPv4-mapped IPv6 one may be spelt another way).
    assert (node_id, ipaddress.ip_address(text), got_port, got_key) == (node_id_of(key), ip, port, key)
