"""lifecycle.derive and lifecycle.derive_with against a reference model.

The reference is the plain derivation the project had before derive was made
incremental (commit 29fd4eb), kept here verbatim in substance: every fact
checked in context on every call, the tallies recounted from the valid
facts. The fast paths must return an equal JobState for any fact set, any
order, and any earlier set they start from.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from hypothesis import event, given, settings
from hypothesis import strategies as st

from workmesh.dht.storage import FactStore
from workmesh.node import facts as F
from workmesh.node import lifecycle as L
from workmesh.node.derived import JobDeriver
from workmesh.node.errors import InvalidFact
from tests.unit.strategies import (
    REPLICAS,
    STRANGER,
    SUBMITTER,
    WORKERS,
    claim,
    job_histories,
    lease,
    placement,
    renew,
    result,
    seal,
)
from tests.unit.strategies import submit as make_submit

# --------------------------------------------------------------------------
# The reference model (node/lifecycle.py and facts.check_in_context at 29fd4eb)


def ref_check_in_context(submit: F.Fact, fact: F.Fact) -> None:
    spec: F.Submit = submit.body
    if fact.kind == F.SUBMIT:
        if fact.fact_id != submit.fact_id:
            raise InvalidFact("a second submission under one key")
        return
    if fact.job_id != submit.job_id:
        raise InvalidFact("fact belongs to another job")
    if fact.kind == F.CANCEL:
        if fact.author != submit.author:
            raise InvalidFact("cancel is not signed by the submitter")
    elif fact.kind in (F.CLAIM, F.RENEW, F.RESULT):
        if fact.attempt > spec.max_attempts + 1:
            raise InvalidFact("attempt beyond max_attempts + 1")
        if fact.kind == F.RESULT:
            if len(fact.body.grants) < spec.quorum:
                raise InvalidFact("result lacks a majority of lease grants")
            if fact.attempt > spec.max_attempts and fact.body.outcome != F.ERROR:
                raise InvalidFact("the closing attempt can only record failure")
    elif fact.kind == F.BALLOT:
        if fact.attempt > spec.max_attempts + 1:
            raise InvalidFact("attempt beyond max_attempts + 1")
    elif fact.kind == F.GRANT:
        if fact.attempt > spec.max_attempts + 1:
            raise InvalidFact("attempt beyond max_attempts + 1")
        if fact.body.action == F.PLACE:
            if fact.author != submit.author:
                raise InvalidFact("placement is not signed by the submitter")
            if len(fact.body.subject) != F.NODE_ID_BYTES * spec.replicas:
                raise InvalidFact("placement does not name r replicas")


def _passes(submit: F.Fact, fact: F.Fact) -> bool:
    try:
        ref_check_in_context(submit, fact)
    except InvalidFact:
        return False
    return True


def ref_placement_of(facts: Iterable[F.Fact], submit: F.Fact) -> F.Fact | None:
    best = None
    for f in facts:
        if f.kind == F.GRANT and f.body.action == F.PLACE and (best is None or f.fact_id < best.fact_id):
            if _passes(submit, f):
                best = f
    return best


def ref_valid_facts(facts: Iterable[F.Fact], submit: F.Fact, placement: F.Fact | None) -> list[F.Fact]:
    replicas = frozenset(F.placement_ids(placement.body.subject)) if placement is not None else frozenset()
    out: dict[bytes, F.Fact] = {}
    renew_slots: dict[bytes, F.Fact] = {}

    def admit(fact: F.Fact) -> None:
        if fact.fact_id in out:
            return
        if fact.kind == F.GRANT and fact.body.action == F.PLACE and fact != placement:
            return
        if not _passes(submit, fact):
            return
        if fact.kind == F.GRANT and fact.body.action != F.PLACE and fact.author_id not in replicas:
            return
        if fact.kind == F.BALLOT and fact.body.step in (F.PROMISE, F.VOTE, F.SEAL) and fact.author_id not in replicas:
            return
        if fact.kind == F.RESULT and sum(1 for g in fact.body.grants if g.author_id in replicas) < submit.body.quorum:
            return
        if fact.kind == F.GRANT and fact.body.action == F.LEASE and fact.attempt < 1:
            return
        if fact.kind == F.RENEW:
            old = renew_slots.get(fact.slot)
            if old is not None and (old.version, old.fact_id) >= (fact.version, fact.fact_id):
                return
            if old is not None:
                del out[old.fact_id]
            renew_slots[fact.slot] = fact
        out[fact.fact_id] = fact
        if fact.kind == F.RESULT:
            for grant in fact.body.grants:
                admit(grant)

    for fact in facts:
        admit(fact)
    return sorted(out.values(), key=L.sort_key)


def ref_lease_holder(valid: list[F.Fact], quorum: int) -> tuple[int, bytes | None]:
    signers: dict[tuple[int, bytes], set[bytes]] = {}
    for f in valid:
        if f.kind == F.GRANT and f.body.action == F.LEASE:
            signers.setdefault((f.attempt, f.body.subject), set()).add(f.author_id)
    best: tuple[int, bytes | None] = (0, None)
    for (attempt, worker), who in sorted(signers.items()):
        if len(who) >= quorum and attempt > best[0]:
            best = (attempt, worker)
    return best


def ref_decided(valid: list[F.Fact], submit: F.Fact) -> F.Fact | None:
    """The subject a quorum sealed at one ballot (the lowest such ballot)."""
    by_id = {f.fact_id: f for f in valid}
    signers: dict[tuple, set[bytes]] = {}
    for f in valid:
        if f.kind == F.BALLOT and f.body.step == F.SEAL:
            signers.setdefault((*f.body.ballot, f.body.subject), set()).add(f.author_id)
    candidates = [
        key
        for key, who in signers.items()
        if len(who) >= submit.body.quorum
        and key[3] in by_id
        and (by_id[key[3]].kind == F.CANCEL or L.is_final_result(submit, by_id[key[3]]))
    ]
    return by_id[min(candidates)[3]] if candidates else None


def ref_error_message(result: F.Fact) -> str:
    data = result.body.data
    if isinstance(data, dict) and isinstance(data.get("error"), str):
        return data["error"]
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def ref_derive(facts: Iterable[F.Fact], *, job_id: bytes | None = None) -> L.JobState | None:
    pool = set(facts)
    submits = [f for f in pool if f.kind == F.SUBMIT and (job_id is None or f.job_id == job_id)]
    if not submits:
        return None
    submit = min(submits, key=lambda f: f.job_id)
    spec: F.Submit = submit.body
    placement = ref_placement_of(pool, submit)
    valid = ref_valid_facts(pool, submit, placement)
    lease_attempt, lease_worker = ref_lease_holder(valid, spec.quorum)
    results = [f for f in valid if f.kind == F.RESULT]
    highest = max((f.attempt for f in valid if f.kind in (F.CLAIM, F.RENEW, F.GRANT, F.RESULT, F.BALLOT)), default=0)
    errors = [f for f in results if f.body.outcome == F.ERROR]
    last_error = ref_error_message(max(errors, key=lambda f: (f.attempt, f.fact_id))) if errors else None
    decided = ref_decided(valid, submit)
    result: Any | None = None
    error = worker = None
    if decided is not None and decided.kind == F.CANCEL:
        status = L.CANCELLED
    elif decided is not None and decided.body.outcome == F.OK:
        status, result, worker = L.DONE, decided.body.data, decided.author_id
    elif decided is not None:
        status, error, worker = L.FAILED, ref_error_message(decided), decided.author_id
    elif lease_attempt and not any(f.attempt == lease_attempt for f in results):
        status, worker = L.RUNNING, lease_worker
    else:
        status = L.PENDING
    return L.JobState(
        job_id=submit.job_id,
        submit=submit,
        status=status,
        attempts=min(lease_attempt, spec.max_attempts),
        result=result,
        error=error,
        last_error=last_error,
        worker=worker,
        decided=decided,
        lease_attempt=lease_attempt,
        lease_worker=lease_worker,
        highest_attempt=highest,
        replicas=F.placement_ids(placement.body.subject) if placement is not None else (),
        placement=placement,
        facts=tuple(valid),
    )


# --------------------------------------------------------------------------
# Fact sets: honest histories plus what makes the fast paths fall back or
# drop facts (renews replacing each other, second placements, submissions of
# other jobs, leases for attempt 0)


@st.composite
def rich_histories(draw) -> tuple[F.Fact, list[F.Fact]]:
    job, fs = draw(job_histories())
    fs = list(fs)
    spec: F.Submit = job.body
    for _ in range(draw(st.integers(0, 3))):  # renews that replace each other in one slot
        worker = draw(st.sampled_from(WORKERS[:2]))
        fs.append(renew(worker, job, draw(st.integers(1, spec.max_attempts + 2)), draw(st.integers(1, 6))))
    if draw(st.booleans()):
        fs.append(lease(REPLICAS[0], job, 0, WORKERS[0]))  # endorses nothing
    if draw(st.integers(0, 3)) == 0:
        others = tuple(draw(st.permutations(REPLICAS)))[: spec.replicas]
        fs.append(placement(job, others, by=draw(st.sampled_from([SUBMITTER, SUBMITTER, STRANGER]))))
    if draw(st.integers(0, 3)) == 0:
        other = make_submit(
            max_attempts=spec.max_attempts, replicas=spec.replicas, quorum=spec.quorum, nonce=draw(st.sampled_from([b"\x02" * 16, b"\x0f" * 16]))
        )
        fs.extend([other, placement(other)])
    return job, fs


def mixed(fs: list[F.Fact], data: st.DataObject) -> list[F.Fact]:
    """``fs`` in a drawn order, some facts repeated."""
    return data.draw(st.permutations(fs)) + data.draw(st.lists(st.sampled_from(fs), max_size=4))


def job_ids(fs: list[F.Fact]) -> list[bytes | None]:
    return [None, *sorted({f.job_id for f in fs if f.kind == F.SUBMIT})]


# --------------------------------------------------------------------------
# Properties


@settings(max_examples=600)
@given(rich_histories(), st.data())
def test_context_error_agrees_with_the_reference_check(history, data) -> None:
    job, fs = history
    for submit in {f for f in fs if f.kind == F.SUBMIT}:
        for fact in fs:
            try:
                ref_check_in_context(submit, fact)
                want = None
            except InvalidFact as exc:
                want = str(exc)
            assert F.context_error(submit, fact) == want
            assert F.context_error(submit, fact, submit.job_id) == want


@settings(max_examples=1000)
@given(rich_histories(), st.data())
def test_derive_equals_the_reference(history, data) -> None:
    job, fs = history
    fs = mixed(fs, data)
    job_id = data.draw(st.sampled_from(job_ids(fs)))
    want = ref_derive(fs, job_id=job_id)
    event(f"status {want.status if want else None}")
    assert L.derive(fs, job_id=job_id) == want


@settings(max_examples=1000)
@given(rich_histories(), st.data())
def test_derive_with_from_a_prefix_equals_deriving_the_whole(history, data) -> None:
    """The way a store grows: the same set plus facts, from any split point."""
    job, fs = history
    fs = mixed(fs, data)
    cut = data.draw(st.integers(0, len(fs)))
    job_id = data.draw(st.sampled_from(job_ids(fs)))
    previous = L.derivation(fs[:cut], job_id=job_id)
    assert previous.state == ref_derive(fs[:cut], job_id=job_id)
    got = L.derive_with(previous, data.draw(st.permutations(fs)))
    assert got.state == ref_derive(fs, job_id=job_id)
    assert got.seen == {f.fact_id for f in fs}


@settings(max_examples=500)
@given(rich_histories(), st.data())
def test_derive_with_along_a_chain_of_growing_sets(history, data) -> None:
    """Several steps, each starting from the previous step's derivation."""
    job, fs = history
    fs = mixed(fs, data)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(fs)), min_size=1, max_size=6)))
    d = None
    for cut in [*cuts, len(fs)]:
        d = L.derive_with(d, fs[:cut])
        assert d.state == ref_derive(fs[:cut])


