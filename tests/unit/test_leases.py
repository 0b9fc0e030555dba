"""Lease rules of one replica (protocol.md section 4), then a many-replica model run."""

from __future__ import annotations

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from workmesh.node import consensus, leases
from workmesh.node import facts as F
from workmesh.node import lifecycle as L
from workmesh.node import ballots as B
from workmesh.node.ballots import Ballot
from workmesh.node.facts import Fact, Grant
from workmesh.node.leases import LeaseRules, Observations, accept_renew, current_grant, decide_claim
from workmesh.node.leases import lease_deadline, observe
from tests.unit.strategies import CONFIGS, REPLICAS, STRANGER, WORKERS, cancel, claim, lease, quorum_result
from tests.unit.strategies import placement, renew, result, submit

RULES = LeaseRules()
JOB = submit(max_attempts=2, replicas=3, quorum=2, lease_ms=1000)
PLACE = placement(JOB)
STALE = RULES.stale_after_s(1000)
W0, W1, W2 = WORKERS[:3]
ME = REPLICAS[0]


class Replica:
    """One replica as the node shell drives it: store, observe new facts, decide, sign."""

    def __init__(self, ident=ME, job: Fact = JOB, now: float = 0.0) -> None:
        self.ident, self.me, self.job = ident, ident.node_id, job
        self.store: set[Fact] = {job, placement(job)}
        self.obs = Observations()
        self.now = now

    def add(self, *fs: Fact) -> list[Fact]:
        fresh = [f for f in fs if f not in self.store]
        self.store.update(fresh)
        observe(self.obs, fresh, self.me, self.now)
        return fresh

    @property
    def state(self) -> L.JobState:
        return L.derive(self.store)

    def claim(self, worker, attempt: int, ts: int | None = None, confirm: bool = True) -> Fact | str:
        """Claim through this replica. With ``confirm``, a granted worker then
        shows this replica a quorum of grants (another replica's too), as a
        real worker does before it runs: the attempt is confirmed."""
        c = claim(worker, self.job, attempt, ts if ts is not None else int(self.now * 1000) + attempt)
        self.add(c)
        out = decide_claim(self.state, c, self.me, self.obs, self.now, RULES)
        if isinstance(out, str):
            return out
        g = F.sign(self.ident, F.GRANT, out)
        self.add(g)
        if confirm:
            other = next(r for r in REPLICAS[: self.job.body.replicas] if r.node_id != self.me)
            self.add(lease(other, self.job, attempt, worker))
        return g

    def renew(self, worker, attempt: int) -> bool:
        r = renew(worker, self.job, attempt, int(self.now * 1000) + 1)
        if not accept_renew(self.state, r, self.me, self.obs):
            return False
        self.add(r)
        return True

    def vote(self, subject: Fact) -> Fact | None:
        """Store a result and vote for it, as its worker's proposal, if the rules allow."""
        self.add(subject)
        if not self.state.is_replica(self.me):
            return None
        body = consensus.on_proposal(self.state, subject, self.me)
        if not isinstance(body, F.BallotStep):
            return None
        v = F.sign(self.ident, F.BALLOT, body)
        self.add(v)
        return v

    def seal(self, *votes: Fact) -> Fact | None:
        """Store votes (other replicas'), and seal the certificate they make, if any."""
        self.add(*votes)
        body = consensus.on_votes(self.state, self.me)
        if body is None:
            return None
        s = F.sign(self.ident, F.BALLOT, body)
        self.add(s)
        return s

    def promise(self, ballot: Ballot) -> Fact | None:
        prepare = F.sign(WORKERS[3], F.BALLOT, consensus.step_body(JOB.job_id, F.PREPARE, ballot))
        body = consensus.on_prepare(L.derive([*self.store, prepare]), prepare, self.me)
        if not isinstance(body, F.BallotStep):
            return None
        p = F.sign(self.ident, F.BALLOT, body)
        self.add(p)
        return p


def granted(out) -> bool:
    return isinstance(out, Fact) and out.kind == F.GRANT and out.body.action == F.LEASE


def other_grants(attempt: int, worker, replicas=REPLICAS[1:2]) -> list[Fact]:
    return [lease(r, JOB, attempt, worker) for r in replicas]


# --------------------------------------------------------------------------
# Grant rules


def test_first_claim_is_granted_for_the_claimant() -> None:
    r = Replica()
    g = r.claim(W0, 1, ts=77)
    assert granted(g)
    assert g.body == Grant(JOB.job_id, F.LEASE, 1, W0.node_id, 77)
    assert current_grant(r.state, r.me) == (1, W0.node_id)


def test_re_asking_gives_the_same_grant() -> None:
    r = Replica()
    first = r.claim(W0, 1, ts=5)
    r.now = 0.5
    assert r.claim(W0, 1, ts=9) == first  # same body, same signature, same fact


def test_an_attempt_is_granted_to_one_worker_only() -> None:
    r = Replica()
    assert granted(r.claim(W0, 1))
    assert "not above" in r.claim(W1, 1)


def test_attempt_bounds() -> None:
    r = Replica()
    zero = F.sign(W0, F.CLAIM, F.Claim(JOB.job_id, 0, 1))
    assert "outside" in decide_claim(r.state, zero, r.me, r.obs, 0.0, RULES)
    beyond = claim(W0, JOB, 4)  # max_attempts + 2
    assert "beyond" in decide_claim(r.state, beyond, r.me, r.obs, 0.0, RULES)


def test_a_claim_of_another_job_is_refused() -> None:
    r = Replica()
    other = submit(nonce=b"\x03" * 16)
    assert "another job" in decide_claim(r.state, claim(W0, other, 1), r.me, r.obs, 0.0, RULES)
    assert "not a claim" in decide_claim(r.state, renew(W0, JOB, 1), r.me, r.obs, 0.0, RULES)


