"""The decision rules of a job: single-decree Paxos among its placed replicas. Pure.

Theory of operation
-------------------
A job ends with exactly one outcome (an ok or final error result, or a
cancel). Counting seals as votes can split for good (2/2 with one replica
down, 2/2/1 with a worker that files different results to different
replicas), so the outcome is decided by consensus: a Paxos register per job
(CASPaxos-shaped), with one extra step that makes a ballot's value unique even
when its proposer equivocates.

Ballots are totally ordered tuples ``(attempt, round, proposer)``. The
attempt stays the fencing token a handler sees; the round orders the
proposals within one attempt (a lease given again after a lost race, a
cancel, a recovery); the proposer id breaks ties.

Each replica is an :class:`Acceptor` with three pieces of durable state:
``promised`` (the highest ballot it promised), ``votes`` (the one subject it
voted for at each ballot) and ``sealed`` (the highest-ballot *certificate* it
sealed). A ballot's round has three steps:

1. **prepare** -- the proposer asks for promises at ballot b. An acceptor
   promises when it promised nothing higher, and reports its sealed
   certificate. A lease grant is exactly this promise at ``(n, k, worker)``.
2. **vote** -- the proposer sends ``(b, subject)`` with a quorum of promises
   at b as proof. The acceptor checks the proof itself: the subject must be
   the value of the highest-ballot certificate reported in the proof, or,
   when none is reported, a value the proposer may choose freely
   (``admissible``). It votes at most one subject per ballot, and only when it
   promised nothing higher.
3. **seal** -- a quorum of votes for ``(b, subject)`` is a certificate. An
   acceptor shown a valid certificate seals it unless it promised a higher
   ballot. A job is **decided** when a quorum of acceptors sealed the same
   ``(b, subject)``.

Why it is safe (the Paxos invariant, on certificates): if ``(b, A)`` is
decided, every valid certificate and every honest vote at a ballot >= b is
for A. Two vote quorums share an honest acceptor, who votes once per ballot,
so a ballot has at most one certified subject even when its proposer signs
two; a proposer at b' > b gathers a quorum of promises, which shares an
honest acceptor with the sealing quorum, who reports a certificate at a
ballot in [b, b'), which by induction is A; voters check that the proposal
carries it. So two different subjects are never decided, and derivation from
any set of facts has one outcome.

Why it is live: a proposer whose ballot is above every ballot any live
acceptor promised, facing a quorum of live honest acceptors, finishes all
three steps (``simulations/modelcheck.py`` checks this from every reachable
state). A split of votes or seals is therefore resolved by any node running a
recovery round at a higher ballot: it re-proposes the highest certified
subject, or, when nothing was certified, any subject it may choose.

Byzantine mode (``byzantine = F > 0``): quorums are ``ceil((r + F + 1) / 2)``
so that two quorums share F + 1 acceptors, one of them honest; a promise
reports its certificate *with the votes that make it*, so a lying acceptor
can neither invent a value nor hide one that a quorum sealed. ``r < 3F + 1``
cannot keep a quorum of honest live acceptors and is refused
(:func:`check_settings`).

Nothing here signs, sends or reads a clock: the node shell maps these
messages onto signed facts, and :mod:`node.rounds` drives a proposer.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import NamedTuple


class Ballot(NamedTuple):
    """A proposal number: compared as a tuple, attempt first."""

    attempt: int
    round: int
    proposer: bytes

    def above(self, proposer: bytes) -> Ballot:
        """The lowest ballot of ``proposer`` in this attempt above this one."""
        return Ballot(self.attempt, self.round + 1, proposer)


Subject = bytes  # the fact id of a result or a cancel


class Refusal(enum.StrEnum):
    """Why an acceptor (or a replica's lease rules) refuses: a code, never prose."""

    PROMISED_HIGHER = "promised_higher"  # a higher ballot was promised
    VOTED_OTHER = "voted_other"  # another subject was voted at this ballot
    BAD_PROOF = "bad_proof"  # the proposal lacks a quorum of valid promises at its ballot
    WRONG_VALUE = "wrong_value"  # the proof obliges another subject, or the subject is not admissible
    BAD_CERTIFICATE = "bad_certificate"  # not a quorum of votes for one (ballot, subject)
    NOT_REPLICA = "not_replica"  # the node is not one of the job's placed replicas
    NOT_EXTENDED = "not_extended"  # a renew that does not extend the lease
    LEASE_LIVE = "lease_live"  # the previous attempt's lease is live on this replica's clock
    BACKOFF = "backoff"  # the previous attempt's retry backoff is not over
    DECIDED = "decided"  # the job is decided
    UNKNOWN_JOB = "unknown_job"  # this replica does not hold the job's submission
    INVALID = "invalid"  # the fact breaks a rule of the protocol


def refusal_text(code: Refusal, detail: str = "") -> str:
    """The wire form of a refusal: ``code`` or ``code: detail``."""
    return f"{code.value}: {detail}" if detail else code.value


def refusal_code(text: str) -> Refusal | None:
    """The code of a refusal's wire form (None for a reason without one)."""
    head = text.split(":", 1)[0].strip()
    try:
        return Refusal(head)
    except ValueError:
        return None


# --------------------------------------------------------------------------
# Quorums


def quorum_size(replicas: int, byzantine: int = 0) -> int:
    """``ceil((r + F + 1) / 2)``: any two quorums share F + 1 acceptors."""
    return (replicas + byzantine + 2) // 2


def check_settings(replicas: int, byzantine: int = 0) -> None:
    """Raise ``ValueError`` for (r, F) that cannot be both safe and live."""
    if byzantine < 0:
        raise ValueError(f"--byzantine must be 0 or more, not {byzantine}")
    if replicas < 1:
        raise ValueError(f"replicas must be at least 1, not {replicas}")
    if byzantine and replicas < 3 * byzantine + 1:
        raise ValueError(
            f"--byzantine {byzantine} needs at least {3 * byzantine + 1} replicas per job (r >= 3F + 1), "
            f"not {replicas}: with fewer, F silent replicas leave no quorum of honest ones"
        )


@dataclass(frozen=True, slots=True)
class Config:
    """The job's placed replicas and how many of them may lie."""

    replicas: frozenset[bytes]
    byzantine: int = 0
    quorum: int = field(default=0, compare=False)  # computed: quorum_size(r, byzantine)

    def __post_init__(self) -> None:
        if not self.quorum:  # a job's own quorum (its submission names it) is kept as given
            object.__setattr__(self, "quorum", quorum_size(len(self.replicas), self.byzantine))

    def is_quorum(self, ids: Iterable[bytes]) -> bool:
        return len(set(ids) & self.replicas) >= self.quorum


# --------------------------------------------------------------------------
# Messages (the node maps each onto a signed fact)


@dataclass(frozen=True, slots=True)
class Vote:
    acceptor: bytes
    ballot: Ballot
    subject: Subject


@dataclass(frozen=True, slots=True)
class Certificate:
    """A quorum of votes for one (ballot, subject)."""

    ballot: Ballot
    subject: Subject
    votes: frozenset[Vote]

    def valid(self, cfg: Config) -> bool:
        return all(v.ballot == self.ballot and v.subject == self.subject for v in self.votes) and cfg.is_quorum(
            v.acceptor for v in self.votes
        )


@dataclass(frozen=True, slots=True)
class Promise:
    acceptor: bytes
    ballot: Ballot
    accepted: Certificate | None  # the highest-ballot certificate this acceptor sealed


@dataclass(frozen=True, slots=True)
class Proposal:
    ballot: Ballot
    subject: Subject
    proof: frozenset[Promise]


@dataclass(frozen=True, slots=True)
class Seal:
    acceptor: bytes
    ballot: Ballot
    subject: Subject


# Whether a proposer at a ballot may choose a subject freely (nothing
# certified was reported): e.g. a worker only its own result of its attempt.
Admissible = Callable[[Ballot, Subject], bool]


def any_subject(ballot: Ballot, subject: Subject) -> bool:
    return True


# --------------------------------------------------------------------------
# The acceptor


@dataclass(frozen=True, slots=True)
class Acceptor:
    """One replica's durable consensus state for one job."""

    me: bytes
    promised: Ballot | None = None
    votes: tuple[tuple[Ballot, Subject], ...] = ()  # at most one subject per ballot
    sealed: Certificate | None = None

    def voted(self, ballot: Ballot) -> Subject | None:
        for b, s in self.votes:
            if b == ballot:
                return s
        return None

    def _above(self, ballot: Ballot) -> bool:
        """True when this acceptor promised a ballot above ``ballot``."""
        return self.promised is not None and self.promised > ballot

    def _promise_up_to(self, ballot: Ballot) -> Ballot:
        return ballot if self.promised is None or ballot > self.promised else self.promised


def on_prepare(acc: Acceptor, ballot: Ballot) -> tuple[Acceptor, Promise | Refusal]:
    """Promise ``ballot`` unless a higher one was promised (re-asked: the same promise)."""
    if acc._above(ballot):
        return acc, Refusal.PROMISED_HIGHER
    return replace(acc, promised=ballot), Promise(acc.me, ballot, acc.sealed)


def required_subject(proposal: Proposal, cfg: Config) -> tuple[Refusal | None, Subject | None]:
    """(refusal, subject the proof obliges or None when free).

    The proof must be promises at exactly the proposal's ballot from a quorum
    of distinct replicas; every certificate it reports must be valid.
    """
    signers: set[bytes] = set()
    best: Certificate | None = None
    for p in proposal.proof:
        if p.ballot != proposal.ballot or p.acceptor not in cfg.replicas:
            return Refusal.BAD_PROOF, None
        cert = p.accepted
        if cert is not None:
            if not cert.valid(cfg) or cert.ballot >= proposal.ballot:
                return Refusal.BAD_PROOF, None
            if best is None or (cert.ballot, cert.subject) > (best.ballot, best.subject):
                best = cert
        signers.add(p.acceptor)
    if len(signers) < cfg.quorum:
        return Refusal.BAD_PROOF, None
    return None, (best.subject if best is not None else None)


def on_propose(
    acc: Acceptor, proposal: Proposal, cfg: Config, admissible: Admissible = any_subject
) -> tuple[Acceptor, Vote | Refusal]:
    """Vote for the proposal when its proof holds, nothing higher was promised
    and nothing else was voted at its ballot."""
    b = proposal.ballot
    already = acc.voted(b)
    if already is not None:
        return (acc, Vote(acc.me, b, already)) if already == proposal.subject else (acc, Refusal.VOTED_OTHER)
    if acc._above(b):
        return acc, Refusal.PROMISED_HIGHER
    why, obliged = required_subject(proposal, cfg)
    if why is not None:
        return acc, why
    if obliged is not None and obliged != proposal.subject:
        return acc, Refusal.WRONG_VALUE
    if obliged is None and not admissible(b, proposal.subject):
        return acc, Refusal.WRONG_VALUE
    return (
        replace(acc, promised=acc._promise_up_to(b), votes=(*acc.votes, (b, proposal.subject))),
        Vote(acc.me, b, proposal.subject),
    )


def on_certificate(acc: Acceptor, cert: Certificate, cfg: Config) -> tuple[Acceptor, Seal | Refusal]:
    """Seal a valid certificate unless a higher ballot was promised."""
    if not cert.valid(cfg):
        return acc, Refusal.BAD_CERTIFICATE
    if acc._above(cert.ballot):
        if acc.sealed is not None and (acc.sealed.ballot, acc.sealed.subject) == (cert.ballot, cert.subject):
            return acc, Seal(acc.me, cert.ballot, cert.subject)  # asked again: the same seal
        return acc, Refusal.PROMISED_HIGHER
    sealed = cert if acc.sealed is None or cert.ballot >= acc.sealed.ballot else acc.sealed
    return replace(acc, promised=acc._promise_up_to(cert.ballot), sealed=sealed), Seal(acc.me, cert.ballot, cert.subject)


# --------------------------------------------------------------------------
# What a proposer and a reader compute


def choose(promises: Iterable[Promise], cfg: Config) -> Certificate | None:
    """The highest-ballot valid certificate the promises report (the subject a
    proposer holding them must finish), or None when it may choose."""
    best: Certificate | None = None
    for p in promises:
        c = p.accepted
        if c is not None and c.valid(cfg) and (best is None or (c.ballot, c.subject) > (best.ballot, best.subject)):
            best = c
    return best


def certificate(votes: Iterable[Vote], cfg: Config) -> Certificate | None:
    """A certificate from ``votes`` (the highest ballot with a quorum), or None."""
    by: dict[tuple[Ballot, Subject], dict[bytes, Vote]] = {}
    for v in votes:
        if v.acceptor in cfg.replicas:
            by.setdefault((v.ballot, v.subject), {}).setdefault(v.acceptor, v)
    found = [(key, frozenset(vs.values())) for key, vs in by.items() if len(vs) >= cfg.quorum]
    if not found:
        return None
    (ballot, subject), votes_ = max(found, key=lambda p: p[0])
    return Certificate(ballot, subject, votes_)


def decided(seals: Iterable[Seal], cfg: Config) -> tuple[Ballot, Subject] | None:
    """The decided (ballot, subject): a quorum of seals for it; the lowest such
    ballot when several (they all name one subject, by the invariant)."""
    by: dict[tuple[Ballot, Subject], set[bytes]] = {}
    for s in seals:
        if s.acceptor in cfg.replicas:
            by.setdefault((s.ballot, s.subject), set()).add(s.acceptor)
    found = [key for key, who in by.items() if len(who) >= cfg.quorum]
    return min(found) if found else None


def decided_subjects(seals: Iterable[Seal], cfg: Config) -> frozenset[Subject]:
    """Every subject a quorum sealed at some ballot (safety: at most one)."""
    by: dict[tuple[Ballot, Subject], set[bytes]] = {}
    for s in seals:
        if s.acceptor in cfg.replicas:
            by.setdefault((s.ballot, s.subject), set()).add(s.acceptor)
    return frozenset(subject for (_, subject), who in by.items() if len(who) >= cfg.quorum)
