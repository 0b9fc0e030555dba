"""Joining a mesh: a node places jobs only from a view of the mesh that a
lookup confirmed, so a join whose replies were lost cannot put a job on too
few replicas. Real nodes on loopback UDP, in one process."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

from workmesh.dht.routing import target_node
from workmesh.node import lifecycle
from workmesh.node.config import NodeConfig
from workmesh.node.errors import QuorumUnavailable
from workmesh.node.node import Node


async def wait_for(predicate, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not met before the deadline"
        await asyncio.sleep(0.01)


async def started(tmp_path, name: str) -> Node:
    node = Node(NodeConfig(data_dir=str(tmp_path / name), workers=0, reannounce_first_s=3600.0))
    await node.start()
    return node


@contextlib.asynccontextmanager
async def mesh_and_latecomer(tmp_path, count: int):
    """A joined mesh of ``count`` nodes, and one more node that knows nobody yet."""
    nodes = [await started(tmp_path, f"n{i}") for i in range(count)]
    late = await started(tmp_path, "late")
    try:
        for node in nodes[1:]:
            await node.join([nodes[0].dht.address])
        await wait_for(lambda: all(len(n.dht.router) == count - 1 for n in nodes))
        yield nodes, late
    finally:
        for node in [*nodes, late]:
            await node.stop()


async def test_a_node_whose_lookups_went_unanswered_refuses_jobs_until_one_is(tmp_path):
    async with mesh_and_latecomer(tmp_path, 3) as (nodes, late):
        # The late node reached one node (a ping), which then went away: no
        # lookup reply ever comes back. Its table holds one contact and looks
        # like a whole mesh of two, so a job would be placed on one node.
        gone = await started(tmp_path, "gone")
        assert await late.dht.ping(gone.dht.address) is not None
        await gone.stop()
        late.jobs.expects_peers = True
        assert len(late.dht.router) == 1 and late.dht.router_is_complete()
        # Its own lookup before placing goes unanswered too: it refuses.
        with pytest.raises(QuorumUnavailable, match="not joined"):
            await late.jobs.submit("echo", {"n": 1})
        # One answered lookup later it sees the mesh (and remembers the node
        # that went away), and places on at least 3 replicas, a quorum holding it.
        await late.dht.bootstrap([nodes[0].dht.address])
        view = await late.jobs.submit("echo", {"n": 2})
        job_id = bytes.fromhex(view.id)
        held = [n for n in [*nodes, late] if n.dht.records.get(job_id)]
        state = lifecycle.derive(held[0].dht.records.get(job_id))
        assert len(state.replicas) >= 3 and len(held) >= state.submit.body.quorum


async def test_a_node_with_a_thin_view_looks_itself_up_before_placing_a_job(tmp_path):
    async with mesh_and_latecomer(tmp_path, 4) as (nodes, late):
        # The late node knows one node of a 5-node mesh and nothing it named:
        # from this view a job would go to 1 replica (a mesh of two).
        assert await late.dht.ping(nodes[0].dht.address) is not None
        late.jobs.expects_peers = True
        assert late.jobs.mesh_seen() == 2
        # The submit looks the node up first, and places on the whole mesh.
        view = await late.jobs.submit("echo", {"n": 1})
        job_id = bytes.fromhex(view.id)
        held = [n for n in [*nodes, late] if n.dht.records.get(job_id)]
        state = lifecycle.derive(held[0].dht.records.get(job_id))
        assert len(state.replicas) == 5 and state.submit.body.quorum == 3 and len(held) >= 3


async def test_a_table_that_lacks_nodes_a_lookup_named_is_not_taken_for_the_whole_mesh(tmp_path):
    async with mesh_and_latecomer(tmp_path, 4) as (nodes, late):
        assert await late.dht.ping(nodes[0].dht.address) is not None
        assert late.dht.router_is_complete()  # one contact, nothing heard of: looks whole
        # One find_node answer names the others; none of them is asked yet.
        named = await late.dht.contacts.ask_find_node(late.dht.node.id, late.dht.router.contacts()[0])
        assert named and late.dht.heard_count() >= 3
        assert len(late.dht.router) == 1
        assert not late.dht.router_is_complete()
        assert late.jobs.mesh_seen() >= 4
        # So replica sets come from a lookup, which finds the true closest.
        key = bytes(20)
        found = {c.id for c in await late.dht.replicas_for(key, count=3)}
        everyone = [n.dht.node for n in [*nodes, late]]
        true = {c.id for c in sorted(everyone, key=lambda c: c.distance_to(target_node(key)))[:3]}
        assert found == true