def test_at_most_one_attempt_ahead_of_replica_signed_evidence() -> None:
    r = Replica()
    assert "more than one above" in r.claim(W0, 2)
    r.add(claim(W1, JOB, 1))  # a worker's claim is no evidence
    assert "more than one above" in r.claim(W0, 2)
    r.add(*other_grants(1, W1))  # one other replica granted attempt 1: a minority proves nothing
    assert "more than one above" in r.claim(W0, 2)
    r.add(*other_grants(1, W1, REPLICAS[1:3]))  # a quorum granted attempt 1: it may have run
    assert granted(r.claim(W0, 2))  # this replica granted nothing, so nothing to wait for


def test_an_attempt_that_never_ran_is_granted_again_once_stale() -> None:
    """A claim that won only a minority burns no attempt number: once stale,
    the same attempt goes to the next worker; a confirmed one never does."""
    r = Replica()
    assert granted(r.claim(W0, 1, confirm=False))
    assert "live" in r.claim(W1, 1)
    r.now = STALE + 0.01
    assert "more than one above" in r.claim(W1, 2)  # nothing confirmed attempt 1
    assert granted(r.claim(W1, 1))  # confirmed this time
    assert current_grant(r.state, r.me) == (1, W1.node_id)
    assert "superseded" in r.claim(W0, 1)  # the first worker cannot take it back
    r.now = 2 * STALE + 0.02
    assert "not above" in r.claim(W2, 1)


def test_live_holder_is_kept_and_stale_holder_is_replaced() -> None:
    r = Replica()
    r.claim(W0, 1)
    r.now = STALE - 0.001
    assert "live" in r.claim(W1, 2)
    r.now = STALE
    assert granted(r.claim(W1, 2))
    assert current_grant(r.state, r.me) == (2, W1.node_id)


def test_renews_and_re_claims_of_the_holder_keep_it_live() -> None:
    r = Replica()
    r.claim(W0, 1)
    r.now = 1.0
    assert r.renew(W0, 1)
    r.now = 1.0 + STALE - 0.001
    assert "live" in r.claim(W1, 2)
    assert granted(r.claim(W0, 1))  # the holder re-asks: alive
    r.now += STALE - 0.001
    assert "live" in r.claim(W1, 2)
    r.now += 0.001
    assert granted(r.claim(W1, 2))


def test_a_split_vote_goes_stale_although_each_holder_keeps_asking() -> None:
    """Each replica granted attempt 1 to another worker (r = 3: no quorum for
    anyone). A holder asking again gets its grant back, but that does not keep
    a minority grant alive: once stale, the attempt goes to the next claimer."""
    r = Replica()
    assert granted(r.claim(W0, 1, confirm=False))  # this replica's vote; the others voted W1, W2
    for k in range(1, 4):
        r.now = k * STALE / 4
        assert granted(r.claim(W0, 1, ts=1, confirm=False))  # the same grant, asked again
        assert "live" in r.claim(W1, 1, confirm=False)
    r.now = STALE
    assert granted(r.claim(W1, 1, confirm=False))
    assert current_grant(r.state, r.me) == (1, W1.node_id)


def test_a_superseded_grant_and_a_later_one_from_another_replica_are_no_quorum() -> None:
    """A split vote on attempt 1, then another one once it went stale: this
    replica's first grant went to W0, its second to W2; replica B's first
    went to W1, its second to W0. W0 holds two grants of attempt 1, but never
    two current ones at once (this replica refuses to give it its grant
    again): nobody won attempt 1 and nobody runs it. Counting the superseded
    grant read attempt 1 as confirmed for W0, so once its lease went stale
    the job moved on to attempt 2, one attempt short (the simulator: a fail
    job closed on the closing attempt, its third attempt never run)."""
    r = Replica()
    b = REPLICAS[1]
    assert granted(r.claim(W0, 1, confirm=False))
    r.add(lease(b, JOB, 1, W1, ts_ms=1))
    r.now = STALE + 0.01
    assert granted(r.claim(W2, 1, ts=2_000, confirm=False))  # supersedes the grant to W0
    r.add(lease(b, JOB, 1, W0, ts_ms=2_001))  # B's newer grant (its grant to W1 went stale)
    state = r.state
    assert (state.lease_attempt, state.lease_worker) == (0, None)
    assert not leases.confirmed(state, 1)
    assert state.status == L.PENDING
    assert "superseded" in r.claim(W0, 1)
    r.now = 2 * STALE + 0.02
    assert "more than one above" in r.claim(W1, 2)  # attempt 1 never ran: no attempt is burned
    assert granted(r.claim(W1, 1, ts=4_000, confirm=False))


def test_a_replicas_newest_grant_counts_whatever_order_the_grants_arrive_in() -> None:
    """B and C each granted attempt 1 to ``low`` first, then to ``high``: only
    ``high`` holds a quorum (counting superseded grants, both did, and the
    lower worker id won the tie)."""
    b, c = REPLICAS[1], REPLICAS[2]
    low, high = sorted((W0, W1), key=lambda w: w.node_id)
    grants = [lease(b, JOB, 1, low, ts_ms=5), lease(b, JOB, 1, high, ts_ms=9), lease(c, JOB, 1, high, ts_ms=7), lease(c, JOB, 1, low, ts_ms=3)]
    base = [JOB, PLACE]
    for order in (grants, grants[::-1], grants[1:] + grants[:1]):
        state = L.derive([*base, *order])
        assert (state.lease_attempt, state.lease_worker) == (1, high.node_id)
        assert leases.confirmed(state, 1)
        # the same set admitted one fact at a time (incremental derivation)
        d = L.derivation(base)
        seen = list(base)
        for g in order:
            seen.append(g)
            d = L.derive_with(d, seen)
        assert (d.state.lease_attempt, d.state.lease_worker) == (1, high.node_id)


def test_other_workers_claims_do_not_keep_a_dead_holder_alive() -> None:
    r = Replica()
    r.claim(W0, 1)
    for step in range(1, 10):
        r.now = step * STALE / 10
        assert not granted(r.claim(W1, 1))
    r.now = STALE
    assert granted(r.claim(W1, 2))


