"""Chunks over the p2p port, against an in-process node on a real UDP socket.

A chunk whose bytes do not hash to its key is refused and counted, whoever
sends it; a right one is stored and can be fetched back; ``drop_chunks``
only takes back what the asking node itself stored.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import replace

import pytest

from workmesh.node.config import NodeConfig
from workmesh.node.node import Node
from tests.integration.test_dht_adversarial import RawPeer


@pytest.fixture
async def node(tmp_path):
    config = NodeConfig(data_dir=str(tmp_path / "n"), workers=0, reannounce_first_s=3600.0)
    node = Node(replace(config, dht=replace(config.dht, amplification_guard=False)))
    await node.start()
    yield node
    await node.stop()


async def test_a_chunk_with_wrong_bytes_is_rejected_and_counted(node, tmp_path):
    data = os.urandom(4096)
    key = hashlib.sha256(data).digest()
    tampered = bytes([data[0] ^ 1]) + data[1:]
    async with RawPeer() as peer:
        reply = await peer.request(node, "store_chunk", [key, tampered])
        assert reply is not None and reply.args[0] == "bad_chunk"
        stats = node.status()["blobs"]
        assert stats["chunks_rejected"] == 1
        assert stats["chunks"] == 0 and key not in node.blobs.store
        assert not any((tmp_path / "n" / "chunks").rglob(key.hex()))
        # The right bytes under the same key are taken, and read back whole.
        reply = await peer.request(node, "store_chunk", [key, data])
        assert reply.args[0] == "ok"
        assert node.status()["blobs"]["chunks"] == 1
        reply = await peer.request(node, "fetch_chunk", [key])
        assert reply.args == ["ok", data]
        # Another peer cannot drop it; the one that stored it can.
        async with RawPeer() as other:
            reply = await other.request(node, "drop_chunks", [[key]])
            assert reply.args == ["ok", 0] and key in node.blobs.store
        reply = await peer.request(node, "drop_chunks", [[key]])
        assert reply.args == ["ok", 1] and key not in node.blobs.store
        assert node.status()["blobs"]["chunks_rejected"] == 1


async def test_a_chunk_past_the_disk_budget_is_refused_and_nothing_is_written(tmp_path):
    config = NodeConfig(data_dir=str(tmp_path / "n"), workers=0, blob_disk_bytes=10_000)
    node = Node(replace(config, dht=replace(config.dht, amplification_guard=False)))
    await node.start()
    try:
        async with RawPeer() as peer:
            big = os.urandom(12_000)
            reply = await peer.request(node, "store_chunk", [hashlib.sha256(big).digest(), big])
            assert reply.args[0] == "full"
            stats = node.status()["blobs"]
            assert stats["chunks"] == 0 and stats["disk_bytes_used"] == 0 and stats["disk_bytes_budget"] == 10_000
    finally:
        await node.stop()
