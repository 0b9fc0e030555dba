"""Forgery and replay against one real replica's store policy (``node.replica.JobReplica``).

Each test hands a replica something a well-behaved peer never sends (a
forged signature, a fact signed for another job or kind, grants from nodes
outside the job's placement, a cancel or placement not by the submitter, a
claim, renew or result that a newer attempt superseded) and checks what an
operator relies on: the replica refuses it (or, for an exact replay, answers
as before and signs nothing new), its stored facts and the derived state do
not change, and the refusal is counted. ``lifecycle.derive`` is checked to
ignore the same facts, so a reader that merges them from a hostile peer
shows the same status as one that never saw them.

The replica runs on a fake monotonic clock; the job is r=3, quorum 2,
placed on REPLICAS[0..2]; the replica under test is REPLICAS[0].
"""

from __future__ import annotations

import pytest

from workmesh.crypto.canonical import canonical_unpack
from workmesh.crypto.identity import Identity
from workmesh.node import facts as F
from workmesh.node import lifecycle
from workmesh.node.errors import InvalidFact
from workmesh.node.facts import Fact
from workmesh.node.leases import LeaseRules
from workmesh.node.replica import JobReplica
from tests.unit.strategies import REPLICAS, STRANGER, SUBMITTER, WORKERS, cancel, claim, lease, placement, renew, result, seal, submit
from tests.unit.strategies import flip_signature_bit, signed_raw

JOB = submit(max_attempts=2, replicas=3, quorum=2, lease_ms=1000)
OTHER = submit(max_attempts=2, replicas=3, quorum=2, lease_ms=1000, nonce=b"\x07" * 16)
KEY = JOB.job_id
ME, R1, R2 = REPLICAS[:3]
OUTSIDERS = REPLICAS[3:6]
W0, W1 = WORKERS[:2]
STALE_S = LeaseRules().stale_after_s(JOB.body.lease_ms)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Store:
    """One replica and the facts it holds under KEY, the way the DHT shell drives it."""

    def __init__(self, identity: Identity = ME) -> None:
        self.clock = Clock()
        self.replica = JobReplica(identity, LeaseRules(), self.clock, lambda: 1_767_225_600_000, lambda k, n: None)
        self.held: dict[bytes, Fact] = {}

    def send(self, facts: list[Fact], key: bytes = KEY):
        adm = self.replica.admit(key, list(facts), list(self.held.values()), W0.node_id)
        for f in [*adm.accept, *adm.produced]:
            if f.slot is not None:  # renews: one per slot, the highest version wins (storage's rule)
                for old in [h for h in self.held.values() if h.slot == f.slot]:
                    if old.version < f.version:
                        del self.held[old.fact_id]
                if any(h.slot == f.slot and h.version >= f.version for h in self.held.values()):
                    continue
            self.held[f.fact_id] = f
        return adm

    def state(self) -> lifecycle.JobState:
        return lifecycle.derive(self.held.values(), job_id=KEY)

    def snapshot(self):
        s = self.state()
        return set(self.held), (s.status, s.lease_attempt, s.lease_worker, s.decided, s.replicas)


def own_grants(adm, action: str) -> list[Fact]:
    return [f for f in adm.produced if f.kind == F.GRANT and f.body.action == action and f.author_id == ME.node_id]


@pytest.fixture
def store() -> Store:
    """The job placed on ME, R1, R2 and running: W0 holds attempt 1 with grants from ME and R1."""
    s = Store()
    adm = s.send([JOB, placement(JOB)])
    assert not adm.refused, adm.refused
    adm = s.send([claim(W0, JOB, 1)])
    assert len(own_grants(adm, F.LEASE)) == 1, adm.refused  # positive control: an honest claim is granted
    adm = s.send([lease(R1, JOB, 1, W0)])
    assert not adm.refused
    state = s.state()
    assert (state.status, state.lease_attempt, state.lease_worker) == ("running", 1, W0.node_id)
    return s


