"""A blob's manifest: what names a blob and lists its chunks. Pure code.

A blob of ``size`` bytes is cut into chunks of ``chunk_bytes`` (the last may be
shorter); each chunk is stored under the SHA-256 of its bytes. The manifest
is the msgpack array::

    ["workmesh-blob", 1, size, chunk_bytes, "chunks" | "parts", keys]

where ``keys`` is the concatenation of 32-byte keys. With ``"chunks"`` they
are the data chunks in order. A blob with too many chunks for one manifest
(past about 70 MiB with 48 KiB chunks) lists ``"parts"`` instead: chunks whose
bytes are, concatenated in order, the data chunk keys. The manifest is itself
stored as a chunk, and **the blob's hash is the manifest's key** (the SHA-256
of the manifest bytes): one hash names the whole blob and proves every byte of it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import msgpack

from workmesh.dht.chunks import CHUNK_BYTES_MAX, KEY_BYTES

MAGIC = "workmesh-blob"
VERSION = 1
CHUNKS, PARTS = "chunks", "parts"
# Keys listed inline in a manifest, at most (leaves room for the header).
INLINE_KEYS_MAX = (CHUNK_BYTES_MAX - 256) // KEY_BYTES
PART_KEYS = CHUNK_BYTES_MAX // KEY_BYTES


class ManifestError(ValueError):
    """Not a manifest (or one this version cannot read)."""


@dataclass(frozen=True, slots=True)
class Manifest:
    size: int
    chunk_bytes: int
    kind: str  # CHUNKS or PARTS
    keys: tuple[bytes, ...]

    def encode(self) -> bytes:
        return msgpack.packb([MAGIC, VERSION, self.size, self.chunk_bytes, self.kind, b"".join(self.keys)])

    @property
    def chunk_count(self) -> int:
        return -(-self.size // self.chunk_bytes) if self.size else 0


def split_keys(raw: bytes) -> tuple[bytes, ...]:
    if len(raw) % KEY_BYTES:
        raise ManifestError("key list is not a whole number of keys")
    return tuple(raw[i : i + KEY_BYTES] for i in range(0, len(raw), KEY_BYTES))


def decode(data: bytes) -> Manifest:
    try:
        doc = msgpack.unpackb(data, raw=False)
    except Exception as exc:
        raise ManifestError(f"not msgpack: {exc}") from None
    if not (isinstance(doc, list) and len(doc) == 6 and doc[0] == MAGIC and doc[1] == VERSION):
        raise ManifestError("not a workmesh blob manifest")
    _, _, size, chunk_bytes, kind, raw = doc
    if not (isinstance(size, int) and size >= 0 and isinstance(chunk_bytes, int) and 0 < chunk_bytes <= CHUNK_BYTES_MAX):
        raise ManifestError("bad size or chunk size")
    if kind not in (CHUNKS, PARTS) or not isinstance(raw, bytes):
        raise ManifestError("bad key list")
    manifest = Manifest(size, chunk_bytes, kind, split_keys(raw))
    if kind == CHUNKS and len(manifest.keys) != manifest.chunk_count:
        raise ManifestError("chunk count does not match the size")
    return manifest


def build(size: int, chunk_bytes: int, keys: list[bytes]) -> tuple[Manifest, list[bytes]]:
    """The manifest for these data chunk keys, and the part chunks it needs (to store first)."""
    if len(keys) <= INLINE_KEYS_MAX:
        return Manifest(size, chunk_bytes, CHUNKS, tuple(keys)), []
    flat = b"".join(keys)
    step = PART_KEYS * KEY_BYTES
    parts = [flat[i : i + step] for i in range(0, len(flat), step)]
    from workmesh.dht.chunks import chunk_key

    return Manifest(size, chunk_bytes, PARTS, tuple(chunk_key(p) for p in parts)), parts


def chunk_span(manifest: Manifest, start: int, end: int) -> tuple[int, int]:
    """The chunk indexes ``[first, last]`` holding bytes ``start..end`` (inclusive)."""
    return start // manifest.chunk_bytes, end // manifest.chunk_bytes


_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


class RangeNotSatisfiable(ValueError):
    pass


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """One ``Range: bytes=a-b`` (inclusive) as ``(start, end)``; None for no
    (or an unsupported, e.g. multi-part) range, which means the whole blob.
    Raises :class:`RangeNotSatisfiable` for a range past the end."""
    if not header:
        return None
    m = _RANGE.match(header.strip())
    if m is None:
        return None
    first, last = m.groups()
    if not first and not last:
        return None
    if not first:  # the last n bytes
        n = int(last)
        if n == 0 or size == 0:
            raise RangeNotSatisfiable(header)
        return max(0, size - n), size - 1
    start = int(first)
    end = int(last) if last else size - 1
    if start >= size or end < start:
        raise RangeNotSatisfiable(header)
    return start, min(end, size - 1)