def test_superseded_grant_is_not_handed_out_again() -> None:
    r = Replica()
    r.claim(W0, 1)
    r.now = STALE
    r.claim(W1, 2)
    assert "superseded" in r.claim(W0, 1)  # W0 must not believe it still holds attempt 1
    assert "not above" in r.claim(W0, 2)
    assert "not above" in r.claim(W2, 1)


def test_error_result_waits_for_the_retry_backoff() -> None:
    r = Replica()
    r.claim(W0, 1)
    r.now = 0.2
    r.add(quorum_result(JOB, W0, 1, F.ERROR, replicas=REPLICAS[:2]))
    backoff = RULES.backoff_s(JOB.job_id, 1)
    r.now = 0.2 + backoff - 0.001
    assert "backoff" in r.claim(W1, 2)
    r.now = 0.2 + backoff + 1e-9  # (0.2 + b) - 0.2 may fall an ulp short of b
    assert granted(r.claim(W1, 2))


def test_ok_result_stops_new_attempts_even_before_it_is_sealed() -> None:
    r = Replica()
    r.claim(W0, 1)
    r.now = 0.1
    r.add(quorum_result(JOB, W0, 1, F.OK, replicas=REPLICAS[:2]))
    r.now = 100.0  # long past the lease: still no second run of a job that succeeded
    assert "succeeded" in r.claim(W1, 2)
    assert r.vote(quorum_result(JOB, W0, 1, F.OK, replicas=REPLICAS[:2])) is not None


def test_a_replica_outside_the_placement_grants_and_seals_nothing() -> None:
    r = Replica(ident=REPLICAS[5])
    assert "not a replica" in r.claim(W0, 1)
    assert r.vote(quorum_result(JOB, W0, 1, F.OK, replicas=REPLICAS[:2])) is None


def test_decided_job_grants_nothing() -> None:
    r = Replica()
    ok = quorum_result(JOB, W0, 1, F.OK, replicas=REPLICAS[:2])
    r.claim(W0, 1)
    other = Replica(REPLICAS[1])
    votes = [r.vote(ok), other.vote(ok)]
    seals = [r.seal(*votes), other.seal(*votes)]
    assert all(seals)
    r.add(*seals)
    assert r.state.status == L.DONE
    r.now = 100.0
    assert "done" in r.claim(W1, 2)
    assert "done" in r.claim(W0, 1)


def test_a_known_cancel_stops_grants_and_renews() -> None:
    r = Replica()
    r.claim(W0, 1)
    r.add(cancel(JOB))
    assert not r.state.terminal  # a cancel is decided by a round, not by being stored
    assert not r.renew(W0, 1)
    r.now = 100.0
    assert "cancel" in r.claim(W1, 2)


def test_a_replica_that_sealed_grants_no_lease_and_a_higher_promise_stops_renews() -> None:
    """A lease grant is the promise at (n, 0, worker) that reports nothing
    sealed: a replica that sealed must not give one. A promise at a higher
    ballot (a canceller's) ends the renewals below it."""
    r = Replica()
    r.claim(W0, 1)
    assert r.promise(Ballot(1, 1, WORKERS[3].node_id)) is not None
    assert not r.renew(W0, 1)
    assert "promised" in r.claim(W1, 1)
    ok = quorum_result(JOB, W0, 1, F.OK, replicas=REPLICAS[:2])
    assert r.vote(ok) is None  # W0's proposal is below the promise
    s = Replica()
    ok2 = quorum_result(JOB, W0, 1, F.OK, replicas=REPLICAS[:2])
    votes = [s.vote(ok2), Replica(REPLICAS[1]).vote(ok2)]
    assert s.seal(*votes) is not None
    s.now = 100.0
    assert "sealed" in s.claim(W1, 2)


def test_closing_attempt_ends_a_job_whose_last_worker_vanished() -> None:
    replicas = [Replica(ident) for ident in REPLICAS[:3]]
    everywhere = lambda fn: [fn(r) for r in replicas]  # noqa: E731
    everywhere(lambda r: r.claim(W0, 1))
    everywhere(lambda r: r.add(quorum_result(JOB, W0, 1, F.ERROR, replicas=REPLICAS[:2])))
    for r in replicas:
        r.now = 10.0
    assert all(granted(g) for g in everywhere(lambda r: r.claim(W1, 2)))
    for r in replicas:
        r.now = 10.0 + STALE + 0.001  # W1 died without a result
    closing = everywhere(lambda r: r.claim(W2, 3))
    assert all(granted(g) for g in closing)
    assert all("outside" in out or "beyond" in out for out in everywhere(lambda r: r.claim(W0, 4)))
    exhausted = result(W2, JOB, 3, tuple(closing[:2]), F.ERROR, b'{"error":"attempts exhausted"}')
    votes = everywhere(lambda r: r.vote(exhausted))
    seals = everywhere(lambda r: r.seal(*votes))
    state = L.derive([*replicas[0].store, *seals])
    assert (state.status, state.attempts, state.error) == (L.FAILED, 2, "attempts exhausted")


def test_no_closing_attempt_while_the_last_attempts_error_awaits_seals() -> None:
    """Attempt max_attempts failed and its error result is stored but not
    sealed yet (the seals were slow): that error is the job's end. However
    long it waits, no closing attempt is granted to race it with an
    "attempts exhausted" result."""
    r = Replica()
    r.add(*other_grants(2, W1, REPLICAS[1:3]))
    assert granted(r.claim(W1, 2))
    r.add(quorum_result(JOB, W1, 2, F.ERROR))
    r.now = STALE * 10  # past any backoff and any lease
    assert "awaits seals" in r.claim(W2, 3)


def test_closing_attempt_is_granted_once() -> None:
    """A confirmed closing attempt is not granted to another worker."""
    r = Replica()
    r.add(*other_grants(2, W0, REPLICAS[1:3]))
    assert granted(r.claim(W1, 3))
    r.now = STALE * 10
    assert "not above" in r.claim(W2, 3)


# --------------------------------------------------------------------------
# Observations


