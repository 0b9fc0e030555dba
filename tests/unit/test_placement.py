"""Choosing a new job's replicas (node/placement.py): the closest nodes that answer."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from workmesh.node import placement as P
from workmesh.node.placement import FAILING, TRUSTED, UNKNOWN, choose, probe_enough, settled, to_probe, verdict

ids = [bytes([i]) * 20 for i in range(12)]  # closest first


def test_verdict_trusts_only_a_recent_answer_with_no_loss_since() -> None:
    assert verdict(0.5, 0, fresh_s=2.0) == TRUSTED
    assert verdict(2.5, 0, fresh_s=2.0) == UNKNOWN  # too long ago
    assert verdict(None, 0, fresh_s=2.0) == UNKNOWN  # never answered us
    assert verdict(0.5, 1, fresh_s=2.0) == UNKNOWN  # a reply lost since: ask again
    assert verdict(0.5, P.FAILING_AFTER - 1, fresh_s=2.0) == UNKNOWN
    assert verdict(None, P.FAILING_AFTER, fresh_s=2.0) == FAILING


def test_without_doubt_the_placement_is_the_r_closest_and_nobody_is_pinged() -> None:
    verdicts = dict.fromkeys(ids[:10], TRUSTED)
    assert to_probe(ids[:10], verdicts, 5) == []
    assert probe_enough(ids[:10], verdicts, 5) == 0
    assert choose(ids[:10], set(ids[:10]), 5) == tuple(ids[:5])


def test_unknown_candidates_closer_than_the_rth_trusted_are_pinged() -> None:
    verdicts = {**dict.fromkeys(ids[:10], TRUSTED), ids[1]: UNKNOWN, ids[3]: UNKNOWN, ids[8]: UNKNOWN}
    # ids[8] lies past the 5th trusted candidate (ids[6]): it cannot be chosen.
    assert to_probe(ids[:10], verdicts, 5) == [ids[1], ids[3]]
    assert probe_enough(ids[:10], verdicts, 5) == 0


def test_failing_candidates_are_pinged_only_when_too_few_others_remain() -> None:
    verdicts = {**dict.fromkeys(ids[:6], UNKNOWN), ids[0]: FAILING, ids[2]: FAILING}
    assert to_probe(ids[:6], verdicts, 3) == [ids[1], ids[3], ids[4], ids[5]]
    verdicts = {**dict.fromkeys(ids[:6], FAILING), ids[4]: UNKNOWN}
    assert to_probe(ids[:6], verdicts, 3) == [ids[4], ids[0], ids[1], ids[2], ids[3], ids[5]]


def test_a_partition_places_on_the_closest_nodes_that_answer() -> None:
    """The case of finding 11: three of the five closest are across the split."""
    across = {ids[0], ids[2], ids[3]}
    alive = set(ids[:10]) - across
    assert choose(ids[:10], alive, 5) == (ids[1], ids[4], ids[5], ids[6], ids[7])


def test_too_few_alive_keeps_the_planned_count_with_the_closest_others() -> None:
    chosen = choose(ids[:10], {ids[6], ids[8], ids[9]}, 5)
    assert chosen == (ids[0], ids[1], ids[6], ids[8], ids[9])
    assert choose(ids[:3], set(), 5) == tuple(ids[:3])  # a mesh smaller than r: all of it


def test_settled_waits_only_for_pings_that_could_change_the_choice() -> None:
    trusted = set(ids[2:8])
    # ids[0] is still being asked and is closer than the 5th alive node: wait.
    assert not settled(ids[:10], trusted, {ids[0], ids[9]}, 5)
    # It answered: the five closest alive are known; ids[9] cannot matter.
    assert settled(ids[:10], trusted | {ids[0]}, {ids[9]}, 5)
    # Nothing closer outstanding and the list ends: settled with fewer.
    assert settled(ids[:4], {ids[1]}, set(), 3)
    assert not settled(ids[:4], {ids[1]}, {ids[3]}, 3)


candidate_lists = st.lists(st.sampled_from(ids), min_size=0, max_size=12, unique=True)


@given(candidate_lists, st.sets(st.sampled_from(ids)), st.integers(1, 7))
def test_choose_names_count_distinct_candidates_preferring_alive_and_close(cands, alive, count) -> None:
    chosen = choose(cands, alive, count)
    assert len(chosen) == min(count, len(cands)) and len(set(chosen)) == len(chosen)
    assert set(chosen) <= set(cands)
    assert list(chosen) == [i for i in cands if i in chosen]  # closest first
    live = [i for i in cands if i in alive]
    assert set(live[:count]) <= set(chosen)  # every alive node that fits is named ...
    skipped_live = [i for i in live if i not in chosen]
    dead_chosen = [i for i in chosen if i not in alive]
    assert not (skipped_live and dead_chosen)  # ... before any that did not answer
    if len(live) >= count:
        assert chosen == tuple(live[:count])


@given(candidate_lists, st.dictionaries(st.sampled_from(ids), st.sampled_from([TRUSTED, UNKNOWN, FAILING])), st.integers(1, 7))
def test_every_candidate_that_could_displace_a_trusted_one_is_pinged(cands, verdicts, count) -> None:
    v = lambda i: verdicts.get(i, UNKNOWN)  # noqa: E731
    asked = to_probe(cands, verdicts, count)
    assert set(asked) <= set(cands) and len(set(asked)) == len(asked)
    assert not any(v(i) == TRUSTED for i in asked)
    trusted = [i for i in cands if v(i) == TRUSTED]
    last = cands.index(trusted[count - 1]) if len(trusted) >= count else len(cands)
    assert {i for i in cands[:last] if v(i) == UNKNOWN} <= set(asked)
    if sum(1 for i in cands if v(i) != FAILING) < count:
        assert {i for i in cands if v(i) == FAILING} <= set(asked)
    # With every ping answered or failed, nothing is pending: settled.
    assert settled(cands, set(trusted), set(), count)
    assert probe_enough(cands, verdicts, count) == max(0, count - len(trusted))
