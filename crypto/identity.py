"""Ed25519 identities: created once per data directory, reused after restarts.

A node id is the 160-bit BLAKE2b hash of the public key, so nobody can pick an
id without holding the matching private key, and ids fit Kademlia's 160-bit
keyspace.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

import nacl.bindings
import nacl.exceptions
import nacl.signing

from workmesh.crypto.canonical import signing_bytes
from workmesh.crypto.errors import BadSignature, CryptoError

KEY_FILE = "identity.key"
NODE_ID_BYTES = 20
PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64
MAC_BYTES = 16
PAIR_KEYS_MAX = 16384


# What is derived from a public key is computed once per process: a node id is
# asked for on every datagram and fact, and an X25519 conversion (about 100 us,
# more than the X25519 itself) for every pair key, by every identity of a
# process that runs many (the simulator). Bounded; emptied when full.
_DERIVED_MAX = 16384
_node_ids: dict[bytes, bytes] = {}
_x25519_keys: dict[bytes, bytes] = {}


def node_id_of(public_key: bytes) -> bytes:
    """The 160-bit node id that belongs to ``public_key``."""
    node_id = _node_ids.get(public_key) if type(public_key) is bytes else None
    if node_id is None:
        node_id = hashlib.blake2b(public_key, digest_size=NODE_ID_BYTES).digest()
        if type(public_key) is bytes and len(public_key) == PUBLIC_KEY_BYTES:
            if len(_node_ids) >= _DERIVED_MAX:
                _node_ids.clear()
            _node_ids[public_key] = node_id
    return node_id


def _x25519_of(public_key: bytes) -> bytes:
    """The X25519 public key of an Ed25519 one; raise :class:`BadSignature` if it has none."""
    converted = _x25519_keys.get(public_key)
    if converted is None:
        try:
            converted = bytes(nacl.signing.VerifyKey(public_key).to_curve25519_public_key())
        except Exception:
            raise BadSignature("not a usable Ed25519 public key") from None
        if len(_x25519_keys) >= _DERIVED_MAX:
            _x25519_keys.clear()
        _x25519_keys[public_key] = converted
    return converted


def puzzle_bits(public_key: bytes) -> int:
    """Leading zero bits of BLAKE2b(person="workmesh-puzzle", public key), 0..64.

    The identity puzzle: a mesh can require a number of bits so that making
    many identities costs work (each bit doubles it). Not the node id's hash,
    so the ids of identities that solved it still spread over the keyspace.
    """
    digest = hashlib.blake2b(public_key, digest_size=8, person=b"workmesh-puzzle").digest()
    return 64 - int.from_bytes(digest, "big").bit_length()


class _VerifiedCache:
    """A bounded memory of signatures that already verified.

    The same fact reaches a node several times (gossip, repair, a result that
    carries the grants it depends on); verifying it once is enough. Only
    successes are cached, keyed by everything the check depends on.
    """

    def __init__(self, size_max: int = 65536) -> None:
        self._entries: OrderedDict[tuple[bytes, bytes, bytes], None] = OrderedDict()
        self._size_max = size_max
        self.hits = 0
        self.misses = 0

    def seen(self, key: tuple[bytes, bytes, bytes]) -> bool:
        if key in self._entries:
            self._entries.move_to_end(key)
            self.hits += 1
            return True
        self.misses += 1
        return False

    def add(self, key: tuple[bytes, bytes, bytes]) -> None:
        self._entries[key] = None
        if len(self._entries) > self._size_max:
            self._entries.popitem(last=False)


_cache = _VerifiedCache()
# Process-wide counts of the expensive operations (docs/performance.md: cost per job).
# facts_signed / facts_verified: the facts those signatures cover and the facts
# whose batch signature was checked (a batch's facts share one signature, so
# facts_verified - verifications is what the cache saved: verify_cache_hits).
_ops = {"signatures": 0, "verifications": 0, "macs": 0, "facts_signed": 0, "facts_verified": 0}


def verify_statistics() -> dict[str, int]:
    """Counters of the process-wide verification cache and of crypto operations."""
    return {"verify_cache_hits": _cache.hits, "verify_cache_misses": _cache.misses, **_ops}


def forget_verified() -> None:
    """Empty the cache of verified signatures (benchmarks and tests: the next check verifies)."""
    _cache._entries.clear()


def count_facts(*, signed: int = 0, verified: int = 0) -> None:
    """Count facts signed under one batch signature, and facts whose signature was checked."""
    _ops["facts_signed"] += signed
    _ops["facts_verified"] += verified


def verify(domain: str, public_key: bytes, fields: list | tuple, signature: bytes, *, checked: bool = False) -> None:
    """Check ``signature`` over ``[domain, *fields]``; raise :class:`BadSignature`.

    ``checked``: the fields were decoded canonically (see ``signing_bytes``).
    """
    verify_bytes(public_key, signing_bytes(domain, fields, checked=checked), signature, domain)


def verify_bytes(public_key: bytes, message: bytes, signature: bytes, domain: str = "") -> None:
    """Check ``signature`` over ``message``, the exact ``signing_bytes``; raise :class:`BadSignature`."""
    if len(public_key) != PUBLIC_KEY_BYTES or len(signature) != SIGNATURE_BYTES:
        raise BadSignature("malformed key or signature length")
    key = (public_key, signature, message)
    if _cache.seen(key):
        return
    _ops["verifications"] += 1
    try:
        nacl.signing.VerifyKey(public_key).verify(message, signature)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.CryptoError, ValueError):
        raise BadSignature(f"bad signature for {domain or 'message'}") from None
    _cache.add(key)


class Identity:
    """A node's key pair and the id derived from it."""

    def __init__(self, signing_key: nacl.signing.SigningKey) -> None:
        self._signing_key = signing_key
        self.public_key: bytes = bytes(signing_key.verify_key)
        self.node_id: bytes = node_id_of(self.public_key)
        self._x25519 = bytes(signing_key.to_curve25519_private_key())
        self._pair_keys: OrderedDict[bytes, tuple[bytes, Any]] = OrderedDict()  # peer key: (pair key, keyed hash)

    @classmethod
    def generate(cls, puzzle: int = 0) -> Identity:
        """A new identity whose key solves the identity puzzle of ``puzzle`` bits."""
        while True:
            key = nacl.signing.SigningKey.generate()
            if puzzle <= 0 or puzzle_bits(bytes(key.verify_key)) >= puzzle:
                return cls(key)

    @classmethod
    def from_seed(cls, seed: bytes) -> Identity:
        """A deterministic identity (simulator and tests)."""
        if len(seed) != 32:
            raise CryptoError("an identity seed is 32 bytes")
        return cls(nacl.signing.SigningKey(seed))

    @classmethod
    def load_or_create(cls, data_dir: str | os.PathLike[str], puzzle: int = 0) -> Identity:
        """Load the identity of ``data_dir``, creating it (mode 0600, solving a
        ``puzzle`` of that many bits) on first use."""
        path = Path(data_dir) / KEY_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            seed = path.read_bytes()
        except FileNotFoundError:
            identity = cls.generate(puzzle)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(bytes(identity._signing_key))
                handle.flush()
                os.fsync(handle.fileno())
            return identity
        if len(seed) != 32:
            raise CryptoError(f"{path} is not a workmesh identity (expected 32 bytes)")
        return cls.from_seed(seed)

    def sign(self, domain: str, fields: list | tuple) -> bytes:
        """Sign ``[domain, *fields]`` canonically; returns the 64-byte signature."""
        message = signing_bytes(domain, fields)
        signature = self._signing_key.sign(message).signature
        _ops["signatures"] += 1
        _cache.add((self.public_key, signature, message))  # our own: no need to verify it when it comes back
        return signature

    def pair_key(self, peer_public_key: bytes) -> bytes:
        """A symmetric key only this node and the holder of ``peer_public_key`` can compute.

        X25519 between our key and theirs (both converted from Ed25519), hashed
        with both public keys. It authenticates RPC envelopes between two
        identities for the cost of a hash, where a signature and its
        verification cost about 120 us per message. Cached per peer, bounded.
        """
        return self._pair(peer_public_key)[0]

    def _pair(self, peer_public_key: bytes) -> tuple[bytes, Any]:
        """The pair key and a BLAKE2b keyed with it, ready to copy (a keyed hash costs its key's setup once)."""
        pair = self._pair_keys.get(peer_public_key)
        if pair is not None:
            self._pair_keys.move_to_end(peer_public_key)
            return pair
        peer = _x25519_of(peer_public_key)
        try:
            shared = nacl.bindings.crypto_scalarmult(self._x25519, peer)
        except Exception:
            raise BadSignature("not a usable Ed25519 public key") from None
        if shared == bytes(32):
            raise BadSignature("low-order public key")
        lo, hi = sorted((self.public_key, peer_public_key))
        key = hashlib.blake2b(shared + lo + hi, digest_size=32, person=b"workmesh-pair1").digest()
        pair = (key, hashlib.blake2b(key=key, digest_size=MAC_BYTES))
        self._pair_keys[peer_public_key] = pair
        if len(self._pair_keys) > PAIR_KEYS_MAX:
            self._pair_keys.popitem(last=False)
        return pair

    def knows_pair(self, peer_public_key: bytes) -> bool:
        """Is the pair key with this peer cached (a MAC check then costs a hash, not an X25519)?"""
        return peer_public_key in self._pair_keys

    def mac(self, peer_public_key: bytes, domain: str, fields: list | tuple, *, checked: bool = False) -> bytes:
        """Authenticate ``[domain, *fields]`` for the pair (us, peer)."""
        return self.mac_bytes(peer_public_key, signing_bytes(domain, fields, checked=checked))

    def mac_bytes(self, peer_public_key: bytes, message: bytes) -> bytes:
        """The pair's MAC of ``message``, already encoded (``signing_bytes`` or the same bytes)."""
        _ops["macs"] += 1
        h = self._pair(peer_public_key)[1].copy()
        h.update(message)
        return h.digest()

    def check_mac(self, peer_public_key: bytes, domain: str, fields: list | tuple, tag: bytes) -> None:
        """Raise :class:`BadSignature` unless ``tag`` is the pair's MAC of the (decoded) fields."""
        self.check_mac_bytes(peer_public_key, signing_bytes(domain, fields, checked=True), tag, domain)

    def check_mac_bytes(self, peer_public_key: bytes, message: bytes, tag: bytes, domain: str = "") -> None:
        """Raise :class:`BadSignature` unless ``tag`` is the pair's MAC of ``message``."""
        if not hmac.compare_digest(self.mac_bytes(peer_public_key, message), tag):
            raise BadSignature(f"bad MAC for {domain or 'message'}")

    @property
    def short_id(self) -> str:
        return self.node_id.hex()[:12]

    def __repr__(self) -> str:
        return f"Identity({self.short_id})"
