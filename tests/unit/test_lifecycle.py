"""Job status derivation: a deterministic function of the set of facts."""

from __future__ import annotations

import re

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from workmesh.node import facts as F
from workmesh.node import lifecycle as L
from workmesh.node import consensus
from tests.unit.strategies import REPLICAS, STRANGER, WORKERS, cancel, claim, job_histories, lease, quorum_result
from tests.unit.strategies import placement, renew, result, seal, submit

JOB = submit(max_attempts=2, replicas=3, quorum=2)
PLACE = placement(JOB)
R0, R1, R2, R3 = REPLICAS[:4]
W0, W1 = WORKERS[:2]


def grants(attempt: int, worker=W0, replicas=(R0, R1)) -> list[F.Fact]:
    return [lease(r, JOB, attempt, worker) for r in replicas]


OK1 = quorum_result(JOB, W0, 1)
ERR1 = quorum_result(JOB, W0, 1, F.ERROR)
ERR2 = quorum_result(JOB, W1, 2, F.ERROR)
OK2 = quorum_result(JOB, W1, 2)
CLOSE3 = quorum_result(JOB, W1, 3, F.ERROR)
CANCEL = cancel(JOB)

# name: (facts besides the submit, status, attempts, worker)
EXAMPLES = {
    "submitted": ([], L.PENDING, 0, None),
    "claimed-without-grants": ([claim(W0, JOB, 1)], L.PENDING, 0, None),
    "one-grant-short-of-quorum": ([claim(W0, JOB, 1), *grants(1, replicas=(R0,))], L.PENDING, 0, None),
    "quorum-of-lease-grants": ([claim(W0, JOB, 1), *grants(1)], L.RUNNING, 1, W0),
    "later-attempt-short-of-quorum": ([*grants(1), lease(R2, JOB, 2, W1)], L.RUNNING, 1, W0),
    "error-result-awaits-retry": ([*grants(1), ERR1], L.PENDING, 1, None),
    "sealed-non-final-error-is-not-terminal": ([ERR1, seal(R0, JOB, ERR1), seal(R1, JOB, ERR1)], L.PENDING, 1, None),
    "retry-running": ([ERR1, *grants(2, W1)], L.RUNNING, 2, W1),
    "ok-result-awaits-seals": ([OK1, seal(R0, JOB, OK1)], L.PENDING, 1, None),
    "ok-result-sealed": ([OK1, seal(R0, JOB, OK1), seal(R2, JOB, OK1)], L.DONE, 1, W0),
    "final-error-sealed": ([ERR1, ERR2, seal(R0, JOB, ERR2), seal(R1, JOB, ERR2)], L.FAILED, 2, W1),
    "closing-attempt-sealed": ([ERR1, CLOSE3, seal(R1, JOB, CLOSE3), seal(R2, JOB, CLOSE3)], L.FAILED, 2, W1),
    "cancel-sealed": ([*grants(1), CANCEL, seal(R0, JOB, CANCEL), seal(R1, JOB, CANCEL)], L.CANCELLED, 1, None),
    "cancel-short-of-seals": ([*grants(1), CANCEL, seal(R0, JOB, CANCEL)], L.RUNNING, 1, W0),
    "cancel-by-stranger-is-ignored": (
        [cancel(JOB, by=STRANGER), seal(R0, JOB, cancel(JOB, by=STRANGER)), seal(R1, JOB, cancel(JOB, by=STRANGER))],
        L.PENDING,
        0,
        None,
    ),
    "result-short-of-grants-is-ignored": (
        [
            result(W0, JOB, 1, (lease(R0, JOB, 1, W0),)),
            seal(R0, JOB, result(W0, JOB, 1, (lease(R0, JOB, 1, W0),))),
            seal(R1, JOB, result(W0, JOB, 1, (lease(R0, JOB, 1, W0),))),
        ],
        L.PENDING,
        0,
        None,
    ),
    "seals-by-one-replica-count-once": ([OK1, seal(R0, JOB, OK1), seal(R0, JOB, OK1)], L.PENDING, 1, None),
    # After replica replacement two subjects can both reach a quorum: pick stably.
    # R3 is not among the job's placed replicas (R0, R1, R2): its seals never count.
    "seals-outside-the-placement-do-not-count": (
        [CANCEL, OK1, *(seal(r, JOB, CANCEL) for r in (R0, R1)), *(seal(r, JOB, OK1) for r in (R2, R3))],
        L.CANCELLED,
        1,
        None,
    ),
    "only-placed-replicas-decide": (
        [OK1, OK2, *(seal(r, JOB, OK2) for r in (R0, R1)), *(seal(r, JOB, OK1) for r in (R2, R3))],
        L.DONE,
        2,
        W1,
    ),
}


