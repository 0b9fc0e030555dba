"""Job facts: the signed records a job is made of. Pure: no I/O, no clock.

A job is the set of signed facts filed under its key in the DHT:

========  ===========  ====================================================
kind      signed by    body
========  ===========  ====================================================
submit    submitter    [type, payload_json, max_attempts, lease_ms,
                        timeout_ms, replicas, quorum, nonce, created_ms]
claim     worker       [job_id, attempt, ts_ms]
renew     worker       [job_id, attempt, ts_ms]
grant     replica      [job_id, action, attempt, subject, ts_ms]
                        action "lease": subject = the worker's node id
                        (a lease grant is also the Paxos promise at
                        ballot (attempt, 0, worker), node/consensus.py)
                        action "place": signed by the SUBMITTER, attempt 0,
                        subject = the replicas' node ids, concatenated
result    worker       [job_id, attempt, outcome, data_json, grants, ts_ms]
                        outcome "ok" (data = result) or "error"
                        (data = {"error": message}); grants = raw lease
                        grants for this attempt and worker
cancel    submitter    [job_id, reason, ts_ms]
ballot    proposer or  [job_id, step, attempt, round, proposer, subject,
          replica       refs, ts_ms]: one step of the job's consensus at
                        ballot (attempt, round, proposer), node/consensus.py:
                        "prepare", "propose" (by the proposer), "promise",
                        "vote", "seal" (by a placed replica). subject = the
                        fact id of a result or cancel (a promise: of the
                        certificate it sealed, or empty); refs = fact ids
                        (a propose: its promises; a promise: the votes of
                        the certificate it sealed)
config    proposer     [job_id, epoch, replicas, ts_ms]: a new replica set
                        (node ids, concatenated) for the job's epoch
                        ``epoch``, proposed by a replica that found a placed
                        replica gone; it takes effect once decided by the
                        job's consensus (node/consensus.py, replica repair)
========  ===========  ====================================================

Record format v2 (docs/protocol.md, "Record format"). A fact's content is
``canonical_pack([kind, author_public_key, body])``; its fact id is the
BLAKE2b-256 (personalised ``wm-fact-v2``) of the content, so it does not
depend on how the fact was signed. An author signs the facts of one batch
(those it emits in one event-loop turn, node/signer.py) with one Ed25519
signature over ``[BATCH domain, author, root, count]``, where ``root`` is the
Merkle root (crypto/merkle.py) of the batch's fact ids in order. On the wire a
fact is ``canonical_pack([kind, author_public_key, body, [signature, index,
count, siblings]])``: its content and the proof that it is leaf ``index`` of
the ``count`` leaves the signature covers. A fact alone is a batch of one (no
siblings). A replica verifies a batch's signature once: the second fact of a
batch costs the hashes of its proof (the verified signatures are cached). The
job id is the BLAKE2b-160 (personalised ``wm-job-v2``) of the submission's
fact id: it proves the spec, and it is the DHT key of the job.

:func:`decode` checks everything a fact can prove on its own (form, sizes,
signature, the key it is filed under, embedded grants). Checks that need the
job's submission (cancel signed by the submitter, enough grants for the job's
quorum, attempt bounds) are in :func:`check_in_context`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Union

import msgspec
from msgspec import Meta, Struct

from workmesh.contract import (  # noqa: F401 (re-exported: node code reads them as facts.X)
    ATTEMPTS_MAX,
    LEASE_MS_MAX,
    LEASE_MS_MIN,
    PAYLOAD_BYTES_MAX,
    REASON_CHARS_MAX,
    RESULT_BYTES_MAX,
    TIMEOUT_MS_MAX,
    TYPE_CHARS_MAX,
)
from workmesh.crypto import domains, merkle
from workmesh.crypto.canonical import canonical_pack, canonical_unpack
from workmesh.crypto.errors import BadSignature, EncodingError
from workmesh.crypto.identity import (
    NODE_ID_BYTES,
    PUBLIC_KEY_BYTES,
    SIGNATURE_BYTES,
    Identity,
    count_facts,
    node_id_of,
    verify_bytes,
)
from workmesh.node.errors import InvalidFact

SUBMIT = "submit"
CLAIM = "claim"
RENEW = "renew"
GRANT = "grant"
RESULT = "result"
CANCEL = "cancel"
BALLOT = "ballot"
CONFIG = "config"

KINDS = {
    SUBMIT: domains.SUBMIT,
    CLAIM: domains.CLAIM,
    RENEW: domains.RENEW,
    GRANT: domains.GRANT,
    RESULT: domains.RESULT,
    CANCEL: domains.CANCEL,
    BALLOT: domains.BALLOT,
    CONFIG: domains.CONFIG,
}

LEASE = "lease"
PLACE = "place"
# The steps of a ballot fact (node/consensus.py).
PREPARE = "prepare"
PROMISE = "promise"
PROPOSE = "propose"
VOTE = "vote"
SEAL = "seal"
STEPS = (PREPARE, PROMISE, PROPOSE, VOTE, SEAL)
ROUND_MAX = 2**31  # rounds of one attempt
OK = "ok"
ERROR = "error"

# Bounds (bytes unless named otherwise). What a job may be is the contract's
# (workmesh/contract.py), shared with the API; the rest is the format's own.
FACT_BYTES_MAX = 16384
NONCE_BYTES = 16
REPLICAS_MAX = 16
FACT_ID_BYTES = 32
# A batch: at most this many facts under one signature, so a proof has at
# most PROOF_SIBLINGS_MAX siblings (34 bytes each on the wire).
BATCH_FACTS_MAX = 256
PROOF_SIBLINGS_MAX = 8
assert merkle.proof_length(BATCH_FACTS_MAX - 1, BATCH_FACTS_MAX) == PROOF_SIBLINGS_MAX
_FACT_PERSON = b"wm-fact-v2"
_JOB_PERSON = b"wm-job-v2"


def content_id(content: bytes) -> bytes:
    """The fact id of a fact's content, ``canonical_pack([kind, author, body])``: a Merkle leaf."""
    return hashlib.blake2b(content, digest_size=FACT_ID_BYTES, person=_FACT_PERSON).digest()


