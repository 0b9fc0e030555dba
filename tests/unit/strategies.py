"""Fixed identities, fact builders and hypothesis strategies shared by the unit tests.

Builders are memoised: Ed25519 signatures are deterministic, so the same
arguments always give the same fact, and hypothesis runs thousands of
examples that reuse them.
"""

from __future__ import annotations

from functools import lru_cache

from hypothesis import strategies as st

from workmesh.crypto import domains
from workmesh.crypto.canonical import canonical_pack
from workmesh.crypto.identity import Identity
from workmesh.node import facts as F
from workmesh.node.facts import Fact

REPLICAS = tuple(Identity.from_seed(bytes([1 + i]) * 32) for i in range(7))
WORKERS = tuple(Identity.from_seed(bytes([100 + i]) * 32) for i in range(4))
SUBMITTER = Identity.from_seed(b"\x50" * 32)
STRANGER = Identity.from_seed(b"\x51" * 32)


def signed_raw(identity: Identity, kind: str, fields: list, *, signed_kind: str | None = None,
               author: bytes | None = None) -> bytes:
    """A fact's bytes, a batch of one, signed by ``identity`` without ``facts.sign``'s checks:
    the signature covers the content ``[signed_kind (default kind), author, fields]``."""
    author = identity.public_key if author is None else author
    fact_id = F.content_id(canonical_pack([signed_kind or kind, author, fields]))
    signature = identity.sign(domains.BATCH, [author, fact_id, 1])
    return canonical_pack([kind, author, fields, [signature, 0, 1, []]])


def flip_signature_bit(raw: bytes) -> bytes:
    """A lone fact's bytes with a bit of its signature flipped: still canonical msgpack.
    Its proof ``[signature, 0, 1, []]`` ends the fact: the signature's last byte is the 4th from the end."""
    return raw[:-4] + bytes([raw[-4] ^ 0x01]) + raw[-3:]


@lru_cache(maxsize=None)
def submit(
    max_attempts: int = 2,
    replicas: int = 3,
    quorum: int = 2,
    lease_ms: int = 1000,
    nonce: bytes = b"\x00" * 16,
    by: Identity = SUBMITTER,
    payload: bytes = b'{"n":1}',
) -> Fact:
    body = F.Submit("echo", payload, max_attempts, lease_ms, 60_000, replicas, quorum, nonce, 1_700_000_000_000)
    return F.sign(by, F.SUBMIT, body)


@lru_cache(maxsize=None)
def placement(job: Fact, replicas: tuple[Identity, ...] | None = None, by: Identity = SUBMITTER) -> Fact:
    """The submitter's placement of ``job`` on ``replicas`` (default: the first r of REPLICAS)."""
    replicas = REPLICAS[: job.body.replicas] if replicas is None else replicas
    subject = b"".join(r.node_id for r in replicas)
    return F.sign(by, F.GRANT, F.Grant(job.job_id, F.PLACE, 0, subject, 1))


@lru_cache(maxsize=None)
def claim(worker: Identity, job: Fact, attempt: int, ts_ms: int = 1) -> Fact:
    return F.sign(worker, F.CLAIM, F.Claim(job.job_id, attempt, ts_ms))


@lru_cache(maxsize=None)
def renew(worker: Identity, job: Fact, attempt: int, ts_ms: int = 1) -> Fact:
    return F.sign(worker, F.RENEW, F.Renew(job.job_id, attempt, ts_ms))


@lru_cache(maxsize=None)
def lease(replica: Identity, job: Fact, attempt: int, worker: Identity, ts_ms: int = 1) -> Fact:
    return F.sign(replica, F.GRANT, F.Grant(job.job_id, F.LEASE, attempt, worker.node_id, ts_ms))


def ballot_for(subject: Fact) -> tuple[int, int, bytes]:
    """The ballot a subject is decided at here: a result at its worker's own
    ballot (attempt, 0, worker), a cancel at round 1 of attempt 0 by its signer."""
    if subject.kind == F.RESULT:
        return (subject.attempt, 0, subject.author_id)
    return (0, 1, subject.author_id)


@lru_cache(maxsize=None)
def vote(replica: Identity, job: Fact, subject: Fact, ballot: tuple[int, int, bytes] | None = None) -> Fact:
    a, r, p = ballot or ballot_for(subject)
    return F.sign(replica, F.BALLOT, F.BallotStep(job.job_id, F.VOTE, a, r, p, subject.fact_id, (), 0))


