"""Replica-set repair in the pure core: epochs of a job's replica sets (issue 13, item 3).

A new replica set (a ``config`` fact) takes effect once a quorum of the then
current set sealed it at one ballot of the job's consensus; from then on
the new set owns every ballot above that one, and only its members' grants
and steps count there.
"""

from __future__ import annotations

from tests.unit.strategies import REPLICAS, WORKERS, claim, lease, placement, submit
from workmesh.node import consensus
from workmesh.node import facts as F
from workmesh.node import lifecycle as L
from workmesh.node.leases import LeaseRules, Observations, decide_claim

JOB = submit(max_attempts=2, replicas=3, quorum=2, lease_ms=1000)
PLACE = placement(JOB)  # REPLICAS[0..2]
R0, R1, R2, R3 = REPLICAS[:4]
W = WORKERS[0]


def config(epoch: int, members, by=R0) -> F.Fact:
    return F.sign(by, F.CONFIG, F.Config(JOB.job_id, epoch, b"".join(m.node_id for m in members), 5))


def step(replica, step_name: str, ballot: tuple, subject: F.Fact | None) -> F.Fact:
    a, r, p = ballot
    body = F.BallotStep(JOB.job_id, step_name, a, r, p, subject.fact_id if subject else b"", (), 0)
    return F.sign(replica, F.BALLOT, body)


def result(worker, attempt: int, grants) -> F.Fact:
    return F.sign(worker, F.RESULT, F.Result(JOB.job_id, attempt, F.OK, b'{"v":1}', tuple(grants), 9))


B1 = (0, 1, R0.node_id)  # the repair's ballot
C1 = config(1, (R0, R1, R3))  # R2 left for good; R3 replaces it


def test_a_new_replica_set_takes_effect_once_a_quorum_of_the_old_one_sealed_it() -> None:
    base = [JOB, PLACE, C1]
    assert L.derive([*base, step(R0, F.SEAL, B1, C1)]).epoch == 0  # one seal is not a quorum
    assert L.derive([*base, step(R0, F.SEAL, B1, C1), step(R3, F.SEAL, B1, C1)]).epoch == 0  # R3 is no member yet
    state = L.derive([*base, step(R0, F.SEAL, B1, C1), step(R1, F.SEAL, B1, C1)])
    assert (state.epoch, state.epoch_start, state.replicas) == (1, B1, (R0.node_id, R1.node_id, R3.node_id))
    assert state.is_replica(R3.node_id) and not state.is_replica(R2.node_id)
    wrong_epoch = config(2, (R0, R1, R3))
    assert L.derive([*base, wrong_epoch, step(R0, F.SEAL, B1, wrong_epoch), step(R1, F.SEAL, B1, wrong_epoch)]).epoch == 0


def test_after_a_repair_only_the_new_sets_grants_and_seals_count() -> None:
    repaired = [JOB, PLACE, C1, step(R0, F.SEAL, B1, C1), step(R1, F.SEAL, B1, C1)]
    gone = lease(R2, JOB, 1, W)
    new = lease(R3, JOB, 1, W)
    assert L.derive([*repaired, lease(R0, JOB, 1, W), gone]).lease_attempt == 0  # the gone replica's grant is void
    assert L.derive([*repaired, lease(R0, JOB, 1, W), new]).lease_attempt == 1
    ok = result(W, 1, [lease(R0, JOB, 1, W), new])
    at = (1, 0, W.node_id)
    assert L.derive([*repaired, ok, step(R0, F.SEAL, at, ok), step(R2, F.SEAL, at, ok)]).decided is None  # R2 left
    done = L.derive([*repaired, ok, step(R0, F.SEAL, at, ok), step(R3, F.SEAL, at, ok)])
    assert done.status == L.DONE and done.decided == ok
    # A result proven only by grants of the old set counts for nothing after the repair.
    stale = result(W, 1, [lease(R0, JOB, 1, W), gone])
    assert stale not in L.derive([*repaired, stale]).facts


def test_a_survivor_grants_in_the_new_set_and_a_newcomer_votes() -> None:
    promise = step(R0, F.PROMISE, B1, None)
    repaired = [JOB, PLACE, C1, promise, step(R0, F.SEAL, B1, C1), step(R1, F.SEAL, B1, C1)]
    state = L.derive([*repaired, claim(W, JOB, 1)])
    assert consensus.acceptor(state, R0.node_id).promised is None  # the old epoch's steps are not its state
    body = decide_claim(state, claim(W, JOB, 1), R0.node_id, Observations(), 0.0, LeaseRules())
    assert isinstance(body, F.Grant) and body.attempt == 1
    ok = result(W, 1, [lease(R0, JOB, 1, W), lease(R3, JOB, 1, W)])
    vote = consensus.on_proposal(L.derive([*repaired, ok]), ok, R3.node_id)
    assert isinstance(vote, F.BallotStep) and vote.subject == ok.fact_id


def test_a_repair_is_a_subject_only_for_the_next_epoch_and_never_at_a_workers_ballot() -> None:
    state = L.derive([JOB, PLACE, C1])
    ok = consensus.admissible(state, {C1.fact_id: C1})
    assert ok(consensus.Ballot(0, 1, R0.node_id), C1.fact_id)
    assert not ok(consensus.Ballot(1, 0, R0.node_id), C1.fact_id)  # round 0 is a worker's own result only
    later = config(2, (R0, R1, R3))
    assert not consensus.admissible(state, {later.fact_id: later})(consensus.Ballot(0, 1, R0.node_id), later.fact_id)
