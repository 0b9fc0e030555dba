"""What reads and long polls cost a node, on a real mesh (in-process nodes, real UDP and SQLite).

- A ``?wait=`` on an unknown or finished id leaves nothing in the node's
  registry of waiters (it once kept one entry per id, forever).
- Long polls on a node that is not one of the job's replicas share one read
  per job and back off, instead of each re-reading every 0.5 s.
- A read of an id nobody knows costs one lookup and at most 2r record
  requests (it cost two lookups and 3r).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time

import pytest

from workmesh.dht.config import DHTConfig
from workmesh.node.config import NodeConfig
from workmesh.node.errors import JobNotFound
from workmesh.node.node import Node

R = 3
K = 6  # below the mesh size, so routing tables split and reads look nodes up
NODES = 10


def config(path, workers: int = 0) -> NodeConfig:
    return NodeConfig(
        data_dir=str(path), workers=workers, reannounce_first_s=3600.0,
        dht=DHTConfig(k=K, replicas=R, quorum=2),
    )


async def wait_for(predicate, timeout_s: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"{what}: not met before the deadline"
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def mesh(tmp_path, count: int = NODES):
    nodes: list[Node] = []
    try:
        for i in range(count):
            node = Node(config(tmp_path / f"n{i}"))
            await node.start()
            nodes.append(node)
        for node in nodes[1:]:
            await node.join([nodes[0].dht.address])
        for node in nodes:  # everyone has looked itself up and knows its neighbourhood
            await node.join([nodes[0].dht.address])
        await wait_for(lambda: all(len(n.dht.router) >= min(K, count - 1) for n in nodes), what="routing tables filled")
        yield nodes
    finally:
        for node in nodes:
            await node.stop()


async def test_a_wait_on_an_unknown_or_finished_id_leaves_no_waiter(tmp_path):
    async with mesh(tmp_path, 5) as nodes:
        node = nodes[1]
        for _ in range(200):
            with pytest.raises(JobNotFound):
                await node.get(os.urandom(20), wait_s=0.1)
        assert len(node.watch) == 0
        assert node.status()["waits"]["jobs_watched"] == 0
        # A finished (cancelled) job: answered at once, nothing kept either.
        view = await node.submit("echo", {"x": 1})
        await node.cancel(bytes.fromhex(view.id), "test")
        for reader in nodes:
            done = await reader.get(bytes.fromhex(view.id), wait_s=30.0)
            assert done.status == "cancelled"
            assert len(reader.watch) == 0, "a finished job's wait left a waiter"


async def test_long_polls_on_a_non_replica_share_reads_and_back_off(tmp_path):
    async with mesh(tmp_path) as nodes:
        view = await nodes[0].submit("echo", {"x": 2})  # no worker anywhere: it stays pending
        job_id = bytes.fromhex(view.id)
        placed = set((await nodes[0].jobs.read_state(job_id)).replicas)
        reader = next(n for n in nodes if n.identity.node_id not in placed and n is not nodes[0])
        before = reader.jobs.counters["reads"]
        started = time.monotonic()
        views = await asyncio.gather(*(reader.get(job_id, wait_s=1.6) for _ in range(50)))
        took = time.monotonic() - started
        reads = reader.jobs.counters["reads"] - before
        print(f"50 waits of 1.6 s on a non-replica: {reads} reads of the replicas in {took:.2f}s")
        assert {v.status for v in views} == {"pending"}
        # One shared read at the start, then at 0.05, 0.15, 0.35, 0.75, 1.55 s:
        # each waiter re-reading every 0.5 s on its own cost 50 x 5.
        assert reads <= 8, reads
        assert len(reader.watch) == 0
        # ...and a change is still seen at once: cancel while they wait.
        waits = [asyncio.create_task(reader.get(job_id, wait_s=20.0)) for _ in range(10)]
        await wait_for(lambda: reader.watch.statistics()["waiting"] == 10, what="waiters registered")
        started = time.monotonic()
        await nodes[0].cancel(job_id, "test")
        done = await asyncio.gather(*waits)
        assert {v.status for v in done} == {"cancelled"}
        print(f"the cancel reached the 10 waiters after {time.monotonic() - started:.2f}s")
        assert time.monotonic() - started < 5.0
        assert len(reader.watch) == 0


async def test_a_read_of_an_unknown_id_costs_one_lookup_and_at_most_2r_record_requests(tmp_path):
    async with mesh(tmp_path) as nodes:
        reader = nodes[3]
        # The joins' own lookups must be over before the reads are counted.
        await wait_for(lambda: all(n.dht.protocol.statistics()["outstanding_requests"] == 0 for n in nodes),
                       10.0, "the joins' requests answered")
        stats = reader.dht.stats
        proto = reader.dht.protocol.counters
        ids = [os.urandom(20) for _ in range(30)]
        lookups, records, requests = stats["lookups"], stats.get("record_requests", 0), proto["requests_out"]
        for job_id in ids:
            with pytest.raises(JobNotFound):
                await reader.get(job_id)
        lookups = (stats["lookups"] - lookups) / len(ids)
        records = (stats.get("record_requests", 0) - records) / len(ids)
        requests = (proto["requests_out"] - requests) / len(ids)
        print(f"one random-id read: {lookups:.2f} lookups, {records:.2f} record requests, "
              f"{requests:.2f} DHT requests in all (r={R}, k={K}, {NODES} nodes)")
        assert lookups <= 1.0, lookups
        assert R <= records <= 2 * R, records


async def test_a_read_by_a_node_that_does_not_hold_the_job_asks_each_node_once(tmp_path):
    """Issue 15: a reader without the job read the closest nodes, then the
    placed replicas, and the second read asked the same nodes again (each
    answered with the whole job twice: half the bytes of a churn run's
    ``find_records`` replies)."""
    async with mesh(tmp_path) as nodes:
        view = await nodes[0].submit("echo", {"x": 3})  # no worker anywhere: it stays pending
        job_id = bytes.fromhex(view.id)
        placed = set((await nodes[0].jobs.read_state(job_id)).replicas)
        readers = [n for n in nodes if n.identity.node_id not in placed and n is not nodes[0]]
        await wait_for(lambda: all(n.dht.protocol.statistics()["outstanding_requests"] == 0 for n in nodes),
                       10.0, "the submission's requests answered")
        for reader in readers:
            assert reader.dht.records.state(job_id) is None  # it does not hold the job
            stats = reader.dht.stats
            records, pages = stats.get("record_requests", 0), sum(n.dht.stats["find_records_pages"] for n in nodes)
            state = await reader.jobs.read_state(job_id)
            assert state.status == "pending" and set(state.replicas) == placed
            asked = stats.get("record_requests", 0) - records
            served = sum(n.dht.stats["find_records_pages"] for n in nodes) - pages
            # The r closest it found, plus any placed replica not among them: each once.
            assert asked <= 2 * R and served <= asked, (asked, served)
            closest = {c.id for c in await reader.dht.replicas_for(job_id)}
            assert asked <= len(closest | placed), (asked, closest, placed)