def assert_refused(store: Store, facts: list[Fact], counter: str = "facts_refused", reason: str | None = None) -> None:
    before, counters = store.snapshot(), dict(store.replica.counters)
    adm = store.send(facts)
    assert len(adm.refused) == len(facts), adm
    assert adm.accept == [] and adm.produced == []
    if reason is not None:
        assert all(reason in why for _, why in adm.refused), adm.refused
    assert store.snapshot() == before, "a refused fact changed what the replica holds or shows"
    assert store.replica.counters["facts_refused"] == counters["facts_refused"] + len(facts)
    if counter != "facts_refused":
        assert store.replica.counters[counter] == counters[counter] + len(facts)


def assert_ignored_by_derive(store: Store, facts: list[Fact], support: list[Fact] = ()) -> None:
    """A reader that merges ``facts`` (and ``support``, e.g. seals naming them) from a
    hostile peer shows what it showed before, and keeps none of ``facts``."""
    before = store.state()
    after = lifecycle.derive([*store.held.values(), *facts, *support], job_id=KEY)
    assert (after.status, after.lease_attempt, after.lease_worker, after.decided, after.replicas) == (
        before.status, before.lease_attempt, before.lease_worker, before.decided, before.replicas,
    )
    assert not set(facts) & set(after.facts), "derive counted a forged fact"


# --------------------------------------------------------------------------- raw signing (no checks)


def raw_fact(identity: Identity, kind: str, fields: list, *, domain_kind: str | None = None, author: bytes | None = None) -> bytes:
    """A fact's bytes signed as a ``domain_kind`` (default ``kind``) without ``facts.sign``'s checks."""
    return signed_raw(identity, kind, fields, signed_kind=domain_kind, author=author)


def swap_author(fact: Fact, other: Identity) -> bytes:
    return fact.raw.replace(fact.author, other.public_key)


def honest_result() -> Fact:
    return result(W0, JOB, 1, (lease(ME, JOB, 1, W0), lease(R1, JOB, 1, W0)))


# --------------------------------------------------------------------------- forged signatures


SIGNED = {
    "claim": lambda: claim(W1, JOB, 1),
    "renew": lambda: renew(W0, JOB, 1, 5),
    "lease grant": lambda: lease(R2, JOB, 1, W0),
    "seal": lambda: seal(R2, JOB, honest_result()),
    "placement": lambda: placement(JOB),
    "result": honest_result,
    "cancel": lambda: cancel(JOB),
}


@pytest.mark.parametrize("kind", list(SIGNED))
def test_a_flipped_signature_bit_fails_validation(store, kind):
    raw = flip_signature_bit(SIGNED[kind]().raw)
    with pytest.raises(InvalidFact, match="signature does not verify"):
        store.replica.validate(KEY, raw)


@pytest.mark.parametrize("kind", list(SIGNED))
def test_a_fact_whose_author_is_not_its_signer_fails_validation(store, kind):
    """Someone re-labels a fact with another author key (a placed replica's, the submitter's)."""
    fact = SIGNED[kind]()
    impostor = ME if fact.author != ME.public_key else R2
    with pytest.raises(InvalidFact, match="signature does not verify"):
        store.replica.validate(KEY, swap_author(fact, impostor))
    # ...and a stranger signing with its own key as the claimed author's key also fails.
    fields = canonical_unpack_fields(fact.raw)
    with pytest.raises(InvalidFact, match="signature does not verify"):
        store.replica.validate(KEY, raw_fact(STRANGER, fact.kind, fields, author=fact.author))


def canonical_unpack_fields(raw: bytes) -> list:
    return canonical_unpack(raw, max_len=F.FACT_BYTES_MAX)[2]


# --------------------------------------------------------------------------- reuse across jobs and kinds


def test_a_fact_filed_under_another_jobs_key_fails_validation(store):
    for fact in (claim(W1, OTHER, 1), lease(R2, OTHER, 1, W1), cancel(OTHER), placement(OTHER), OTHER):
        with pytest.raises(InvalidFact):
            store.replica.validate(KEY, fact.raw)


