"""Mesh keys: a pre-shared 256-bit key that makes a mesh private.

As in libp2p's private networks and Serf's gossip keyring, every datagram
between members carries a MAC under the mesh key; a datagram without a valid
one is dropped before anything else looks at it (before its body is decoded,
before any signature is verified), so a stranger costs one keyed BLAKE2b of
its datagram (about 1 us for a small one) and learns nothing.

Wire form: ``datagram = tag(16 bytes) || body``, ``tag = BLAKE2b-128(key=mesh
key, person="workmesh-mesh1", body)``. The tag covers the whole body.

A :class:`MeshKeyring` holds the current key and, during a rotation, more
keys it also accepts: it seals with the current key and opens with any of
them (tried current first). Rotation (docs/operations.md): add the new key as
an accepted key on every node, then make it current everywhere, then drop the
old one; at no step do two nodes stop understanding each other.

Key file: the key in hex on its first line; further non-empty lines are
keys accepted besides it (rotation). Written with mode 0600.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path

from workmesh.crypto.errors import CryptoError

MESH_KEY_BYTES = 32
MESH_TAG_BYTES = 16
_PERSON = b"workmesh-mesh1"


class MeshKeyring:
    """The current mesh key and the others accepted during a rotation."""

    def __init__(self, current: bytes, accepted: tuple[bytes, ...] | list[bytes] = ()) -> None:
        keys = [current, *[k for k in accepted if k != current]]
        for key in keys:
            if not isinstance(key, bytes) or len(key) != MESH_KEY_BYTES:
                raise CryptoError(f"a mesh key is {MESH_KEY_BYTES} bytes")
        self.keys: tuple[bytes, ...] = tuple(keys)
        # Key objects are built once: the per-datagram cost is one copy and one update.
        self._hashers = tuple(hashlib.blake2b(key=k, digest_size=MESH_TAG_BYTES, person=_PERSON) for k in keys)

    @property
    def current(self) -> bytes:
        return self.keys[0]

    def _tag(self, index: int, body: bytes) -> bytes:
        h = self._hashers[index].copy()
        h.update(body)
        return h.digest()

    def seal(self, body: bytes) -> bytes:
        """``body`` with the current key's tag in front."""
        return self._tag(0, body) + body

    def open(self, datagram: bytes) -> bytes | None:
        """The body of ``datagram`` if a key of the ring authenticates it, else ``None``."""
        if len(datagram) <= MESH_TAG_BYTES:
            return None
        tag, body = datagram[:MESH_TAG_BYTES], datagram[MESH_TAG_BYTES:]
        for i in range(len(self._hashers)):
            if hmac.compare_digest(self._tag(i, body), tag):
                return body
        return None

    def __repr__(self) -> str:  # never print key material
        return f"MeshKeyring({len(self.keys)} keys)"


def new_mesh_key() -> bytes:
    return os.urandom(MESH_KEY_BYTES)


def write_mesh_key_file(path: str | os.PathLike[str], key: bytes | None = None) -> bytes:
    """Write a new (or the given) mesh key to ``path`` with mode 0600; refuse
    to overwrite an existing file (:class:`FileExistsError`)."""
    key = key or new_mesh_key()
    fd = os.open(Path(path), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(key.hex() + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    return key


def load_mesh_keyring(path: str | os.PathLike[str]) -> MeshKeyring:
    """Read a key file: the current key on the first line, accepted keys after it."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise CryptoError(f"cannot read mesh key file {path}: {exc.strerror or exc}") from None
    keys = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            key = bytes.fromhex(line)
        except ValueError:
            raise CryptoError(f"{path}:{n}: not a hex mesh key") from None
        if len(key) != MESH_KEY_BYTES:
            raise CryptoError(f"{path}:{n}: a mesh key is {MESH_KEY_BYTES} bytes ({2 * MESH_KEY_BYTES} hex digits)")
        keys.append(key)
    if not keys:
        raise CryptoError(f"{path} holds no mesh key")
    return MeshKeyring(keys[0], keys[1:])
