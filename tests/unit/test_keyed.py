"""Keyed submissions: one Idempotency-Key is one job, whichever node signs it."""

from workmesh.crypto.identity import Identity
from workmesh.node import facts as F
from workmesh.node import keyed, lifecycle


def _submit(signer: Identity, fingerprint: bytes, replicas: int = 3) -> F.Fact:
    body = F.Submit("echo", b'{"x":1}', 3, 10_000, 60_000, replicas, replicas // 2 + 1,
                    keyed.nonce(signer.public_key, fingerprint), 0)
    return F.sign(signer, F.SUBMIT, body)


def test_the_same_key_and_request_give_the_same_bytes_and_job_id():
    fp = keyed.fingerprint("echo", {"x": 1}, None, None, None)
    a, b = _submit(keyed.owner("k-1"), fp), _submit(keyed.owner("k-1"), fp)
    assert a.raw == b.raw and a.job_id == b.job_id
    assert a.job_id == F.keyed_job_id(keyed.owner("k-1").public_key)
    assert keyed.fingerprint_of(a) == fp
    # It decodes as what it is, under its key.
    assert F.decode(a.raw, key=a.job_id).job_id == a.job_id


def test_another_request_under_one_key_is_the_same_job_id_with_another_fingerprint():
    owner = keyed.owner("k-2")
    fp1 = keyed.fingerprint("echo", {"x": 1}, None, None, None)
    fp2 = keyed.fingerprint("echo", {"x": 2}, None, None, None)
    assert fp1 != fp2
    a, b = _submit(owner, fp1), _submit(owner, fp2)
    assert a.job_id == b.job_id and a.fact_id != b.fact_id
    # A replica holding one refuses the other: one key, one submission.
    assert F.context_error(a, b) == "a second submission under one key"
    # A reader that saw both (a race) still derives one of them, stably.
    assert lifecycle.derive([a, b]).submit == lifecycle.derive([b, a]).submit


def test_options_count_only_as_given_and_numbers_by_value():
    assert keyed.fingerprint("echo", 1, None, 2, None) == keyed.fingerprint("echo", 1, None, 2.0, None)
    assert keyed.fingerprint("echo", 1, None, None, None) != keyed.fingerprint("echo", 1, 3, None, None)
    assert keyed.owner("a").public_key != keyed.owner("b").public_key


def test_an_unkeyed_submission_keeps_the_hash_of_its_bytes_as_its_id():
    node = Identity.from_seed(bytes(32))
    body = F.Submit("echo", b"1", 3, 10_000, 60_000, 3, 2, bytes(16), 5)
    fact = F.sign(node, F.SUBMIT, body)
    assert keyed.fingerprint_of(fact) is None
    assert fact.job_id == F.job_id_of(fact.raw)
    # A nonce with some other key's mark does not make it keyed.
    other = keyed.owner("k").public_key
    fact2 = F.sign(node, F.SUBMIT, F.Submit("echo", b"1", 3, 10_000, 60_000, 3, 2, keyed.nonce(other, bytes(8)), 5))
    assert fact2.job_id == F.job_id_of(fact2.raw)


def test_owners_are_bounded_and_kept_in_their_file(tmp_path):
    path = str(tmp_path / "owners.sqlite")
    owners = keyed.Owners(size_max=2, path=path)
    for i in range(3):
        owners.remember(bytes([i]) * 20, keyed.owner_seed(str(i)))
    assert len(owners) == 2 and owners.get(bytes(20)) is None
    assert owners.get(bytes([2]) * 20).public_key == keyed.owner("2").public_key
    owners.close()
    again = keyed.Owners(size_max=2, path=path)  # a restarted node
    assert len(again) == 2 and again.get(bytes([1]) * 20).public_key == keyed.owner("1").public_key
    assert again.get(bytes(20)) is None
    assert (tmp_path / "owners.sqlite").stat().st_mode & 0o077 == 0  # a secret: the owner's only
    again.close()
