"""Which facts a job leaves on its replicas, on a real mesh (in-process nodes,
real UDP and SQLite): none that nothing reads.

A job accepted by a node with a free worker slot is claimed in the write that
places it; when the replicas that granted the lease make a quorum with this
node's own, the proof of the lease (the grants) only has to reach the local
store. That store once also got a signed first renew: a signature and a fact
per job that no one needed, since the local replica had seen its own grant a
moment before (issue 15, item 6).
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from tests.integration.test_read_costs import wait_for
from workmesh.dht.config import DHTConfig
from workmesh.dht.records import StorageLimits
from workmesh.node import facts as F
from workmesh.node.config import NodeConfig
from workmesh.node.node import Node


@contextlib.asynccontextmanager
async def three_replicas(
    tmp_path, workers_on_first: int, store_limits: StorageLimits | None = None, dht: DHTConfig | None = None
):
    """Three in-process nodes that know each other; r = 3, so each is a replica
    of every job (``dht``: a DHTConfig with replicas=3 and quorum=2)."""
    nodes: list[Node] = []
    extra = {} if store_limits is None else {"store_limits": store_limits}
    dht = dht or DHTConfig(replicas=3, quorum=2)
    try:
        for i in range(3):
            workers = workers_on_first if i == 0 else 0
            node = Node(NodeConfig(data_dir=str(tmp_path / f"n{i}"), workers=workers, dht=dht, **extra))
            await node.start()
            nodes.append(node)
        for node in nodes[1:]:
            await node.join([nodes[0].dht.address])
        await wait_for(lambda: all(len(n.dht.router) == 2 for n in nodes), 15.0, "every node knows the others")
        yield nodes
    finally:
        for node in nodes:
            await node.stop()


async def test_a_job_run_by_its_accepting_replica_leaves_no_renew_and_runs_once(tmp_path):
    async with three_replicas(tmp_path, workers_on_first=1) as nodes:
        for i in range(5):
            view = await nodes[0].submit("echo", {"i": i})
            job_id = bytes.fromhex(view.id)
            done = await nodes[0].get(job_id, wait_s=30.0)
            assert (done.status, done.result) == ("done", {"i": i})
            await wait_for(lambda: all(n.store.state(job_id) is not None and n.store.state(job_id).status == "done"
                                       for n in nodes), 15.0, "every replica holds the decision")
            for node in nodes:
                facts = node.store.state(job_id).facts
                kinds = [f.kind for f in facts]
                assert F.RENEW not in kinds, (node.identity.node_id.hex()[:8], kinds)
                assert [f.attempt for f in facts if f.kind == F.CLAIM] == [1]  # claimed once, by node 0
        assert nodes[0].workers.counters["executions"] == 5


async def test_stores_to_one_replica_in_one_turn_go_as_one_request_and_its_answers_share_a_signature(tmp_path):
    """Issue 15, items 1 and 5: the stores a node sends one replica in one
    event-loop turn (a batch submission's jobs, a drain's rounds) leave as
    one ``store_many`` request; the replica judges them together, signs what
    it answers to all of them with one signature, and answers each key."""
    async with three_replicas(tmp_path, workers_on_first=0) as nodes:
        a, b = nodes[0], nodes[1]
        jobs = [bytes.fromhex((await a.submit("echo", {"i": i})).id) for i in range(4)]
        sent, keys = a.dht.stats["store_many_sent"], a.dht.stats["store_many_keys"]
        claims = [F.sign(a.identity, F.CLAIM, F.Claim(job_id, 1, int(time.time() * 1000))) for job_id in jobs]
        outcomes = await asyncio.gather(*(a.dht.store(c.job_id, [c], targets=[b.identity.node_id], quorum=1)
                                          for c in claims))
        assert a.dht.stats["store_many_sent"] - sent == 1 and a.dht.stats["store_many_keys"] - keys == len(jobs)
        grants = []
        for claim, outcome in zip(claims, outcomes):
            assert outcome.stored_on == 1, outcome  # each key answered on its own
            (grant,) = [g for g in outcome.produced if g.kind == F.GRANT and g.body.action == F.LEASE]
            assert (grant.job_id, grant.body.subject, grant.author_id) == (claim.job_id, a.identity.node_id,
                                                                           b.identity.node_id)
            again = F.decode(grant.raw, key=claim.job_id)  # each verifies alone, with its proof
            assert again.fact_id == grant.fact_id
            grants.append(grant)
        assert len({g.signature for g in grants}) == 1  # one signature for the replica's four answers
        for claim, grant in zip(claims, grants):  # and the replica stored what it answered
            assert grant in b.store.state(claim.job_id).facts


async def test_three_workers_that_split_attempt_1_three_ways_leave_one_winner_at_once(tmp_path):
    """Three workers claim attempt 1 of one job in the same turn; each node's
    own replica grants its own worker first (r = 3, quorum 2): a split vote
    nobody can win. It stalled the job for a whole lease until the grants went
    stale (10 s in the bench's batch drains). Now a replica that holds the
    three grants gives the attempt again at once to the next one to ask (the
    claims ask again within a second), and exactly one worker wins: a second
    winner would run the attempt twice."""
    async with three_replicas(tmp_path, workers_on_first=0) as nodes:
        job_id = bytes.fromhex((await nodes[0].submit("echo", {"split": 1})).id)
        await wait_for(lambda: all(n.store.state(job_id) is not None for n in nodes), 10.0, "every replica holds the job")
        states = [n.store.state(job_id) for n in nodes]
        assert all(s.highest_attempt == 0 for s in states)
        started = time.monotonic()
        won = await asyncio.gather(*(n.workers.claims.claim(s, (), n.log) for n, s in zip(nodes, states)))
        took = time.monotonic() - started
        winners = [w for w in won if w is not None]
        assert len(winners) == 1, won
        assert winners[0][0] == 1 and took < 2.0, (winners, took)
        merged = {f.fact_id: f for n in nodes for f in n.store.state(job_id).facts}
        assert sum(1 for f in merged.values() if f.kind == F.CLAIM and f.attempt == 1) == 3  # the race did happen
