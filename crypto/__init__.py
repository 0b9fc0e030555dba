"""Identity, canonical encoding and signatures for workmesh.

Everything signed in workmesh goes through this package: one canonical
encoding (msgpack arrays, no maps, no floats) and one domain tag per purpose,
so that a signature made for one kind of message can never be replayed as
another kind.
"""

from workmesh.crypto.canonical import canonical_pack, canonical_unpack, signing_bytes
from workmesh.crypto.errors import BadSignature, CryptoError, EncodingError
from workmesh.crypto.identity import Identity, node_id_of, verify

__all__ = [
    "BadSignature",
    "CryptoError",
    "EncodingError",
    "Identity",
    "canonical_pack",
    "canonical_unpack",
    "node_id_of",
    "signing_bytes",
    "verify",
]