def test_facts_of_another_job_are_refused_counted_and_ignored(store):
    """Even when a buggy shell skipped the key check, the store policy refuses them."""
    forged = [claim(W1, OTHER, 1), lease(R2, OTHER, 1, W1), cancel(OTHER)]
    assert_refused(store, forged, reason="another job")
    assert_ignored_by_derive(store, forged)


@pytest.mark.parametrize(("signed_as", "relabelled"), [("claim", "renew"), ("renew", "claim")])
def test_a_signature_cannot_be_reused_for_another_kind(store, signed_as, relabelled):
    """A claim and a renew have the same fields; the kind is in the signed content, which tells them apart."""
    fields = [KEY, 1, 9]
    raw = raw_fact(W0, relabelled, fields, domain_kind=signed_as)
    with pytest.raises(InvalidFact, match="signature does not verify"):
        store.replica.validate(KEY, raw)
    # Positive control: signed for its own kind, the same bytes verify.
    assert store.replica.validate(KEY, raw_fact(W0, relabelled, fields)).kind == relabelled


# --------------------------------------------------------------------------- naming another worker


def test_a_result_carrying_grants_for_another_worker_fails_validation(store):
    """W1 files a result with W0's lease grants: the grants do not name its author."""
    grants = [lease(ME, JOB, 1, W0).raw, lease(R1, JOB, 1, W0).raw]
    raw = raw_fact(W1, F.RESULT, [KEY, 1, F.OK, b'{"v":666}', grants, 2])
    with pytest.raises(InvalidFact, match="grant names another worker"):
        store.replica.validate(KEY, raw)


def test_a_result_carrying_one_replicas_grant_twice_fails_validation(store):
    g = lease(ME, JOB, 1, W0).raw
    raw = raw_fact(W0, F.RESULT, [KEY, 1, F.OK, b'{"v":1}', [g, g], 2])
    with pytest.raises(InvalidFact, match="two grants by one replica"):
        store.replica.validate(KEY, raw)


def test_a_renew_by_a_worker_that_does_not_hold_the_lease_is_refused(store):
    assert_refused(store, [renew(W1, JOB, 1, 5)], counter="renews_refused", reason="lease not held")
    # Positive control: the holder's renew is accepted.
    adm = store.send([renew(W0, JOB, 1, 5)])
    assert not adm.refused and store.replica.counters["renews_accepted"] == 1


def test_a_claim_while_another_worker_holds_a_live_lease_is_refused(store):
    assert_refused(store, [claim(W1, JOB, 1, ts_ms=7)], counter="claims_refused", reason="not above granted attempt")
    assert_refused(store, [claim(W1, JOB, 2)], counter="claims_refused", reason="lease of attempt 1 is live")


# --------------------------------------------------------------------------- grants and results outside the quorum


def test_a_result_without_a_majority_of_grants_is_refused_and_ignored(store):
    short = result(W0, JOB, 1, (lease(ME, JOB, 1, W0),))
    assert_refused(store, [short], reason="lacks a majority")
    # Even sealed by every placed replica, a reader does not count it.
    assert_ignored_by_derive(store, [short], [seal(r, JOB, short) for r in (ME, R1, R2)])


def test_a_result_whose_grants_come_from_outside_the_placement_is_refused_and_ignored(store):
    foreign = result(W1, JOB, 1, tuple(lease(o, JOB, 1, W1) for o in OUTSIDERS))
    assert_refused(store, [foreign], reason="quorum of the job's replicas")
    assert_ignored_by_derive(store, [foreign, *(seal(o, JOB, foreign) for o in OUTSIDERS)])
    # One placed grant and outsiders' ones still fall short of the quorum.
    mixed = result(W1, JOB, 2, (lease(R2, JOB, 2, W1), *(lease(o, JOB, 2, W1) for o in OUTSIDERS)))
    assert_refused(store, [mixed], reason="quorum of the job's replicas")


