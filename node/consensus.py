"""A job's consensus on signed facts: :mod:`node.ballots` mapped onto ``ballot`` facts. Pure.

The rules of :mod:`node.ballots` (single-decree Paxos with certificates,
model-checked in ``simulations/modelcheck.py``) speak of promises, proposals,
votes, certificates and seals. Here each of them is a signed fact of the job,
so that every step is stored, replicated, read back and audited like the rest:

==========================  =================================================
ballots.py                  fact
==========================  =================================================
prepare at b                ``ballot`` step ``prepare`` by b's proposer
promise at (n, 0, W)        W's lease grant for attempt n (a replica that
                            sealed a certificate grants no lease, so a lease
                            grant always reports "nothing sealed")
promise at b (round >= 1)   ``ballot`` step ``promise`` by a placed replica;
                            ``subject`` + ``refs`` name the certificate it
                            sealed (its votes' fact ids), if any
proposal at (n, 0, W)       W's final result of attempt n, its lease grants
                            as the proof
proposal at b (round >= 1)  ``ballot`` step ``propose``; ``refs`` name the
                            promises that prove it
vote, seal                  ``ballot`` steps ``vote`` and ``seal`` by a
                            placed replica
certificate                 a quorum of vote facts for one (ballot, subject)
==========================  =================================================

A replica's acceptor state is not kept anywhere else: it is read from its own
facts (:func:`acceptor`), which are on disk before any answer that depends on
them leaves the node (group commit). Acceptor steps are signed with
``ts_ms = 0``: Ed25519 signatures are deterministic, so asking again yields
the very same fact, and a step is idempotent by construction.

What the subjects may be (:func:`admissible`) is the job's business, not
Paxos's: a worker at its own ballot ``(n, 0, W)`` proposes only its own final
result of attempt n; a canceller or a recovering replica (round >= 1) a
cancel, or a final result of an attempt no lower than the job's confirmed
lease. Any choice is safe; these keep the semantics (a late result of a
stale attempt never wins against a newer confirmed attempt).

Nothing here signs, sends or reads a clock: :mod:`node.replica` signs what
the acceptor functions return, :mod:`node.proposer` drives a round.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from workmesh.node import ballots as B
from workmesh.node import facts as F
from workmesh.node.ballots import Ballot, Refusal
from workmesh.node.facts import BallotStep, Fact
from workmesh.node import lifecycle
from workmesh.node.lifecycle import JobState, is_final_result


def config(state: JobState) -> B.Config:
    """The job's acceptors (its placed replicas) and its quorum (its submission's)."""
    return B.Config(frozenset(state.replicas), quorum=state.spec.quorum)


def ballot_of(fact: Fact) -> Ballot:
    """The ballot a ballot fact, a lease grant or a result speaks at."""
    b = fact.body
    if fact.kind == F.BALLOT:
        return Ballot(b.attempt, b.round, b.proposer)
    if fact.kind == F.GRANT:  # a lease grant: the promise at (n, 0, worker)
        return Ballot(b.attempt, 0, b.subject)
    if fact.kind == F.RESULT:  # a result: the proposal at (n, 0, worker)
        return Ballot(b.attempt, 0, fact.author_id)
    raise ValueError(f"a {fact.kind} speaks at no ballot")


def steps(facts: Iterable[Fact], step: str) -> list[Fact]:
    return [f for f in facts if f.kind == F.BALLOT and f.body.step == step]


def vote_of(fact: Fact) -> B.Vote:
    return B.Vote(fact.author_id, ballot_of(fact), fact.body.subject)


def seal_of(fact: Fact) -> B.Seal:
    return B.Seal(fact.author_id, ballot_of(fact), fact.body.subject)


def certificate_of(refs: Iterable[bytes], by_id: Mapping[bytes, Fact], cfg: B.Config) -> B.Certificate | None:
    """The certificate the vote facts ``refs`` make, or None when one is
    missing, is not a vote, or they do not make a valid certificate."""
    votes: list[B.Vote] = []
    for ref in refs:
        f = by_id.get(ref)
        if f is None or f.kind != F.BALLOT or f.body.step != F.VOTE:
            return None
        votes.append(vote_of(f))
    if not votes:
        return None
    first = votes[0]
    cert = B.Certificate(first.ballot, first.subject, frozenset(votes))
    return cert if cert.valid(cfg) else None


def promise_of(fact: Fact, by_id: Mapping[bytes, Fact], cfg: B.Config) -> B.Promise | None:
    """The promise a promise fact or a lease grant stands for (None: its
    reported certificate cannot be shown, so it proves nothing)."""
    if fact.kind == F.GRANT:
        return B.Promise(fact.author_id, ballot_of(fact), None)
    body: BallotStep = fact.body
    if not body.refs:
        return B.Promise(fact.author_id, ballot_of(fact), None)
    cert = certificate_of(body.refs, by_id, cfg)
    if cert is None or cert.subject != body.subject:
        return None
    return B.Promise(fact.author_id, ballot_of(fact), cert)


def in_epoch(state: JobState, ballot: Ballot) -> bool:
    """True for a ballot of the job's current replica set (above the ballot
    that decided it, after a repair): only those make the acceptor's state."""
    return state.epoch_start is None or tuple(ballot) > state.epoch_start