def test_restart_counts_existing_grants_as_seen_now() -> None:
    r = Replica()
    r.claim(W0, 1)
    r.now = 50.0
    r.obs = Observations()
    observe(r.obs, r.store, r.me, r.now)
    r.now = 50.0 + STALE - 0.001
    assert "live" in r.claim(W1, 2)
    r.now = 50.0 + STALE
    assert granted(r.claim(W1, 2))


def test_unobserved_grants_count_as_seen_when_judged() -> None:
    r = Replica()
    r.claim(W0, 1)
    r.obs = Observations()  # the shell forgot to observe after a restart
    r.now = 50.0
    assert "live" in r.claim(W1, 2)
    r.now = 50.0 + STALE
    assert granted(r.claim(W1, 2))


def test_observe_rules() -> None:
    obs = Observations()
    g = lease(ME, JOB, 1, W0)
    observe(obs, [renew(W0, JOB, 1, 2), g], ME.node_id, 1.0)  # one batch: grant, then its renew
    assert obs.holder_seen == {1: 1.0}
    observe(obs, [renew(W1, JOB, 1, 3), lease(REPLICAS[1], JOB, 1, W1)], ME.node_id, 2.0)
    assert obs.holder_seen == {1: 1.0}  # not our grantee, not our grant
    observe(obs, [renew(W0, JOB, 1, 4)], ME.node_id, 3.0)
    assert obs.holder_seen == {1: 3.0}
    err = quorum_result(JOB, W0, 1, F.ERROR)
    observe(obs, [err], ME.node_id, 4.0)
    observe(obs, [err], ME.node_id, 5.0)
    assert obs.error_seen == {1: 4.0}


# --------------------------------------------------------------------------
# Renew and seal


def test_renew_only_for_the_current_grant() -> None:
    r = Replica()
    r.claim(W0, 1)
    assert r.renew(W0, 1)
    assert not r.renew(W1, 1)
    assert not r.renew(W0, 2)
    r.now = STALE  # stale, but nobody took over: the holder may carry on
    assert r.renew(W0, 1)
    r.now = 2 * STALE
    r.claim(W1, 2)
    assert not r.renew(W0, 1)
    assert r.renew(W1, 2)
    assert not accept_renew(r.state, renew(W1, submit(nonce=b"\x03" * 16), 2), r.me, r.obs)


def test_accept_renew_refreshes_when_given_the_time() -> None:
    r = Replica()
    r.claim(W0, 1)
    assert accept_renew(r.state, renew(W0, JOB, 1, 5), r.me, r.obs, now=4.0)
    assert r.obs.holder_seen[1] == 4.0


def test_votes_are_deterministic_and_one_per_ballot() -> None:
    r = Replica()
    ok = quorum_result(JOB, W0, 1)
    v = r.vote(ok)
    assert v.body == F.BallotStep(JOB.job_id, F.VOTE, 1, 0, W0.node_id, ok.fact_id, (), 0)
    assert r.vote(ok) == v  # asked again: the very same fact
    other = result(W0, JOB, 1, ok.body.grants, F.OK, b'{"v":"equivocated"}')
    assert r.vote(other) is None  # one subject per ballot, whatever the worker signs


def test_vote_rules_for_results() -> None:
    assert Replica().vote(quorum_result(JOB, W0, 1, F.ERROR)) is None  # not final: a retry follows
    assert Replica().vote(quorum_result(JOB, W0, 2, F.ERROR)).body.attempt == 2  # final error
    assert Replica().vote(quorum_result(JOB, W0, 1)).body.subject == quorum_result(JOB, W0, 1).fact_id
    short = result(W0, JOB, 1, (lease(ME, JOB, 1, W0),))
    assert Replica().vote(short) is None


def test_late_result_is_not_voted_by_a_replica_that_granted_later() -> None:
    r = Replica()
    r.claim(W0, 1)
    r.now = STALE
    r.claim(W1, 2)
    late = quorum_result(JOB, W0, 1, F.OK, replicas=REPLICAS[:2])
    assert r.vote(late) is None
    assert r.vote(quorum_result(JOB, W1, 2, F.OK, replicas=REPLICAS[:2])) is not None


# --------------------------------------------------------------------------
# Deadlines and timing rules


def test_lease_deadline_follows_the_holder_and_the_backoff() -> None:
    r = Replica()
    assert lease_deadline(r.state, r.me, r.obs, RULES) is None
    r.claim(W0, 1)
    assert lease_deadline(r.state, r.me, r.obs, RULES) == pytest.approx(STALE)
    r.now = 1.0
    r.renew(W0, 1)
    assert lease_deadline(r.state, r.me, r.obs, RULES) == pytest.approx(1.0 + STALE)
    r.now = 2.0
    r.add(quorum_result(JOB, W0, 1, F.ERROR))
    assert lease_deadline(r.state, r.me, r.obs, RULES) == pytest.approx(2.0 + RULES.backoff_s(JOB.job_id, 1))
    r.now = 10.0
    r.claim(W1, 2)
    r.add(quorum_result(JOB, W1, 2, F.OK))
    assert lease_deadline(r.state, r.me, r.obs, RULES) is None


def test_lease_deadline_ends_with_a_cancel() -> None:
    r = Replica()
    r.claim(W0, 1)
    r.add(cancel(JOB))
    assert lease_deadline(r.state, r.me, r.obs, RULES) is None


def test_stale_after() -> None:
    assert RULES.stale_after_s(1000) == pytest.approx(1.0 * 1.02 + 0.25)
    assert LeaseRules(margin_s=0.0, rate_tolerance=0.0).stale_after_s(1500) == 1.5


@given(st.binary(min_size=20, max_size=20), st.integers(1, 101))
def test_backoff_is_deterministic_jittered_and_capped(job_id: bytes, attempt: int) -> None:
    delay = RULES.backoff_s(job_id, attempt)
    ceiling = min(RULES.backoff_cap_s, RULES.backoff_base_s * 2 ** (attempt - 1))
    assert 0.5 * ceiling <= delay < ceiling
    assert delay == RULES.backoff_s(job_id, attempt)


