"""Record format v2: facts signed in batches under one signature, each shown alone with its Merkle proof."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workmesh.crypto import merkle
from workmesh.crypto.canonical import canonical_pack
from workmesh.crypto.identity import forget_verified, verify_statistics
from workmesh.node import facts as F
from workmesh.node.errors import InvalidFact
from tests.unit.strategies import REPLICAS, SUBMITTER, WORKERS, submit

JOB = submit()
W = WORKERS[0]
R = REPLICAS[0]


def _items(n: int) -> list[tuple[str, F.Body]]:
    """n facts of several kinds by one replica, for one job (a replica signs for many jobs in a turn alike)."""
    kinds = [
        lambda i: (F.GRANT, F.Grant(JOB.job_id, F.LEASE, 1 + i % 3, W.node_id, i)),
        lambda i: (F.BALLOT, F.BallotStep(JOB.job_id, F.VOTE, 1, 0, W.node_id, i.to_bytes(32, "big"), (), i)),
        lambda i: (F.CLAIM, F.Claim(JOB.job_id, 1, i)),
    ]
    return [kinds[i % 3](i) for i in range(n)]


_BATCHES: dict[int, list[F.Fact]] = {}


def _batch(n: int) -> list[F.Fact]:
    if n not in _BATCHES:
        _BATCHES[n] = F.sign_batch(R, _items(n))
    return _BATCHES[n]


def _proof(fact: F.Fact) -> list:
    return msgpack.unpackb(fact.raw)[3]


def _with_proof(fact: F.Fact, proof: list) -> bytes:
    kind, author, fields, _ = msgpack.unpackb(fact.raw)
    return canonical_pack([kind, author, fields, proof])


# -------------------------------------------------------------------------- the tree


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 7, 8, 9, 16, 17, 100, 200, 256])
def test_every_leaf_of_a_tree_proves_the_root(n: int) -> None:
    leaves = [i.to_bytes(32, "big") for i in range(n)]
    root, proofs = merkle.build(leaves)
    for i, leaf in enumerate(leaves):
        assert len(proofs[i]) == merkle.proof_length(i, n)
        assert merkle.root_of(leaf, i, n, proofs[i]) == root
        assert merkle.root_of(leaf, i, n, proofs[i][:-1]) in (None, leaf) if n > 1 else True
        assert merkle.root_of(leaf, i, n, [*proofs[i], root]) is None


def test_a_proof_of_the_wrong_shape_leads_to_no_root() -> None:
    leaves = [i.to_bytes(32, "big") for i in range(5)]
    root, proofs = merkle.build(leaves)
    assert merkle.root_of(leaves[4], 4, 5, proofs[4]) == root
    assert merkle.root_of(leaves[4], 5, 5, proofs[4]) is None  # index beyond count
    assert merkle.root_of(leaves[4], 4, 5, [*proofs[4], proofs[4][0]]) is None  # a sibling too many
    assert merkle.root_of(leaves[0], 0, 5, proofs[0][:-1]) is None  # a sibling short
    assert merkle.root_of(leaves[0], 0, 5, proofs[0]) == root


# -------------------------------------------------------------------------- signing and verifying


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(1, 200), st.data())
def test_every_fact_of_a_batch_verifies_alone(n: int, data: st.DataObject) -> None:
    facts = _batch(n)
    assert len({f.signature for f in facts}) == 1
    for i in {0, n - 1, data.draw(st.integers(0, n - 1))}:
        fact = facts[i]
        for decode in (lambda raw: F.decode(raw, key=JOB.job_id), lambda raw: F._decode_checked(raw, JOB.job_id)):
            again = decode(fact.raw)
            assert again == fact and again.body == fact.body and again.fact_id == fact.fact_id


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from([1, 2, 3, 10, 100, 200]), st.data())
def test_any_changed_byte_of_a_batched_fact_is_refused(n: int, data: st.DataObject) -> None:
    fact = data.draw(st.sampled_from(_batch(n)))
    raw = bytearray(fact.raw)
    at = data.draw(st.integers(0, len(raw) - 1))
    what = data.draw(st.sampled_from(["set", "insert", "delete"]))
    if what == "set":
        raw[at] = data.draw(st.integers(0, 255).filter(lambda b: b != raw[at]))
    elif what == "insert":
        raw.insert(at, data.draw(st.integers(0, 255)))
    else:
        del raw[at]
    with pytest.raises(InvalidFact):
        F.decode(bytes(raw), key=JOB.job_id)


def test_a_fact_has_the_same_id_alone_and_in_a_batch() -> None:
    item = _items(1)[0]
    alone = F.sign(R, *item)
    batched = F.sign_batch(R, [_items(2)[1], item])[1]
    assert alone.fact_id == batched.fact_id and alone.raw != batched.raw
    job = F.sign_batch(JOB_AUTHOR, [(F.SUBMIT, JOB.body), (F.CLAIM, F.Claim(JOB.job_id, 1, 1))])[0]
    assert job.job_id == JOB.job_id and job.raw != JOB.raw


JOB_AUTHOR = SUBMITTER


def test_a_lone_fact_carries_no_siblings() -> None:
    fact = F.sign(W, F.CLAIM, F.Claim(JOB.job_id, 1, 9))
    assert _proof(fact) == [fact.signature, 0, 1, []]


def test_a_batch_is_verified_once() -> None:
    facts = _batch(50)
    forget_verified()
    before = verify_statistics()
    for fact in facts:
        F.decode(fact.raw, key=JOB.job_id)
    after = verify_statistics()
    assert after["verifications"] - before["verifications"] == 1
    assert after["facts_verified"] - before["facts_verified"] == 50
    assert after["verify_cache_hits"] - before["verify_cache_hits"] == 49


def test_signing_counts_one_signature_for_the_batch() -> None:
    before = verify_statistics()
    F.sign_batch(W, [(F.CLAIM, F.Claim(JOB.job_id, 1, 1000 + i)) for i in range(10)])
    after = verify_statistics()
    assert (after["signatures"] - before["signatures"], after["facts_signed"] - before["facts_signed"]) == (1, 10)


def test_a_batch_of_none_or_too_many_is_refused() -> None:
    with pytest.raises(ValueError):
        F.sign_batch(W, [])
    with pytest.raises(ValueError):
        F.sign_batch(W, [(F.CLAIM, F.Claim(JOB.job_id, 1, i)) for i in range(F.BATCH_FACTS_MAX + 1)])


def test_a_bad_fact_sinks_its_batch_before_anything_is_signed() -> None:
    before = verify_statistics()["signatures"]
    with pytest.raises(InvalidFact):
        F.sign_batch(W, [(F.CLAIM, F.Claim(JOB.job_id, 1, 1)), ("nonsense", F.Claim(JOB.job_id, 1, 1))])
    assert verify_statistics()["signatures"] == before


# -------------------------------------------------------------------------- bad proofs


def _refusal(raw: bytes) -> str:
    with pytest.raises(InvalidFact) as typed:
        F.decode(raw, key=JOB.job_id)
    with pytest.raises(InvalidFact) as checked:
        F._decode_checked(raw, JOB.job_id)
    assert str(typed.value) == str(checked.value)
    return str(typed.value)


def test_another_index_of_the_same_batch_is_refused() -> None:
    fact = _batch(10)[3]
    sig, _, count, siblings = _proof(fact)
    assert "signature does not verify" in _refusal(_with_proof(fact, [sig, 2, count, siblings]))


def test_an_index_beyond_the_count_is_refused() -> None:
    fact = _batch(10)[9]
    sig, _, count, siblings = _proof(fact)
    assert "beyond its count" in _refusal(_with_proof(fact, [sig, 10, count, siblings]))
    assert "index out of range" in _refusal(_with_proof(fact, [sig, -1, count, siblings]))


def test_another_count_is_refused() -> None:
    fact = _batch(10)[9]
    sig, index, _, siblings = _proof(fact)
    assert "do not fit" in _refusal(_with_proof(fact, [sig, index, 16, siblings]))  # 9 of 16: 4 siblings
    fact = _batch(10)[3]
    sig, index, _, siblings = _proof(fact)
    assert "signature does not verify" in _refusal(_with_proof(fact, [sig, index, 9, siblings]))  # 3 of 9: same shape
    assert "count out of range" in _refusal(_with_proof(fact, [sig, 0, 0, []]))
    assert "count out of range" in _refusal(_with_proof(fact, [sig, 0, F.BATCH_FACTS_MAX + 1, []]))


def test_a_sibling_too_many_or_too_few_is_refused() -> None:
    fact = _batch(10)[4]
    sig, index, count, siblings = _proof(fact)
    assert "do not fit" in _refusal(_with_proof(fact, [sig, index, count, siblings[:-1]]))
    assert "do not fit" in _refusal(_with_proof(fact, [sig, index, count, [*siblings, siblings[0]]]))
    assert "too many proof siblings" in _refusal(_with_proof(fact, [sig, index, count, siblings * 3]))
    alone = F.sign(W, F.CLAIM, F.Claim(JOB.job_id, 1, 77))
    assert "do not fit" in _refusal(_with_proof(alone, [alone.signature, 0, 1, [bytes(32)]]))


def test_a_tampered_or_malformed_sibling_is_refused() -> None:
    fact = _batch(10)[4]
    sig, index, count, siblings = _proof(fact)
    tampered = [siblings[0][:-1] + bytes([siblings[0][-1] ^ 1]), *siblings[1:]]
    assert "signature does not verify" in _refusal(_with_proof(fact, [sig, index, count, tampered]))
    assert "32-byte hash" in _refusal(_with_proof(fact, [sig, index, count, [siblings[0][:31], *siblings[1:]]]))


def test_a_proof_of_another_shape_is_refused() -> None:
    fact = _batch(3)[0]
    sig, index, count, siblings = _proof(fact)
    assert "a proof is" in _refusal(_with_proof(fact, [sig, index, count]))
    assert "a proof is" in _refusal(_with_proof(fact, sig))
    assert "bad signature field" in _refusal(_with_proof(fact, [sig[:63], index, count, siblings]))