def test_lease_and_seal_grants_by_nodes_outside_the_placement_are_refused_and_ignored(store):
    outsiders_lease = [lease(o, JOB, 2, W1) for o in OUTSIDERS]
    assert_refused(store, outsiders_lease, reason="not a replica of the job")
    res = honest_result()
    outsiders_seal = [seal(o, JOB, res) for o in OUTSIDERS]
    assert_refused(store, outsiders_seal, reason="not a replica of the job")
    assert_ignored_by_derive(store, [*outsiders_lease, *outsiders_seal])
    # With the (honest) result present, outsiders' seals still decide nothing.
    with_result = lifecycle.derive([*store.held.values(), res, *outsiders_seal], job_id=KEY)
    assert with_result.status == "pending" and with_result.decided is None


def test_a_replica_that_is_not_placed_grants_nothing():
    """An outsider's own replica code refuses to vote on a job it is not placed on."""
    s = Store(identity=OUTSIDERS[0])
    assert not s.send([JOB, placement(JOB)]).refused
    assert_refused(s, [claim(W0, JOB, 1)], counter="claims_refused", reason="not a replica")
    adm = s.send([honest_result()])
    assert adm.produced == [] and s.replica.counters["seals_issued"] == 0


# --------------------------------------------------------------------------- placements and cancels


def test_a_second_placement_is_refused(store):
    again = placement(JOB, replicas=tuple(OUTSIDERS))
    assert_refused(store, [again], reason="placed already")


def test_a_placement_not_signed_by_the_submitter_is_refused_and_ignored(store):
    forged = placement(JOB, replicas=tuple(OUTSIDERS), by=STRANGER)
    assert_refused(store, [forged], reason="placement is not signed by the submitter")
    # A reader that never saw the real placement does not take the forged one either,
    # nor the votes of the replicas it names.
    votes = [lease(o, JOB, 1, W1) for o in OUTSIDERS]
    state = lifecycle.derive([JOB, forged, *votes], job_id=KEY)
    assert state.replicas == () and state.placement is None and state.status == "pending"


def test_a_forged_placement_on_a_fresh_replica_is_refused_with_the_submission_kept():
    s = Store()
    forged = placement(JOB, replicas=(ME, *OUTSIDERS[:2]), by=STRANGER)
    adm = s.send([JOB, forged])
    assert [i for i, _ in adm.refused] == [1] and adm.accept == [JOB]
    assert s.replica.counters["facts_refused"] == 1
    # Without a placement the replica votes for nobody.
    assert_refused(s, [claim(W0, JOB, 1)], counter="claims_refused", reason="not a replica")


def test_a_cancel_not_signed_by_the_submitter_is_refused_and_ignored(store):
    forged = cancel(JOB, by=STRANGER)
    assert_refused(store, [forged], reason="cancel is not signed by the submitter")
    assert_ignored_by_derive(store, [forged], [seal(r, JOB, forged) for r in (ME, R1, R2)])
    # Positive control: the submitter's cancel is stored (a canceller's round then decides it).
    adm = store.send([cancel(JOB, by=SUBMITTER)])
    assert adm.refused == [] and adm.accept == [cancel(JOB, by=SUBMITTER)]


# --------------------------------------------------------------------------- replay after a newer attempt


@pytest.fixture
def superseded(store) -> Store:
    """W0 went silent past its lease; W1 holds attempt 2 (grants by ME and R1)."""
    store.clock.now += STALE_S + 0.01
    evidence = [lease(ME, JOB, 1, W0), lease(R1, JOB, 1, W0)]
    adm = store.send([*evidence, claim(W1, JOB, 2)])
    assert len(own_grants(adm, F.LEASE)) == 1, adm.refused
    assert not store.send([lease(R1, JOB, 2, W1)]).refused
    state = store.state()
    assert (state.status, state.lease_attempt, state.lease_worker) == ("running", 2, W1.node_id)
    return store