def test_backoff_spreads_jobs() -> None:
    delays = {RULES.backoff_s(i.to_bytes(20, "big"), 1) for i in range(200)}
    assert len(delays) == 200 and max(delays) - min(delays) > 0.2


# --------------------------------------------------------------------------
# Model run: several replicas, several workers, random interleavings


def _flatten(fs):
    for f in fs:
        yield f
        if f.kind == F.RESULT:
            yield from f.body.grants


class SimReplica:
    def __init__(self, ident, job: Fact, rate: float, offset: float) -> None:
        self.ident, self.me = ident, ident.node_id
        self.rate, self.offset = rate, offset
        self.store: set[Fact] = {job, placement(job)}
        self.obs = Observations()

    def now(self, t: float) -> float:
        return self.offset + self.rate * t

    def receive(self, fs, t: float) -> list[Fact]:
        fresh = sorted({f for f in fs if f not in self.store}, key=L.sort_key)
        self.store.update(fresh)
        observe(self.obs, fresh, self.me, self.now(t))
        return fresh

    def state(self) -> L.JobState:
        return L.derive(self.store)


class Model:
    """Global time ``t``; each replica's clock runs at its own rate (ratios within 2%)."""

    def __init__(self, data, configs=CONFIGS) -> None:
        self.data = data
        r, self.q = data.draw(configs, label="replicas, quorum")
        self.max_attempts = data.draw(st.integers(1, 3), label="max_attempts")
        lease_ms = data.draw(st.sampled_from([500, 1000, 3000]), label="lease_ms")
        self.lease_s = lease_ms / 1000
        self.job = submit(max_attempts=self.max_attempts, replicas=r, quorum=self.q, lease_ms=lease_ms)
        rate = st.floats(1.0, 1.02)
        self.replicas = [
            SimReplica(REPLICAS[i], self.job, data.draw(rate), data.draw(st.floats(0, 1e4))) for i in range(r)
        ]
        self.workers = WORKERS[:3]
        self.worker_rate = [data.draw(rate) for _ in self.workers]
        self.t = 0.0
        self.ts = 0
        self.received: dict[tuple[int, int], set[Fact]] = {}  # (attempt, worker) -> grants it got
        self.shown: dict[tuple[int, int], set[bytes]] = {}  # -> replicas shown the proof at the claim
        self.own_first: dict[tuple[int, int], tuple[Fact, Fact, SimReplica]] = {}  # -> claim, own grant, own replica
        self.confirmed: set[tuple[int, int]] = set()  # showed a quorum of grants to a quorum: may run
        self.accepted: dict[tuple[int, int], dict[int, float]] = {}  # -> replica -> last grant/renew time
        self.finished: set[tuple[int, int]] = set()
        self.late: set[Fact] = set()
        self.everything: set[Fact] = {self.job}
        self.terminal: L.JobState | None = None

    def draw(self, strategy, label=None):
        return self.data.draw(strategy, label=label)

    def subset(self) -> list[SimReplica]:
        size = self.draw(st.sampled_from(range(len(self.replicas), -1, -1)))  # biased towards all
        return self.draw(st.permutations(self.replicas))[:size]

    def sign(self, replica: SimReplica, body: Grant | F.BallotStep) -> Fact:
        fact = F.sign(replica.ident, F.BALLOT if isinstance(body, F.BallotStep) else F.GRANT, body)
        self.everything.add(fact)
        return fact

    def next_ts(self) -> int:
        self.ts += 1
        return self.ts

    def holding(self) -> list[tuple[int, int]]:
        return sorted(k for k in self.confirmed if k not in self.finished)

    def confirm(self) -> None:
        """A worker with a quorum of grants shows them, with a renew, before it runs."""
        ready = sorted(k for k, gs in self.received.items() if len(gs) >= self.q and k not in self.confirmed)
        if not ready:
            return
        n, w = self.draw(st.sampled_from(ready))
        rn = F.sign(self.workers[w], F.RENEW, F.Renew(self.job.job_id, n, self.next_ts()))
        self.everything.add(rn)
        grants = sorted(self.received[(n, w)], key=lambda g: g.fact_id)
        accepted = 0
        for rep in self.subset():
            rep.receive(grants, self.t)
            if accept_renew(rep.state(), rn, rep.me, rep.obs, rep.now(self.t)):
                rep.receive([rn], self.t)
                self.accepted[(n, w)][self.replicas.index(rep)] = self.t
                accepted += 1
        if accepted >= self.q:
            self.confirmed.add((n, w))

    # -- actions -------------------------------------------------------------

    def advance(self) -> None:
        self.t += self.draw(st.floats(0, 1.6 * self.lease_s))

    def claim(self, local: bool = False) -> None:
        w = self.draw(st.integers(0, len(self.workers) - 1))
        known = max((f.attempt for f in self.everything if f.kind in (F.GRANT, F.RESULT)), default=0)
        n = self.draw(st.sampled_from(sorted({known + 1, max(known, 1), known + 2, 1})))
        c = F.sign(self.workers[w], F.CLAIM, F.Claim(self.job.job_id, n, self.next_ts()))
        self.everything.add(c)
        for rep in [self.draw(st.sampled_from(self.replicas))] if local else self.subset():
            self._judge_claim(rep, [c], n, w)

    def _judge_claim(self, rep: SimReplica, sent: list[Fact], n: int, w: int, lossy: bool = True) -> Fact | None:
        """``rep`` stores ``sent`` (the claim last) and judges the claim; its
        grant, if any, reaches the worker unless the reply is lost."""
        rep.receive(sent, self.t)
        out = decide_claim(rep.state(), sent[-1], rep.me, rep.obs, rep.now(self.t), RULES)
        if isinstance(out, str):
            return None
        g = self.sign(rep, out)
        rep.receive([g], self.t)
        self.accepted.setdefault((n, w), {})[self.replicas.index(rep)] = self.t
        if lossy and not self.draw(st.sampled_from([True, True, False])):  # the reply may be lost
            return None
        self.received.setdefault((n, w), set()).add(g)
        return g

    def claim_own_first(self) -> None:
        """A claim as ``Claims._store_own_first`` makes it (r = 3, quorum 2):
        the worker's own node's replica grants first, and its grant goes with
        the claim to the others; one that grants too holds a quorum of grants
        at once, so it is "shown" the proof already (``Claims._holding_quorum``)."""
        if self.q != 2 or len(self.replicas) != 3:
            return self.claim(local=True)
        w = self.draw(st.integers(0, len(self.workers) - 1))
        local = self.replicas[w % len(self.replicas)]
        known = max((f.attempt for f in self.everything if f.kind in (F.GRANT, F.RESULT)), default=0)
        n = self.draw(st.sampled_from(sorted({known + 1, max(known, 1)})))
        c = F.sign(self.workers[w], F.CLAIM, F.Claim(self.job.job_id, n, self.next_ts()))
        self.everything.add(c)
        own = self._judge_claim(local, [c], n, w, lossy=False)
        if own is None:
            return
        self.own_first[(n, w)] = (c, own, local)
        self._ask_others(n, w)

    def claim_again(self) -> None:
        """``Claims.claim``'s resends: the same claim and the same own grant
        go again to the replicas that did not grant (a lost datagram, a
        replica whose clock had not yet seen the old lease go stale); its own
        replica is not asked again, and may have moved on meanwhile."""
        if not self.own_first:
            return
        n, w = self.draw(st.sampled_from(sorted(self.own_first)))
        self._ask_others(n, w)

    def _ask_others(self, n: int, w: int) -> None:
        c, own, local = self.own_first[(n, w)]
        for rep in self.subset():
            if rep is local:
                continue
            if self._judge_claim(rep, [own, c], n, w) is not None:
                self.shown.setdefault((n, w), set()).add(rep.me)

    def confirm_local(self) -> None:
        """``Claims._confirm``'s shortcut: when the replicas shown the proof
        at the claim and the worker's own replica make a quorum, the grants go
        only to its own replica, which counts while ``leases.proves_here``."""
        ready = sorted(k for k in self.shown if len(self.received.get(k, ())) >= self.q and k not in self.confirmed)
        if not ready:
            return
        n, w = self.draw(st.sampled_from(ready))
        local = self.replicas[w % len(self.replicas)]
        holding = {g.author_id for g in self.received[(n, w)]}
        shown = self.shown[(n, w)] & holding
        if local.me not in holding or len(shown) + 1 < self.q:
            return
        local.receive(sorted(self.received[(n, w)], key=lambda g: g.fact_id), self.t)
        if leases.proves_here(local.state(), local.me, n, self.workers[w].node_id):
            self.confirmed.add((n, w))

    def claim_local(self) -> None:
        """A claim that reached one replica first (its own node's, which
        grants at once): several of these make split votes, and a gossip of
        them shows a replica the split whole (rule 4's ``unwinnable``)."""
        self.claim(local=True)

    def renew(self) -> None:
        if not self.holding():
            return
        n, w = self.draw(st.sampled_from(self.holding()))
        rn = F.sign(self.workers[w], F.RENEW, F.Renew(self.job.job_id, n, self.next_ts()))
        self.everything.add(rn)
        for rep in self.subset():
            if accept_renew(rep.state(), rn, rep.me, rep.obs, rep.now(self.t)):
                rep.receive([rn], self.t)
                self.accepted[(n, w)][self.replicas.index(rep)] = self.t

    def post_result(self) -> None:
        if not self.holding():
            return
        n, w = self.draw(st.sampled_from(self.holding()))
        outcome = F.ERROR if n > self.max_attempts else self.draw(st.sampled_from([F.OK, F.ERROR]))
        grants = tuple(sorted(self.received[(n, w)], key=lambda g: g.fact_id))
        res = result(self.workers[w], self.job, n, grants, outcome, ts_ms=self.next_ts())
        self.finished.add((n, w))
        self.everything.add(res)
        later = [rep for rep in self.replicas if (current_grant(rep.state(), rep.me) or (0,))[0] > n]
        if len(later) >= self.q:
            self.late.add(res)
        self.deliver([res])

    def cancel(self) -> None:
        self.everything.add(cancel(self.job))
        self.deliver([cancel(self.job)])

    def deliver(self, fs: list[Fact]) -> None:
        for rep in self.subset():
            self.seal_new(rep, rep.receive(fs, self.t))

    def gossip(self) -> None:
        src, dst = self.draw(st.sampled_from(self.replicas)), self.draw(st.sampled_from(self.replicas))
        self.seal_new(dst, dst.receive(src.store, self.t))

    def restart(self) -> None:
        rep = self.draw(st.sampled_from(self.replicas))
        rep.obs = Observations()
        observe(rep.obs, rep.store, rep.me, rep.now(self.t))

    def seal_new(self, rep: SimReplica, fresh: list[Fact]) -> None:
        """The acceptor's steps as node/replica.py takes them: vote for a new
        final result (its worker's proposal), seal a certificate once the
        votes it holds make one."""
        for subject in fresh:
            if subject.kind == F.RESULT and L.is_final_result(self.job, subject):
                body = consensus.on_proposal(rep.state(), subject, rep.me)
                if isinstance(body, F.BallotStep):
                    rep.receive([self.sign(rep, body)], self.t)
        if any(f.kind == F.BALLOT and f.body.step == F.VOTE for f in fresh) or any(f.kind == F.RESULT for f in fresh):
            body = consensus.on_votes(rep.state(), rep.me)
            if body is not None:
                rep.receive([self.sign(rep, body)], self.t)

    def recover(self) -> None:
        """A replica runs a recovery (or cancel) round over whoever answers:
        prepare above every ballot it knows, propose what the promises
        oblige or what it may choose, deliver the votes."""
        proposer = self.draw(st.sampled_from(self.replicas))
        state = proposer.state()
        top = consensus.top_ballot(state)
        b = Ballot(top.attempt, top.round + 1, proposer.me) if top else Ballot(0, 1, proposer.me)
        prep = F.sign(proposer.ident, F.BALLOT, consensus.step_body(self.job.job_id, F.PREPARE, b))
        promises = []
        for rep in self.subset():
            st_ = L.derive([*rep.store, prep])
            body = consensus.on_prepare(st_, prep, rep.me)
            if isinstance(body, F.BallotStep):
                p = self.sign(rep, body)
                rep.receive([p], self.t)
                promises.append((p, rep))
        if len(promises) < self.q:
            return
        by_id = {f.fact_id: f for f in self.everything}
        cfg = consensus.config(state)
        chosen = B.choose([consensus.promise_of(p, by_id, cfg) for p, _ in promises], cfg)
        subject = by_id.get(chosen.subject) if chosen else consensus.free_choice(L.derive(self.everything))
        if subject is None:
            return
        refs = tuple(sorted(p.fact_id for p, _ in promises))
        prop = F.sign(proposer.ident, F.BALLOT, consensus.step_body(self.job.job_id, F.PROPOSE, b, subject.fact_id, refs))
        votes = [p.body.refs for p, _ in promises]
        shipped = [subject, *(by_id[r] for rs in votes for r in rs), *(p for p, _ in promises)]
        for rep in self.subset():
            rep.receive(shipped, self.t)
            body = consensus.on_proposal(L.derive([*rep.store, prop]), prop, rep.me)
            if isinstance(body, F.BallotStep):
                rep.receive([prop, self.sign(rep, body)], self.t)

    # -- invariants ----------------------------------------------------------

    def check(self) -> None:
        facts = set(_flatten(self.everything))
        seal_signers: dict[tuple, set[bytes]] = {}
        for f in facts:
            if f.kind == F.BALLOT and f.body.step == F.SEAL:
                seal_signers.setdefault((f.body.ballot, f.body.subject), set()).add(f.author_id)
        holders = sorted(self.confirmed)
        assert len({n for n, _ in holders}) == len(holders), "two workers confirmed one attempt"

        live = [
            (n, w)
            for (n, w), times in self.accepted.items()
            if (n, w) in self.confirmed
            and (n, w) not in self.finished
            and sum(1 for at in times.values() if at + self.lease_s / self.worker_rate[w] > self.t) >= self.q
        ]
        assert len(live) <= 1, f"two live lease holders at t={self.t}: {live}"

        for rep in self.replicas:
            own: dict[tuple, bytes] = {}
            for f in facts:
                if f.kind == F.BALLOT and f.body.step == F.VOTE and f.author_id == rep.me:
                    assert own.setdefault(f.body.ballot, f.body.subject) == f.body.subject, "two votes at one ballot"

        decided = {s for (_, s), who in seal_signers.items() if len(who) >= self.q}
        assert len(decided) <= 1, "two subjects decided"
        assert not {f.fact_id for f in self.late} & set(decided), "a late result was decided"

        state = L.derive(self.everything)
        if self.terminal is not None:
            assert (state.status, state.decided) == (self.terminal.status, self.terminal.decided)
        elif state.terminal:
            self.terminal = state


