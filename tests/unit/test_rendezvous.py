"""Rendezvous ranking: every worker computes the same order without talking."""

from __future__ import annotations

import hashlib
from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from workmesh.node.rendezvous import claim_delay_s, rank, rank_key

ids = st.binary(min_size=20, max_size=20)


def test_rank_key_is_blake2b_64_of_job_then_node() -> None:
    job, node = b"j" * 20, b"n" * 20
    assert rank_key(job, node) == int.from_bytes(hashlib.blake2b(job + node, digest_size=8).digest(), "big")
    assert rank_key(job, node) != rank_key(node, job)


@given(ids, st.lists(ids, min_size=1, max_size=12, unique=True))
def test_positions_are_a_permutation_all_workers_agree_on(job: bytes, nodes: list[bytes]) -> None:
    positions = [rank(job, n, nodes) for n in nodes]
    assert sorted(positions) == list(range(len(nodes)))
    best = nodes[positions.index(0)]
    assert best == min(nodes, key=lambda n: rank_key(job, n))


@given(ids, ids, st.lists(ids, max_size=8))
def test_rank_ignores_self_and_duplicates_in_others(job: bytes, me: bytes, others: list[bytes]) -> None:
    assert rank(job, me, others + others + [me]) == rank(job, me, others)
    assert 0 <= rank(job, me, others) <= len(set(others) - {me})


def test_load_spreads_over_workers() -> None:
    nodes = [bytes([i]) * 20 for i in range(8)]
    firsts = Counter(min(nodes, key=lambda n: rank_key(i.to_bytes(20, "big"), n)) for i in range(4000))
    assert len(firsts) == 8
    assert min(firsts.values()) > 4000 / 8 * 0.7


@given(st.integers(0, 1000), st.floats(0.001, 1.0), st.floats(0.0, 10.0))
def test_claim_delay_grows_with_rank_and_is_capped(position: int, step: float, cap: float) -> None:
    delay = claim_delay_s(position, step, cap)
    assert 0.0 <= delay <= cap
    assert claim_delay_s(position + 1, step, cap) >= delay
    assert claim_delay_s(0, step, cap) == 0.0


def test_claim_delay_defaults() -> None:
    assert [claim_delay_s(p) for p in (0, 1, 2)] == [0.0, 0.05, 0.1]
    assert claim_delay_s(10_000) == 2.0


def test_claim_delay_of_a_reannounced_job_adds_the_settle_to_every_position() -> None:
    settle = 0.1
    assert [claim_delay_s(p, settle_s=settle) for p in (0, 1, 2)] == [claim_delay_s(p) + settle for p in (0, 1, 2)]
    assert claim_delay_s(10_000, settle_s=settle) == 2.0 + settle
