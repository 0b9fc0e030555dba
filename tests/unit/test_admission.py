"""Replica-side checks of new facts (node/admission.py), alone and inside a replica."""

from __future__ import annotations

from workmesh.node import facts as F
from workmesh.node.admission import AdmissionChecks
from tests.unit.strategies import WORKERS, claim, placement, renew, submit
from tests.unit.test_forgery import JOB, W0, W1, Store, own_grants

WALL = 1_767_225_600_000  # the wall clock of test_forgery.Store's replica
TIMEOUT_S = JOB.body.timeout_ms / 1000
LEASE_S = JOB.body.lease_ms / 1000


def placed_store() -> Store:
    s = Store()
    assert not s.send([JOB, placement(JOB)]).refused
    return s


def test_a_claim_stamped_far_in_the_future_gets_no_grant():
    s = placed_store()
    adm = s.send([claim(W0, JOB, 1, ts_ms=2**53)])
    assert own_grants(adm, F.LEASE) == [] and "ahead of this replica's clock" in adm.refused[0][1]
    assert s.replica.statistics()["refused_future_ts"] == 1
    # An honest claim for the same attempt, stamped now, is granted: nothing was pinned.
    adm = s.send([claim(W1, JOB, 1, ts_ms=WALL)])
    assert len(own_grants(adm, F.LEASE)) == 1


def test_a_stamp_within_the_window_is_fine():
    checks = AdmissionChecks(window_ms=60_000)
    assert checks.judge(claim(W0, JOB, 1, ts_ms=WALL + 59_000), JOB, 0.0, WALL) is None
    assert checks.judge(claim(W0, JOB, 2, ts_ms=WALL + 61_000), JOB, 0.0, WALL) is not None
    assert checks.judge(claim(W0, JOB, 3, ts_ms=1), JOB, 0.0, WALL) is None  # the past pins nothing


def test_a_worker_cannot_renew_past_the_jobs_timeout():
    s = placed_store()
    start = s.clock.now
    assert len(own_grants(s.send([claim(W0, JOB, 1, ts_ms=WALL)]), F.LEASE)) == 1
    accepted_until = None
    version = 0
    while s.clock.now < start + TIMEOUT_S + LEASE_S + 5:
        s.clock.now += LEASE_S / 2
        version += 1
        adm = s.send([renew(W0, JOB, 1, ts_ms=WALL + version)])
        if adm.refused:
            assert "past the job's timeout" in adm.refused[0][1]
            break
        accepted_until = s.clock.now
    else:
        raise AssertionError("renewed for ever")
    assert TIMEOUT_S <= accepted_until - start <= TIMEOUT_S + LEASE_S
    assert s.replica.statistics()["refused_past_timeout"] == 1


def test_the_timeout_clock_is_per_worker_and_bounded():
    checks = AdmissionChecks(attempts_max=10)
    for i in range(100):
        job = submit(nonce=i.to_bytes(16, "big"))
        assert checks.judge(claim(W0, job, 1, ts_ms=WALL), job, 0.0, WALL) is None
    assert checks.statistics()["attempts_timed"] == 10
    # Another worker given the same (unconfirmed) attempt later starts its own clock.
    checks.judge(claim(W0, JOB, 1, ts_ms=WALL), JOB, 0.0, WALL)
    checks.judge(claim(W1, JOB, 1, ts_ms=WALL), JOB, TIMEOUT_S, WALL)
    assert checks.judge(renew(W1, JOB, 1, ts_ms=WALL), JOB, TIMEOUT_S + 1, WALL) is None
    assert checks.judge(renew(W0, JOB, 1, ts_ms=WALL), JOB, TIMEOUT_S + LEASE_S + 1, WALL) is not None


def test_one_author_cannot_make_a_replica_store_without_end():
    checks = AdmissionChecks(facts_per_author_per_s=100.0, submits_per_author_per_s=10.0)
    jobs = [submit(nonce=i.to_bytes(16, "big")) for i in range(200)]
    admitted = sum(checks.judge(job, job, 0.0, WALL) is None for job in jobs)
    assert admitted == 50  # the submit burst (5 s of rate 10), all at one instant
    assert checks.statistics()["refused_author_rate"] == 150
    # Another author is not affected; the first one is let in again as its bucket refills.
    other = submit(nonce=b"\xff" * 16, by=WORKERS[1])
    assert checks.judge(other, other, 0.0, WALL) is None
    assert checks.judge(jobs[-1], jobs[-1], 1.0, WALL) is None