@pytest.mark.parametrize("name", list(EXAMPLES))
def test_status_examples(name: str) -> None:
    extra, status, attempts, worker = EXAMPLES[name]
    state = L.derive([JOB, PLACE, *extra])
    assert (state.status, state.attempts, state.worker) == (status, attempts, worker and worker.node_id)
    assert state.job_id == JOB.job_id and state.submit == JOB


def test_done_carries_the_decoded_result() -> None:
    state = L.derive([JOB, PLACE, OK1, seal(R0, JOB, OK1), seal(R1, JOB, OK1)])
    assert (state.result, state.error, state.decided) == ({"v": 1}, None, OK1)


def test_failed_carries_the_decided_error_and_pending_the_last_one() -> None:
    retrying = L.derive([JOB, PLACE, ERR1])
    assert (retrying.error, retrying.last_error, retrying.result) == (None, "boom 1", None)
    failed = L.derive([JOB, PLACE, ERR1, ERR2, seal(R0, JOB, ERR2), seal(R1, JOB, ERR2)])
    assert (failed.error, failed.last_error, failed.decided) == ("boom 2", "boom 2", ERR2)


def test_attempt_fields() -> None:
    state = L.derive([JOB, PLACE, ERR1, *grants(2, W1), claim(W0, JOB, 3)])
    assert (state.lease_attempt, state.lease_worker, state.highest_attempt) == (2, W1.node_id, 3)


def test_grants_carried_by_a_result_count_and_are_listed() -> None:
    state = L.derive([JOB, PLACE, ERR1])
    assert state.lease_attempt == 1
    assert set(grants(1)) <= set(state.facts)


def test_renews_keep_the_newest_per_slot_like_storage() -> None:
    old, new = renew(W0, JOB, 1, 5), renew(W0, JOB, 1, 9)
    state = L.derive([JOB, PLACE, *grants(1), old, new, renew(W1, JOB, 1, 1)])
    assert new in state.facts and old not in state.facts
    assert state == L.derive([JOB, PLACE, *grants(1), new, renew(W1, JOB, 1, 1)])


def test_facts_are_sorted_by_kind_then_attempt_then_id() -> None:
    state = L.derive([CANCEL, OK2, ERR1, claim(W0, JOB, 2), claim(W1, JOB, 1), JOB, PLACE])
    keys = [(L.KIND_ORDER[f.kind], f.attempt, f.fact_id) for f in state.facts]
    assert keys == sorted(keys)
    assert state.facts[0] == JOB


def test_without_a_submit_there_is_no_state() -> None:
    assert L.derive([]) is None
    assert L.derive([claim(W0, JOB, 1), *grants(1)]) is None
    other = submit(nonce=b"\x05" * 16)
    assert L.derive([JOB, PLACE, other], job_id=other.job_id).submit == other
    assert L.derive([JOB, PLACE, claim(W0, JOB, 1)], job_id=other.job_id) is None


def test_facts_of_another_job_are_ignored() -> None:
    other = submit(nonce=b"\x05" * 16)
    alone = L.derive([JOB, PLACE])
    assert L.derive([JOB, PLACE, claim(W0, other, 1), lease(R0, other, 1, W0), lease(R1, other, 1, W0)], job_id=JOB.job_id) == alone


def test_is_final_result() -> None:
    assert L.is_final_result(JOB, OK1)
    assert not L.is_final_result(JOB, ERR1)
    assert L.is_final_result(JOB, ERR2) and L.is_final_result(JOB, CLOSE3)
    assert not L.is_final_result(JOB, CANCEL)


# --------------------------------------------------------------------------
# Properties


@settings(max_examples=1000)
@given(job_histories(), st.data())
def test_derive_depends_only_on_the_set(history, data) -> None:
    job, fs = history
    shuffled = data.draw(st.permutations(fs))
    repeated = shuffled + data.draw(st.lists(st.sampled_from(fs), max_size=10))
    assert L.derive(repeated) == L.derive(fs)


