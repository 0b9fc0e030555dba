"""One proposer's round at one ballot, as a pure state machine. No I/O, no clock.

In the style of etcd-io/raft: the caller feeds the round what happened (a
replica's answer, or a tick of its timer) through :func:`step`, and gets back
the new state and a :class:`Ready`: the requests to send (and to whom) and
what was decided. The caller sends, stores and arms its timer; the round never
does. Every state is a frozen value, so a model checker can walk every
interleaving of a cluster of these (``simulations/modelcheck.py``).

A round goes through the three steps of :mod:`node.ballots`::

    PREPARE --quorum of promises--> VOTE --quorum of votes--> SEAL --quorum of seals--> DECIDED
       |                              |                          |
       +------ refusals leave no quorum (a higher ballot) -------+--> PREEMPTED
       +------ ticks past the resend budget ---------------------+--> GAVE_UP

Who runs a round:

* a worker: its claim is the prepare at ``(n, k, worker)`` (a lease grant is
  the promise), and after its handler it proposes its result, unless a grant
  reported a certified subject, which it must then finish instead
  (:func:`propose` starts a round in VOTE from the promises it holds);
* a canceller: a prepare at a ballot above every one it knows, then the
  cancel, or the certified subject reported (the cancel then answers with the
  real outcome);
* a recovering replica or reader of an undecided job: a prepare at a higher
  round, then the highest-ballot certified subject, or a subject it may choose.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass


from workmesh.node.ballots import (
    Ballot,
    Certificate,
    Config,
    Promise,
    Proposal,
    Refusal,
    Seal,
    Subject,
    Vote,
    certificate,
    choose,
    decided,
)


def replace(obj, **changes):
    """``dataclasses.replace`` for the frozen slotted values here, without its
    per-call field checks (the model checker calls it millions of times)."""
    new = object.__new__(type(obj))
    for name in type(obj).__slots__:
        object.__setattr__(new, name, changes[name] if name in changes else getattr(obj, name))
    return new

RESENDS_MAX = 2  # ticks that re-send the current request before the round gives up


class Phase(enum.StrEnum):
    PREPARE = "prepare"
    VOTE = "vote"
    SEAL = "seal"
    DECIDED = "decided"
    NOTHING = "nothing"  # a quorum promised, nothing is certified and the proposer has no subject
    PREEMPTED = "preempted"  # refusals left no quorum: a higher ballot exists
    GAVE_UP = "gave_up"  # no quorum answered within the resends

    @property
    def over(self) -> bool:
        return self in (Phase.DECIDED, Phase.NOTHING, Phase.PREEMPTED, Phase.GAVE_UP)


@dataclass(frozen=True, slots=True)
class Prepare:
    ballot: Ballot


Request = Prepare | Proposal | Certificate


@dataclass(frozen=True, slots=True)
class Reply:
    """A replica's answer to the round's current request."""

    sender: bytes
    answer: Promise | Vote | Seal | Refusal
    promised: Ballot | None = None  # with PROMISED_HIGHER: the ballot it promised


@dataclass(frozen=True, slots=True)
class Tick:
    pass


Event = Reply | Tick


@dataclass(frozen=True, slots=True)
class Ready:
    """What the caller must do after a step."""

    send: Request | None = None  # the request to send...
    to: tuple[bytes, ...] = ()  # ...to these replicas
    decided: tuple[Ballot, Subject] | None = None
    phase: Phase = Phase.PREPARE


@dataclass(frozen=True, slots=True)
class RoundState:
    ballot: Ballot
    phase: Phase
    own: Subject | None  # the subject this proposer would choose (None: it has none)
    subject: Subject | None = None  # what it proposes, once chosen
    promises: frozenset[Promise] = frozenset()
    votes: frozenset[Vote] = frozenset()
    seals: frozenset[Seal] = frozenset()
    answered: frozenset[bytes] = frozenset()  # replicas that answered the current request
    refused: frozenset[bytes] = frozenset()  # ...with a refusal
    higher: Ballot | None = None  # the highest ballot a refusal reported
    resends: int = 0
    obliged: bool = False  # the subject is a certified one the proof reported

    def request(self, cfg: Config) -> Request | None:
        if self.phase == Phase.PREPARE:
            return Prepare(self.ballot)
        if self.phase == Phase.VOTE:
            assert self.subject is not None
            return Proposal(self.ballot, self.subject, self.promises)
        if self.phase == Phase.SEAL:
            cert = certificate(self.votes, cfg)
            assert cert is not None
            return cert
        return None


def _ready(rs: RoundState, cfg: Config, to: Iterable[bytes] | None = None) -> Ready:
    if rs.phase.over:
        return Ready(decided=decided(rs.seals, cfg) if rs.phase == Phase.DECIDED else None, phase=rs.phase)
    targets = tuple(sorted(cfg.replicas - rs.answered)) if to is None else tuple(to)
    if not targets:
        return Ready(phase=rs.phase)  # nothing to send now
    return Ready(send=rs.request(cfg), to=targets, phase=rs.phase)


def start(cfg: Config, ballot: Ballot, own: Subject | None) -> tuple[RoundState, Ready]:
    """A round from its prepare."""
    rs = RoundState(ballot, Phase.PREPARE, own)
    return rs, _ready(rs, cfg)


def propose(cfg: Config, promises: Iterable[Promise], own: Subject | None) -> tuple[RoundState, Ready]:
    """A round whose promises are in hand (a worker's lease grants): it goes
    straight to its proposal, of the certified subject they report if any."""
    promises = frozenset(promises)
    ballots = {p.ballot for p in promises}
    assert len(ballots) == 1, "promises of one ballot"
    rs = RoundState(ballots.pop(), Phase.PREPARE, own)
    return _after_promises(replace(rs, promises=promises), cfg)


def _next_phase(rs: RoundState, phase: Phase) -> RoundState:
    return replace(rs, phase=phase, answered=frozenset(), refused=frozenset(), resends=0)


def _after_promises(rs: RoundState, cfg: Config) -> tuple[RoundState, Ready]:
    cert = choose(rs.promises, cfg)
    if cert is not None:
        rs = replace(_next_phase(rs, Phase.VOTE), subject=cert.subject, obliged=True)
    elif rs.own is not None:
        rs = replace(_next_phase(rs, Phase.VOTE), subject=rs.own)
    else:
        rs = _next_phase(rs, Phase.NOTHING)
    return rs, _ready(rs, cfg)


def step(rs: RoundState, cfg: Config, event: Event) -> tuple[RoundState, Ready]:
    """Feed one event; returns the new state and what to do."""
    if rs.phase.over:
        return rs, _ready(rs, cfg, ())
    if isinstance(event, Tick):
        if rs.resends >= RESENDS_MAX:
            rs = _next_phase(rs, Phase.GAVE_UP)
            return rs, _ready(rs, cfg)
        rs = replace(rs, resends=rs.resends + 1)
        return rs, _ready(rs, cfg)
    sender, answer = event.sender, event.answer
    if sender not in cfg.replicas or sender in rs.answered:
        return rs, _ready(rs, cfg, ())
    if isinstance(answer, Refusal):
        higher = rs.higher
        if event.promised is not None and (higher is None or event.promised > higher):
            higher = event.promised
        rs = replace(rs, answered=rs.answered | {sender}, refused=rs.refused | {sender}, higher=higher)
        if len(cfg.replicas) - len(rs.refused) < cfg.quorum:
            rs = _next_phase(rs, Phase.PREEMPTED)
            return rs, _ready(rs, cfg)
        return rs, _ready(rs, cfg, ())
    if rs.phase == Phase.PREPARE and isinstance(answer, Promise) and answer.ballot == rs.ballot:
        rs = replace(rs, promises=rs.promises | {answer}, answered=rs.answered | {sender})
        if cfg.is_quorum(p.acceptor for p in rs.promises):
            return _after_promises(rs, cfg)
        return rs, _ready(rs, cfg, ())
    if (
        rs.phase == Phase.VOTE
        and isinstance(answer, Vote)
        and (answer.ballot, answer.subject) == (rs.ballot, rs.subject)
    ):
        rs = replace(rs, votes=rs.votes | {answer}, answered=rs.answered | {sender})
        if certificate(rs.votes, cfg) is not None:
            rs = _next_phase(rs, Phase.SEAL)
            return rs, _ready(rs, cfg)
        return rs, _ready(rs, cfg, ())
    if rs.phase == Phase.SEAL and isinstance(answer, Seal) and (answer.ballot, answer.subject) == (rs.ballot, rs.subject):
        rs = replace(rs, seals=rs.seals | {answer}, answered=rs.answered | {sender})
        if decided(rs.seals, cfg) is not None:
            rs = _next_phase(rs, Phase.DECIDED)
            return rs, _ready(rs, cfg)
        return rs, _ready(rs, cfg, ())
    return rs, _ready(rs, cfg, ())  # an answer to an earlier request: ignored


def next_ballot(known: Iterable[Ballot | None], attempt: int, proposer: bytes) -> Ballot:
    """The lowest ballot of ``proposer`` at ``attempt`` or above, above every known one."""
    top = max((b for b in known if b is not None), default=None)
    if top is None or top.attempt < attempt:
        return Ballot(attempt, 0, proposer)
    return top.above(proposer)
