"""The splits of issue 13, item 1, against the real replica code and round driver.

Five real :class:`JobReplica` objects (one down), driven the way the DHT shell
drives them, and the real :class:`RoundDriver` for the proposers' rounds; only
the transport is a dictionary (a unit test of the pure core, no clock, no
sockets). Counting seals as votes, both splits below left the job pending for
good: a cancel racing a result (2/2, the fifth replica gone) and a worker
that files different results to different replicas (2/2 with one down).
"""

from __future__ import annotations

import asyncio

from tests.unit.strategies import REPLICAS, SUBMITTER, WORKERS, cancel, claim, lease, placement, result, submit
from workmesh.dht.contract import StoreOutcome
from workmesh.node import facts as F
from workmesh.node import lifecycle
from workmesh.node.leases import LeaseRules
from workmesh.node.proposer import RoundDriver
from workmesh.node.replica import JobReplica

JOB = submit(max_attempts=1, replicas=5, quorum=3, lease_ms=1000)
PLACE = placement(JOB)  # REPLICAS[0..4]
KEY = JOB.job_id
W = WORKERS[0]
DOWN = REPLICAS[4].node_id


class Mesh:
    """The five replicas' stores, and a store() with DHTServer.store's signature."""

    def __init__(self) -> None:
        self.replicas = {
            r.node_id: JobReplica(r, LeaseRules(), lambda: 0.0, lambda: 1_767_225_600_000, lambda k, n: None)
            for r in REPLICAS[:5]
        }
        self.held: dict[bytes, dict[bytes, F.Fact]] = {rid: {} for rid in self.replicas}

    async def store(self, key, records, *, targets, quorum=None, **_) -> StoreOutcome:
        produced, refusals, stored, answered = [], {}, set(), set()
        for rid in targets:
            if rid == DOWN:
                continue
            held = self.held[rid]
            adm = self.replicas[rid].admit(key, list(records), list(held.values()), b"\0" * 20)
            for f in [*adm.accept, *adm.produced]:
                held[f.fact_id] = f
            answered.add(rid)
            if adm.refused:
                refusals[rid] = adm.refused
            else:
                stored.add(rid)
            produced.extend(adm.produced)
        return StoreOutcome(len(stored), len(answered), len(targets), produced, refusals, frozenset(stored), frozenset(answered))

    def deliver(self, facts, to) -> None:
        asyncio.run(self.store(KEY, facts, targets=[r.node_id for r in to]))

    def everything(self) -> list[F.Fact]:
        return [f for held in self.held.values() for f in held.values()]

    def state(self) -> lifecycle.JobState:
        return lifecycle.derive(self.everything(), job_id=KEY)


def _leased() -> tuple[Mesh, tuple[F.Fact, ...]]:
    """The job placed, and attempt 1 granted to W by the four live replicas."""
    mesh = Mesh()
    mesh.deliver([JOB, PLACE, claim(W, JOB, 1)], REPLICAS[:4])
    grants = tuple(lease(r, JOB, 1, W) for r in REPLICAS[:3])
    assert all(g in mesh.held[g.author_id].values() for g in grants)
    return mesh, grants


def test_a_cancel_racing_a_result_with_a_replica_gone_is_decided_one_way():
    mesh, grants = _leased()
    ok = result(W, JOB, 1, grants, F.OK)
    mesh.deliver([ok], REPLICAS[:2])  # two replicas see the result first...
    mesh.deliver([cancel(JOB)], REPLICAS[2:4])  # ...two others the cancel; the fifth is gone
    assert mesh.state().decided is None  # split: with seals as votes, it stayed so for good
    # The submitter's node runs the cancel's round (node/jobs.py).
    driver = RoundDriver(SUBMITTER, mesh.store, lambda: 1_767_225_600_000)
    out = asyncio.run(driver.recover(mesh.state(), own=cancel(JOB), extra=[cancel(JOB)]))
    assert out.decided is not None
    state = mesh.state()
    assert state.terminal and state.decided == out.subject
    # Nothing decided can be undone: the worker's own round now finishes nothing else.
    worker = RoundDriver(W, mesh.store, lambda: 1_767_225_600_000)
    again = asyncio.run(worker.run(mesh.state(), own=ok, grants=list(grants)))
    assert again.decided is None or again.subject == state.decided
    assert mesh.state().decided == state.decided


