"""Renewals judged by the replica alone (issue 13, item 4).

A renew that does not extend a lease is refused with a typed code, so the
worker stops instead of counting it as held; a worker's renew dates never go
backwards whatever its wall clock does; replicas judge leases only on their
own monotonic clock. Wall clocks are stepped by +-1, 5 and 30 s on the worker
and on the replica: no attempt is ever granted to a second worker while the
first one's renews are accepted.
"""

from __future__ import annotations

from collections import Counter

import pytest

from workmesh.node import facts as F
from workmesh.node import lifecycle
from workmesh.node.ballots import Refusal, refusal_code
from workmesh.node.claims import Claims
from workmesh.node.leases import LeaseRules
from workmesh.node.replica import JobReplica
from tests.unit.strategies import REPLICAS, WORKERS, claim, lease, placement, renew, submit

JOB = submit(max_attempts=2, replicas=3, quorum=2, lease_ms=1000)
KEY = JOB.job_id
ME, R1 = REPLICAS[:2]
W0, W1 = WORKERS[:2]
STALE_S = LeaseRules().stale_after_s(JOB.body.lease_ms)
STEPS_MS = [1_000, -1_000, 5_000, -5_000, 30_000, -30_000]
EPOCH_MS = 1_767_225_600_000


class Clocks:
    def __init__(self) -> None:
        self.mono = 100.0
        self.wall = EPOCH_MS

    def monotonic(self) -> float:
        return self.mono

    def wall_ms(self) -> int:
        return self.wall

    def advance(self, s: float) -> None:
        self.mono += s
        self.wall += int(s * 1000)


class Replica:
    def __init__(self, clocks: Clocks) -> None:
        self.replica = JobReplica(ME, LeaseRules(), clocks.monotonic, clocks.wall_ms, lambda k, n: None)
        self.held: dict[bytes, F.Fact] = {}

    def send(self, facts):
        adm = self.replica.admit(KEY, list(facts), list(self.held.values()), W0.node_id)
        for f in [*adm.accept, *adm.produced]:
            if f.slot is not None:
                for old in [h for h in self.held.values() if h.slot == f.slot and h.version < f.version]:
                    del self.held[old.fact_id]
            self.held[f.fact_id] = f
        return adm

    def running(self) -> None:
        assert not self.send([JOB, placement(JOB)]).refused
        assert not self.send([claim(W0, JOB, 1)]).refused
        assert not self.send([lease(R1, JOB, 1, W0)]).refused


def test_a_renew_dated_at_or_before_the_stored_one_is_refused_as_not_extended():
    r = Replica(Clocks())
    r.running()
    assert not r.send([renew(W0, JOB, 1, 500)]).refused
    for ts in (500, 499, 1):
        adm = r.send([renew(W0, JOB, 1, ts)]) if ts != 500 else r.send([F.sign(W0, F.RENEW, F.Renew(KEY, 1, 500))])
        if ts == 500:
            # the very same fact again is a retry of a renew that did extend the lease
            continue
        assert [refusal_code(why) for _, why in adm.refused] == [Refusal.NOT_EXTENDED]
        assert adm.accept == []
    assert r.replica.counters["renews_not_extended"] == 2
    # A renew by a worker that does not hold the lease: typed too.
    adm = r.send([renew(W1, JOB, 1, 9_999)])
    assert [refusal_code(why) for _, why in adm.refused] == [Refusal.NOT_EXTENDED]


def test_a_refused_renew_does_not_keep_the_lease_alive():
    clocks = Clocks()
    r = Replica(clocks)
    r.running()
    assert not r.send([renew(W0, JOB, 1, 500)]).refused
    for _ in range(4):  # the worker keeps sending renews dated in the past
        clocks.advance(STALE_S / 3)
        r.send([renew(W0, JOB, 1, 400)])
    clocks.advance(0.01)
    adm = r.send([claim(W1, JOB, 2)])
    assert adm.produced and adm.produced[0].body.subject == W1.node_id  # the lease went stale: W1 may take over


def _claims(clocks: Clocks) -> tuple[Claims, lifecycle.JobState]:
    state = lifecycle.derive([JOB, placement(JOB)])
    return Claims(W0, dht=None, wall_ms=clocks.wall_ms, counters={}), state  # type: ignore[arg-type]