def fact_id_of(raw: bytes) -> bytes:
    """The fact id of a fact's bytes (its content's hash: the proof is not part of it)."""
    try:
        value = canonical_unpack(raw, max_len=FACT_BYTES_MAX)
    except EncodingError as exc:
        raise InvalidFact(str(exc)) from None
    _need(isinstance(value, list) and len(value) == 4, "a fact is [kind, author, body, proof]")
    return content_id(canonical_pack(value[:3]))


def job_id_from(submit_fact_id: bytes) -> bytes:
    """The job id of the submission whose fact id is ``submit_fact_id``."""
    return hashlib.blake2b(submit_fact_id, digest_size=NODE_ID_BYTES, person=_JOB_PERSON).digest()


def job_id_of(submit_raw: bytes) -> bytes:
    return job_id_from(fact_id_of(submit_raw))


# A keyed submission (node/keyed.py) is signed by an owner key derived from an
# Idempotency-Key; its nonce starts with the owner's mark, and its job id is
# the owner's, not the hash of its fact id: the same key is the same job on every node.
KEYED_MARK_BYTES = 8


def keyed_mark(author: bytes) -> bytes:
    """The nonce prefix that makes a submission by ``author`` a keyed one."""
    return hashlib.blake2b(author, digest_size=KEYED_MARK_BYTES, person=b"wm-keyed-mark").digest()


def keyed_job_id(author: bytes) -> bytes:
    """The job id of the keyed submission signed by ``author``."""
    return hashlib.blake2b(author, digest_size=NODE_ID_BYTES, person=b"wm-keyed-job").digest()


def is_keyed(author: bytes, body: Submit) -> bool:
    return body.nonce[:KEYED_MARK_BYTES] == keyed_mark(author)


def placement_ids(subject: bytes) -> tuple[bytes, ...]:
    """The replica node ids a placement grant names, in its order."""
    return tuple(subject[i : i + NODE_ID_BYTES] for i in range(0, len(subject), NODE_ID_BYTES))


# The bodies are msgspec structs: a fact's body decodes straight into one (in
# C, with the bounds each field has on its own; see _decode_typed), and
# building one costs a fifth of a frozen dataclass. Frozen, compared and
# hashed by value as dataclasses would be. Their bounds apply to decoding only.
_TS_MAX = 2**53  # largest ts_ms a fact may carry
EPOCHS_MAX = 64  # replica-set changes one job may go through

_JobId = Annotated[bytes, Meta(min_length=NODE_ID_BYTES, max_length=NODE_ID_BYTES)]
_Ts = Annotated[int, Meta(ge=0, le=_TS_MAX)]
_Attempt = Annotated[int, Meta(ge=1, le=ATTEMPTS_MAX + 1)]
_Attempt0 = Annotated[int, Meta(ge=0, le=ATTEMPTS_MAX + 1)]
_NodeIds = Annotated[bytes, Meta(min_length=1, max_length=NODE_ID_BYTES * REPLICAS_MAX)]
_FactId = Annotated[bytes, Meta(min_length=FACT_ID_BYTES, max_length=FACT_ID_BYTES)]


class _Body(Struct, array_like=True, forbid_unknown_fields=True, frozen=True, gc=False):
    """A fact's body: encoded as the list of its fields, in order."""


class Submit(_Body):
    job_type: Annotated[str, Meta(min_length=1, max_length=TYPE_CHARS_MAX)]
    payload_json: Annotated[bytes, Meta(max_length=PAYLOAD_BYTES_MAX)]
    max_attempts: Annotated[int, Meta(ge=1, le=ATTEMPTS_MAX)]
    lease_ms: Annotated[int, Meta(ge=LEASE_MS_MIN, le=LEASE_MS_MAX)]
    timeout_ms: Annotated[int, Meta(ge=1, le=TIMEOUT_MS_MAX)]
    replicas: Annotated[int, Meta(ge=1, le=REPLICAS_MAX)]
    quorum: int  # a majority of replicas: checked with them
    nonce: Annotated[bytes, Meta(min_length=NONCE_BYTES, max_length=NONCE_BYTES)]
    created_ms: _Ts

    @property
    def payload(self) -> Any:
        return json.loads(self.payload_json)