def sealed_certificate(state: JobState, me: bytes, cfg: B.Config) -> B.Certificate | None:
    """The highest-ballot certificate ``me`` sealed (with the votes that make it)."""
    own = sorted(
        (f for f in steps(state.facts, F.SEAL) if f.author_id == me and in_epoch(state, ballot_of(f))),
        key=lambda f: ballot_of(f),
        reverse=True,
    )
    votes = [vote_of(f) for f in steps(state.facts, F.VOTE)]
    for seal in own:
        b, s = ballot_of(seal), seal.body.subject
        mine = frozenset(v for v in votes if (v.ballot, v.subject) == (b, s) and v.acceptor in cfg.replicas)
        cert = B.Certificate(b, s, mine)
        if cert.valid(cfg):
            return cert
    return None


def current_lease(state: JobState, me: bytes) -> Ballot | None:
    """The ballot of ``me``'s current lease grant: the highest attempt, the
    newest grant of it (a never-confirmed attempt may be granted again)."""
    leases = [
        f
        for f in state.facts
        if f.kind == F.GRANT and f.body.action == F.LEASE and f.author_id == me and in_epoch(state, ballot_of(f))
    ]
    if not leases:
        return None
    m = max(g.attempt for g in leases)
    newest = max((g for g in leases if g.attempt == m), key=lambda g: (g.body.ts_ms, g.body.subject))
    return ballot_of(newest)


def acceptor(state: JobState, me: bytes, cfg: B.Config | None = None) -> B.Acceptor:
    """``me``'s acceptor state, read from its own facts."""
    cfg = cfg or config(state)
    own = [
        f
        for f in state.facts
        if f.kind == F.BALLOT and f.author_id == me and f.body.step in (F.PROMISE, F.VOTE, F.SEAL) and in_epoch(state, ballot_of(f))
    ]
    promised = max((ballot_of(f) for f in own), default=None)
    lease = current_lease(state, me)
    if lease is not None and (promised is None or lease > promised):
        promised = lease
    votes = tuple((ballot_of(f), f.body.subject) for f in own if f.body.step == F.VOTE)
    return B.Acceptor(me, promised, votes, sealed_certificate(state, me, cfg))




def cancels(state: JobState) -> list[Fact]:
    return [f for f in state.facts if f.kind == F.CANCEL]


def repairing(state: JobState) -> bool:
    """True when a new replica set for the next epoch was proposed (a repair
    preempts a running lease: its replica set is going, node/repairs.py)."""
    return any(f.kind == F.CONFIG and f.body.epoch == state.epoch + 1 for f in state.facts)


def admissible(state: JobState, by_id: Mapping[bytes, Fact]):
    """Which subjects a proposer at a ballot may choose when nothing certified binds it."""
    submit = state.submit
    floor = state.lease_attempt

    def ok(ballot: Ballot, subject: bytes) -> bool:
        f = by_id.get(subject)
        if f is None or f.body.job_id != state.job_id:
            return False
        if f.kind == F.CANCEL:
            return f.author == submit.author and ballot.round >= 1
        if f.kind == F.CONFIG:  # a new replica set: the next epoch's, by a recovering replica
            return f.body.epoch == state.epoch + 1 and ballot.round >= 1
        if f.kind != F.RESULT or not is_final_result(submit, f):
            return False
        if ballot.round == 0:
            return (f.attempt, f.author_id) == (ballot.attempt, ballot.proposer)
        return floor <= f.attempt <= ballot.attempt

    return ok