@settings(max_examples=250, deadline=None)
@given(st.data())
def test_model_run_keeps_leases_exclusive_and_decisions_unique(data) -> None:
    model = Model(data)
    actions = [model.claim] * 3 + [model.claim_local] * 2 + [model.confirm] * 2 + [model.renew, model.post_result, model.advance, model.gossip] * 2
    actions += [model.restart, model.recover] + [model.cancel] * data.draw(st.sampled_from([0, 0, 0, 1]), label="cancels")
    for _ in range(data.draw(st.integers(10, 60), label="steps")):
        data.draw(st.sampled_from(actions), label="action")()
        model.check()
    event(f"ended {L.derive(model.everything).status}")
    event(f"late results: {bool(model.late)}")


@settings(max_examples=250, deadline=None)
@given(st.data())
def test_model_run_with_split_votes_seen_whole_keeps_leases_exclusive(data) -> None:
    """The same model, weighted towards claims that reach one replica first
    and gossip between replicas: split votes that a replica sees whole, which
    rule 4 grants again at once (``unwinnable``) instead of after a lease."""
    model = Model(data)
    actions = [model.claim_local] * 6 + [model.gossip] * 4 + [model.claim, model.confirm, model.confirm]
    actions += [model.renew, model.post_result, model.advance, model.restart]
    for _ in range(data.draw(st.integers(10, 60), label="steps")):
        data.draw(st.sampled_from(actions), label="action")()
        model.check()
    splits = [rep for rep in model.replicas if any(leases.unwinnable(rep.state(), n) for n in (1, 2, 3))]
    event(f"a replica saw a split vote whole: {bool(splits)}")