class Claim(_Body):
    job_id: _JobId
    attempt: _Attempt
    ts_ms: _Ts


class Renew(_Body):
    job_id: _JobId
    attempt: _Attempt
    ts_ms: _Ts


class Grant(_Body):
    job_id: _JobId
    action: Literal["lease", "place"]
    attempt: _Attempt0
    subject: _NodeIds  # a worker's node id (lease), or the replicas' (place)
    ts_ms: _Ts


@dataclass(frozen=True, slots=True)
class Result:
    job_id: bytes
    attempt: int
    outcome: str
    data_json: bytes
    grants: tuple[Fact, ...]
    ts_ms: int

    @property
    def data(self) -> Any:
        return json.loads(self.data_json)


class Cancel(_Body):
    job_id: _JobId
    reason: Annotated[str, Meta(max_length=REASON_CHARS_MAX)]
    ts_ms: _Ts


class BallotStep(_Body):
    job_id: _JobId
    step: Literal["prepare", "promise", "propose", "vote", "seal"]
    attempt: _Attempt0
    round: Annotated[int, Meta(ge=0, le=ROUND_MAX)]
    proposer: _JobId
    subject: Annotated[bytes, Meta(max_length=FACT_ID_BYTES)]  # a result's or cancel's fact id, or b"" (a prepare; a promise that sealed nothing)
    refs: Annotated[tuple[_FactId, ...], Meta(max_length=REPLICAS_MAX)]  # fact ids: a propose's promises, a promise's certificate votes
    ts_ms: _Ts

    @property
    def ballot(self) -> tuple[int, int, bytes]:
        return (self.attempt, self.round, self.proposer)


class Config(_Body):
    job_id: _JobId
    epoch: Annotated[int, Meta(ge=1, le=EPOCHS_MAX)]  # the epoch this replica set opens (the placement's is 0)
    replicas: _NodeIds  # node ids, concatenated
    ts_ms: _Ts


Body = Submit | Claim | Renew | Grant | Result | Cancel | BallotStep | Config


@dataclass(frozen=True, slots=True, eq=False)
class Fact:
    """A verified fact. Equality and hashing go by fact id."""

    kind: str
    author: bytes
    body: Body
    signature: bytes
    raw: bytes
    fact_id: bytes
    author_id: bytes
    _submit_job_id: bytes | None = field(default=None, repr=False)  # a submission's job id, computed once

    # The DHT's record interface (see dht/records.py).
    @property
    def record_id(self) -> bytes:
        return self.fact_id

    @property
    def slot(self) -> bytes | None:
        """Facts sharing a slot replace each other (highest version wins)."""
        if self.kind == RENEW:
            return b"renew" + self.author_id + self.body.attempt.to_bytes(2, "big")
        return None

    @property
    def version(self) -> int:
        return self.body.ts_ms if self.kind == RENEW else 0

    @property
    def job_id(self) -> bytes:
        if self.kind == SUBMIT:
            known = self._submit_job_id
            if known is None:  # two hashes; asked dozens of times per job
                known = keyed_job_id(self.author) if is_keyed(self.author, self.body) else job_id_from(self.fact_id)
                object.__setattr__(self, "_submit_job_id", known)
            return known
        return self.body.job_id

    @property
    def attempt(self) -> int:
        return getattr(self.body, "attempt", 0)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Fact) and other.fact_id == self.fact_id

    def __hash__(self) -> int:
        return hash(self.fact_id)

    def __repr__(self) -> str:
        return f"Fact({self.kind}, job={self.job_id.hex()[:8]}, attempt={self.attempt}, by={self.author_id.hex()[:8]})"


_FACT_FIELDS = ("kind", "author", "body", "signature", "raw", "fact_id", "author_id", "_submit_job_id")
assert tuple(f.name for f in dataclasses.fields(Fact)) == _FACT_FIELDS  # _new_fact sets each of them
_set_kind, _set_author, _set_body, _set_signature, _set_raw, _set_fact_id, _set_author_id, _set_submit_job_id = (
    getattr(Fact, name).__set__ for name in _FACT_FIELDS
)


def _new_fact(kind: str, author: bytes, body: Body, signature: bytes, raw: bytes, fact_id: bytes,
              author_id: bytes) -> Fact:
    """``Fact(...)``, for decode and sign: a frozen dataclass's ``__init__`` goes
    through ``object.__setattr__`` for each field, three times the cost of
    setting the slots directly."""
    fact = object.__new__(Fact)
    _set_kind(fact, kind)
    _set_author(fact, author)
    _set_body(fact, body)
    _set_signature(fact, signature)
    _set_raw(fact, raw)
    _set_fact_id(fact, fact_id)
    _set_author_id(fact, author_id)
    _set_submit_job_id(fact, None)
    return fact


# --------------------------------------------------------------------------
# Encoding


