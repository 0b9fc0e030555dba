"""Reads page through all of a key's facts (issue 13, item 5).

A ``fail`` job with an 8 KB message and eight attempts holds about 87 KB of
facts, more than one datagram: a node that is not one of its replicas reads
it over real UDP, page after page, and sees ``failed`` like the replicas.
The retry backoff is cut short (its doubling, 0.5 s to 30 s, would spend
about 45 s between the eight attempts): the reads are the point here.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import pytest

from workmesh.dht.config import DHTConfig
from workmesh.dht.server import RECORDS_PER_REPLY_BYTES
from workmesh.node import lifecycle
from workmesh.node.config import NodeConfig
from workmesh.node.leases import LeaseRules
from workmesh.node.node import Node


async def wait_for(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"{what}: not met within {timeout_s} s"
        await asyncio.sleep(0.02)


async def start_mesh(tmp_path, count: int, **config) -> list[Node]:
    dht = replace(DHTConfig(), replicas=3, quorum=2)
    nodes = []
    for i in range(count):
        cfg = NodeConfig(data_dir=str(tmp_path / f"n{i}"), dht=dht, reannounce_first_s=0.2, reannounce_max_s=0.5, **config)
        node = Node(cfg)
        await node.start()
        nodes.append(node)
    for node in nodes[1:]:
        await node.join([nodes[0].dht.address])
    await wait_for(lambda: all(len(n.dht.router) == count - 1 for n in nodes), 10, "full routing tables")
    return nodes


@pytest.mark.slow
async def test_a_failed_job_of_87_kb_of_facts_reads_failed_from_a_non_replica(tmp_path):
    fast_retries = LeaseRules(backoff_base_s=0.05, backoff_cap_s=0.4)
    nodes = await start_mesh(tmp_path, 6, workers=1, lease_s=5.0, leases=fast_retries)
    try:
        view = await nodes[0].submit("fail", {"message": "x" * 8000}, max_attempts=8)
        job_id = bytes.fromhex(view.id)

        def decided_on_replicas() -> bool:
            states = [n.jobs.derive_local(job_id) for n in nodes]
            placed = [s for s in states if s is not None and s.replicas]
            return bool(placed) and all(
                n.jobs.derive_local(job_id) is not None and n.jobs.derive_local(job_id).status == lifecycle.FAILED
                for n in nodes if n.identity.node_id in placed[0].replicas
            )

        await wait_for(decided_on_replicas, 120, "the job failed on its replicas")
        replicas = next(s.replicas for n in nodes if (s := n.jobs.derive_local(job_id)) is not None and s.replicas)
        holder = next(n for n in nodes if n.identity.node_id in replicas)
        facts = holder.store.get(job_id)
        assert sum(len(f.raw) for f in facts) > 80_000 > RECORDS_PER_REPLY_BYTES  # more than one page
        assert lifecycle.derive(facts).attempts == 8

        reader = next(n for n in nodes if n.identity.node_id not in replicas)
        for key in list(reader.store.keys()):  # what a non-replica may hold by hand-off goes
            if key == job_id:
                reader.store.drop(key)
        pages_before = sum(n.dht.stats["find_records_pages"] for n in nodes)
        seen = await reader.get(job_id)
        assert seen.status == lifecycle.FAILED
        assert seen.attempts == 8
        assert sum(n.dht.stats["find_records_pages"] for n in nodes) - pages_before >= 4  # >= 2 replicas x 2 pages
        assert reader.dht.stats["reads_incomplete"] == 0
        # and a long poll there ends at once
        assert (await reader.get(job_id, wait_s=5.0)).status == lifecycle.FAILED
    finally:
        for node in nodes:
            await node.stop()