def test_a_worker_filing_two_results_to_different_replicas_is_decided_one_way():
    mesh, grants = _leased()
    a = result(W, JOB, 1, grants, F.OK, b'{"v":"a"}')
    b = result(W, JOB, 1, grants, F.OK, b'{"v":"b"}')
    mesh.deliver([a], REPLICAS[:2])
    mesh.deliver([b], REPLICAS[2:4])
    votes = [f for f in mesh.everything() if f.kind == F.BALLOT and f.body.step == F.VOTE]
    assert {v.body.subject for v in votes} == {a.fact_id, b.fact_id}  # 2/2, no certificate
    assert mesh.state().decided is None
    # A replica's recovery round (node/deciding.py) decides one of them.
    driver = RoundDriver(REPLICAS[0], mesh.store, lambda: 1_767_225_600_000)
    out = asyncio.run(driver.recover(mesh.state()))
    assert out.subject in (a, b)
    assert mesh.state().status == lifecycle.DONE and mesh.state().decided == out.subject
    # A second recovery, by another replica, decides the same subject.
    other = RoundDriver(REPLICAS[3], mesh.store, lambda: 1_767_225_600_000)
    second = asyncio.run(other.recover(mesh.state()))
    assert second.subject == out.subject


def test_a_replica_handed_a_result_again_answers_with_the_vote_it_signed_without_signing_again():
    """Issue 15: a replica re-signed its vote (and seal) each time a result or a
    vote reached it again, 6.1 votes and 4.3 seals signed per job at r = 3
    where 3 and 3 are the floor. Equal content is an equal v2 fact id, so the
    replica hands back the fact it holds: the same bytes, no new signature."""
    from workmesh.crypto.identity import verify_statistics

    mesh, grants = _leased()
    ok = result(W, JOB, 1, grants, F.OK)
    replica = REPLICAS[0].node_id
    first = asyncio.run(mesh.store(KEY, [ok], targets=[replica])).produced
    votes = [f for f in first if f.kind == F.BALLOT and f.body.step == F.VOTE]
    assert len(votes) == 1
    signed = verify_statistics()["facts_signed"]
    again = asyncio.run(mesh.store(KEY, [ok], targets=[replica])).produced
    assert [f.raw for f in again if f.kind == F.BALLOT and f.body.step == F.VOTE] == [votes[0].raw]
    assert verify_statistics()["facts_signed"] == signed


def test_what_one_admission_signs_shares_one_signature_and_each_fact_still_verifies_alone():
    """Issue 15, item 1: a replica handed a result that completes a certificate
    answers with its vote and its seal; it signed each alone (two signatures,
    and two verifications at every node that reads them). Now what one
    admission signs is one batch: one signature, each fact with its proof."""
    from workmesh.crypto.identity import verify_statistics

    mesh, grants = _leased()
    ok = result(W, JOB, 1, grants, F.OK)
    mesh.deliver([ok], REPLICAS[:2])  # two votes: one short of the quorum of 3
    votes = [f for f in mesh.everything() if f.kind == F.BALLOT and f.body.step == F.VOTE]
    third = REPLICAS[2].node_id
    before = verify_statistics()["signatures"]
    answer = asyncio.run(mesh.store(KEY, [ok, *votes], targets=[third])).produced
    mine = {f.body.step: f for f in answer if f.kind == F.BALLOT and f.author_id == third}
    assert set(mine) == {F.VOTE, F.SEAL}  # its vote makes the certificate, so it seals at once
    assert verify_statistics()["signatures"] - before == 1
    assert mine[F.VOTE].signature == mine[F.SEAL].signature
    for fact in mine.values():  # each decodes and verifies alone, from its own bytes
        again = F.decode(fact.raw, key=KEY)
        assert (again.fact_id, again.kind, again.body) == (fact.fact_id, fact.kind, fact.body)
    # What the store holds is what was answered: the signed facts, no stand-in left unsigned.
    assert all(f.raw and f.signature for f in mesh.everything())