@settings(max_examples=1000)
@given(rich_histories(), st.data())
def test_derive_with_from_any_earlier_set_equals_deriving_the_current_one(history, data) -> None:
    """Facts may also be gone (a store replaced a renew): any previous set, any current set."""
    job, fs = history
    before = data.draw(st.lists(st.sampled_from(fs), max_size=len(fs)))
    now = data.draw(st.lists(st.sampled_from(fs), max_size=len(fs)))
    got = L.derive_with(L.derivation(before), now)
    event(f"previous state {'kept' if got.state is not None and set(before) <= set(now) else 'other'}")
    assert got.state == ref_derive(now)
    # the result is a proper start for a further step
    assert L.derive_with(got, fs).state == ref_derive(fs)


def _store(derived_max: int = 4096, jobs_max: int = 256) -> FactStore:
    return FactStore(None, lambda k, raw: F.decode(raw, key=k), deriver=JobDeriver(jobs_max), derived_max=derived_max)


@settings(max_examples=40, deadline=None)
@given(rich_histories(), st.data())
def test_store_states_answer_the_reference_as_a_store_grows(history, data) -> None:
    """A store filled fact by fact (renews replacing each other as storage
    does), its state asked, and candidates judged as JobReplica does."""
    job, fs = history
    key = job.job_id
    mine = [f for f in data.draw(st.permutations(fs)) if f.job_id == key]
    with _store(data.draw(st.sampled_from([1, 2, 64])), data.draw(st.sampled_from([1, 256]))) as store:
        for fact in mine:
            assert store.state_of(key, [*store.get(key), fact]) == ref_derive([*store.get(key), fact])
            store.merge(key, [fact])
            assert store.state(key) == ref_derive(store.get(key))