def test_an_old_claim_replayed_after_a_newer_attempt_grants_nothing_new(superseded):
    before, grants = superseded.snapshot(), superseded.replica.counters["grants_issued"]
    adm = superseded.send([claim(W0, JOB, 1)])  # the exact old claim: idempotent
    assert superseded.replica.counters["grants_issued"] == grants
    assert all(g.attempt == 1 for g in adm.produced)  # nothing for the current attempt
    assert superseded.snapshot() == before
    # A fresh claim for the superseded attempt (new timestamp) is refused and counted.
    assert_refused(superseded, [claim(W0, JOB, 1, ts_ms=99)], counter="claims_refused", reason="superseded")
    # ...and a claim of attempt 2 by the worker that lost attempt 1 as well.
    assert_refused(superseded, [claim(W0, JOB, 2)], counter="claims_refused", reason="not above granted attempt 2")


def test_an_exact_replay_of_a_superseded_claim_gets_no_grant_back(superseded):
    adm = superseded.send([claim(W0, JOB, 1)])
    assert [g for g in adm.produced if g.kind == F.GRANT and g.body.action == F.LEASE] == []


def test_an_old_renew_replayed_after_a_newer_attempt_is_refused(superseded):
    assert_refused(superseded, [renew(W0, JOB, 1, 50)], counter="renews_refused", reason="lease not held")


def test_an_old_result_replayed_after_a_newer_attempt_is_never_sealed(superseded):
    """A late (or replayed) ok result of attempt 1 is kept for the audit trail, never sealed,
    and cannot be decided: the replicas that granted attempt 2 form a quorum and refuse."""
    late = honest_result()
    before, seals = superseded.state(), superseded.replica.counters["seals_issued"]
    adm = superseded.send([late])
    assert own_grants(adm, F.SEAL) == [] and superseded.replica.counters["seals_issued"] == seals
    after = superseded.state()
    assert (after.status, after.lease_attempt, after.lease_worker, after.decided) == (
        before.status, before.lease_attempt, before.lease_worker, before.decided,
    )
    # The one placed replica that did not move on may seal it; one seal decides nothing.
    assert lifecycle.derive([*superseded.held.values(), seal(R2, JOB, late)], job_id=KEY).decided is None
    # Replayed again: still nothing signed.
    assert superseded.send([late]).produced == []


def test_replaying_every_held_fact_changes_nothing(superseded):
    """Set union: a replay of the whole history is a no-op and signs nothing new."""
    before, counters = superseded.snapshot(), dict(superseded.replica.counters)
    superseded.send(list(superseded.held.values()))
    assert superseded.snapshot() == before
    for name in ("grants_issued", "seals_issued", "renews_accepted"):
        assert superseded.replica.counters[name] == counters[name]


# --------------------------------------------------------------------------- found while replaying faults


def test_a_job_whose_closing_attempt_was_split_can_still_end():
    job = submit(max_attempts=1, replicas=3, quorum=2, lease_ms=1000, nonce=b"\x0c" * 16)
    stores = [Store(identity=r) for r in (ME, R1, R2)]
    for s in stores:
        s.send([job, placement(job)], key=job.job_id)
        assert s.send([claim(W0, job, 1)], key=job.job_id).produced  # every replica grants attempt 1 to W0
    evidence = [lease(r, job, 1, W0) for r in (ME, R1, R2)]
    # W0 dies; three workers race for the closing attempt, each reaching one replica first.
    for s, w in zip(stores, (W1, *WORKERS[2:4])):
        s.clock.now += STALE_S + 0.01
        assert s.send([*evidence, claim(w, job, 2)], key=job.job_id).produced
    # They die too. Once every grant is stale, some worker must be able to end the job.
    for s in stores:
        s.clock.now += STALE_S + 0.01
    closing = [lease(r, job, 2, w) for r, w in zip((ME, R1, R2), (W1, *WORKERS[2:4]))]
    winners = []
    for attempt in (2, 3):
        for w in WORKERS:
            granted = sum(
                1
                for s in stores
                if any(
                    g.body.action == F.LEASE and g.body.subject == w.node_id
                    for g in s.send([*evidence, *closing, claim(w, job, attempt, ts_ms=50)], key=job.job_id).produced
                )
            )
            if granted >= 2:
                winners.append((attempt, w))
    assert winners, "no worker can gather a quorum for any attempt: the job can never end"
