"""Retention in a mesh (issue 13, item 6): three in-process nodes over real UDP
and SQLite with a 2 s retention. A decided job is dropped by every node that
holds it and then reads as 410 Gone (problem+json); a running job is kept."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import aiohttp

from workmesh.api.app import create_app, run_api
from workmesh.dht.config import DHTConfig
from workmesh.node import lifecycle
from workmesh.node.config import NodeConfig
from workmesh.node.errors import JobGone
from workmesh.node.node import Node


async def wait_for(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"{what}: not met within {timeout_s} s"
        await asyncio.sleep(0.02)


async def test_decided_jobs_go_everywhere_after_their_retention_and_running_ones_stay(tmp_path):
    dht = replace(DHTConfig(), replicas=3, quorum=2)
    nodes = []
    for i in range(3):
        node = Node(NodeConfig(data_dir=str(tmp_path / f"n{i}"), dht=dht, workers=1, retention_s=2.0))
        await node.start()
        nodes.append(node)
    for node in nodes[1:]:
        await node.join([nodes[0].dht.address])
    await wait_for(lambda: all(len(n.dht.router) == 2 for n in nodes), 10, "full routing tables")
    runner = await run_api(create_app(nodes[2], api_token=None), "127.0.0.1", 0)
    port = runner.addresses[0][1]
    try:
        long = await nodes[0].submit("sleep", {"seconds": 30}, lease_seconds=60)
        done = await nodes[1].submit("echo", {"x": 1})
        done_id, long_id = bytes.fromhex(done.id), bytes.fromhex(long.id)
        assert (await nodes[1].get(done_id, wait_s=10)).status == lifecycle.DONE
        await wait_for(lambda: all(n.store.is_gone(done_id) for n in nodes), 15, "every node dropped the job")
        assert all(not n.store.has(done_id) for n in nodes)
        assert sum(n.retention.counters["jobs_dropped"] for n in nodes) == 3
        for node in nodes:
            try:
                await node.get(done_id)
                raise AssertionError("a dropped job still reads")
            except JobGone:
                pass
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/jobs/{done.id}") as resp:
                assert resp.status == 410
                assert resp.content_type == "application/problem+json"
                assert (await resp.json())["status"] == 410
            async with http.get(f"http://127.0.0.1:{port}/status") as resp:
                storage = (await resp.json())["storage"]
                assert storage["bytes"] <= storage["bytes_max"] and storage["jobs_dropped"] == 1
                assert storage["retention_s"] == 2.0 and storage["tombstones"] == 1
        # The running job outlived the retention and is still held and running.
        state = nodes[0].jobs.derive_local(long_id)
        assert state is not None and state.status in (lifecycle.PENDING, lifecycle.RUNNING)
        assert all(n.store.has(long_id) for n in nodes)
    finally:
        await runner.cleanup()
        for node in nodes:
            await node.stop()
