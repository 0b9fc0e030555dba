"""When a replica looks at a job again (the re-announcement safety net)."""

from __future__ import annotations

from workmesh.node import lifecycle as L
from workmesh.node.jobindex import JobIndex
from workmesh.node.leases import LeaseRules, Observations, lease_deadline, observe
from tests.unit.strategies import REPLICAS, WORKERS, claim, lease, placement, submit

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
    index.update(state, 0.0, deadline, rank=1)

    assert _due_ids(index, deadline - 0.01) == []
    assert _due_ids(index, deadline) == [job.job_id]


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
