"""Blobs: large inputs and results, content-addressed, replicated in the mesh.

``BlobService`` is what the REST layer (``api/blobs.py``) and handlers (through
``node/mesh.py``) call. A blob is cut into chunks of ``CHUNK_BYTES`` that live
in the chunk store of the ``r`` nodes closest to each chunk (``dht/chunknet.py``),
listed by a manifest whose key is the blob's hash (``node/manifest.py``).

* **Upload** streams: a chunk is hashed, kept here (the node that accepts an
  upload holds a copy of all of it, so its disk budget bounds what it
  accepts: 507 past it), and pushed to its placement, at most
  ``UPLOAD_WINDOW`` chunks in flight. A chunk counts as stored once
  ``copies_min`` nodes hold it (fewer when the mesh is smaller). Past the
  blob limit (413), the budget (507) or without enough copies (503) the
  upload is undone: the chunks it wrote here are deleted, the peers are asked
  to drop the copies it gave them, and no manifest is ever stored, so the
  blob does not exist.
* **Download** streams chunks in order, ``DOWNLOAD_WINDOW`` fetched ahead,
  each verified against its key; a byte range reads only the chunks it spans.
* **Collection**: every ``retention_s / 4`` a node touches (on their
  placements, repairing missing copies) the chunks of every blob named by a
  job its store holds, and drops the chunks of its own store that nobody
  touched for ``retention_s``. A blob referenced by a stored job (so by any
  live job) is touched well within its retention; a blob nothing references
  goes after the retention time. The retention is ``NodeConfig.retention_s``
  when that exists, else ``DEFAULT_RETENTION_S``.
"""

from __future__ import annotations

import asyncio
import collections
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

import structlog

from workmesh.dht.chunknet import ChunkNet
from workmesh.dht.chunks import CHUNK_BYTES_MAX, BudgetExceeded, ChunkStore, chunk_key
from workmesh.node import manifest as M
from workmesh.node.errors import BlobNotFound, InsufficientStorage, PayloadTooLarge, QuorumUnavailable

CHUNK_BYTES = CHUNK_BYTES_MAX
BLOB_BYTES_MAX = 2**30  # per blob (1 GiB)
DISK_BYTES_BUDGET = 10 * 2**30  # chunk bytes a node keeps at most (10 GiB)
DEFAULT_RETENTION_S = 7 * 24 * 3600.0  # used when NodeConfig has no retention_s
CHUNK_REPLICAS = 3  # nodes a chunk is placed on (the uploader keeps a copy besides)
COPIES_MIN = 2  # nodes that must hold a chunk before an upload goes on
UPLOAD_WINDOW = 32  # chunks being replicated at once by one upload
DOWNLOAD_WINDOW = 8  # chunks fetched ahead by one download
REFRESH_BLOBS_MAX = 10_000  # blobs touched per collection pass, at most
_HASH = re.compile(r"^[0-9a-f]{64}$")


def blob_refs(doc: Any, out: set[str] | None = None, depth: int = 0) -> set[str]:
    """Every blob hash a payload or result names: ``{"blob": H}`` anywhere,
    and the hashes of a ``"blobs": [H, ...]`` list (wordcount's payload)."""
    out = set() if out is None else out
    if depth > 64:
        return out
    if isinstance(doc, dict):
        ref = doc.get("blob")
        if isinstance(ref, str) and _HASH.match(ref):
            out.add(ref)
        many = doc.get("blobs")
        if isinstance(many, list):
            out.update(h for h in many if isinstance(h, str) and _HASH.match(h))
        for value in doc.values():
            blob_refs(value, out, depth + 1)
    elif isinstance(doc, list):
        for value in doc:
            blob_refs(value, out, depth + 1)
    return out


def parse_hash(text: str) -> bytes:
    """A blob hash from a URL or payload; :class:`BlobNotFound` if it cannot be one."""
    if not isinstance(text, str) or not _HASH.match(text):
        raise BlobNotFound(f"no blob {str(text)[:80]!r}: a blob hash is 64 lowercase hex digits")
    return bytes.fromhex(text)