@settings(max_examples=300)
@given(job_histories(), st.data())
def test_merging_replica_sets_in_any_grouping_agrees(history, data) -> None:
    """Union is commutative, associative and idempotent; derive sees only the union."""
    job, fs = history
    parts = [set(data.draw(st.lists(st.sampled_from(fs)))) | {job, placement(job)} for _ in range(3)]
    a, b, c = parts
    left, right = (a | b) | c, a | (b | c)
    assert L.derive(list(left)) == L.derive(list(right)) == L.derive(list(c | a | b | a))


@settings(max_examples=500)
@given(job_histories())
def test_at_most_one_subject_is_decided_and_status_matches_it(history) -> None:
    job, fs = history
    state = L.derive(fs)
    counts = L.seal_counts(state.facts)
    decided = [f for f in state.facts if counts.get(f.fact_id, 0) >= job.body.quorum]
    assert len(decided) <= 1  # each replica sealed at most one subject, quorums intersect
    if state.decided is None:
        assert state.status in (L.PENDING, L.RUNNING)
    else:
        expected = {F.CANCEL: L.CANCELLED}.get(state.decided.kind) or (
            L.DONE if state.decided.body.outcome == F.OK else L.FAILED
        )
        assert state.status == expected
    assert state.attempts <= job.body.max_attempts
    if state.status == L.FAILED:
        assert state.attempts == job.body.max_attempts


def _flatten(fs):
    for f in fs:
        yield f
        if f.kind == F.RESULT:
            yield from f.body.grants


@settings(max_examples=300, deadline=None)
@given(job_histories(seals=False, junk=False), st.data())
def test_terminal_status_never_changes_under_honest_sealing(history, data) -> None:
    """Facts arrive in random order at replicas that vote and seal by the consensus rules."""
    job, fs = history
    replicas = REPLICAS[: job.body.replicas]
    everything = sorted(set(_flatten(fs)), key=L.sort_key)
    views = {r: {job, placement(job)} | {f for f in everything if f.author_id == r.node_id} for r in replicas}
    seen: set[F.Fact] = {job, placement(job)}
    subjects_all = [f for f in everything if f.kind in (F.RESULT, F.CANCEL)]
    before = L.derive(seen)
    for _ in range(data.draw(st.integers(20, 60))):
        r = data.draw(st.sampled_from(replicas))
        if data.draw(st.booleans()):
            pool = everything if not subjects_all or data.draw(st.booleans()) else subjects_all
            fact = data.draw(st.sampled_from(pool))  # delivery of any produced fact
            views[r].add(fact)
            seen.add(fact)
        else:
            subjects = [f for f in sorted(views[r], key=L.sort_key) if f.kind == F.RESULT and L.is_final_result(job, f)]
            if not subjects:
                continue
            subject = data.draw(st.sampled_from(subjects))
            # The acceptor's steps: vote for the result (its worker's
            # proposal), then seal whatever certificate its votes make.
            for body in (consensus.on_proposal(L.derive(views[r]), subject, r.node_id), None):
                body = body if body is not None else consensus.on_votes(L.derive(views[r]), r.node_id)
                if not isinstance(body, F.BallotStep):
                    continue
                signed = F.sign(r, F.BALLOT, body)
                views[r].add(signed)
                seen.add(signed)
                everything.append(signed)
        after = L.derive(seen)
        assert L.can_move(before.status, after.status)
        if before.terminal:
            assert (after.status, after.decided) == (before.status, before.decided)
        before = after
    event(f"ended {before.status}")


# --------------------------------------------------------------------------
# The lifecycle as data


def test_terminal_states_have_no_way_out() -> None:
    assert set(L.TRANSITIONS) == set(L.STATUSES)
    for status in L.TERMINAL:
        assert L.TRANSITIONS[status] == frozenset()
    for status in set(L.STATUSES) - L.TERMINAL:
        assert L.TERMINAL <= L.TRANSITIONS[status]


def test_diagram_is_drawn_from_the_table() -> None:
    text = L.diagram()
    assert text.startswith("stateDiagram-v2\n")
    edges = set(re.findall(r"^\s+(\w+) --> (\w+)", text, flags=re.M))
    assert edges == {(a, b) for a, targets in L.TRANSITIONS.items() for b in targets}
    assert "[*] --> pending" in text
    for status in L.TERMINAL:
        assert f"{status} --> [*]" in text
