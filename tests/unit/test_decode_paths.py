"""The typed decoding path (msgspec) and the checked path accept the same facts and datagrams.

``decode`` and ``open_envelope`` try a typed decoder first and fall back to
field-by-field checks, which name what is wrong. A fact or datagram must get
the same answer either way: the same value, or the same error.
"""

from __future__ import annotations

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workmesh.crypto import domains
from workmesh.crypto.canonical import canonical_pack
from workmesh.dht import envelope as E
from workmesh.node import facts as F
from workmesh.node.errors import InvalidFact
from tests.unit.strategies import REPLICAS, SUBMITTER, WORKERS, cancel, claim, lease, placement, quorum_result, renew
from tests.unit.strategies import seal, signed_raw, submit, vote

JOB = submit()
W = WORKERS[0]


def _facts() -> list[F.Fact]:
    ok = quorum_result(JOB, W, 1)
    v = vote(REPLICAS[1], JOB, ok)
    proposer = REPLICAS[0]
    p = proposer.node_id

    def ballot(step: str, subject: bytes, refs: tuple[bytes, ...], by=proposer) -> F.Fact:
        return F.sign(by, F.BALLOT, F.BallotStep(JOB.job_id, step, 1, 2, p, subject, refs, 5))

    return [
        JOB, claim(W, JOB, 1), renew(W, JOB, 1, 5), lease(REPLICAS[0], JOB, 1, W), placement(JOB), ok,
        cancel(JOB), seal(REPLICAS[0], JOB, ok), v, ballot(F.PREPARE, b"", ()),
        ballot(F.PROMISE, ok.fact_id, (v.fact_id,), REPLICAS[2]), ballot(F.PROPOSE, ok.fact_id, (v.fact_id,)),
        F.sign(proposer, F.CONFIG, F.Config(JOB.job_id, 1, b"".join(r.node_id for r in REPLICAS[3:6]), 7)),
    ]


def _outcome(fn, raw: bytes, key: bytes | None):
    try:
        fact = fn(raw, key)
    except InvalidFact as exc:
        return ("refused", str(exc))
    return ("accepted", fact.kind, fact.body, fact.fact_id, fact.author_id)


def _same_answer(raw: bytes, key: bytes | None = None) -> None:
    typed = _outcome(lambda r, k: F.decode(r, key=k), raw, key)
    checked = _outcome(F._decode_checked, raw, key)
    assert typed == checked


def _leaves():
    return st.one_of(
        st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.integers(-3, 2**31 + 2),
        st.binary(max_size=40), st.sampled_from([b"", b"\x00" * 16, b"\x01" * 20, b"\x02" * 32, b"{}", b"[1]", b"NaN"]),
        st.text(max_size=8), st.sampled_from([*F.KINDS, *F.STEPS, F.LEASE, F.PLACE, F.OK, F.ERROR]),
        st.floats(allow_nan=False),
    )


def _values():
    return st.recursive(_leaves(), lambda inner: st.lists(inner, max_size=4), max_leaves=12)


_EDGES = [0, 1, 2, 3, 15, 16, 17, 32, 64, 65, 99, 100, 101, 102, 499, 500, 3_600_000, 3_600_001, 86_400_000,
          86_400_001, 2**31, 2**31 + 1, 2**53, 2**53 + 1, -1, 2**63, 2**64 - 1]


def _near(value):
    """Values a field could wrongly hold: next to the right one, at the format's bounds, or anything."""
    if isinstance(value, bool) or value is None:
        near = st.nothing()
    elif isinstance(value, int):
        near = st.one_of(st.integers(value - 3, value + 3), st.sampled_from(_EDGES))
    elif isinstance(value, bytes):
        n = len(value)
        near = st.one_of(st.binary(min_size=max(0, n - 1), max_size=n + 1), st.just(value * 2),
                         st.just(value[:20] * 2), st.just(b""), st.just(value[:-20]), st.just(value + value[-20:]))
    elif isinstance(value, list):
        near = st.one_of(st.just([]), st.just(value[:-1]), st.just(value + value[:1]),
                         st.lists(st.sampled_from([*value, b"\x02" * 32, b"\x03" * 32, b"\x04" * 31]), max_size=17))
    else:
        near = st.sampled_from([*F.KINDS, *F.STEPS, F.LEASE, F.PLACE, F.OK, F.ERROR, "", "x" * 64, "x" * 65,
                                "é" * 256, "é" * 257])
    return st.one_of(near, _values())