@pytest.mark.parametrize("step_ms", STEPS_MS)
def test_a_workers_renew_dates_never_go_back_when_its_wall_clock_steps(step_ms):
    clocks = Clocks()
    claims, state = _claims(clocks)
    dates = [claims.renewal(state, 1).body.ts_ms]
    clocks.wall += step_ms
    for _ in range(5):
        dates.append(claims.renewal(state, 1).body.ts_ms)
        clocks.advance(0.3)
    assert all(b > a for a, b in zip(dates, dates[1:])), dates


@pytest.mark.parametrize("step_ms", STEPS_MS)
@pytest.mark.parametrize("on", ["worker", "replica"])
def test_no_second_grant_while_the_holder_renews_through_a_wall_clock_step(step_ms, on):
    """The holder renews every third of the lease through Claims.renewal; its
    (or the replica's) wall clock steps once. Every renew is accepted, and a
    second worker's claim is refused as long as the renews go on."""
    worker_clock, replica_clock = Clocks(), Clocks()
    r = Replica(replica_clock)
    r.running()
    claims, state = _claims(worker_clock)
    for i in range(12):
        if i == 3:
            (worker_clock if on == "worker" else replica_clock).wall += step_ms
        for c in (worker_clock, replica_clock):
            c.advance(JOB.body.lease_ms / 3000)
        adm = r.send([claims.renewal(state, 1)])
        assert not adm.refused, adm.refused
        other = r.send([claim(WORKERS[2], JOB, 2, ts_ms=worker_clock.wall)])
        assert [refusal_code(why) for _, why in other.refused] == [Refusal.LEASE_LIVE]
    assert r.replica.counters["grants_issued"] == 1


class _LocalStore:
    """The one thing ``Claims._confirm`` asks of the mesh when only its own
    replica must be shown the proof: store there, and the local state."""

    def __init__(self, held: list[F.Fact], me: bytes) -> None:
        self.held, self.me = list(held), me
        self.records = self

    async def store(self, key, facts, targets, quorum, **_kw):
        from types import SimpleNamespace

        assert targets == [self.me]
        self.held.extend(f for f in facts if f not in self.held)
        return SimpleNamespace(stored_ids=frozenset({self.me}), produced=[], refusals={})

    def state(self, key):
        return lifecycle.derive(self.held)


async def test_a_local_proof_does_not_confirm_a_grant_this_replica_has_moved_on_from():
    """Three workers raced for attempt 1 (r = 3, quorum 2), each replica
    granting its own node's worker first; the split, seen whole, is granted
    again at once. This node's replica moved its grant to W1 while its own
    worker W0 got B's re-grant, with B holding W0's old grant from here as the
    other half of a quorum ("shown"). Confirming with only the local store, W0
    counted here and ran, while W1 ran with this replica's new grant and C's:
    attempt 1 run twice (the bench's batch drains, results from two workers).
    The local proof now counts only while the local grant is still W0's."""
    me_ident, b_ident, c_ident, w2 = WORKERS[0], REPLICAS[1], REPLICAS[2], WORKERS[2]
    job = submit(max_attempts=2, replicas=3, quorum=2, lease_ms=1000)
    place = placement(job, (me_ident, b_ident, c_ident))
    mine_old = lease(me_ident, job, 1, me_ident, ts_ms=10)
    mine_new = lease(me_ident, job, 1, WORKERS[1], ts_ms=11)  # this replica moved on
    from_b = lease(b_ident, job, 1, me_ident, ts_ms=12)
    held = [job, place, claim(me_ident, job, 1, 10), mine_old, mine_new, lease(c_ident, job, 1, w2, ts_ms=9)]
    claims = Claims(me_ident, dht=_LocalStore(held, me_ident.node_id), wall_ms=lambda: EPOCH_MS, counters=Counter())  # type: ignore[arg-type]
    state = lifecycle.derive([job, place])
    assert not await claims._confirm(state, 1, [mine_old, from_b], shown={b_ident.node_id})
    assert claims.counters["confirms_moved_on"] >= 1

    # The same proof while the local grant is still W0's confirms, with no datagram.
    claims = Claims(me_ident, dht=_LocalStore(held[:4], me_ident.node_id), wall_ms=lambda: EPOCH_MS, counters=Counter())  # type: ignore[arg-type]
    assert await claims._confirm(state, 1, [mine_old, from_b], shown={b_ident.node_id})