def _body_fields(kind: str, body: Body) -> list:
    if kind == SUBMIT:
        b = body
        return [b.job_type, b.payload_json, b.max_attempts, b.lease_ms, b.timeout_ms, b.replicas, b.quorum, b.nonce, b.created_ms]
    if kind in (CLAIM, RENEW):
        return [body.job_id, body.attempt, body.ts_ms]
    if kind == GRANT:
        return [body.job_id, body.action, body.attempt, body.subject, body.ts_ms]
    if kind == RESULT:
        return [body.job_id, body.attempt, body.outcome, body.data_json, [g.raw for g in body.grants], body.ts_ms]
    if kind == CANCEL:
        return [body.job_id, body.reason, body.ts_ms]
    if kind == CONFIG:
        return [body.job_id, body.epoch, body.replicas, body.ts_ms]
    if kind == BALLOT:
        return [body.job_id, body.step, body.attempt, body.round, body.proposer, body.subject, list(body.refs), body.ts_ms]
    raise InvalidFact(f"unknown fact kind {kind!r}")


def is_permanent_error(outcome: str, data_json: bytes) -> bool:
    """An error result whose handler raised PermanentError (data ``{"error": ..., "permanent": true}``):
    final at any attempt, the job fails without a retry."""
    if outcome != ERROR or b'"permanent":true' not in data_json:
        return False
    try:
        data = json.loads(data_json)
    except ValueError:
        return False
    return isinstance(data, dict) and data.get("permanent") is True


def _uint_bytes(value: int) -> int:
    """The length of a non-negative int in canonical msgpack."""
    return 1 if value < 128 else 2 if value < 256 else 3 if value < 65536 else 5


def _proof_bytes(index: int, count: int, siblings: int) -> int:
    """The length of ``canonical_pack([signature, index, count, siblings])`` (siblings < 16)."""
    return 1 + 2 + SIGNATURE_BYTES + _uint_bytes(index) + _uint_bytes(count) + 1 + siblings * (2 + FACT_ID_BYTES)


_PROOF_BYTES_MAX = _proof_bytes(BATCH_FACTS_MAX - 1, BATCH_FACTS_MAX, PROOF_SIBLINGS_MAX)


@dataclass(frozen=True, slots=True)
class Unsigned:
    """A fact ready to be signed in a batch: its content and fact id are known."""

    kind: str
    body: Body
    content: bytes  # canonical_pack([kind, author, fields])
    fact_id: bytes


def prepare(identity: Identity, kind: str, body: Body) -> Unsigned:
    """Check ``body`` as a fact of ``kind`` by ``identity``, ready for :func:`sign_batch`;
    raise :class:`InvalidFact`. A prepared fact fits any batch's proof."""
    if kind not in KINDS:
        raise InvalidFact(f"unknown fact kind {kind!r}")
    content = canonical_pack([kind, identity.public_key, _body_fields(kind, body)])
    if len(content) + _PROOF_BYTES_MAX > FACT_BYTES_MAX:
        raise InvalidFact(f"{kind} fact of {len(content) + _PROOF_BYTES_MAX} bytes exceeds {FACT_BYTES_MAX}")
    fact_id = content_id(content)
    if kind == RESULT or kind == BALLOT:  # the kinds with rules across fields (_check_body)
        _check_body(_new_fact(kind, identity.public_key, body, b"", b"", fact_id, identity.node_id))
    return Unsigned(kind, body, content, fact_id)


def sign_prepared(identity: Identity, batch: list[Unsigned] | tuple[Unsigned, ...]) -> list[Fact]:
    """Sign ``batch`` (1..BATCH_FACTS_MAX prepared facts) with one signature: the facts, in order."""
    count = len(batch)
    if not 1 <= count <= BATCH_FACTS_MAX:
        raise ValueError(f"a batch has 1..{BATCH_FACTS_MAX} facts, not {count}")
    author = identity.public_key
    if count == 1:
        root, proofs = batch[0].fact_id, [[]]
    else:
        root, proofs = merkle.build([u.fact_id for u in batch])
    signature = identity.sign(domains.BATCH, [author, root, count])
    count_facts(signed=count)
    out = []
    for index, (u, siblings) in enumerate(zip(batch, proofs)):
        raw = b"\x94" + u.content[1:] + _WIRE_ENCODER.encode((signature, index, count, siblings))
        out.append(_new_fact(u.kind, author, u.body, signature, raw, u.fact_id, identity.node_id))
    return out


def provisional(identity: Identity, unsigned: Unsigned) -> Fact:
    """``unsigned`` as a fact with no signature yet (empty ``signature`` and
    ``raw``): it stands in for the fact while its author decides what else to
    sign with it, and :func:`sign_in_place` signs it before anyone else sees
    it. Its content, kind, author and fact id are final."""
    return _new_fact(unsigned.kind, identity.public_key, unsigned.body, b"", b"", unsigned.fact_id, identity.node_id)


def sign_in_place(identity: Identity, pending: list[tuple[Unsigned, Fact]]) -> None:
    """Sign the :func:`provisional` facts of ``pending`` (each with the
    prepared fact it was made from) as batches of up to ``BATCH_FACTS_MAX``:
    one signature a batch, set on the very objects, so every reference
    already handed out (a derivation, a list of answers) holds the signed fact."""
    for start in range(0, len(pending), BATCH_FACTS_MAX):
        chunk = pending[start : start + BATCH_FACTS_MAX]
        for (_, fact), signed in zip(chunk, sign_prepared(identity, [u for u, _ in chunk])):
            _set_signature(fact, signed.signature)
            _set_raw(fact, signed.raw)


