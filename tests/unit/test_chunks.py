"""The chunk store: verified puts, the disk budget, touches and collection."""

from __future__ import annotations

import hashlib
import os

import pytest

from workmesh.dht.chunks import BudgetExceeded, ChunkRejected, ChunkStore, chunk_key


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["disk", "memory"])
def store(request, tmp_path):
    clock = Clock()
    s = ChunkStore(tmp_path / "chunks" if request.param == "disk" else None, 100_000, clock)
    s.open()
    s.clock = clock
    return s


def test_a_chunk_must_hash_to_its_key(store):
    data = b"hello"
    with pytest.raises(ChunkRejected):
        store.put(hashlib.sha256(b"other").digest(), data)
    with pytest.raises(ChunkRejected):
        store.put(b"short", data)
    assert store.counters["chunks_rejected"] == 2 and len(store) == 0 and store.used_bytes == 0
    assert store.put(chunk_key(data), data) is True
    assert store.put(chunk_key(data), data) is False  # content-addressed: stored once
    assert store.get(chunk_key(data)) == data and store.used_bytes == 5


def test_the_budget_refuses_a_chunk_whole(store):
    a, b, c = (os.urandom(40_000) for _ in range(3))
    store.put(chunk_key(a), a)
    store.put(chunk_key(b), b)
    with pytest.raises(BudgetExceeded):
        store.put(chunk_key(c), c)
    assert chunk_key(c) not in store and store.used_bytes == 80_000
    assert store.statistics()["disk_bytes_free"] == 20_000 and store.counters["chunks_refused_full"] == 1


def test_collection_drops_only_what_nobody_touched(store):
    old, kept = b"old chunk", b"kept chunk"
    store.put(chunk_key(old), old)
    store.put(chunk_key(kept), kept)
    store.clock.now += 50
    assert store.touch([chunk_key(kept), chunk_key(b"absent")]) == [chunk_key(b"absent")]
    store.clock.now += 60
    assert store.collect(retention_s=100) == 1
    assert chunk_key(old) not in store and store.get(chunk_key(kept)) == kept
    assert store.used_bytes == len(kept)


def test_a_restart_counts_what_the_disk_holds(tmp_path):
    s = ChunkStore(tmp_path, 10_000, Clock())
    s.open()
    s.put(chunk_key(b"x" * 10), b"x" * 10)
    (tmp_path / "ab").mkdir()
    (tmp_path / "ab" / "junk.tmp").write_bytes(b"half")
    again = ChunkStore(tmp_path, 10_000, Clock())
    again.open()
    assert len(again) == 1 and again.used_bytes == 10 and not (tmp_path / "ab" / "junk.tmp").exists()


def test_a_rotten_chunk_on_disk_is_not_served(tmp_path):
    s = ChunkStore(tmp_path, 10_000, Clock())
    s.open()
    key = chunk_key(b"good bytes")
    s.put(key, b"good bytes")
    (tmp_path / key.hex()[:2] / key.hex()).write_bytes(b"bad bytes!")
    assert s.get(key) is None and key not in s and s.counters["chunks_rejected"] == 1
