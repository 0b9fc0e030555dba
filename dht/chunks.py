"""The chunk store: content-addressed byte strings on this node's disk.

A chunk's key is the SHA-256 of its bytes, so a chunk proves itself: nothing
enters the store (or leaves it for a reader) without its bytes hashing to
its key, whoever sent them. Chunks are not DHT facts: they are large, opaque
and immutable, so they live in their own store, one file per chunk under
``<data_dir>/chunks/<2 hex>/<64 hex>`` (or in memory for the simulator), and
travel by their own RPCs (``dht/chunknet.py``).

The store owns a disk budget: a put past it is refused with
:class:`BudgetExceeded` and nothing is written. Each chunk carries the time it
was last stored or touched (the file's mtime); :meth:`ChunkStore.collect`
drops chunks untouched for longer than the retention time. Keeping a chunk
alive is the job of whoever references it (``node/blobs.py`` touches the
chunks of every blob a stored job refers to).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable
from pathlib import Path

KEY_BYTES = 32
# The largest chunk: with its envelope it fits one datagram of
# ``DHTConfig.datagram_bytes_max`` (60,000 bytes).
CHUNK_BYTES_MAX = 48 * 1024


class ChunkError(Exception):
    """Base class of the store's refusals; ``code`` travels in RPC replies."""

    code = "error"


class ChunkRejected(ChunkError):
    """The bytes do not hash to the key (or the chunk is malformed)."""

    code = "bad_chunk"


class BudgetExceeded(ChunkError):
    """Storing this chunk would pass the node's disk budget."""

    code = "full"