class BlobService:
    def __init__(
        self,
        store: ChunkStore,
        net: ChunkNet,
        *,
        blob_bytes_max: int = BLOB_BYTES_MAX,
        retention_s: float = DEFAULT_RETENTION_S,
        copies_min: int = COPIES_MIN,
        job_refs: Callable[[], Iterable[str]] = lambda: (),
        spawn: Callable[[Awaitable[Any], str], Any] | None = None,
        logger: Any = None,
    ) -> None:
        self.store = store
        self.net = net
        self.blob_bytes_max = blob_bytes_max
        self.retention_s = retention_s
        self.copies_min = copies_min
        self._job_refs = job_refs
        self._spawn = spawn or (lambda coro, name: asyncio.ensure_future(coro))
        self.log = logger or structlog.get_logger()
        self._uploading: collections.Counter[bytes] = collections.Counter()
        self.counters = {
            "uploads": 0,
            "uploads_failed": 0,
            "upload_bytes": 0,
            "downloads": 0,
            "download_bytes": 0,
            "blobs_refreshed": 0,
            "collection_passes": 0,
        }

    # -- upload -----------------------------------------------------------------
    async def upload(self, read: Callable[[int], Awaitable[bytes]], declared_bytes: int | None = None) -> tuple[str, int]:
        """Store the bytes ``read(n)`` gives (``b""`` at the end) as a blob: ``(hash hex, size)``."""
        if declared_bytes is not None and declared_bytes > self.blob_bytes_max:
            raise PayloadTooLarge(f"a blob is at most {self.blob_bytes_max} bytes; this one declares {declared_bytes}")
        if declared_bytes is not None and declared_bytes > self.store.free_bytes:
            raise InsufficientStorage(
                f"this node has {self.store.free_bytes} bytes of its disk budget free; the blob needs {declared_bytes}"
            )
        upload = _Upload(self)
        try:
            size = 0
            buf = bytearray()
            while True:
                piece = await read(CHUNK_BYTES)
                if piece:
                    size += len(piece)
                    if size > self.blob_bytes_max:
                        raise PayloadTooLarge(f"a blob is at most {self.blob_bytes_max} bytes")
                    buf += piece
                while len(buf) >= CHUNK_BYTES or (not piece and buf):
                    data = bytes(buf[:CHUNK_BYTES])
                    del buf[:CHUNK_BYTES]
                    await upload.add(data)
                if not piece:
                    break
            keys = await upload.finish_data()
            manifest, parts = M.build(size, CHUNK_BYTES, keys)
            for part in parts:
                await upload.add(part)
            await upload.finish_data()
            raw = manifest.encode()
            await upload.add(raw)
            await upload.finish_data()
        except BaseException:
            self.counters["uploads_failed"] += 1
            upload.undo()
            raise
        finally:
            upload.release()
        self.counters["uploads"] += 1
        self.counters["upload_bytes"] += size
        digest = chunk_key(raw).hex()
        self.log.info("blob_uploaded", blob=digest, size=size, chunks=len(keys))
        return digest, size

    async def put_bytes(self, data: bytes) -> str:
        """Store ``data`` as a blob (a handler's result): its hash."""
        view = memoryview(data)
        pos = 0

        async def read(n: int) -> bytes:
            nonlocal pos
            piece = bytes(view[pos : pos + n])
            pos += len(piece)
            return piece

        digest, _ = await self.upload(read, len(data))
        return digest

    # -- download ---------------------------------------------------------------
    async def manifest(self, digest: str) -> M.Manifest:
        key = parse_hash(digest)
        raw = await self.net.fetch(key)
        if raw is None:
            raise BlobNotFound(f"no node holds blob {digest}")
        try:
            return M.decode(raw)
        except M.ManifestError:
            raise BlobNotFound(f"{digest} names a chunk, not a blob") from None

    async def data_keys(self, manifest: M.Manifest) -> tuple[bytes, ...]:
        if manifest.kind == M.CHUNKS:
            return manifest.keys
        raws = await asyncio.gather(*(self.net.fetch(k) for k in manifest.keys))
        if any(r is None for r in raws):
            raise QuorumUnavailable("part of this blob's chunk list is unreachable now")
        keys = M.split_keys(b"".join(raws))
        if len(keys) != manifest.chunk_count:
            raise BlobNotFound("this blob's chunk list does not match its size")
        return keys

    async def stream(self, manifest: M.Manifest, keys: tuple[bytes, ...], start: int, end: int) -> AsyncIterator[bytes]:
        """Bytes ``start..end`` (inclusive) of the blob, chunk by chunk, verified."""
        if manifest.size == 0 or end < start:
            return
        first, last = M.chunk_span(manifest, start, end)
        self.counters["downloads"] += 1
        ahead: collections.deque[asyncio.Task] = collections.deque()
        next_index = first
        try:
            for index in range(first, last + 1):
                while next_index <= last and len(ahead) < DOWNLOAD_WINDOW:
                    ahead.append(asyncio.ensure_future(self.net.fetch(keys[next_index])))
                    next_index += 1
                data = await ahead.popleft()
                if data is None:
                    raise QuorumUnavailable(f"chunk {index} of the blob is unreachable now")
                base = index * manifest.chunk_bytes
                lo = max(start - base, 0)
                hi = min(end - base + 1, len(data))
                self.counters["download_bytes"] += hi - lo
                yield data[lo:hi]
        finally:
            for task in ahead:
                task.cancel()

    async def read_all(self, digest: str, max_bytes: int | None = None) -> bytes:
        """A whole blob in memory (for handlers), at most ``max_bytes``."""
        manifest = await self.manifest(digest)
        limit = self.blob_bytes_max if max_bytes is None else max_bytes
        if manifest.size > limit:
            raise PayloadTooLarge(f"blob {digest} has {manifest.size} bytes; at most {limit} may be read here")
        keys = await self.data_keys(manifest)
        out = bytearray()
        async for piece in self.stream(manifest, keys, 0, manifest.size - 1):
            out += piece
        return bytes(out)

    # -- collection -------------------------------------------------------------
    async def refresh(self, digests: Iterable[str]) -> int:
        """Touch every chunk of these blobs on its placement (repairing copies). Returns blobs touched."""
        done = 0
        for digest in list(digests)[:REFRESH_BLOBS_MAX]:
            try:
                manifest = await self.manifest(digest)
                keys = await self.data_keys(manifest)
            except (BlobNotFound, QuorumUnavailable):
                continue
            await self.net.touch([bytes.fromhex(digest), *(manifest.keys if manifest.kind == M.PARTS else ()), *keys])
            done += 1
        self.counters["blobs_refreshed"] += done
        return done

    async def collect_once(self) -> int:
        """One pass: keep what jobs reference alive, then drop what nobody touched."""
        self.counters["collection_passes"] += 1
        await self.refresh(self._job_refs())
        return self.store.collect(self.retention_s)

    def open(self) -> None:
        self.store.open()

    async def run(self) -> None:
        """Collect every ``retention_s / 4`` (at least 0.5 s, at most an hour)."""
        interval = max(0.5, min(self.retention_s / 4, 3600.0))
        while True:
            await asyncio.sleep(interval)
            try:
                dropped = await self.collect_once()
            except Exception as exc:  # a bad pass must not end the loop
                self.log.error("blob_collection_failed", error=repr(exc))
                continue
            if dropped:
                self.log.info("chunks_collected", dropped=dropped)

    def statistics(self) -> dict[str, Any]:
        return {
            **self.store.statistics(),
            **self.net.statistics(),
            **self.counters,
            "blob_bytes_max": self.blob_bytes_max,
            "retention_s": self.retention_s,
        }