def test_a_stale_minority_grant_for_a_later_attempt_is_resolved_by_a_recovery_round() -> None:
    """Found by the simulator under datagram loss: R granted attempt 2 to a
    worker that never won a quorum (so never ran or renewed) while attempt 1
    ran elsewhere and succeeded. R promised (2, 0, W1), so it cannot vote for
    attempt 1's result at (1, 0, W0); once W1's grant is stale, a recovery
    round above it chooses that ok result (attempt 1 is the confirmed lease)
    and R votes for it."""
    r, other = Replica(), Replica(REPLICAS[1])
    r.add(*other_grants(1, W0, REPLICAS[1:3]))  # attempt 1 was granted by the others
    assert granted(r.claim(W1, 2, confirm=False))  # R grants 2 (a minority): it never granted 1
    ok = quorum_result(JOB, W0, 1, F.OK, replicas=REPLICAS[1:3])
    assert r.vote(ok) is None  # promised (2, 0, W1): below it nothing is voted
    other.add(*r.store)
    assert other.vote(ok) is not None  # one vote of two: no certificate
    r.now = STALE + 0.01
    assert not leases.lease_live(r.state, r.me, r.obs, r.now, RULES)
    b = Ballot(2, 1, WORKERS[3].node_id)
    promises = [r.promise(b), other.promise(b)]
    assert all(promises)
    state = L.derive([*r.store, *other.store])
    assert consensus.free_choice(state) == ok
    prop = F.sign(WORKERS[3], F.BALLOT, consensus.step_body(JOB.job_id, F.PROPOSE, b, ok.fact_id, tuple(sorted(p.fact_id for p in promises))))
    votes = []
    for rep in (r, other):
        rep.add(*promises, ok)
        body = consensus.on_proposal(L.derive([*rep.store, prop]), prop, rep.me)
        assert isinstance(body, F.BallotStep) and body.subject == ok.fact_id
        votes.append(F.sign(rep.ident, F.BALLOT, body))
    seals = [r.seal(*votes), other.seal(*votes)]
    assert L.derive([*r.store, *other.store, *seals]).status == L.DONE


