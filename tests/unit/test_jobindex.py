"""When a replica looks at a job again (the re-announcement safety net)."""

from __future__ import annotations

from workmesh.node import facts as F
from workmesh.node import lifecycle as L
from workmesh.node.jobindex import JobIndex
from workmesh.node.leases import LeaseRules, Observations, lease_deadline, observe
from tests.unit.strategies import REPLICAS, WORKERS, claim, lease, placement, quorum_result, submit

RULES = LeaseRules()
FIRST_S = 10.0


def _due_ids(index: JobIndex, now: float) -> list[bytes]:
    return [s.job_id for s in index.pop_due(now, 100)]


def test_a_job_first_seen_with_its_claim_granted_is_due_when_that_lease_goes_stale():
    """The accepting node claims in the write that places the job: a replica's
    first sight of the job already holds its grant. If that worker dies before
    confirming, the job must come back at the lease's stale time, not after
    the slower re-announcement of an unclaimed job."""
    me, worker = REPLICAS[0], WORKERS[0]
    job = submit(max_attempts=2, replicas=3, quorum=2, lease_ms=1000)
    facts = [job, placement(job), claim(worker, job, 1, 1), lease(me, job, 1, worker)]
    state = L.derive(facts)
    assert state.status == L.PENDING  # one grant: not confirmed
    obs = Observations()
    observe(obs, facts, me.node_id, 0.0)
    deadline = lease_deadline(state, me.node_id, obs, RULES)
    assert deadline is not None and deadline < FIRST_S

    index = JobIndex(100, FIRST_S, 60.0)
    index.update(state, 0.0, deadline, rank=0)

    assert _due_ids(index, deadline - 0.01) == []
    assert _due_ids(index, deadline) == [job.job_id]


def test_replicas_re_announce_a_retry_one_rank_step_apart_and_a_claim_in_between_silences_the_rest():
    """After an error result every replica's retry time is the same moment
    (the error plus the backoff). Were they all to re-announce it then, each
    announcement would reach its own set of workers and each of those would
    read the job: five replicas, five crowds of readers for one claim (the
    simulator's 200-node run: 25 re-announcements for 5 retried jobs). Each
    replica waits its rank's step instead; the first one's announcement draws
    the claim, and the claim, stored on the others, makes the job running with
    a new lease before their turn comes."""
    me, worker, other = REPLICAS[0], WORKERS[0], WORKERS[1]
    job = submit(max_attempts=3, replicas=3, quorum=2, lease_ms=1000)
    granted = [job, placement(job), claim(worker, job, 1, 1)] + [lease(r, job, 1, worker) for r in REPLICAS[:3]]
    failed = granted + [quorum_result(job, worker, 1, outcome=F.ERROR)]
    state = L.derive(failed)
    assert state.status == L.PENDING  # to be retried
    obs = Observations()
    observe(obs, granted, me.node_id, 0.0)
    observe(obs, failed, me.node_id, 1.0)
    retry_at = lease_deadline(state, me.node_id, obs, RULES)
    assert retry_at is not None

    step = 1.0
    due_at = {}
    for rank in range(3):
        index = JobIndex(100, FIRST_S, 60.0, rank_step_s=step)
        index.update(state, 1.0, retry_at, rank=rank)
        assert _due_ids(index, retry_at + rank * step - 0.01) == []
        assert _due_ids(index, retry_at + rank * step) == [job.job_id]
        due_at[rank] = retry_at + rank * step
    assert sorted(due_at.values()) == [due_at[0], due_at[1], due_at[2]] and len(set(due_at.values())) == 3

    # The second replica: between its retry time and its turn, the claim of
    # attempt 2 (drawn by the first replica's announcement) is stored here.
    index = JobIndex(100, FIRST_S, 60.0, rank_step_s=step)
    index.update(state, 1.0, retry_at, rank=1)
    claimed = failed + [claim(other, job, 2, 1)] + [lease(r, job, 2, other) for r in REPLICAS[:3]]
    running = L.derive(claimed)
    observe(obs, claimed, me.node_id, retry_at + 0.2)
    new_deadline = lease_deadline(running, me.node_id, obs, RULES)
    assert new_deadline is not None and new_deadline > retry_at + step
    index.update(running, retry_at + 0.2, new_deadline, rank=1)
    assert _due_ids(index, retry_at + step) == []  # silenced: nothing to re-announce


def test_an_unclaimed_job_is_due_after_the_first_re_announcement_delay_by_rank():
    job = submit(max_attempts=2, replicas=3, quorum=2, lease_ms=1000)
    state = L.derive([job, placement(job)])
    index = JobIndex(100, FIRST_S, 60.0)
    index.update(state, 0.0, None, rank=1)
    assert _due_ids(index, 2 * FIRST_S - 0.01) == []
    assert _due_ids(index, 2 * FIRST_S) == [job.job_id]


def test_a_job_this_node_accepted_is_listed_and_counted_but_never_due():
    """A job this node accepted (or ran) while another node is its replica:
    listed and counted here, re-announced only by its replicas, and read
    again until it is seen finished."""
    me = WORKERS[1]  # not among the placement's replicas
    job = submit(max_attempts=2, replicas=3, quorum=2, lease_ms=1000)
    state = L.derive([job, placement(job)])
    assert not state.is_replica(me.node_id)
    index = JobIndex(100, FIRST_S, 60.0)
    index.mark_own(job.job_id)
    assert index.is_own(job.job_id)
    assert index.unsettled(me.node_id, 10) == [job.job_id]  # nothing held yet: read it
    index.note(state)
    assert index.counts()["pending"] == 1
    assert [s.job_id for s in index.page(None, 10, None)[0]] == [job.job_id]
    assert _due_ids(index, 1e9) == []
    assert index.unsettled(me.node_id, 10) == [job.job_id]  # unfinished: read it again
    replica = REPLICAS[0]
    assert index.unsettled(replica.node_id, 10) == []  # a replica hears of every change itself


def test_a_running_jobs_stale_holder_is_not_staggered_by_rank():
    """Each replica judges a running holder stale on its own clock, from the
    renews it got, which may lag another replica's by a renew period. If the
    replica that judges it first is ranked below one that judges it later,
    a rank step made the takeover wait for the later one (the killed-worker
    test: 5.45 s after the kill against a bound of 5): a running job's lease
    deadline is taken as it is, at every rank."""
    worker = WORKERS[0]
    job = submit(max_attempts=2, replicas=3, quorum=2, lease_ms=1000)
    facts = [job, placement(job), claim(worker, job, 1, 1)] + [lease(r, job, 1, worker) for r in REPLICAS[:3]]
    state = L.derive(facts)
    assert state.status == L.RUNNING
    for rank in range(3):
        index = JobIndex(100, FIRST_S, 60.0, rank_step_s=1.0)
        index.update(state, 0.0, 2.5, rank=rank)
        assert _due_ids(index, 2.49) == []
        assert _due_ids(index, 2.5) == [job.job_id]