def chunk_key(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def check_chunk(key: bytes, data: bytes) -> None:
    """Raise :class:`ChunkRejected` unless ``data`` is a chunk stored under ``key``."""
    if not isinstance(key, bytes) or len(key) != KEY_BYTES:
        raise ChunkRejected("a chunk key is 32 bytes")
    if not isinstance(data, bytes) or len(data) > CHUNK_BYTES_MAX:
        raise ChunkRejected(f"a chunk is at most {CHUNK_BYTES_MAX} bytes")
    if chunk_key(data) != key:
        raise ChunkRejected("the bytes do not hash to the key")


class ChunkStore:
    """Chunks on disk (``root``) or in memory (``root=None``), within ``budget_bytes``."""

    def __init__(self, root: str | os.PathLike | None, budget_bytes: int, wall_s: Callable[[], float]) -> None:
        self.root = Path(root) if root is not None else None
        self.budget_bytes = budget_bytes
        self.wall_s = wall_s  # injected wall clock (seconds): touch times and collection
        self._memory: dict[bytes, tuple[bytes, float]] = {}
        self._sizes: dict[bytes, int] = {}
        self._dirs: set[str] = set()  # the 256 fan-out directories known to exist
        self.used_bytes = 0
        self.counters = {
            "chunks_stored": 0,
            "chunks_duplicate": 0,
            "chunks_rejected": 0,
            "chunks_refused_full": 0,
            "chunks_collected": 0,
            "chunks_deleted": 0,
        }

    # -- life -------------------------------------------------------------------
    def open(self) -> None:
        """Count what the disk holds (after a restart); drop half-written temporaries."""
        if self.root is None:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        for sub in self.root.iterdir():
            if not sub.is_dir():
                continue
            self._dirs.add(sub.name)
            for entry in os.scandir(sub):
                if entry.name.endswith(".tmp"):
                    os.unlink(entry.path)
                    continue
                try:
                    key = bytes.fromhex(entry.name)
                except ValueError:
                    continue
                if len(key) == KEY_BYTES:
                    size = entry.stat().st_size
                    self._sizes[key] = size
                    self.used_bytes += size

    def _path(self, key: bytes) -> Path:
        h = key.hex()
        return self.root / h[:2] / h

    # -- reads ------------------------------------------------------------------
    def __contains__(self, key: bytes) -> bool:
        return key in self._sizes

    def __len__(self) -> int:
        return len(self._sizes)

    def keys(self) -> list[bytes]:
        return list(self._sizes)

    @property
    def free_bytes(self) -> int:
        return max(0, self.budget_bytes - self.used_bytes)

    def get(self, key: bytes) -> bytes | None:
        """The chunk's bytes, verified again (a disk can rot); ``None`` if absent or bad."""
        if key not in self._sizes:
            return None
        if self.root is None:
            data = self._memory[key][0]
        else:
            try:
                data = self._path(key).read_bytes()
            except FileNotFoundError:
                self._forget(key)
                return None
        if chunk_key(data) != key:
            self.counters["chunks_rejected"] += 1
            self.delete(key)
            return None
        return data

    def touched_at(self, key: bytes) -> float | None:
        if key not in self._sizes:
            return None
        if self.root is None:
            return self._memory[key][1]
        try:
            return self._path(key).stat().st_mtime
        except FileNotFoundError:
            return None

    # -- writes -----------------------------------------------------------------
    def put(self, key: bytes, data: bytes) -> bool:
        """Store a verified chunk; True if it is new here. Raises
        :class:`ChunkRejected` (counted) or :class:`BudgetExceeded` (counted)."""
        try:
            check_chunk(key, data)
        except ChunkRejected:
            self.counters["chunks_rejected"] += 1
            raise
        if key in self._sizes:
            self.counters["chunks_duplicate"] += 1
            self.touch([key])
            return False
        if self.used_bytes + len(data) > self.budget_bytes:
            self.counters["chunks_refused_full"] += 1
            raise BudgetExceeded(f"disk budget of {self.budget_bytes} bytes reached")
        if self.root is None:
            self._memory[key] = (data, self.wall_s())
        else:
            path = self._path(key)
            if path.parent.name not in self._dirs:
                path.parent.mkdir(exist_ok=True)
                self._dirs.add(path.parent.name)
            tmp = path.with_name(path.name + ".tmp")
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)  # readers see the whole chunk or none
            now = self.wall_s()
            os.utime(path, (now, now))
        self._sizes[key] = len(data)
        self.used_bytes += len(data)
        self.counters["chunks_stored"] += 1
        return True

    def touch(self, keys: Iterable[bytes]) -> list[bytes]:
        """Mark chunks as wanted now; returns the keys this store lacks."""
        now = self.wall_s()
        missing = []
        for key in keys:
            if key not in self._sizes:
                missing.append(key)
            elif self.root is None:
                self._memory[key] = (self._memory[key][0], now)
            else:
                try:
                    os.utime(self._path(key), (now, now))
                except FileNotFoundError:
                    self._forget(key)
                    missing.append(key)
        return missing

    def delete(self, key: bytes) -> bool:
        if key not in self._sizes:
            return False
        if self.root is None:
            self._memory.pop(key, None)
        else:
            try:
                os.unlink(self._path(key))
            except FileNotFoundError:
                pass
        self._forget(key)
        self.counters["chunks_deleted"] += 1
        return True

    def _forget(self, key: bytes) -> None:
        size = self._sizes.pop(key, None)
        if size is not None:
            self.used_bytes -= size

    def collect(self, retention_s: float, limit: int = 100_000) -> int:
        """Drop chunks untouched for longer than ``retention_s`` (at most ``limit``)."""
        horizon = self.wall_s() - retention_s
        dropped = 0
        for key in list(self._sizes):
            if dropped >= limit:
                break
            touched = self.touched_at(key)
            if touched is not None and touched < horizon:
                self.delete(key)
                dropped += 1
        self.counters["chunks_collected"] += dropped
        return dropped

    def statistics(self) -> dict[str, int]:
        return {
            **self.counters,
            "chunks": len(self._sizes),
            "disk_bytes_used": self.used_bytes,
            "disk_bytes_budget": self.budget_bytes,
            "disk_bytes_free": self.free_bytes,
        }
