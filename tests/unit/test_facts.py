"""Signed job facts: what decode accepts and refuses, and the rules in context."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from workmesh.crypto.canonical import canonical_pack
from workmesh.node import facts as F
from workmesh.node.errors import InvalidFact
from tests.unit.strategies import REPLICAS, STRANGER, SUBMITTER, WORKERS, cancel, claim, lease, quorum_result
from tests.unit.strategies import renew, result, seal, submit

JOB = submit()
OTHER_JOB = submit(nonce=b"\x07" * 16)
W = WORKERS[0]


def every_kind() -> list[F.Fact]:
    ok = quorum_result(JOB, W, 1)
    return [
        JOB,
        claim(W, JOB, 1),
        renew(W, JOB, 1, 5),
        lease(REPLICAS[0], JOB, 1, W),
        seal(REPLICAS[0], JOB, ok),
        ok,
        quorum_result(JOB, W, 2, F.ERROR),
        cancel(JOB),
    ]


@pytest.mark.parametrize("fact", every_kind(), ids=lambda f: f.kind)
def test_sign_decode_round_trip(fact: F.Fact) -> None:
    again = F.decode(fact.raw, key=JOB.job_id)
    assert again == fact
    assert (again.kind, again.author, again.body, again.author_id) == (fact.kind, fact.author, fact.body, fact.author_id)
    assert again.fact_id == F.fact_id_of(fact.raw)


def test_job_id_is_the_hash_of_the_submission() -> None:
    assert JOB.job_id == F.job_id_of(JOB.raw)
    assert JOB.job_id != OTHER_JOB.job_id


@given(st.sampled_from(every_kind()), st.integers(0, 64 * 8 - 1))
def test_flipped_signature_bit_is_refused(fact: F.Fact, bit: int) -> None:
    raw = bytearray(fact.raw)
    raw[len(raw) - 3 - 64 + bit // 8] ^= 1 << (bit % 8)  # a lone fact ends with [signature, 0, 1, []]
    with pytest.raises(InvalidFact):
        F.decode(bytes(raw))


@settings(max_examples=500)
@given(st.sampled_from(every_kind()), st.data())
def test_any_flipped_bit_is_refused(fact: F.Fact, data: st.DataObject) -> None:
    bit = data.draw(st.integers(0, len(fact.raw) * 8 - 1))
    raw = bytearray(fact.raw)
    raw[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(InvalidFact):
        F.decode(bytes(raw), key=JOB.job_id)


def test_submit_under_a_key_that_is_not_its_hash_is_refused() -> None:
    with pytest.raises(InvalidFact, match="another job"):
        F.decode(JOB.raw, key=OTHER_JOB.job_id)


@pytest.mark.parametrize("fact", every_kind()[1:], ids=lambda f: f.kind)
def test_fact_filed_under_another_jobs_key_is_refused(fact: F.Fact) -> None:
    with pytest.raises(InvalidFact, match="another job"):
        F.decode(fact.raw, key=OTHER_JOB.job_id)


def test_an_int_encoded_wider_than_needed_is_refused() -> None:
    c = claim(W, JOB, 1, ts_ms=7)
    wide_attempt = b"\xcf" + (1).to_bytes(8, "big")  # uint64 form of 1; canonical is 0x01
    body = b"\x93" + msgpack.packb(JOB.job_id) + wide_attempt + msgpack.packb(7)
    proof = msgpack.packb([c.signature, 0, 1, []])
    raw = b"\x94" + msgpack.packb(F.CLAIM) + msgpack.packb(c.author) + body + proof
    assert msgpack.unpackb(raw) == msgpack.unpackb(c.raw)  # same value, same signature, other bytes
    with pytest.raises(InvalidFact, match="canonical"):
        F.decode(raw)


def test_a_map_is_refused() -> None:
    with pytest.raises(InvalidFact):
        F.decode(msgpack.packb({"kind": "claim"}))


@given(st.sampled_from(every_kind()), st.data())
def test_truncated_bytes_are_refused(fact: F.Fact, data: st.DataObject) -> None:
    cut = data.draw(st.integers(0, len(fact.raw) - 1))
    with pytest.raises(InvalidFact):
        F.decode(fact.raw[:cut])


@given(st.sampled_from(every_kind()), st.binary(min_size=1, max_size=8))
def test_trailing_bytes_are_refused(fact: F.Fact, tail: bytes) -> None:
    with pytest.raises(InvalidFact):
        F.decode(fact.raw + tail)


@settings(max_examples=1000)
@given(st.binary(max_size=300))
def test_random_bytes_are_refused(raw: bytes) -> None:
    with pytest.raises(InvalidFact):
        F.decode(raw)


canonical_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=8) | st.binary(max_size=70),
    lambda inner: st.lists(inner, max_size=6),
    max_leaves=20,
)


@settings(max_examples=300)
@given(
    st.sampled_from(list(F.KINDS)) | st.text(max_size=8),
    st.sampled_from([SUBMITTER.public_key, b"\x00" * 32]) | st.binary(max_size=40),
    st.lists(canonical_values, max_size=10),
    st.binary(min_size=64, max_size=64) | st.binary(max_size=70),
)
def test_well_formed_but_unsigned_facts_are_refused(kind, author, body, signature) -> None:
    with pytest.raises(InvalidFact):
        F.decode(canonical_pack([kind, author, body, [signature, 0, 1, []]]))


def test_a_list_where_the_kind_belongs_is_refused() -> None:
    with pytest.raises(InvalidFact):
        F.decode(canonical_pack([[1], SUBMITTER.public_key, [], [b"s" * 64, 0, 1, []]]))


def test_a_deeply_nested_payload_is_refused() -> None:
    payload = b"[" * 3000 + b"]" * 3000
    body = ["echo", payload, 1, 1000, 1000, 1, 1, b"\x00" * 16, 0]
    with pytest.raises(InvalidFact):
        F.decode(canonical_pack([F.SUBMIT, SUBMITTER.public_key, body, [b"s" * 64, 0, 1, []]]))


def test_oversized_input_is_refused() -> None:
    big = canonical_pack([F.CLAIM, W.public_key, [JOB.job_id, 1, 1], [b"s" * 64, 0, 1, [b"x" * F.FACT_BYTES_MAX]]])
    assert len(big) > F.FACT_BYTES_MAX
    with pytest.raises(InvalidFact, match="exceeds"):
        F.decode(big)


def test_signing_an_oversized_fact_is_refused() -> None:
    grants = tuple(lease(r, JOB, 1, W) for r in REPLICAS[:2])
    with pytest.raises(InvalidFact):
        result(W, JOB, 1, grants, F.OK, b'"' + b"x" * (F.FACT_BYTES_MAX + 10) + b'"')


def test_a_signature_by_another_key_is_refused() -> None:
    c = claim(W, JOB, 1)
    forged = canonical_pack([F.CLAIM, STRANGER.public_key, [JOB.job_id, 1, 1], [c.signature, 0, 1, []]])
    with pytest.raises(InvalidFact, match="signature"):
        F.decode(forged)


def test_a_signature_for_another_kind_is_refused() -> None:
    """A renew signature does not make a claim: the kind is part of the signed content."""
    r = renew(W, JOB, 1, 1)
    replay = canonical_pack([F.CLAIM, W.public_key, [JOB.job_id, 1, 1], [r.signature, 0, 1, []]])
    with pytest.raises(InvalidFact, match="signature"):
        F.decode(replay)


# --------------------------------------------------------------------------
# check_in_context


def test_cancel_by_a_non_submitter_is_refused() -> None:
    F.check_in_context(JOB, cancel(JOB))
    with pytest.raises(InvalidFact, match="submitter"):
        F.check_in_context(JOB, cancel(JOB, by=STRANGER))


def test_result_with_fewer_than_quorum_grants_is_refused() -> None:
    job = submit(replicas=5, quorum=3)
    F.check_in_context(job, quorum_result(job, W, 1))
    short = quorum_result(job, W, 1, replicas=REPLICAS[:2])
    with pytest.raises(InvalidFact, match="majority"):
        F.check_in_context(job, short)


def test_closing_attempt_can_only_record_failure() -> None:
    F.check_in_context(JOB, quorum_result(JOB, W, 3, F.ERROR))
    with pytest.raises(InvalidFact, match="closing"):
        F.check_in_context(JOB, quorum_result(JOB, W, 3, F.OK))


@pytest.mark.parametrize("kind", ["claim", "renew", "grant", "result"])
def test_attempt_beyond_closing_attempt_is_refused(kind: str) -> None:
    make = {
        "claim": lambda: claim(W, JOB, 4),
        "renew": lambda: renew(W, JOB, 4),
        "grant": lambda: lease(REPLICAS[0], JOB, 4, W),
        "result": lambda: quorum_result(JOB, W, 4, F.ERROR),
    }
    with pytest.raises(InvalidFact, match="beyond"):
        F.check_in_context(JOB, make[kind]())


def test_fact_of_another_job_is_refused_in_context() -> None:
    with pytest.raises(InvalidFact, match="another job"):
        F.check_in_context(JOB, claim(W, OTHER_JOB, 1))
    with pytest.raises(InvalidFact, match="second submission"):
        F.check_in_context(JOB, OTHER_JOB)


@pytest.mark.parametrize(
    "grant, why",
    [
        (lease(REPLICAS[1], JOB, 2, W), "another job or attempt"),
        (lease(REPLICAS[1], JOB, 1, WORKERS[1]), "another worker"),
        (lease(REPLICAS[1], OTHER_JOB, 1, W), "another job or attempt"),
        (lease(REPLICAS[0], JOB, 1, W, ts_ms=9), "two grants by one replica"),
        (seal(REPLICAS[1], JOB, cancel(JOB)), "only grants"),
        (claim(W, JOB, 1), "only grants"),
    ],
    ids=["other-attempt", "other-worker", "other-job", "duplicate-signer", "seal", "not-a-grant"],
)
def test_result_embedding_a_wrong_grant_is_refused(grant: F.Fact, why: str) -> None:
    first = lease(REPLICAS[0], JOB, 1, W)
    with pytest.raises(InvalidFact, match=why):
        result(W, JOB, 1, (first, grant))  # sign() runs the same checks as decode()
    raw_grants = [first.raw, grant.raw]
    fields = [JOB.job_id, 1, F.OK, b"1", raw_grants, 2]
    raw = canonical_pack([F.RESULT, W.public_key, fields, W.sign(F.KINDS[F.RESULT], [W.public_key, fields])])
    with pytest.raises(InvalidFact):
        F.decode(raw, key=JOB.job_id)


@example(fact=claim(W, JOB, 1))
@given(st.sampled_from(every_kind()))
def test_valid_facts_pass_in_context(fact: F.Fact) -> None:
    F.check_in_context(JOB, fact)
