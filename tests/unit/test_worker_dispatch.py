"""Which offer a worker claims next: its own best-ranked jobs before the rest.

Under a backlog every offer is due at once; if every worker took them in the
same order, all of them would claim the same job and all but one would lose.
"""

from __future__ import annotations

import asyncio
import hashlib
from types import SimpleNamespace

import pytest

from workmesh.crypto.identity import Identity
from workmesh.node import rendezvous
from workmesh.node.handlers import Registry
from workmesh.node.leases import LeaseRules
from workmesh.node.worker import WorkerPool


def _pool(identity: Identity, peers: list[bytes], now: list[float]) -> WorkerPool:
    router = SimpleNamespace(contacts=lambda: [SimpleNamespace(id=p) for p in peers])
    return WorkerPool(
        identity,
        SimpleNamespace(router=router),
        Registry(load_entry_points=False),
        slots=1,
        rules=LeaseRules(),
        monotonic=lambda: now[0],
        wall_ms=lambda: int(now[0] * 1000),
        run_cpu=None,
        runnable_max=1000,
    )


def _drain_order(pool: WorkerPool, now: float) -> list[bytes]:
    order = []
    while True:
        job_id, _ = pool._next_due(now)
        if job_id is None:
            return order
        pool._take(job_id)
        order.append(job_id)


async def test_a_backlogged_worker_takes_the_jobs_it_ranks_first_for_before_the_others():
    me = Identity.generate()
    peers = [hashlib.blake2b(bytes([i]), digest_size=20).digest() for i in range(2)]
    now = [100.0]
    pool = _pool(me, peers, now)
    jobs = [hashlib.blake2b(b"job%d" % i, digest_size=20).digest() for i in range(60)]
    for job_id in jobs:
        pool.offer(job_id, "echo")
    mine = [j for j in jobs if rendezvous.rank(j, me.node_id, peers) == 0]
    assert 0 < len(mine) < len(jobs)

    order = _drain_order(pool, now[0] + 10.0)  # long after every claim delay: all due

    assert sorted(order) == sorted(jobs)  # every offer is still taken
    assert order[: len(mine)] == mine  # its own first, oldest first
    assert order[len(mine) :] == [j for j in jobs if j not in mine]  # then the rest, oldest first



def test_a_reannounced_job_waits_for_the_replicas_to_settle_even_for_the_best_ranked_worker():
    """A re-announcement (no signed submission along) may come from the first
    replica to judge an old lease stale; the others judge it a few
    milliseconds later on their own clocks. The best-ranked worker claiming at
    once won only a minority and the next-ranked one took the rest (a split
    vote, a whole lease lost): it waits the settle delay first, and the rank
    order still holds. A first announcement is claimed at once."""
    me = Identity.generate()
    peers = [hashlib.blake2b(bytes([i]), digest_size=20).digest() for i in range(3)]
    now = [100.0]
    pool = _pool(me, peers, now)
    jobs = [hashlib.blake2b(b"job%d" % i, digest_size=20).digest() for i in range(40)]
    best = next(j for j in jobs if rendezvous.rank(j, me.node_id, peers) == 0)
    second = next(j for j in jobs if rendezvous.rank(j, me.node_id, peers) == 1)
    settle = rendezvous.REANNOUNCED_SETTLE_S
    assert settle > 0

    pool.offer(best, "echo")
    pool.offer(second, "echo")
    assert pool._next_due(now[0] + settle * 0.99) == (None, now[0] + settle)
    assert pool._next_due(now[0] + settle)[0] == best
    assert pool._runnable[second].not_before == pytest.approx(now[0] + settle + rendezvous.claim_delay_s(1))

    fresh = next(j for j in jobs if j not in (best, second) and rendezvous.rank(j, me.node_id, peers) == 0)
    pool.offer(fresh, "echo", first=("submission", "placement"))  # what a first announcement carries
    assert pool._next_due(now[0]) == (fresh, None)


async def test_a_claim_with_the_submission_cancelled_before_it_ran_still_answers_the_submitter():
    """An attempt task cancelled before its first step (the node stopping; in
    the simulator, a crash) never ran the code that tells the submitter what
    its placing store achieved: the submission waited for ever (cancelrace,
    seed 64, 10% loss: the run's load phase never ended). It is told "nothing
    stored" and places the job itself."""
    from tests.unit.strategies import placement, submit

    now = [100.0]
    pool = _pool(Identity.generate(), [], now)
    job = submit()
    placed = pool.take_fresh(job, placement(job))
    assert placed is not None
    pool.stop()  # cancels the attempt before it ever ran
    assert await asyncio.wait_for(placed, 5) is None


def test_an_offer_says_whether_a_free_slot_here_serves_it_so_gossip_forwards_only_the_rest():
    """Gossip forwards an announcement only when no slot here will take it
    (node/gossip.py): the pool answers True for a job type it runs while a
    slot is free, False when every slot is busy or it has no handler."""
    me = Identity.generate()
    now = [100.0]
    pool = _pool(me, [], now)
    jobs = [hashlib.blake2b(b"job%d" % i, digest_size=20).digest() for i in range(3)]
    assert pool.offer(jobs[0], "echo") is True
    assert pool.offer(jobs[0], "echo") is True  # heard again: still served here
    assert pool.offer(jobs[1], "no-such-type") is False
    pool._executing = pool.slots  # every slot running an attempt
    assert pool.offer(jobs[2], "echo") is False
    assert jobs[2] in pool._runnable  # still queued for when a slot frees
