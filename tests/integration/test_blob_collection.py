"""Collection of blobs: what no stored job references goes after the
retention time; what a job references stays (in-process node, real disk)."""

from __future__ import annotations

import os
from dataclasses import replace

import pytest

from workmesh.node.config import NodeConfig
from workmesh.node.errors import BlobNotFound
from workmesh.node.node import Node


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def run_inline(fn, payload, ctx):
    return fn(payload, ctx)


@pytest.fixture
async def node(tmp_path):
    config = NodeConfig(data_dir=str(tmp_path / "n"), workers=1)
    node = Node(replace(config, dht=replace(config.dht, replicas=1, quorum=1)), run_cpu=run_inline)
    node.blobs.retention_s = 100.0
    node.blobs.store.wall_s = Clock(1_000_000.0)
    await node.start()
    yield node
    await node.stop()


async def test_unreferenced_blobs_go_after_the_retention_and_referenced_ones_stay(node):
    clock = node.blobs.store.wall_s
    loose = await node.blobs.put_bytes(os.urandom(200_000))
    kept = await node.blobs.put_bytes(os.urandom(200_000))
    view = await node.submit("echo", {"input": {"blob": kept}})
    assert (await node.get(bytes.fromhex(view.id), wait_s=10)).status == "done"

    clock.now += 50
    assert await node.blobs.collect_once() == 0  # within the retention: nothing goes
    clock.now += 80  # past the retention for the upload time; the job's blob was touched at +50
    dropped = await node.blobs.collect_once()
    assert dropped == 6  # the loose blob's 5 chunks and its manifest
    with pytest.raises(BlobNotFound):
        await node.blobs.manifest(loose)
    assert len(await node.blobs.read_all(kept)) == 200_000
    clock.now += 1000  # still referenced by a stored job: touched on every pass
    assert await node.blobs.collect_once() == 0
    assert len(await node.blobs.read_all(kept)) == 200_000
    assert node.status()["blobs"]["chunks_collected"] == 6
