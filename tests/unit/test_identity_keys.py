"""What identities derive from public keys (node ids, pair keys, MACs) is the same cached or not."""

from __future__ import annotations

import hashlib

import pytest

import workmesh.crypto.identity as ci
from workmesh.crypto.errors import BadSignature
from workmesh.crypto.identity import MAC_BYTES, NODE_ID_BYTES, Identity, node_id_of

ALICE, BOB, CAROL = (Identity.from_seed(bytes([40 + i]) * 32) for i in range(3))


def test_a_node_id_is_the_hash_of_the_key_each_time_it_is_asked():
    expected = hashlib.blake2b(ALICE.public_key, digest_size=NODE_ID_BYTES).digest()
    assert node_id_of(ALICE.public_key) == node_id_of(ALICE.public_key) == expected == ALICE.node_id
    assert node_id_of(bytearray(ALICE.public_key)) == expected
    assert node_id_of(b"not a key") == hashlib.blake2b(b"not a key", digest_size=NODE_ID_BYTES).digest()


def test_both_sides_derive_one_pair_key_and_the_same_macs_after_the_caches_are_emptied():
    key = ALICE.pair_key(BOB.public_key)
    assert key == BOB.pair_key(ALICE.public_key) != ALICE.pair_key(CAROL.public_key)
    message = b"a datagram's signed bytes"
    tag = ALICE.mac_bytes(BOB.public_key, message)
    assert tag == hashlib.blake2b(message, key=key, digest_size=MAC_BYTES).digest()
    assert ALICE.mac_bytes(BOB.public_key, b"another") != tag
    ci._x25519_keys.clear()
    ci._node_ids.clear()
    fresh = Identity.from_seed(bytes([42]) * 32)  # Carol again, with no pair keys yet
    assert fresh.pair_key(ALICE.public_key) == ALICE.pair_key(CAROL.public_key)
    BOB.check_mac_bytes(ALICE.public_key, message, tag)
    with pytest.raises(BadSignature):
        CAROL.check_mac_bytes(ALICE.public_key, message, tag)


def test_a_key_of_low_order_or_off_the_curve_has_no_pair_key():
    for bad in (bytes(32), b"\x01" + bytes(31)):
        with pytest.raises(BadSignature):
            ALICE.pair_key(bad)
        assert not ALICE.knows_pair(bad)