def _change_one_byte(raw: bytes, data: st.DataObject) -> bytes:
    """``raw`` with one byte set to another value, inserted or deleted."""
    out = bytearray(raw)
    at = data.draw(st.integers(0, len(out) - 1))
    what = data.draw(st.sampled_from(["set", "insert", "delete"]))
    byte = data.draw(st.integers(0, 255))
    if what == "set":
        out[at] = byte
    elif what == "insert":
        out.insert(at, byte)
    else:
        del out[at]
    return bytes(out)


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(_facts()), st.data())
def test_fields_changed_and_signed_again_get_the_same_answer(fact: F.Fact, data: st.DataObject) -> None:
    fields = list(F._body_fields(fact.kind, fact.body))
    for i in data.draw(st.lists(st.integers(0, len(fields) - 1), min_size=1, max_size=2)):
        fields[i] = data.draw(_near(fields[i]))
    signer = next(x for x in (*REPLICAS, *WORKERS, SUBMITTER) if x.public_key == fact.author)
    try:
        raw = signed_raw(signer, fact.kind, fields)
    except Exception:  # a float: not canonical, cannot be signed
        raw = msgpack.packb([fact.kind, fact.author, fields, [fact.signature, 0, 1, []]], use_bin_type=True)
    _same_answer(raw, data.draw(st.sampled_from([None, JOB.job_id])))


def _batch() -> list[F.Fact]:
    """Facts of several kinds, signed together by one replica."""
    r = REPLICAS[0]
    items = [(F.CLAIM, F.Claim(JOB.job_id, 1, i)) for i in range(5)]
    items.append((F.GRANT, F.Grant(JOB.job_id, F.LEASE, 1, W.node_id, 3)))
    items.append((F.BALLOT, F.BallotStep(JOB.job_id, F.VOTE, 1, 0, W.node_id, b"\x0a" * 32, (), 5)))
    return F.sign_batch(r, items)


_PROOF_VALUES = st.one_of(
    st.integers(-2, 300), st.sampled_from([[], [b"\x01" * 32], [b"\x01" * 32] * 9, [b"\x01" * 31], b"", None]),
    st.binary(min_size=63, max_size=65), st.lists(st.binary(min_size=32, max_size=32), max_size=4),
)


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(_batch()), st.data())
def test_proofs_changed_get_the_same_answer(fact: F.Fact, data: st.DataObject) -> None:
    kind, author, fields, proof = msgpack.unpackb(fact.raw)
    for i in data.draw(st.lists(st.integers(0, 3), min_size=1, max_size=2)):
        proof[i] = data.draw(_PROOF_VALUES)
    _same_answer(canonical_pack([kind, author, fields, proof]), JOB.job_id)


@settings(max_examples=100)
@given(st.sampled_from(_batch()), st.data())
def test_a_changed_byte_of_a_batched_fact_gets_the_same_answer(fact: F.Fact, data: st.DataObject) -> None:
    _same_answer(_change_one_byte(fact.raw, data), JOB.job_id)


@settings(max_examples=200)
@given(st.sampled_from(_facts()), st.data())
def test_a_changed_byte_gets_the_same_answer(fact: F.Fact, data: st.DataObject) -> None:
    _same_answer(_change_one_byte(fact.raw, data), JOB.job_id)


@settings(max_examples=100)
@given(_values())
def test_any_value_gets_the_same_answer(value) -> None:
    try:
        raw = msgpack.packb(value, use_bin_type=True)
    except Exception:
        return
    _same_answer(raw)


def test_non_canonical_encodings_of_a_valid_fact_get_the_same_answer() -> None:
    for fact in _facts():
        assert F.decode(fact.raw, key=JOB.job_id) == fact
        at = fact.raw.find(b"\xc4\x14")  # the job id, a bin 8 of 20 bytes: the same bytes as a bin 16
        if at > 0:
            _same_answer(fact.raw[:at] + b"\xc5\x00\x14" + fact.raw[at + 2 :], JOB.job_id)
        _same_answer(fact.raw + b"\xc0", JOB.job_id)  # trailing bytes


# --------------------------------------------------------------------------
# Datagrams

ALICE, BOB = REPLICAS[5], REPLICAS[6]


def _datagrams() -> list[bytes]:
    args = [JOB.job_id, [JOB.raw, claim(W, JOB, 1).raw]]
    return [
        E.seal(ALICE, E.REQUEST, b"\x01" * 16, 1_700_000_000_000, BOB.node_id, "store", args, BOB.public_key),
        E.seal(ALICE, E.REPLY, b"\x02" * 16, 5, BOB.node_id, "find_value", [[JOB.raw]], BOB.public_key),
        E.seal(ALICE, E.REQUEST, b"\x03" * 16, 7, b"", "ping", []),
        E.seal(ALICE, E.REQUEST, b"\x04" * 16, 7, BOB.node_id, "find_node", [BOB.node_id, [1, [None, True]]]),
    ]