@lru_cache(maxsize=None)
def seal(replica: Identity, job: Fact, subject: Fact, ballot: tuple[int, int, bytes] | None = None) -> Fact:
    a, r, p = ballot or ballot_for(subject)
    return F.sign(replica, F.BALLOT, F.BallotStep(job.job_id, F.SEAL, a, r, p, subject.fact_id, (), 0))


@lru_cache(maxsize=None)
def result(
    worker: Identity,
    job: Fact,
    attempt: int,
    grants: tuple[Fact, ...],
    outcome: str = F.OK,
    data: bytes | None = None,
    ts_ms: int = 2,
) -> Fact:
    if data is None:
        data = b'{"v":%d}' % attempt if outcome == F.OK else b'{"error":"boom %d"}' % attempt
    return F.sign(worker, F.RESULT, F.Result(job.job_id, attempt, outcome, data, grants, ts_ms))


def quorum_result(job: Fact, worker: Identity, attempt: int, outcome: str = F.OK, replicas=None) -> Fact:
    """A result carrying lease grants from ``replicas`` (default: the first quorum)."""
    replicas = REPLICAS[: job.body.quorum] if replicas is None else replicas
    grants = tuple(lease(r, job, attempt, worker) for r in replicas)
    return result(worker, job, attempt, grants, outcome)


@lru_cache(maxsize=None)
def cancel(job: Fact, by: Identity = SUBMITTER, reason: str = "no longer needed") -> Fact:
    return F.sign(by, F.CANCEL, F.Cancel(job.job_id, reason, 3))


# --------------------------------------------------------------------------
# Strategies

CONFIGS = st.sampled_from([(1, 1), (3, 2), (3, 3), (4, 3), (5, 3), (5, 4)])  # (replicas, quorum)


@st.composite
def job_histories(draw, *, seals: bool = True, junk: bool = True) -> tuple[Fact, list[Fact]]:
    """A job's submit and a plausible fact set produced by honest replicas.

    Every replica grants each attempt to at most one worker and seals at most
    one subject; workers publish results only with a quorum of grants. Junk
    (a cancel by a stranger, facts of another job, a result short of grants)
    is mixed in to check that it is ignored.
    """
    r, q = draw(CONFIGS)
    max_attempts = draw(st.integers(1, 3))
    nonce = draw(st.sampled_from([b"\x00" * 16, b"\x01" * 16]))
    job = submit(max_attempts=max_attempts, replicas=r, quorum=q, nonce=nonce)
    replicas = REPLICAS[:r]
    out = [job, placement(job)]
    subjects: list[Fact] = []
    for attempt in range(1, draw(st.sampled_from([*range(1, max_attempts + 2), 0])) + 1):
        worker = draw(st.sampled_from(WORKERS))
        granters = draw(st.permutations(replicas))[: draw(st.sampled_from(range(r, -1, -1)))]
        if draw(st.booleans()):
            out.append(claim(worker, job, attempt))
        if draw(st.booleans()):
            out.append(renew(worker, job, attempt, draw(st.integers(1, 3))))
        grants = tuple(lease(g, job, attempt, worker) for g in granters)
        out.extend(g for g in grants if draw(st.booleans()))  # some travel only inside the result
        if len(grants) >= q and draw(st.booleans()):
            outcome = F.ERROR if attempt > max_attempts else draw(st.sampled_from([F.OK, F.ERROR]))
            res = result(worker, job, attempt, grants, outcome)
            out.append(res)
            subjects.append(res)
            if outcome == F.OK and draw(st.integers(0, 3)):
                break  # usually nobody claims again after a success
    if draw(st.booleans()):
        out.append(cancel(job))
        subjects.append(cancel(job))
    if seals and subjects:
        for replica in replicas:
            choice = draw(st.none() | st.sampled_from(subjects))
            if choice is not None:
                out.append(seal(replica, job, choice))
    if junk and draw(st.booleans()):
        other = submit(max_attempts=max_attempts, replicas=r, quorum=q, nonce=b"\x09" * 16)
        out.append(cancel(job, by=STRANGER))
        out.append(claim(WORKERS[0], other, 1))
        out.append(lease(REPLICAS[0], other, 1, WORKERS[0]))
        if q > 1:
            out.append(result(WORKERS[0], job, 1, (lease(REPLICAS[0], job, 1, WORKERS[0]),)))
    return job, out