def test_store_keeps_the_derivations_of_at_most_derived_max_jobs() -> None:
    jobs = [make_submit(nonce=bytes([0x20 + i]) * 16) for i in range(5)]
    deriver = JobDeriver(jobs_max=3)
    with FactStore(None, lambda k, raw: F.decode(raw, key=k), deriver=deriver, derived_max=2) as store:
        for round_ in range(2):
            for job in jobs:
                facts = [job, placement(job)] + [renew(WORKERS[0], job, 1, 1)] * round_
                store.merge(job.job_id, facts)
                assert store.state(job.job_id) == ref_derive(store.get(job.job_id))
                assert store.derived_statistics()["kept"] <= 2 and deriver.statistics()["jobs"] <= 3
        for job in jobs:  # one let go is derived again when asked
            assert store.state(job.job_id) == ref_derive(store.get(job.job_id))
        assert store.derived_statistics()["kept"] <= 2


def _last_error_and_closing_attempt() -> tuple[F.Fact, list[F.Fact], F.Fact]:
    """A fail job (max_attempts 3) whose attempt 3 error result two of three
    replicas sealed, while a closing attempt 4 (granted by replicas that had
    not seen that error yet) filed "attempts exhausted" and got one seal."""
    job = make_submit(max_attempts=3, replicas=3, quorum=2, nonce=b"\x31" * 16)
    fs = [job, placement(job)]
    results = []
    for attempt in (1, 2, 3, 4):
        worker = WORKERS[attempt % 2]
        granters = REPLICAS[:2] if attempt < 4 else REPLICAS[1:3]
        grants = tuple(lease(g, job, attempt, worker) for g in granters)
        data = b'{"error":"attempts exhausted"}' if attempt == 4 else b'{"error":"boom"}'
        results.append(result(worker, job, attempt, grants, F.ERROR, data))
        fs += [claim(worker, job, attempt), *grants, results[-1]]
    last, closing = results[2], results[3]
    fs += [seal(REPLICAS[0], job, last), seal(REPLICAS[1], job, last), seal(REPLICAS[2], job, closing)]
    return job, fs, last


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_the_last_attempts_sealed_error_is_decided_however_the_facts_arrive(data) -> None:
    """The integration symptom that had the incremental derivation taken out
    (the closing attempt's "attempts exhausted" decided instead of attempt
    3's "boom"): with a quorum sealing attempt 3's error, derive_with and the
    store decide it in any arrival order and from any earlier set."""
    job, fs, last = _last_error_and_closing_attempt()
    order = data.draw(st.permutations(fs))
    d = None
    with _store(derived_max=2, jobs_max=1) as store:
        for i, fact in enumerate(order):
            store.merge(job.job_id, [fact])
            d = L.derive_with(d, order[: i + 1])
            assert d.state == store.state(job.job_id) == ref_derive(order[: i + 1])
    state = d.state
    assert (state.status, state.attempts, state.error, state.decided) == (L.FAILED, 3, "boom", last)