def _open_outcome(data: bytes):
    try:
        env = E.open_envelope(data, datagram_bytes_max=2048, identity=BOB)
    except E.EnvelopeError as exc:
        return ("refused", exc.reason)
    return ("opened", env)


def _same_opening(data: bytes) -> None:
    typed = _open_outcome(data)
    original = E._typed_fields
    E._typed_fields = lambda _data: None
    try:
        checked = _open_outcome(data)
    finally:
        E._typed_fields = original
    assert typed == checked


def _resealed(fields: list, maced: bool) -> bytes:
    if maced:
        auth = ALICE.mac(BOB.public_key, domains.RPC, fields)
    else:
        auth = ALICE.sign(domains.RPC, fields)
    return canonical_pack([*fields, auth])


@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(_datagrams()), st.data())
def test_a_datagram_with_fields_changed_and_authenticated_again_opens_the_same(data_: bytes, data) -> None:
    fields = msgpack.unpackb(data_)[:8]
    for i in data.draw(st.lists(st.integers(0, 7), min_size=1, max_size=2)):
        fields[i] = data.draw(_near(fields[i]))
    try:
        raw = _resealed(fields, data.draw(st.booleans()))
    except Exception:  # a float: not canonical, cannot be authenticated
        raw = msgpack.packb([*fields, b"\x00" * 16], use_bin_type=True)
    _same_opening(raw)


@settings(max_examples=150)
@given(st.sampled_from(_datagrams()), st.data())
def test_a_datagram_with_a_changed_byte_opens_the_same(data_: bytes, data) -> None:
    _same_opening(_change_one_byte(data_, data))


def test_valid_datagrams_open_and_non_canonical_ones_get_the_same_answer() -> None:
    for data in _datagrams():
        assert _open_outcome(data)[0] == "opened"
        _same_opening(data + b"\xc0")
        at = data.find(b"\xc4\x10")  # the msg id, a bin 8: the same bytes as a bin 16
        _same_opening(data[:at] + b"\xc5\x00\x10" + data[at + 2 :])


def test_args_without_a_canonical_encoding_are_refused_the_same_way() -> None:
    deep: list = []
    inner = deep
    for _ in range(20):
        inner.append([])
        inner = inner[0]
    fields = msgpack.unpackb(_datagrams()[0])[:8]
    for args in ([1.5], [{"a": 1}], {"a": 1}, deep, [msgpack.ExtType(1, b"x")], [-(2**63)], [2**64 - 1], "x"):
        fields[7] = args
        for auth in (b"\x00" * 16, b"\x00" * 64):
            _same_opening(msgpack.packb([*fields, auth], use_bin_type=True))


def test_ballot_steps_with_the_wrong_subject_or_refs_get_the_same_answer() -> None:
    proposer = REPLICAS[0]
    one, two = b"\x0a" * 32, b"\x0b" * 32
    for step in F.STEPS:
        for subject in (b"", one, b"\x0a" * 31):
            for refs in ([], [two], [two, two], [one, two]):
                fields = [JOB.job_id, step, 1, 2, proposer.node_id, subject, refs, 5]
                _same_answer(signed_raw(proposer, F.BALLOT, fields), JOB.job_id)


def test_datagrams_with_an_auth_of_any_length_open_the_same() -> None:
    fields = msgpack.unpackb(_datagrams()[0])[:8]
    for n in (0, 1, 15, 16, 17, 20, 32, 63, 64, 65, 100):
        _same_opening(canonical_pack([*fields, b"\x00" * n]))


def test_deeply_nested_input_is_refused_not_raised() -> None:
    fields = msgpack.unpackb(_datagrams()[0])[:8]
    head = canonical_pack(fields[:7])[1:]
    for depth in (17, 1000, 1500):
        nested = b"\x91" * depth + b"\x90"
        data = b"\x99" + head + nested + canonical_pack(b"\x00" * 16)
        assert _open_outcome(data) == ("refused", "malformed")
        _same_opening(data)
        for fact in (b"\x94" + nested, b"\x94\xa5claim" + nested, b"\x94\xa6result\xc4\x20" + bytes(32) + nested):
            _same_answer(fact)
