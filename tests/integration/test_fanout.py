"""Jobs that submit jobs (node/mesh.py), with three in-process nodes on real UDP.

The parent gives its worker slot back while its children run, and
cancelling the parent cancels its children.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from workmesh.node.config import NodeConfig
from workmesh.node.handlers import BUILTINS, Handler, Registry
from workmesh.node.node import Node
from workmesh.node.samples import SAMPLE_HANDLERS
from tests.integration.test_dht_adversarial import wait_for


async def fanout_sleep(payload, ctx):
    """A parent of ``n`` sleep children (a test handler)."""
    views = await ctx.mesh.fan_out(ctx, [("sleep", {"seconds": payload["seconds"]})] * payload["n"])
    return {"children": [v.id for v in views]}


async def run_inline(fn, payload, ctx):
    return fn(payload, ctx)


@pytest.fixture
async def nodes(tmp_path):
    registry = Registry(BUILTINS + SAMPLE_HANDLERS + (Handler("fanout_sleep", fanout_sleep),), load_entry_points=False)
    started: list[Node] = []
    for i in range(3):
        config = NodeConfig(data_dir=str(tmp_path / f"n{i}"), workers=1, lease_s=2.0)
        node = Node(replace(config, dht=replace(config.dht, replicas=3, quorum=2)), registry=registry, run_cpu=run_inline)
        await node.start()
        started.append(node)
    for node in started[1:]:
        await node.join([started[0].dht.address])
    await wait_for(lambda: all(len(n.dht.router) == 2 for n in started))
    yield started
    for node in started:
        await node.stop()


def sleep_jobs(nodes: list[Node]) -> dict[str, str]:
    """Every sleep job any node indexes: id -> status."""
    found = {}
    for node in nodes:
        views, _ = node.list_jobs(None, 1000, None)
        found.update({v.id: v.status for v in views if v.type == "sleep"})
    return found


async def test_a_parent_waits_without_a_slot_and_its_children_finish(nodes):
    view = await nodes[0].submit("fanout_sleep", {"n": 3, "seconds": 0.5})
    done = await nodes[0].get(bytes.fromhex(view.id), wait_s=30)
    assert done.status == "done", done
    children = done.result["children"]
    assert len(children) == 3
    for child in children:
        assert (await nodes[1].get(bytes.fromhex(child))).status == "done"


async def test_cancelling_the_parent_cancels_its_children(nodes):
    view = await nodes[0].submit("fanout_sleep", {"n": 3, "seconds": 60})
    # Three children run on three nodes of one slot each: the parent holds none.
    await wait_for(lambda: len(sleep_jobs(nodes)) == 3 and sum(n.workers.busy for n in nodes) == 3, 20)
    parent = await nodes[0].get(bytes.fromhex(view.id))
    assert parent.status == "running"
    await nodes[0].cancel(bytes.fromhex(view.id), "enough")
    await wait_for(lambda: set(sleep_jobs(nodes).values()) == {"cancelled"}, 20)
    assert (await nodes[1].get(bytes.fromhex(view.id))).status == "cancelled"
