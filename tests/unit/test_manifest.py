"""Blob manifests and byte ranges (node/manifest.py), and blob references."""

from __future__ import annotations

import pytest

from workmesh.dht.chunks import CHUNK_BYTES_MAX, chunk_key
from workmesh.node import manifest as M
from workmesh.node.blobs import blob_refs


def test_a_small_manifest_lists_its_chunks_and_round_trips():
    keys = [chunk_key(bytes([i])) for i in range(3)]
    m, parts = M.build(2 * 1000 + 5, 1000, keys)
    assert parts == [] and m.kind == M.CHUNKS
    assert M.decode(m.encode()) == m
    assert len(m.encode()) <= CHUNK_BYTES_MAX


def test_a_large_manifest_lists_parts_that_fit_in_chunks():
    n = M.INLINE_KEYS_MAX * 3
    keys = [chunk_key(i.to_bytes(4, "big")) for i in range(n)]
    m, parts = M.build(n * 10, 10, keys)
    assert m.kind == M.PARTS and len(m.keys) == len(parts)
    assert all(len(p) <= CHUNK_BYTES_MAX for p in parts) and len(m.encode()) <= CHUNK_BYTES_MAX
    assert [chunk_key(p) for p in parts] == list(m.keys)
    assert M.split_keys(b"".join(parts)) == tuple(keys)


@pytest.mark.parametrize("raw", [b"", b"\x93\x01\x02\x03", b"not msgpack \xc1", chunk_key(b"x")])
def test_anything_else_is_not_a_manifest(raw):
    with pytest.raises(M.ManifestError):
        M.decode(raw)


def test_a_manifest_whose_keys_disagree_with_its_size_is_refused():
    m = M.Manifest(5000, 1000, M.CHUNKS, (chunk_key(b"a"),))
    with pytest.raises(M.ManifestError):
        M.decode(m.encode())


@pytest.mark.parametrize(
    "header,expected",
    [
        (None, None),
        ("bytes=0-99", (0, 99)),
        ("bytes=100-", (100, 999)),
        ("bytes=-10", (990, 999)),
        ("bytes=900-5000", (900, 999)),
        ("bytes=0-1,5-6", None),  # several ranges: the whole blob
        ("items=0-1", None),
    ],
)
def test_ranges(header, expected):
    assert M.parse_range(header, 1000) == expected


@pytest.mark.parametrize("header", ["bytes=1000-", "bytes=5-4", "bytes=-0"])
def test_unsatisfiable_ranges(header):
    with pytest.raises(M.RangeNotSatisfiable):
        M.parse_range(header, 1000)


def test_chunk_span():
    m = M.Manifest(2500, 1000, M.CHUNKS, tuple(chunk_key(bytes([i])) for i in range(3)))
    assert M.chunk_span(m, 0, 999) == (0, 0)
    assert M.chunk_span(m, 999, 1000) == (0, 1)
    assert M.chunk_span(m, 2000, 2499) == (2, 2)


def test_blob_refs_finds_references_anywhere():
    h1, h2, h3 = "a" * 64, "b" * 64, "c" * 64
    doc = {"image": {"blob": h1}, "nested": [{"x": {"blob": h2}}], "blobs": [h3, "not-a-hash"], "blob": "short"}
    assert blob_refs(doc) == {h1, h2, h3}
