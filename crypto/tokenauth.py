"""Authorization inside the protocol: proof that a node holds the API token.

The operator's nodes share the API token. A key derived from it (the *token
key*, BLAKE2b-256 keyed by nothing, personalised "workmesh-token1", of the
token's UTF-8 bytes; the token itself never leaves the node) tags every
datagram such a node sends, the way the mesh key does (crypto/meshkey.py):
``0xA7 || tag(16) || body`` with ``tag = BLAKE2b-128(key=token key, body)``.
0xA7 cannot start an envelope (those start with 0x99), so a node without a
token still reads a tagged datagram (it strips the tag unread).

The tag covers the whole envelope (sender key, target, message id, time), so
it cannot be moved to another message, and a replay is the envelope's replay.
A receiver that holds the token marks the envelope ``authorized`` when the tag
checks; requests that act (storing facts, announcing jobs, asking a submitter
to cancel) and replies that carry facts are then accepted only authorized
(``dht/protocol.py``). Nodes without the token still route in an open mesh;
they cannot make a token holder store, run or cancel anything.
"""

from __future__ import annotations

import hashlib

from workmesh.crypto.meshkey import MESH_TAG_BYTES, MeshKeyring

TOKEN_MARK = 0xA7
TOKEN_PREFIX_BYTES = 1 + MESH_TAG_BYTES


def token_key(token: str) -> bytes:
    """The 256-bit key derived from an API token (never the token itself on the wire)."""
    return hashlib.blake2b(token.encode("utf-8"), digest_size=32, person=b"workmesh-token1").digest()


class TokenTagger:
    """Adds and checks the token tag; ``keys``: the current token's key first."""

    def __init__(self, keys: tuple[bytes, ...]) -> None:
        self._ring = MeshKeyring(keys[0], keys[1:])

    def tag(self, body: bytes) -> bytes:
        return bytes([TOKEN_MARK]) + self._ring.seal(body)

    def check(self, tagged: bytes) -> bytes | None:
        """The body if ``tagged`` (mark already seen) carries a valid tag, else None."""
        return self._ring.open(tagged[1:])


def split(data: bytes) -> tuple[bytes, bytes | None]:
    """(body, the tagged form or None): strip a token tag if the datagram has one."""
    if data[:1] == bytes([TOKEN_MARK]) and len(data) > TOKEN_PREFIX_BYTES:
        return data[TOKEN_PREFIX_BYTES:], data
    return data, None
