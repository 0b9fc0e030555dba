"""Merkle trees over 32-byte leaf hashes: one signature for many records. Pure.

The tree has the shape of RFC 9162 (Certificate Transparency v2): ``n`` leaves
split at the largest power of two below ``n``, so any count works without
padding, and an inclusion proof is the list of sibling hashes from the leaf
up. The leaves are hashes their producer computed in its own domain (a fact
id is a BLAKE2b personalised ``wm-fact-v2``); an inner node is a BLAKE2b
personalised ``wm-merkle-node``, so no inner node can pass for a leaf or the
other way round.
"""

from __future__ import annotations

import hashlib

HASH_BYTES = 32
_NODE_PERSON = b"wm-merkle-node"


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.blake2b(left + right, digest_size=HASH_BYTES, person=_NODE_PERSON).digest()


def proof_length(index: int, count: int) -> int:
    """How many siblings the inclusion proof of leaf ``index`` of ``count`` has."""
    length = 0
    while count > 1:
        split = 1 << ((count - 1).bit_length() - 1)  # the largest power of two below count
        if index < split:
            count = split
        else:
            index, count = index - split, count - split
        length += 1
    return length


def build(leaves: list[bytes]) -> tuple[bytes, list[list[bytes]]]:
    """The root of ``leaves`` (at least one) and each leaf's inclusion proof, siblings from the leaf up."""
    n = len(leaves)
    if n == 0:
        raise ValueError("a Merkle tree has at least one leaf")
    if n == 1:
        return leaves[0], [[]]
    split = 1 << ((n - 1).bit_length() - 1)
    left, left_proofs = build(leaves[:split])
    right, right_proofs = build(leaves[split:])
    for proof in left_proofs:
        proof.append(right)
    for proof in right_proofs:
        proof.append(left)
    return node_hash(left, right), left_proofs + right_proofs


def root_of(leaf: bytes, index: int, count: int, siblings: list[bytes] | tuple[bytes, ...]) -> bytes | None:
    """The root that ``siblings`` prove ``leaf`` at ``index`` of ``count`` under, or None
    when the proof does not have the shape the index and count call for (RFC 9162, 2.1.3.2)."""
    if not 0 <= index < count:
        return None
    fn, sn, r = index, count - 1, leaf
    for p in siblings:
        if sn == 0:
            return None  # more siblings than the tree has levels
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return r if sn == 0 else None
