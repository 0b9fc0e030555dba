"""A job accepted during a partition is found by a read right after the heal.

Its replicas were placed on the far side of the split, and the reader had
evicted them (they were silent while the mesh was split). A read that finds
nothing pings the evicted contacts first, so they rejoin its table and its
wider search reaches them. That round of pings must begin after the read
missed: reads that missed during the partition pinged them in vain, and the
simulator found a read right after the heal answering "not found" because a
round 4 s earlier had used up a once-per-5-s allowance."""

from __future__ import annotations

import asyncio
import os
from types import SimpleNamespace

from workmesh.dht.contract import Fetched
from workmesh.dht.routing import Contact
from workmesh.node.reads import read_job


class Store:
    def state(self, job_id):
        return None

    def is_gone(self, job_id):
        return False

    def state_of(self, job_id, facts):
        return SimpleNamespace(replicas=(), facts=facts) if facts else None


class Mesh:
    """A reader whose routing table lost the job's holders during a
    partition: they sit among its evicted contacts until a ping reaches them."""

    def __init__(self) -> None:
        self.healed = False
        self.holder = Contact(os.urandom(20), "10.0.0.9", 4000, os.urandom(32))
        self.table: list[Contact] = []
        self.dormant = [self.holder]
        self.rounds = 0
        self.records = Store()
        self.config = SimpleNamespace(replicas=3)
        self.clock = SimpleNamespace(monotonic=lambda: 100.0)  # the reads come within a second
        self.router = SimpleNamespace(find_neighbors=lambda target, k: list(self.table)[:k])

    async def fetch(self, key, *, also=(), until_found=False, skip=(), **kw):
        asked = {c.id for c in self.table} | set(also)
        if self.holder.id in asked and self.healed:
            return Fetched(["fact"], 1, answered_ids=frozenset({self.holder.id}))
        return Fetched([], 0)

    async def replicas_for(self, key, **kw):
        return list(self.table)

    def has_dormant(self) -> bool:
        return bool(self.dormant)

    async def revive(self, count: int) -> int:
        self.rounds += 1
        await asyncio.sleep(0)
        if not self.healed:
            return 0  # the pings crossed the split: nobody answered
        self.table += self.dormant
        self.dormant = []
        return 1


async def test_a_read_right_after_the_heal_finds_the_job_placed_across_the_split():
    mesh = Mesh()
    job = os.urandom(20)
    state, _ = await read_job(mesh, job)  # during the partition: nobody answers
    assert state is None and mesh.rounds == 1
    mesh.healed = True
    state, answered = await read_job(mesh, job)  # at once after the heal
    assert state is not None and answered >= 1
    assert mesh.rounds == 2


async def test_reads_that_miss_together_share_one_round_of_pings():
    mesh = Mesh()
    results = await asyncio.gather(*(read_job(mesh, os.urandom(20)) for _ in range(20)))
    assert all(state is None for state, _ in results)
    assert mesh.rounds <= 2  # the round in flight and the one after it, not one per read