def test_a_renewing_later_holder_keeps_a_late_result_unvoted() -> None:
    r = Replica()
    r.claim(W0, 1)
    r.now = STALE + 0.01
    assert granted(r.claim(W1, 2))  # takeover of a silent holder
    late = quorum_result(JOB, W0, 1, F.OK, replicas=REPLICAS[:2])
    for step in range(1, 6):
        r.now = STALE + 0.01 + step * 0.3
        assert r.renew(W1, 2)
        assert leases.lease_live(r.state, r.me, r.obs, r.now, RULES)  # a recovery's prepare is refused
        assert r.vote(late) is None


def test_after_a_restart_the_newer_grant_of_a_regranted_attempt_stays_current() -> None:
    """Found by the model run: a restarted replica must not take the older of
    two grants of one (re-granted) attempt for its current one."""
    r = Replica()
    assert granted(r.claim(W1, 1, ts=900, confirm=False))  # a worker with a fast clock
    r.now = STALE + 0.01
    assert granted(r.claim(W0, 1, ts=5))  # re-granted; W0's clock is behind
    assert current_grant(r.state, r.me) == (1, W0.node_id)
    r.obs = Observations()  # restart: observations are rebuilt from the facts
    observe(r.obs, r.store, r.me, r.now)
    assert current_grant(r.state, r.me) == (1, W0.node_id)
    assert not accept_renew(r.state, renew(W1, JOB, 1, 1000), r.me, r.obs, r.now)


def test_a_split_vote_seen_whole_is_granted_again_at_once_and_due_soon() -> None:
    """Three workers claimed attempt 1 at once, and each replica granted it to
    its own node's worker first (r = 3, quorum 2): nobody can win, and the job
    waited a whole lease (10 s in the bench's batch drains) for the grants to
    go stale. A replica that holds the three grants re-grants the attempt to
    the next claimer at once, and the job is due for re-announcement
    ``split_retry_s`` after its grant instead of a lease later."""
    b, c = REPLICAS[1], REPLICAS[2]
    r = Replica()
    assert granted(r.claim(W0, 1, confirm=False))
    r.add(lease(b, JOB, 1, W1), lease(c, JOB, 1, W2))
    state = r.state
    assert not leases.confirmed(state, 1) and leases.unwinnable(state, 1)
    assert lease_deadline(state, r.me, r.obs, RULES) == RULES.split_retry_s  # not STALE (1.27 s here)
    r.now = 0.01  # long before the grant to W0 goes stale
    g = r.claim(W1, 1, ts=10, confirm=False)
    assert granted(g) and current_grant(r.state, r.me) == (1, W1.node_id)
    # W1 now holds two current grants (this replica's and B's): a quorum
    assert leases.confirmed(r.state, 1) and not leases.unwinnable(r.state, 1)
    assert "superseded" in r.claim(W0, 1)


def test_a_split_that_a_replica_yet_to_grant_could_still_break_waits_for_the_lease() -> None:
    """Grants to W0 here and W1 at B, and C has not granted: C's grant would
    give one of them a quorum, so the attempt is winnable and rule 4 waits
    for staleness as before. At r = 5, quorum 3, grants 2-2-1 are a whole
    split; 2-2 with one replica silent are not."""
    b = REPLICAS[1]
    r = Replica()
    assert granted(r.claim(W0, 1, confirm=False))
    r.add(lease(b, JOB, 1, W1))
    assert not leases.unwinnable(r.state, 1)
    r.now = 0.01
    assert "live" in r.claim(W2, 1, confirm=False)
    job5 = submit(max_attempts=2, replicas=5, quorum=3, lease_ms=1000)
    base = [job5, placement(job5, REPLICAS[:5])]
    two_two = [lease(REPLICAS[0], job5, 1, W0), lease(REPLICAS[1], job5, 1, W0),
               lease(REPLICAS[2], job5, 1, W1), lease(REPLICAS[3], job5, 1, W1)]
    assert not leases.unwinnable(L.derive([*base, *two_two]), 1)
    assert leases.unwinnable(L.derive([*base, *two_two, lease(REPLICAS[4], job5, 1, W2)]), 1)
    assert not leases.unwinnable(L.derive([*base, *two_two, lease(REPLICAS[4], job5, 1, W1)]), 1)  # W1 won


def _own_first_run(data) -> Model:
    model = Model(data, st.just((3, 2)))  # the shortcut's configuration: r = 3, quorum 2
    actions = [model.claim_own_first, model.claim_again, model.confirm_local, model.claim_local, model.gossip] * 4
    actions += [model.confirm, model.renew, model.post_result, model.advance, model.restart]
    for _ in range(data.draw(st.integers(10, 60), label="steps")):
        data.draw(st.sampled_from(actions), label="action")()
        model.check()
    return model


@settings(max_examples=600, deadline=None)
@given(st.data())
def test_model_run_with_claims_confirmed_by_the_local_proof_keeps_leases_exclusive(data) -> None:
    """The same model with the worker's own replica granting first and the
    lease confirmed by showing the grants to that replica alone (round 7's
    shortcut), among split votes that rule 4 grants again at once."""
    model = _own_first_run(data)
    event(f"confirmed by the local proof: {bool(model.confirmed)}")