class _Upload:
    """The chunks one upload has written, so a failure can take them back."""

    def __init__(self, service: BlobService) -> None:
        self.s = service
        self.keys: list[bytes] = []
        self.new_here: list[bytes] = []
        self.placed: dict[bytes, list] = {}
        self.pending: set[asyncio.Task] = set()
        self.window = asyncio.Semaphore(UPLOAD_WINDOW)
        self.failure: BaseException | None = None

    async def add(self, data: bytes) -> None:
        if self.failure is not None:
            raise self.failure
        key = chunk_key(data)
        self.keys.append(key)
        self.s._uploading[key] += 1
        try:
            if self.s.store.put(key, data):
                self.new_here.append(key)
        except BudgetExceeded:
            raise InsufficientStorage(
                f"this node's disk budget ({self.s.store.budget_bytes} bytes) is full; the blob was not stored"
            ) from None
        await self.window.acquire()
        task = asyncio.ensure_future(self._replicate(key, data))
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)

    async def _replicate(self, key: bytes, data: bytes) -> None:
        try:
            targets = await self.s.net.peers_for(key)
            self.placed[key] = targets  # before sending: an undo must reach any that took it
            copies, took, full = await self.s.net.replicate(key, data, targets)
            peers = len(self.s.net.dht.router)
            need = min(self.s.copies_min, 1 + min(peers, self.s.net.replicas))
            if 1 + copies < need and self.failure is None:
                self.failure = (
                    InsufficientStorage("the nodes this blob's chunks belong on have no room left")
                    if full
                    else QuorumUnavailable(f"only {1 + copies} nodes stored a chunk; {need} needed. Retry later.")
                )
        except Exception as exc:
            if self.failure is None:
                self.failure = exc
        finally:
            self.window.release()

    async def finish_data(self) -> list[bytes]:
        """Wait for every chunk so far to be replicated; the keys added so far."""
        while self.pending:
            await asyncio.gather(*list(self.pending), return_exceptions=True)
        if self.failure is not None:
            raise self.failure
        return list(self.keys)

    def undo(self) -> None:
        for key in self.new_here:
            if self.s._uploading[key] <= 1:
                self.s.store.delete(key)
        if self.placed or self.pending:
            self.s._spawn(self._undo_remote(), "blob_upload_undo")

    async def _undo_remote(self) -> None:
        """Once the pushes in flight ended, ask their targets to drop what they took."""
        while self.pending:
            await asyncio.gather(*list(self.pending), return_exceptions=True)
        await self.s.net.drop(dict(self.placed))

    def release(self) -> None:
        for key in self.keys:
            self.s._uploading[key] -= 1
            if self.s._uploading[key] <= 0:
                del self.s._uploading[key]


def attach(node: Any, *, in_memory: bool = False) -> BlobService:
    """Build a node's chunk store, chunk RPCs and blob service (called from ``Node``)."""
    import os

    config = node.config
    root = None if in_memory else os.path.join(config.data_dir, "chunks")
    budget = getattr(config, "blob_disk_bytes", None) or DISK_BYTES_BUDGET
    store = ChunkStore(root, budget, time.time)
    replicas = min(CHUNK_REPLICAS, config.dht.replicas)
    net = ChunkNet(node.dht, store, replicas=replicas, quorum=COPIES_MIN, logger=node.log)

    def job_refs() -> set[str]:
        refs: set[str] = set()
        for key in node.store.keys():
            state = node.store.state(key)
            if state is None:
                continue
            blob_refs(state.submit.body.payload, refs)
            if state.result is not None:
                blob_refs(state.result, refs)
        return refs

    return BlobService(
        store,
        net,
        blob_bytes_max=getattr(config, "blob_bytes_max", None) or BLOB_BYTES_MAX,
        retention_s=getattr(config, "retention_s", None) or DEFAULT_RETENTION_S,
        job_refs=job_refs,
        spawn=node.tasks.spawn,
        logger=node.log,
    )