def proposal_of(fact: Fact, by_id: Mapping[bytes, Fact], cfg: B.Config) -> B.Proposal | Refusal:
    """The proposal a final result (at its worker's ballot) or a propose fact makes."""
    if fact.kind == F.RESULT:
        b = ballot_of(fact)
        proof = frozenset(B.Promise(g.author_id, b, None) for g in fact.body.grants)
        return B.Proposal(b, fact.fact_id, proof)
    body: BallotStep = fact.body
    proof: set[B.Promise] = set()
    for ref in body.refs:
        f = by_id.get(ref)
        if f is None or f.kind != F.BALLOT or f.body.step != F.PROMISE:
            return Refusal.BAD_PROOF
        p = promise_of(f, by_id, cfg)
        if p is None:
            return Refusal.BAD_PROOF
        proof.add(p)
    return B.Proposal(ballot_of(fact), body.subject, frozenset(proof))


def step_body(job_id: bytes, step: str, ballot: Ballot, subject: bytes = b"", refs: tuple[bytes, ...] = (), ts_ms: int = 0) -> BallotStep:
    return BallotStep(job_id, step, ballot.attempt, ballot.round, ballot.proposer, subject, tuple(refs), ts_ms)


# --------------------------------------------------------------------------
# The acceptor side, as the replica calls it: what to sign for a new fact.


def on_prepare(state: JobState, fact: Fact, me: bytes) -> BallotStep | Refusal:
    cfg = config(state)
    acc = acceptor(state, me, cfg)
    _, answer = B.on_prepare(acc, ballot_of(fact))
    if isinstance(answer, Refusal):
        return answer
    cert = answer.accepted
    refs: tuple[bytes, ...] = ()
    if cert is not None:
        ids = {(v.acceptor, v.ballot, v.subject): None for v in cert.votes}
        refs = tuple(
            sorted(f.fact_id for f in steps(state.facts, F.VOTE) if (f.author_id, ballot_of(f), f.body.subject) in ids)
        )
    return step_body(state.job_id, F.PROMISE, answer.ballot, cert.subject if cert else b"", refs)


def on_proposal(state: JobState, fact: Fact, me: bytes) -> BallotStep | Refusal:
    """Vote for a proposal (a final result, or a propose fact) when the rules allow."""
    cfg = config(state)
    by_id = {f.fact_id: f for f in state.facts}
    proposal = proposal_of(fact, by_id, cfg)
    if isinstance(proposal, Refusal):
        return proposal
    _, answer = B.on_propose(acceptor(state, me, cfg), proposal, cfg, admissible(state, by_id))
    if isinstance(answer, Refusal):
        return answer
    return step_body(state.job_id, F.VOTE, answer.ballot, answer.subject)


def on_votes(state: JobState, me: bytes) -> BallotStep | None:
    """Seal the highest certificate the job's votes make, when the rules allow."""
    cfg = config(state)
    cert = B.certificate((vote_of(f) for f in steps(state.facts, F.VOTE) if in_epoch(state, ballot_of(f))), cfg)
    if cert is None:
        return None
    _, answer = B.on_certificate(acceptor(state, me, cfg), cert, cfg)
    if isinstance(answer, Refusal):
        return None
    return step_body(state.job_id, F.SEAL, answer.ballot, answer.subject)




def top_ballot(state: JobState) -> Ballot | None:
    """The highest ballot any fact of the job speaks at (leases, results, ballot steps)."""
    known = [
        ballot_of(f)
        for f in state.facts
        if f.kind == F.BALLOT or f.kind == F.RESULT or (f.kind == F.GRANT and f.body.action == F.LEASE)
    ]
    return max(known, default=None)


def free_choice(state: JobState) -> Fact | None:
    """What a canceller or recovering replica proposes when nothing certified
    binds it: the submitter's cancel if there is one, else the final result
    of the highest attempt at or above the confirmed lease (lowest fact id)."""
    cs = sorted(cancels(state), key=lambda f: f.fact_id)
    if cs:
        return cs[0]
    finals = [
        f
        for f in state.facts
        if f.kind == F.RESULT and is_final_result(state.submit, f) and f.attempt >= state.lease_attempt
    ]
    if not finals:
        return None
    return min(finals, key=lambda f: (-f.attempt, f.fact_id))


def derive_again(state: JobState, facts: Iterable[Fact]) -> JobState | None:
    """The job's state from what it held and ``facts`` read since."""
    return lifecycle.derive([*state.facts, *facts], job_id=state.job_id)