def sign_batch(identity: Identity, items: list[tuple[str, Body]]) -> list[Fact]:
    """Sign the facts ``items`` (``(kind, body)`` pairs) as one batch: one signature."""
    return sign_prepared(identity, [prepare(identity, kind, body) for kind, body in items])


def sign(identity: Identity, kind: str, body: Body) -> Fact:
    """Sign ``body`` as a fact of ``kind`` by ``identity`` alone (a batch of one); checks it."""
    return sign_prepared(identity, [prepare(identity, kind, body)])[0]


def canonical_json(value: Any) -> bytes:
    """JSON with sorted keys and no spaces: one byte form per value."""
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise InvalidFact(f"not JSON-serialisable: {exc}") from None


# --------------------------------------------------------------------------
# Decoding and validation


def _need(cond: bool, why: str) -> None:
    if not cond:
        raise InvalidFact(why)


def _is_int(v: Any, lo: int, hi: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def _is_bytes(v: Any, n: int | None = None) -> bool:
    return isinstance(v, bytes) and (n is None or len(v) == n)


def _is_json(data: bytes, limit: int) -> bool:
    if not isinstance(data, bytes) or len(data) > limit:
        return False
    try:  # json.loads(data, parse_constant=...), without building a decoder per call
        _STRICT_JSON.decode(data.decode(json.detect_encoding(data), "surrogatepass"))
    except (ValueError, UnicodeDecodeError, RecursionError):
        return False
    return True


def _reject_constant(name: str) -> Any:
    """Strict JSON: ``NaN``, ``Infinity`` and ``-Infinity`` are not JSON (RFC 8259)."""
    raise ValueError(f"{name} is not JSON")


_STRICT_JSON = json.JSONDecoder(parse_constant=_reject_constant)


def _parse_body(kind: str, f: list) -> Body:
    if kind == SUBMIT:
        _need(len(f) == 9, "submit has 9 fields")
        job_type, payload, max_att, lease, timeout, replicas, quorum, nonce, created = f
        _need(isinstance(job_type, str) and 0 < len(job_type) <= TYPE_CHARS_MAX, "bad job type")
        _need(_is_json(payload, PAYLOAD_BYTES_MAX), "payload is not JSON within bounds")
        _need(_is_int(max_att, 1, ATTEMPTS_MAX), "max_attempts out of range")
        _need(_is_int(lease, LEASE_MS_MIN, LEASE_MS_MAX), "lease_ms out of range")
        _need(_is_int(timeout, 1, TIMEOUT_MS_MAX), "timeout_ms out of range")
        _need(_is_int(replicas, 1, REPLICAS_MAX), "replicas out of range")
        _need(_is_int(quorum, replicas // 2 + 1, replicas), "quorum must be a majority of replicas")
        _need(_is_bytes(nonce, NONCE_BYTES), "bad nonce")
        _need(_is_int(created, 0, _TS_MAX), "bad created_ms")
        return Submit(job_type, payload, max_att, lease, timeout, replicas, quorum, nonce, created)
    if kind in (CLAIM, RENEW):
        _need(len(f) == 3, f"{kind} has 3 fields")
        job_id, attempt, ts = f
        _need(_is_bytes(job_id, NODE_ID_BYTES), "bad job id")
        _need(_is_int(attempt, 1, ATTEMPTS_MAX + 1), "attempt out of range")
        _need(_is_int(ts, 0, _TS_MAX), "bad ts_ms")
        return (Claim if kind == CLAIM else Renew)(job_id, attempt, ts)
    if kind == GRANT:
        _need(len(f) == 5, "grant has 5 fields")
        job_id, action, attempt, subject, ts = f
        _need(_is_bytes(job_id, NODE_ID_BYTES), "bad job id")
        _need(isinstance(action, str) and action in (LEASE, PLACE), "bad grant action")
        _need(_is_int(attempt, 0, ATTEMPTS_MAX + 1), "attempt out of range")
        if action == PLACE:
            _need(attempt == 0, "a placement has attempt 0")
            _need(_is_bytes(subject) and 0 < len(subject) <= NODE_ID_BYTES * REPLICAS_MAX, "bad placement")
            _need(len(subject) % NODE_ID_BYTES == 0, "bad placement")
            _need(len(set(placement_ids(subject))) == len(subject) // NODE_ID_BYTES, "a replica named twice")
        else:
            _need(_is_bytes(subject, NODE_ID_BYTES), "bad grant subject")
        _need(_is_int(ts, 0, _TS_MAX), "bad ts_ms")
        return Grant(job_id, action, attempt, subject, ts)
    if kind == RESULT:
        _need(len(f) == 6, "result has 6 fields")
        job_id, attempt, outcome, data, grants_raw, ts = f
        _need(_is_bytes(job_id, NODE_ID_BYTES), "bad job id")
        _need(_is_int(attempt, 1, ATTEMPTS_MAX + 1), "attempt out of range")
        _need(outcome in (OK, ERROR), "bad outcome")
        _need(_is_json(data, RESULT_BYTES_MAX), "result data is not JSON within bounds")
        _need(isinstance(grants_raw, list) and 0 < len(grants_raw) <= REPLICAS_MAX, "bad grant list")
        _need(all(_is_bytes(g) for g in grants_raw), "a grant is bytes")
        grants = tuple(decode(g, key=job_id) for g in grants_raw)
        _need(_is_int(ts, 0, _TS_MAX), "bad ts_ms")
        return Result(job_id, attempt, outcome, data, grants, ts)
    if kind == CANCEL:
        _need(len(f) == 3, "cancel has 3 fields")
        job_id, reason, ts = f
        _need(_is_bytes(job_id, NODE_ID_BYTES), "bad job id")
        _need(isinstance(reason, str) and len(reason) <= REASON_CHARS_MAX, "bad reason")
        _need(_is_int(ts, 0, _TS_MAX), "bad ts_ms")
        return Cancel(job_id, reason, ts)
    if kind == CONFIG:
        _need(len(f) == 4, "config has 4 fields")
        job_id, epoch, replicas, ts = f
        _need(_is_bytes(job_id, NODE_ID_BYTES), "bad job id")
        _need(_is_int(epoch, 1, EPOCHS_MAX), "epoch out of range")
        _need(_is_bytes(replicas) and 0 < len(replicas) <= NODE_ID_BYTES * REPLICAS_MAX, "bad replica set")
        _need(len(replicas) % NODE_ID_BYTES == 0, "bad replica set")
        _need(len(set(placement_ids(replicas))) == len(replicas) // NODE_ID_BYTES, "a replica named twice")
        _need(_is_int(ts, 0, _TS_MAX), "bad ts_ms")
        return Config(job_id, epoch, replicas, ts)
    if kind == BALLOT:
        _need(len(f) == 8, "ballot has 8 fields")
        job_id, step, attempt, rnd, proposer, subject, refs, ts = f
        _need(_is_bytes(job_id, NODE_ID_BYTES), "bad job id")
        _need(isinstance(step, str) and step in STEPS, "bad ballot step")
        _need(_is_int(attempt, 0, ATTEMPTS_MAX + 1), "attempt out of range")
        _need(_is_int(rnd, 0, ROUND_MAX), "round out of range")
        _need(_is_bytes(proposer, NODE_ID_BYTES), "bad proposer")
        _need(_is_bytes(subject) and len(subject) in (0, FACT_ID_BYTES), "bad ballot subject")
        _need(isinstance(refs, list) and len(refs) <= REPLICAS_MAX, "bad refs")
        _need(all(_is_bytes(r, FACT_ID_BYTES) for r in refs), "bad refs")
        _need(len(set(refs)) == len(refs), "a fact referenced twice")
        _need(_is_int(ts, 0, _TS_MAX), "bad ts_ms")
        if step in (VOTE, SEAL, PROPOSE):
            _need(len(subject) == FACT_ID_BYTES, f"a {step} names its subject")
        if step in (PREPARE, VOTE, SEAL):
            _need(not subject if step == PREPARE else True, "a prepare names no subject")
            _need(not refs, f"a {step} references nothing")
        if step == PROMISE:
            _need(bool(subject) == bool(refs), "a promise reports a certificate with its votes, or neither")
        if step == PROPOSE:
            _need(bool(refs), "a proposal shows its promises")
        return BallotStep(job_id, step, attempt, rnd, proposer, subject, tuple(refs), ts)
    raise InvalidFact(f"unknown fact kind {kind!r}")


def _check_body(fact: Fact) -> None:
    """Cross-field rules a fact can check alone."""
    if fact.kind == RESULT:
        body = fact.body
        signers = set()
        for g in body.grants:
            _need(g.kind == GRANT, "a result carries only grants")
            gb = g.body
            _need(gb.action == LEASE, "a result carries lease grants")
            _need(gb.job_id == body.job_id and gb.attempt == body.attempt, "grant is for another job or attempt")
            _need(gb.subject == fact.author_id, "grant names another worker")
            _need(g.author_id not in signers, "two grants by one replica")
            signers.add(g.author_id)
    elif fact.kind == BALLOT and fact.body.step in (PREPARE, PROPOSE):
        _need(fact.body.proposer == fact.author_id, f"a {fact.body.step} is signed by its proposer")


# --------------------------------------------------------------------------
# The typed decoding path: the wire form as msgspec structs.
#
# Every bound a field has on its own is a type constraint, checked in C while
# decoding; the rules that relate fields (a quorum is a majority, a placement
# names distinct replicas, a ballot step's subject and refs) and JSON
# validity stay in Python. The canonical-form rule holds because the decoded
# value is encoded again and must give back the input's exact bytes (msgspec
# encodes the canonical types as msgpack.packb does: shortest forms).

_PublicKey = Annotated[bytes, Meta(min_length=PUBLIC_KEY_BYTES, max_length=PUBLIC_KEY_BYTES)]
_Signature = Annotated[bytes, Meta(min_length=SIGNATURE_BYTES, max_length=SIGNATURE_BYTES)]


class _Wire(Struct, array_like=True, forbid_unknown_fields=True, frozen=True):
    pass


class _ResultW(_Wire):  # its grants are facts, decoded one by one
    job_id: _JobId
    attempt: _Attempt
    outcome: Literal["ok", "error"]
    data_json: Annotated[bytes, Meta(max_length=RESULT_BYTES_MAX)]
    grants: Annotated[list[bytes], Meta(min_length=1, max_length=REPLICAS_MAX)]
    ts_ms: _Ts


class _Proof(_Wire):
    """``[signature, index, count, siblings]``: the fact is leaf ``index`` of the batch the signature covers."""

    signature: _Signature
    index: Annotated[int, Meta(ge=0, le=BATCH_FACTS_MAX - 1)]  # below count: checked with the root
    count: Annotated[int, Meta(ge=1, le=BATCH_FACTS_MAX)]
    siblings: Annotated[list[_FactId], Meta(max_length=PROOF_SIBLINGS_MAX)]


def _fact_struct(kind: str, body: type) -> type:
    """``[kind, author, body, proof]`` as a struct tagged by its kind."""
    return msgspec.defstruct(
        f"_{kind.capitalize()}Fact",
        [("author", _PublicKey), ("body", body), ("proof", _Proof)],
        bases=(_Wire,),
        tag_field="kind",
        tag=kind,
    )


_BODY_STRUCTS = {SUBMIT: Submit, CLAIM: Claim, RENEW: Renew, GRANT: Grant, RESULT: _ResultW, CANCEL: Cancel,
                 CONFIG: Config, BALLOT: BallotStep}
_KIND_OF = {_fact_struct(kind, body): kind for kind, body in _BODY_STRUCTS.items()}
_WIRE_DECODER = msgspec.msgpack.Decoder(Union[tuple(_KIND_OF)])  # noqa: UP007 (a runtime union of a tuple)
_WIRE_ENCODER = msgspec.msgpack.Encoder()
_DECODE_ERRORS = (msgspec.DecodeError, msgspec.ValidationError, RecursionError)



def _batch_root(fact_id: bytes, index: int, count: int, siblings: list[bytes]) -> bytes | None:
    """The root a fact's proof leads to (itself in a batch of one), or None if the proof has the wrong shape."""
    if count == 1:
        return fact_id if index == 0 and not siblings else None
    return merkle.root_of(fact_id, index, count, siblings)


def _verify_batch(kind: str, author: bytes, root: bytes, count: int, signature: bytes) -> None:
    """Check the batch signature; the cache in verify_bytes makes the second fact of a batch free."""
    count_facts(verified=1)
    try:
        verify_bytes(author, _WIRE_ENCODER.encode((domains.BATCH, author, root, count)), signature, domains.BATCH)
    except BadSignature:
        raise InvalidFact(f"{kind} signature does not verify") from None


def _distinct_ids(ids: bytes) -> bool:
    n = len(ids)
    if n % NODE_ID_BYTES:
        return False
    return len({ids[i : i + NODE_ID_BYTES] for i in range(0, n, NODE_ID_BYTES)}) == n // NODE_ID_BYTES


def _typed_body(kind: str, w: Any) -> Body | None:
    """The body of a typed fact, or None where a rule across fields fails."""
    if kind == CLAIM or kind == RENEW or kind == CANCEL:
        return w
    if kind == SUBMIT:
        if not (w.replicas // 2 + 1 <= w.quorum <= w.replicas and _is_json(w.payload_json, PAYLOAD_BYTES_MAX)):
            return None
        return w
    if kind == GRANT:
        if w.action == PLACE:
            if w.attempt != 0 or not _distinct_ids(w.subject):
                return None
        elif len(w.subject) != NODE_ID_BYTES:
            return None
        return w
    if kind == RESULT:
        if not _is_json(w.data_json, RESULT_BYTES_MAX):
            return None
        job_id = w.job_id
        grants = tuple(decode(g, key=job_id) for g in w.grants)
        return Result(job_id, w.attempt, w.outcome, w.data_json, grants, w.ts_ms)
    if kind == CONFIG:
        return w if _distinct_ids(w.replicas) else None
    # a ballot step
    step, subject, refs = w.step, w.subject, w.refs
    if len(subject) not in (0, FACT_ID_BYTES) or len(set(refs)) != len(refs):
        return None
    if step == PREPARE:
        ok = not subject and not refs
    elif step == PROMISE:
        ok = bool(subject) == bool(refs)
    elif step == PROPOSE:
        ok = bool(subject) and bool(refs)
    else:  # vote, seal
        ok = bool(subject) and not refs
    return w if ok else None


def _decode_typed(raw: bytes, key: bytes | None) -> Fact | None:
    """:func:`decode` of a fact the wire structs accept; None sends it to the checked path.

    What this accepts, the checked path accepts the same way; once the form is
    right, it raises what the checked path would (a signature, a grant, the key).
    """
    try:
        w = _WIRE_DECODER.decode(raw)
    except _DECODE_ERRORS:
        return None
    if _WIRE_ENCODER.encode(w) != raw:  # the canonical-form rule
        return None
    kind = _KIND_OF[type(w)]
    body = _typed_body(kind, w.body)
    if body is None:
        return None
    author = w.author
    proof = w.proof
    index, count, siblings = proof.index, proof.count, proof.siblings
    # The content ``[kind, author, body]`` is the fact's bytes without its proof (a 3-list, not a 4-list).
    fact_id = content_id(b"\x93" + raw[1 : len(raw) - _proof_bytes(index, count, len(siblings))])
    root = _batch_root(fact_id, index, count, siblings)
    if root is None:
        return None
    _verify_batch(kind, author, root, count, proof.signature)
    return _checked_in_place(_new_fact(kind, author, body, proof.signature, raw, fact_id, node_id_of(author)), key)


def decode(raw: bytes, *, key: bytes | None = None) -> Fact:
    """Decode and verify one fact; raise :class:`InvalidFact`.

    ``key`` is the DHT key the fact is filed under: a submit must hash to it,
    every other fact must name it as its job.

    A well-formed fact takes the typed path (:func:`_decode_typed`: msgspec
    decodes it into structs in C, which checks types, sizes and bounds); any
    input that path does not accept goes through the field-by-field checks of
    :func:`_decode_checked`, which accept exactly the same facts and name
    what is wrong.
    """
    if type(raw) is bytes and len(raw) <= FACT_BYTES_MAX:
        fact = _decode_typed(raw, key)
        if fact is not None:
            return fact
    return _decode_checked(raw, key)


def _decode_checked(raw: bytes, key: bytes | None) -> Fact:
    """:func:`decode`, one check at a time: the reference, and the path of every refusal."""
    _need(isinstance(raw, bytes), "a fact is bytes")
    _need(len(raw) <= FACT_BYTES_MAX, f"fact exceeds {FACT_BYTES_MAX} bytes")
    try:
        outer = canonical_unpack(raw, max_len=FACT_BYTES_MAX)
    except EncodingError as exc:
        raise InvalidFact(str(exc)) from None
    _need(isinstance(outer, list) and len(outer) == 4, "a fact is [kind, author, body, proof]")
    kind, author, fields, proof = outer
    _need(isinstance(kind, str) and kind in KINDS, f"unknown fact kind {kind!r}")
    _need(_is_bytes(author, PUBLIC_KEY_BYTES), "bad author key")
    _need(isinstance(proof, list) and len(proof) == 4, "a proof is [signature, index, count, siblings]")
    signature, index, count, siblings = proof
    _need(_is_bytes(signature, SIGNATURE_BYTES), "bad signature field")
    _need(_is_int(index, 0, BATCH_FACTS_MAX - 1), "batch index out of range")
    _need(_is_int(count, 1, BATCH_FACTS_MAX), "batch count out of range")
    _need(isinstance(siblings, list) and len(siblings) <= PROOF_SIBLINGS_MAX, "too many proof siblings")
    _need(all(_is_bytes(h, FACT_ID_BYTES) for h in siblings), "a proof sibling is a 32-byte hash")
    _need(isinstance(fields, list), "body is a list")
    body = _parse_body(kind, fields)
    _need(index < count, "batch index beyond its count")
    fact_id = content_id(canonical_pack([kind, author, fields]))
    root = _batch_root(fact_id, index, count, siblings)
    _need(root is not None, "the proof's siblings do not fit its index and count")
    _verify_batch(kind, author, root, count, signature)
    return _checked_in_place(Fact(kind, author, body, signature, raw, fact_id, node_id_of(author)), key)


def _checked_in_place(fact: Fact, key: bytes | None) -> Fact:
    """The checks both decode paths end with: the body's own rules, and the key it is filed under."""
    _check_body(fact)
    if key is not None:
        _need(fact.job_id == key, "fact is filed under another job's key")
    return fact


def check_in_context(submit: Fact, fact: Fact) -> None:
    """Rules that need the job's submission; raise :class:`InvalidFact`."""
    why = context_error(submit, fact)
    if why is not None:
        raise InvalidFact(why)


def context_error(submit: Fact, fact: Fact, job_id: bytes | None = None) -> str | None:
    """Why ``fact`` breaks a rule that needs the job's submission, or None.

    ``job_id`` is ``submit.job_id`` when the caller has it already (it is a
    hash of the submission, so a caller checking many facts passes it once).
    """
    spec: Submit = submit.body
    kind = fact.kind
    if kind == SUBMIT:
        return None if fact.fact_id == submit.fact_id else "a second submission under one key"
    if fact.body.job_id != (submit.job_id if job_id is None else job_id):
        return "fact belongs to another job"
    if kind == CANCEL:
        return None if fact.author == submit.author else "cancel is not signed by the submitter"
    body = fact.body
    if kind == CONFIG:
        if len(body.replicas) != NODE_ID_BYTES * spec.replicas:
            return "a replica set of another size than the job's"
        return None
    if body.attempt > spec.max_attempts + 1:
        return "attempt beyond max_attempts + 1"
    if kind == RESULT:
        if len(body.grants) < spec.quorum:
            return "result lacks a majority of lease grants"
        if body.attempt > spec.max_attempts and body.outcome != ERROR:
            return "the closing attempt can only record failure"
    elif kind == GRANT and body.action == PLACE:
        if fact.author != submit.author:
            return "placement is not signed by the submitter"
        if len(body.subject) != NODE_ID_BYTES * spec.replicas:
            return "placement does not name r replicas"
    return None
