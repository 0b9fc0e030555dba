"""An explicit-state model check of a job's decision rules (node/ballots.py, node/rounds.py).

It walks, breadth first, every interleaving of: two workers that claim
attempts (a prepare at their ballot; a lease grant is the promise) and
propose their result after their handler, one worker possibly equivocating
(two different results, each sent to whichever replicas it likes); a
canceller that prepares at a higher ballot and proposes the cancel; a
recovering replica that re-proposes what it finds; replicas that answer each
request at any moment or never (a lost request or reply); a minority of replicas
that crash (and come back with their state, or lose it for good: a wiped
node returns with a new id, so it is no longer a replica); and with
``--byzantine 1`` a replica that lies: it signs every vote and seal it is
asked for (also two subjects at one ballot) and hides what it sealed. A
proposer may abandon its round at any moment and start its next one (a
crashed or impatient proposer); one that waits for ever is one that stopped.

In every reachable state it checks:

* **safety**: no two different subjects are decided (sealed by a quorum at
  any ballots), counting the liar's seals for every certificate that exists;
* **a decision is reachable once a quorum is up**: the crashed replicas that
  kept their state come back, and a recovery round at a ballot above every
  promise, with only the honest live replicas answering, decides, and
  decides the subject already decided if there is one.

Every step calls the same pure functions the node runs (``ballots.on_*`` and
``rounds.step``). Run as a script for the full figures::

    python -m simulations.modelcheck            # the configurations of docs/guarantees.md
    python -m simulations.modelcheck --quick    # the CI-sized ones of tests/unit/test_modelcheck.py
    python -m simulations.modelcheck --only 3 4 --depth-first --progress 1000000

The search is exact for what it checks (the replicas, the facts and the
decisions): one state per renaming of the honest replicas
(:class:`Symmetry`); round fields no later step reads merged
(:func:`_live_part`); refusals left undelivered (a refusal changes no
replica and no fact, and a round that learns one could as well have been
abandoned: ``Model._answer``); a round no replica can answer but with a
refusal ended (``Model.settle``); components hash-consed and states kept
as packed serial numbers.
"""

from __future__ import annotations

import argparse
import struct
import sys
import time
from collections import deque
from dataclasses import dataclass

from workmesh.node import ballots as B
from workmesh.node import rounds as R
from workmesh.node.ballots import Acceptor, Ballot, Config, Promise, Proposal, Refusal, Seal, Vote
from workmesh.node.rounds import replace  # the fast frozen-value copy the rounds use

CANCEL = b"cancel"
W1, W2, CX, RX, TOP = b"w1", b"w2", b"x-cancel", b"y-recover", b"z-check"
KINDS = {W1: "worker", W2: "worker", CX: "cancel", RX: "recover"}


def result_of(attempt: int, worker: bytes, tag: str = "") -> bytes:
    return b"res:%d:%s:%s" % (attempt, worker, tag.encode())


def attempt_of(subject: bytes) -> int:
    return int(subject.split(b":")[1])


@dataclass(frozen=True, slots=True)
class Setup:
    replicas: int = 3
    byzantine: int = 0
    attempts: int = 3
    tries: tuple[tuple[bytes, int], ...] = ((W1, 2), (W2, 1), (CX, 1), (RX, 1))  # rounds each proposer may start
    equivocate: bool = False  # W1 files two results of one attempt
    liar: bool = False  # replica 0 is byzantine
    crash: str = "none"  # "none", "restart" (comes back with its state) or "loss" (gone for good)
    crashes: int = 1  # how many replicas may crash (a minority: at most r - quorum)
    states_max: int = 5_000_000
    depth_first: bool = False  # with a states_max, a depth-first search reaches decisions sooner
    broken: str = ""  # a rule to break on purpose ("vote_twice", "ignore_promise"): the check must fail
    symmetry: bool = True  # explore one state per permutation class of the honest replicas
    jump: bool = False  # a worker may claim any attempt from the highest known up (one that was away)
    refusals: bool = False  # deliver refusals too (the reductions' test compares both ways)
    settle: bool = True  # end a round that no replica can answer but with a refusal (Model.settle)

    @property
    def cfg(self) -> Config:
        return Config(frozenset(self.ids), self.byzantine)

    @property
    def ids(self) -> tuple[bytes, ...]:
        return tuple(b"r%d" % i for i in range(self.replicas))

    def label(self) -> str:
        extra = [f"crash={self.crash}" + (f"x{self.crashes}" if self.crash != "none" and self.crashes != 1 else "")]
        if self.equivocate:
            extra.append("equivocating worker")
        if self.liar:
            extra.append("lying replica")
        tries = ",".join(f"{KINDS[p]}:{n}" for p, n in self.tries)
        if self.jump:
            extra.append("attempts in any order")
        return f"r={self.replicas} F={self.byzantine} attempts<={self.attempts} rounds[{tries}] " + " ".join(extra)


@dataclass(frozen=True, slots=True)
class Proc:
    """A proposer: its current round (None: idle), the rounds it may still start,
    and the replicas that already handled its current request."""

    rs: R.RoundState | None = None
    tries: int = 0
    served: frozenset[int] = frozenset()


@dataclass(frozen=True, slots=True)
class State:
    accs: tuple[Acceptor | None, ...]  # None: lost for good, or the liar
    down: frozenset[int]  # crashed, state kept
    crashes: int  # crashes still allowed
    procs: tuple[Proc, ...]
    seals: frozenset[Seal]  # every seal signed so far (facts: they stay)
    votes: frozenset[Vote]  # every vote signed so far
    filed: frozenset[bytes]  # results and cancels that exist


class Violation(AssertionError):
    pass


class Model:
    def __init__(self, setup: Setup) -> None:
        self.s = setup
        self.cfg = setup.cfg
        self.ids = setup.ids
        self.liar = 0 if setup.liar else None
        self.names = tuple(p for p, _ in setup.tries)
        self.one = lambda obj: obj  # hash-consing, set by the search (Symmetry.one)
        self._answers: dict[tuple, tuple] = {}

    # -- the initial state ---------------------------------------------------
    def initial(self) -> State:
        accs = tuple(None if i == self.liar else Acceptor(rid) for i, rid in enumerate(self.ids))
        procs = tuple(Proc(tries=n) for _, n in self.s.tries)
        crashes = 0 if self.s.crash == "none" else self.s.crashes
        return State(accs, frozenset(), crashes, procs, frozenset(), frozenset(), frozenset())

    # -- rules the voters apply to a free choice -------------------------------
    def admissible(self, filed: frozenset[bytes]):
        def ok(ballot: Ballot, subject: bytes) -> bool:
            if subject not in filed:
                return False
            if subject == CANCEL:
                return ballot.proposer in (CX, RX, TOP)
            return attempt_of(subject) == ballot.attempt and (
                ballot.proposer in (RX, TOP) or subject.split(b":")[2] == ballot.proposer
            )

        return ok

    def known_ballots(self, st: State) -> list[Ballot]:
        out = [a.promised for a in st.accs if a is not None and a.promised is not None]
        out += [p.rs.ballot for p in st.procs if p.rs is not None]
        return out

    # -- transitions -----------------------------------------------------------
    def successors(self, st: State):
        yield from self._starts(st)
        for pi, proc in enumerate(st.procs):
            rs = proc.rs
            if rs is None or rs.phase.over:
                continue
            for ai, request in self._asks(st, pi):
                if ai not in st.down:
                    yield from self._deliver(st, pi, ai, request)
        if st.crashes:
            for ai, acc in enumerate(st.accs):
                if acc is None:
                    continue
                if self.s.crash == "restart":
                    yield replace(st, down=st.down | {ai}, crashes=st.crashes - 1)
                else:
                    yield replace(st, accs=_put(st.accs, ai, None), crashes=st.crashes - 1)
        for ai in st.down:
            yield replace(st, down=st.down - {ai})
        if self.s.equivocate or self.s.liar or self.s.broken:
            yield from self._pushes(st)

    def _set(self, st: State, pi: int, proc: Proc) -> State:
        return replace(st, procs=_put(st.procs, pi, proc))

    def _starts(self, st: State):
        top = max((b.attempt for b in self.known_ballots(st)), default=0)
        for pi, (name, proc) in enumerate(zip(self.names, st.procs)):
            if proc.tries <= 0:
                continue  # (a round not over is abandoned: a proposer that stops waiting)
            if KINDS[name] == "worker":
                highest = self.s.attempts if self.s.jump else min(top + 1, self.s.attempts)
                choices = [a for a in range(max(top, 1), highest + 1)]
            else:
                choices = [max(top, 1)]
            for attempt in choices:
                ballot = R.next_ballot([b for b in self.known_ballots(st) if b.attempt == attempt], attempt, name)
                filed = st.filed
                if KINDS[name] == "worker":
                    own = result_of(attempt, name, "a" if self.s.equivocate and name == W1 else "")
                elif KINDS[name] == "cancel":
                    own, filed = CANCEL, filed | {CANCEL}
                else:
                    own = self._free_choice(filed, ballot)
                rs, _ = R.start(self.cfg, ballot, own)
                yield replace(self._set(st, pi, Proc(rs, proc.tries - 1)), filed=filed)

    def _free_choice(self, filed: frozenset[bytes], ballot: Ballot) -> bytes | None:
        if CANCEL in filed:
            return CANCEL
        mine = sorted(s for s in filed if s != CANCEL and attempt_of(s) == ballot.attempt)
        return mine[0] if mine else None

    def _requests(self, st: State, name: bytes, rs: R.RoundState):
        request = rs.request(self.cfg)
        yield request
        if (
            self.s.equivocate
            and name == W1
            and isinstance(request, Proposal)
            and not rs.obliged
            and rs.subject == result_of(rs.ballot.attempt, W1, "a")
        ):
            yield replace(request, subject=result_of(rs.ballot.attempt, W1, "b"))

    def _got(self, st: State, pi: int, ai: int, request):
        """(filed after it, and the replica's new state, its answer (None: a
        refusal) and the round's new state) for delivering ``request``."""
        proc = st.procs[pi]
        filed = st.filed
        grows = isinstance(request, Proposal) and KINDS[self.names[pi]] == "worker" and request.subject not in filed
        if grows:
            filed = filed | {request.subject}  # the handler ran: the result exists
        # The replica's and the round's answer depend on their own state only:
        # memoised by the (hash-consed) components' ids.
        mk = (pi, ai, id(proc.rs), id(st.accs[ai]), id(st.filed), grows, request)
        got = self._answers.get(mk)
        if got is None:
            if len(self._answers) >= MEMO_MAX:
                self._answers.clear()
            got = self._answers[mk] = self._answer(proc.rs, ai, st.accs[ai], request, filed)
        return filed, got

    def settle(self, st: State) -> State:
        """``st`` with every round that can no longer change anything ended
        (a bisimulation: see ``_answer``). Such a round has no replica left
        that would answer its request with anything but a refusal (and no
        result of its own left to file), and a refusal is for good (what a
        replica promised and voted only grows; a lost replica never answers),
        so it is stuck for ever: it is merged with the ended round at its
        ballot (which others still learn)."""
        procs = st.procs
        for pi, proc in enumerate(procs):
            rs = proc.rs
            if rs is None or rs.phase.over:
                continue
            if any(self._changes(st, pi, ai, request) for ai, request in self._asks(st, pi)):
                continue
            procs = _put(procs, pi, Proc(_ended(rs), proc.tries, frozenset()))
        return st if procs is st.procs else replace(st, procs=procs)

    def _changes(self, st: State, pi: int, ai: int, request) -> bool:
        """Would this delivery change anything (an answer, or a result filed)?"""
        filed, (_, answer, _) = self._got(st, pi, ai, request)
        return answer is not None or filed is not st.filed

    def _asks(self, st: State, pi: int):
        """The (replica, request) deliveries open to proposer ``pi``'s round,
        the replicas now down included (they come back with their state)."""
        proc = st.procs[pi]
        rs = proc.rs
        for ai in range(len(self.ids)):
            if st.accs[ai] is None and ai != self.liar:
                continue
            for request in self._requests(st, self.names[pi], rs):
                if ai in proc.served and not (
                    isinstance(request, Proposal)
                    and request.subject != rs.subject
                    and Vote(self.ids[ai], rs.ballot, request.subject) not in st.votes
                ):
                    continue  # handled already (the other subject of an equivocator may follow)
                yield ai, request

    def _deliver(self, st: State, pi: int, ai: int, request):
        proc = st.procs[pi]
        filed, (acc, answer, rs) = self._got(st, pi, ai, request)
        if answer is None:  # a refusal: see _answer
            if filed is not st.filed:
                yield replace(st, filed=filed)  # the handler ran: the result exists, refused or not
            return
        accs, seals, votes = st.accs, st.seals, st.votes
        if acc is not None:
            accs = _put(accs, ai, acc)
        if isinstance(answer, Vote):
            votes = votes | {answer}
        elif isinstance(answer, Seal):
            seals = seals | {answer}
        served = proc.served | {ai}
        if (rs.phase, rs.ballot) != (proc.rs.phase, proc.rs.ballot):
            served = frozenset()
        yield State(accs, st.down, st.crashes, _put(st.procs, pi, Proc(rs, proc.tries, served)), seals, votes, filed)

    def _answer(self, rs: R.RoundState, ai: int, acc: Acceptor | None, request, filed: frozenset[bytes]):
        """(the replica's new state or None for the liar, its answer, the round's new state)."""
        rid = self.ids[ai]
        if ai == self.liar:  # signs whatever it is asked, hides what it sealed
            if isinstance(request, R.Prepare):
                answer = Promise(rid, request.ballot, None)
            elif isinstance(request, Proposal):
                answer = Vote(rid, request.ballot, request.subject)
            else:
                answer = Seal(rid, request.ballot, request.subject)
            acc = None
        elif isinstance(request, R.Prepare):
            acc, answer = B.on_prepare(acc, request.ballot)
        elif isinstance(request, Proposal):
            acc, answer = self._on_propose(acc, request, filed)
        else:
            acc, answer = self._on_certificate(acc, request)
        if isinstance(answer, Refusal) and not self.s.refusals:
            # A refusal changes neither the replica nor any fact: it only tells
            # the round, which may give up (the same as a proposer that stops,
            # which is always possible), and a replica that refused a request
            # refuses it again (what it promised and voted only grows). So
            # the states where a round learned a refusal are simulated by
            # those where it did not: the search does not deliver refusals.
            return acc, None, rs
        promised = acc.promised if isinstance(answer, Refusal) and acc is not None else None
        new_rs, _ = R.step(rs, self.cfg, R.Reply(rid, answer, promised))
        return self.one(acc), answer, self.one(_live_part(new_rs))

    def _on_propose(self, acc: Acceptor, request: Proposal, filed: frozenset[bytes]):
        if self.s.broken == "vote_twice":  # forgets its votes: may vote two subjects at one ballot
            new, answer = B.on_propose(replace(acc, votes=()), request, self.cfg, self.admissible(filed))
            return replace(new, votes=acc.votes + new.votes), answer
        if self.s.broken == "ignore_promise":  # votes below what it promised
            new, answer = B.on_propose(replace(acc, promised=None), request, self.cfg, self.admissible(filed))
            return replace(new, promised=acc.promised if acc.promised and acc.promised > request.ballot else request.ballot), answer
        return B.on_propose(acc, request, self.cfg, self.admissible(filed))

    def _on_certificate(self, acc: Acceptor, cert: B.Certificate):
        if self.s.broken == "ignore_promise":
            new, answer = B.on_certificate(replace(acc, promised=None), cert, self.cfg)
            return replace(new, promised=max(acc.promised, new.promised) if acc.promised else new.promised), answer
        return B.on_certificate(acc, cert, self.cfg)

    def _pushes(self, st: State):
        """Anyone holding a certificate may show it to any replica (an
        equivocating worker shows both of its own; a reader repairs)."""
        groups: dict[tuple, list[Vote]] = {}
        for v in st.votes:
            groups.setdefault((v.ballot, v.subject), []).append(v)
        for key, vs in sorted(groups.items()):
            cert = B.certificate(vs, self.cfg)
            if cert is None:
                continue
            for ai, acc in enumerate(st.accs):
                if acc is None or ai in st.down or Seal(acc.me, *key) in st.seals:
                    continue
                new, answer = self._on_certificate(acc, cert)
                if isinstance(answer, Seal):
                    yield replace(st, accs=_put(st.accs, ai, new), seals=st.seals | {answer})

    # -- properties ------------------------------------------------------------
    def all_seals(self, st: State) -> set[Seal]:
        seals = set(st.seals)
        if self.liar is not None:
            rid = self.ids[self.liar]
            for key in {(v.ballot, v.subject) for v in st.votes}:
                if B.certificate([v for v in st.votes if (v.ballot, v.subject) == key], self.cfg) is not None:
                    seals.add(Seal(rid, *key))
        return seals

    def check(self, st: State) -> tuple[frozenset[bytes], bool]:
        """(decided subjects, split: votes for two subjects and none decided); raises Violation."""
        seals = self.all_seals(st)
        decided = B.decided_subjects(seals, self.cfg)
        if len(decided) > 1:
            raise Violation(f"two outcomes decided: {sorted(decided)}")
        self._recover(st, seals, decided)
        split = not decided and len({v.subject for v in st.votes}) > 1
        return decided, split

    def _recover(self, st: State, seals: set[Seal], decided: frozenset[bytes]) -> None:
        """Bring the crashed-but-intact replicas back; a round at a ballot above
        every promise with the honest live replicas must decide (the same subject)."""
        live = {i: a for i, a in enumerate(st.accs) if a is not None}
        known = [a.promised for a in live.values() if a.promised is not None]
        top = max((b.attempt for b in known), default=1)
        ballot = R.next_ballot(known, top, TOP)
        promises = []
        for i, acc in live.items():
            live[i], p = B.on_prepare(acc, ballot)
            if isinstance(p, Promise):
                promises.append(p)
        if not self.cfg.is_quorum(p.acceptor for p in promises):
            raise Violation(f"no quorum of honest replicas left: {len(promises)} < {self.cfg.quorum}")
        filed = st.filed | {CANCEL}  # the submitter may always file a cancel
        cert = B.choose(promises, self.cfg)
        subject = cert.subject if cert is not None else self._free_choice(filed, ballot)
        proposal = Proposal(ballot, subject, frozenset(promises))
        votes = []
        for i, acc in live.items():
            live[i], v = B.on_propose(acc, proposal, self.cfg, self.admissible(filed))
            if isinstance(v, Vote):
                votes.append(v)
        c = B.certificate(votes, self.cfg)
        if c is None:
            raise Violation(f"recovery got no certificate: {len(votes)} votes for {subject!r}")
        new = set(seals)
        for i, acc in live.items():
            live[i], s = B.on_certificate(acc, c, self.cfg)
            if isinstance(s, Seal):
                new.add(s)
        after = B.decided_subjects(new, self.cfg)
        if len(after) != 1 or (decided and after != decided):
            raise Violation(f"recovery decided {sorted(after)} where {sorted(decided)} was decided")


class Symmetry:
    """Symmetry reduction: honest replicas are interchangeable (the rules, the
    quorums and the properties checked never look at a replica's name), so a
    state and the same state with its honest replicas renamed have isomorphic
    futures. The search keeps one representative per class: the honest
    replicas sorted by what each one holds, renamed to match their new places.
    Ties keep their order, so two members of one class may still both be
    explored (less reduction, never an unsound one: every representative is a
    true renaming of a reachable state). The liar keeps its place.

    Every component of a state (an acceptor, a round, a set of votes) is
    hash-consed: equal components are one object, so a state's key is the
    tuple of its components' ids, and what is derived from a component (its
    signature, its renamings) is computed once per component, not per state."""

    def __init__(self, ids: tuple[bytes, ...], liar: int | None, procs: int, reduce: bool = True) -> None:
        self.ids = ids
        self.honest = tuple(i for i in range(len(ids)) if i != liar)
        self.reduce = reduce
        self.index = {rid: i for i, rid in enumerate(ids)}
        self._pool: dict = {}  # component -> its one object
        self._serial: dict[int, int] = {}  # id(one object) -> its serial number
        self._info: dict[int, tuple] = {}  # id(component) -> per-replica signature parts
        self._renamed: dict[tuple, object] = {}  # (names, id(component)) -> renamed component
        self._procs: dict[tuple, Proc] = {}  # (id(round), tries, served) -> its one Proc
        self._pack = struct.Struct(f"{len(ids) + 2 + procs + 3}I").pack

    def one(self, obj):
        """The one object equal to ``obj`` (hash-consing); each gets a serial number."""
        if obj is None:
            return None
        got = self._pool.get(obj)
        if got is None:
            got = self._pool[obj] = obj
            self._serial[id(obj)] = len(self._serial) + 1
        return got

    def proc(self, rs: R.RoundState | None, tries: int, served: frozenset[int]) -> Proc:
        """The one :class:`Proc` of an interned round, its tries and whom it served
        (pooled by the round's identity: a round's own hash walks all its sets)."""
        k = (id(rs), tries, served)
        got = self._procs.get(k)
        if got is None:
            got = self._procs[k] = Proc(rs, tries, served)
            self._serial[id(got)] = len(self._serial) + 1
        return got

    def intern(self, st: State, parent: State | None) -> State:
        """``st`` with every component replaced by its one object (components
        shared with ``parent`` are already)."""
        one = self.one
        if parent is None:
            accs = tuple(map(one, st.accs))
            procs = tuple(self.proc(one(p.rs), p.tries, p.served) for p in st.procs)
            return State(accs, st.down, st.crashes, procs, one(st.seals), one(st.votes), one(st.filed))
        accs = st.accs
        if accs is not parent.accs:
            accs = tuple(a if a is b else one(a) for a, b in zip(accs, parent.accs))
        procs = st.procs
        if procs is not parent.procs:
            procs = tuple(p if p is q else self.proc(one(p.rs), p.tries, p.served) for p, q in zip(procs, parent.procs))
        seals = st.seals if st.seals is parent.seals else one(st.seals)
        votes = st.votes if st.votes is parent.votes else one(st.votes)
        filed = st.filed if st.filed is parent.filed else one(st.filed)
        return State(accs, st.down, st.crashes, procs, seals, votes, filed)

    def key(self, st: State) -> bytes:
        """The identity of an interned state, packed small (the search keeps
        one per state): its components' serial numbers, its crashed replicas as bits."""
        n = self._serial
        down = 0
        for i in st.down:
            down |= 1 << i
        return self._pack(
            *[n[id(a)] if a is not None else 0 for a in st.accs],
            down,
            st.crashes,
            *[n[id(p)] for p in st.procs],
            n[id(st.seals)],
            n[id(st.votes)],
            n[id(st.filed)],
        )

    def canonical(self, st: State) -> State:
        if not self.reduce:
            return st
        honest = self.honest
        accs, down = st.accs, st.down
        vi, si = self._set_info(st.votes), self._set_info(st.seals)
        rinfos = [(p.served, self._rs_info(p.rs)) for p in st.procs if p.rs is not None]
        acc_info = self._acc_info
        keys = {
            i: (
                acc_info(accs[i]) if accs[i] is not None else (0,),
                i in down,
                vi[i],
                si[i],
                tuple((i in served, info[i]) for served, info in rinfos),
            )
            for i in honest
        }
        order = sorted(honest, key=keys.__getitem__)  # stable: ties keep their order
        perm = {old: honest[k] for k, old in enumerate(order) if old != honest[k]}
        if not perm:
            return st
        return self._rename(st, perm)

    # -- per-component signatures (memoised by the component's id) -------------
    def _acc_info(self, acc: Acceptor) -> tuple:
        got = self._info.get(id(acc))
        if got is None:
            sealed = (acc.sealed.ballot, acc.sealed.subject) if acc.sealed is not None else ()
            got = self._info[id(acc)] = (1, acc.promised or (), acc.votes, sealed)
        return got

    def _set_info(self, items: frozenset) -> dict[int, tuple]:
        got = self._info.get(id(items))
        if got is None:
            bucket: dict[int, list] = {i: [] for i in self.honest}
            for v in items:
                i = self.index[v.acceptor]
                if i in bucket:
                    bucket[i].append((v.ballot, v.subject))
            got = self._info[id(items)] = {i: tuple(sorted(b)) for i, b in bucket.items()}
        return got

    def _rs_info(self, rs: R.RoundState) -> dict[int, tuple]:
        got = self._info.get(id(rs))
        if got is None:
            marks: dict[int, list] = {i: [] for i in self.honest}
            for tag, who in ((1, rs.answered), (2, rs.refused)):
                for rid in who:
                    i = self.index[rid]
                    if i in marks:
                        marks[i].append((tag,))
            for p in rs.promises:
                i = self.index[p.acceptor]
                if i in marks:
                    c = p.accepted
                    marks[i].append((3, p.ballot, (c.ballot, c.subject) if c else ()))
            for tag, items in ((4, rs.votes), (5, rs.seals)):
                for v in items:
                    i = self.index[v.acceptor]
                    if i in marks:
                        marks[i].append((tag, v.ballot, v.subject))
            got = self._info[id(rs)] = {i: tuple(sorted(m)) for i, m in marks.items()}
        return got

    # -- renaming (memoised per permutation and component) ----------------------
    def _rename(self, st: State, perm: dict[int, int]) -> State:
        names = {self.ids[old]: self.ids[new] for old, new in perm.items()}
        nk = tuple(sorted(names.items()))
        memo = self._renamed
        n = names.get

        def vote(v: Vote) -> Vote:
            a = n(v.acceptor)
            return v if a is None else Vote(a, v.ballot, v.subject)

        def seal(v: Seal) -> Seal:
            a = n(v.acceptor)
            return v if a is None else Seal(a, v.ballot, v.subject)

        def cert(c: B.Certificate | None) -> B.Certificate | None:
            return None if c is None else B.Certificate(c.ballot, c.subject, frozenset(map(vote, c.votes)))

        def promise(p: Promise) -> Promise:
            return Promise(n(p.acceptor, p.acceptor), p.ballot, cert(p.accepted))

        def ids(xs: frozenset[bytes]) -> frozenset[bytes]:
            return frozenset(n(x, x) for x in xs)

        def renamed(comp, make):
            k = (nk, id(comp))
            got = memo.get(k)
            if got is None:
                if len(memo) >= MEMO_MAX:
                    memo.clear()
                got = memo[k] = self.one(make(comp))
            return got

        accs = list(st.accs)
        for old, acc in enumerate(st.accs):  # a replica that keeps its place may hold a certificate naming others
            if acc is not None:
                new = perm.get(old, old)
                accs[new] = renamed(acc, lambda a, new=new: replace(a, me=self.ids[new], sealed=cert(a.sealed)))
            elif old in perm:
                accs[perm[old]] = None
        procs = []
        for proc in st.procs:
            rs = proc.rs
            if rs is not None:
                rs = renamed(
                    rs,
                    lambda r: replace(
                        r,
                        promises=frozenset(map(promise, r.promises)),
                        votes=frozenset(map(vote, r.votes)),
                        seals=frozenset(map(seal, r.seals)),
                        answered=ids(r.answered),
                        refused=ids(r.refused),
                    ),
                )
            procs.append(self.proc(rs, proc.tries, frozenset(perm.get(i, i) for i in proc.served)))
        return State(
            tuple(accs),
            frozenset(perm.get(i, i) for i in st.down),
            st.crashes,
            tuple(procs),
            renamed(st.seals, lambda s: frozenset(map(seal, s))),
            renamed(st.votes, lambda s: frozenset(map(vote, s))),
            st.filed,
        )


def _ended(rs: R.RoundState) -> R.RoundState:
    """The one form of every ended round at ``rs``'s ballot: only the ballot is read later."""
    return R.RoundState(rs.ballot, R.Phase.GAVE_UP, None)


def _live_part(rs: R.RoundState) -> R.RoundState:
    """``rs`` without what no later step reads (a bisimulation, so it is sound
    to merge states that differ only there): an ended round is only its
    ballot (others learn it); ``higher`` is read by the node's driver, never
    by the round; once voting, ``own`` is spent; once sealing, the proof and
    ``obliged`` are."""
    phase = rs.phase
    if phase.over:
        return _ended(rs)
    if phase == R.Phase.PREPARE:
        return rs if rs.higher is None else replace(rs, higher=None)
    if phase == R.Phase.VOTE:
        return rs if rs.higher is None and rs.own is None else replace(rs, higher=None, own=None)
    return replace(rs, higher=None, own=None, promises=frozenset(), obliged=False)


def _put(t: tuple, i: int, v) -> tuple:
    return t[:i] + (v,) + t[i + 1 :]


@dataclass
class Report:
    setup: Setup
    states: int
    decided_states: int
    split_states: int
    seconds: float
    complete: bool

    def line(self) -> str:
        done = "" if self.complete else f" (stopped at {self.setup.states_max} states)"
        return (
            f"{self.setup.label()}: {self.states} states explored{done}, {self.decided_states} with a decision, "
            f"{self.split_states} with split votes and none, 0 violations, {self.seconds:.1f} s"
        )


RAW_MAX = 5_000_000  # successors' keys remembered (a cache: forgetting only costs time)
MEMO_MAX = 2_000_000  # entries per memo (answers, renamings, checks)


def explore(setup: Setup, progress: int = 0, visit=None) -> Report:
    """Every reachable state (one per symmetry class), breadth first, or depth
    first with ``depth_first``; raises Violation naming the depth it was found at."""
    model = Model(setup)
    sym = Symmetry(model.ids, model.liar, len(setup.tries), reduce=setup.symmetry)
    model.one = sym.one
    t0 = time.monotonic()
    first = sym.intern(model.initial(), None)
    seen: set[tuple] = {sym.key(first)}  # the representatives' keys
    raw: set[tuple] = set()  # keys of successors already canonicalised (a bounded cache)
    queue = deque([(first, 0)])
    checked: dict[tuple, tuple[frozenset[bytes], bool]] = {}  # the check reads only the acceptors' part
    decided_states = split_states = 0
    complete = True
    next_report = progress
    while queue:
        st, depth = queue.pop() if setup.depth_first else queue.popleft()
        if visit is not None:
            visit(st)
        key = (tuple(map(id, st.accs)), id(st.seals), id(st.votes), id(st.filed))
        found = checked.get(key)
        if found is None:
            if len(checked) >= MEMO_MAX:
                checked.clear()
            try:
                found = checked[key] = model.check(st)
            except Violation as exc:
                raise Violation(f"{setup.label()}: {exc} (at depth {depth})") from None
        decided, split = found
        if progress and len(seen) >= next_report:
            next_report += progress
            rate = len(seen) / max(1e-9, time.monotonic() - t0)
            print(f"  {len(seen)} states, {len(queue)} queued, depth {depth}, {rate:.0f}/s", file=sys.stderr, flush=True)
        decided_states += bool(decided)
        split_states += split
        for nxt in model.successors(st):
            nxt = sym.intern(nxt, st)
            if setup.settle:
                settled = model.settle(nxt)
                if settled is not nxt:
                    nxt = sym.intern(settled, nxt)
            k = sym.key(nxt)
            if setup.symmetry:
                if k in raw:
                    continue  # met before: its representative is known
                if len(raw) < RAW_MAX:
                    raw.add(k)
                rep = sym.canonical(nxt)
                if rep is not nxt:
                    nxt, k = rep, sym.key(rep)
            if k not in seen:
                if len(seen) >= setup.states_max:
                    complete = False
                    continue
                seen.add(k)
                queue.append((nxt, depth + 1))
    return Report(setup, len(seen), decided_states, split_states, time.monotonic() - t0, complete)


QUICK = [  # complete searches of a few seconds each (tests/unit/test_modelcheck.py)
    Setup(replicas=3, attempts=1, tries=((W1, 1),), equivocate=True),
    Setup(replicas=3, attempts=1, tries=((W1, 1),), equivocate=True, crash="loss"),
    Setup(replicas=3, attempts=1, tries=((W1, 1),), equivocate=True, crash="restart"),
    Setup(replicas=4, byzantine=1, attempts=1, tries=((W1, 1),), equivocate=True, liar=True),
    Setup(replicas=5, attempts=1, tries=((W1, 1), (CX, 1))),
    Setup(replicas=3, attempts=1, tries=((W1, 1), (W2, 1), (CX, 1))),
]

FULL = [  # the configurations of docs/guarantees.md, smallest first
    Setup(replicas=3, attempts=1, tries=((W1, 1), (CX, 1), (RX, 1)), equivocate=True, crash="restart"),
    Setup(replicas=3, attempts=1, tries=((W1, 1), (CX, 1), (RX, 1)), equivocate=True, crash="loss"),
    Setup(replicas=4, byzantine=1, attempts=1, tries=((W1, 1), (CX, 1)), liar=True, equivocate=True),
    Setup(replicas=5, attempts=1, tries=((W1, 1), (CX, 1)), crash="restart", crashes=2),
    Setup(replicas=5, attempts=1, tries=((W1, 1), (CX, 1)), crash="loss", crashes=2),
    Setup(replicas=5, byzantine=1, attempts=1, tries=((W1, 1), (CX, 1)), liar=True, equivocate=True),
    Setup(replicas=3, attempts=3, tries=((W1, 2), (W2, 1))),
    Setup(replicas=3, attempts=3, tries=((W1, 1), (W2, 1), (CX, 1)), jump=True),
    Setup(replicas=5, attempts=1, tries=((W1, 1), (W2, 1), (CX, 1))),
    Setup(replicas=3, attempts=1, tries=((W1, 1), (W2, 1), (CX, 1))),
    # the products of the Show of issue 13: two workers, a cancel, attempts up to 3, crashes
    Setup(replicas=3, attempts=3, tries=((W1, 1), (W2, 1), (CX, 1)), jump=True, crash="restart"),
    Setup(replicas=3, attempts=3, tries=((W1, 1), (W2, 1), (CX, 1)), jump=True, crash="loss"),
    Setup(replicas=5, attempts=1, tries=((W1, 1), (W2, 1), (CX, 1)), crash="restart", crashes=2),
    Setup(replicas=5, attempts=1, tries=((W1, 1), (W2, 1), (CX, 1)), crash="loss", crashes=2),
    Setup(replicas=4, byzantine=1, attempts=1, tries=((W1, 1), (W2, 1), (CX, 1)), liar=True, equivocate=True),
    Setup(replicas=5, attempts=3, tries=((W1, 1), (W2, 1), (CX, 1)), jump=True),
    Setup(replicas=5, attempts=3, tries=((W1, 2), (W2, 1))),
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="the CI-sized configurations")
    ap.add_argument("--states-max", type=int, default=None, help="stop each search at this many states")
    ap.add_argument("--only", type=int, nargs="*", help="run only these configurations (indexes from 0)")
    ap.add_argument("--progress", type=int, default=0, help="report every N states on stderr")
    ap.add_argument("--depth-first", action="store_true", help="search depth first (a smaller frontier)")
    args = ap.parse_args(argv)
    total = 0
    for k, setup in enumerate(QUICK if args.quick else FULL):
        if args.only is not None and k not in args.only:
            continue
        if args.states_max:
            setup = replace(setup, states_max=args.states_max)
        if args.depth_first:
            setup = replace(setup, depth_first=True)
        report = explore(setup, args.progress)
        total += report.states
        print(f"[{k}] {report.line()}", flush=True)
    print(f"total: {total} states explored, no state with two decided outcomes, a decision reachable from every one")
    return 0


if __name__ == "__main__":
    sys.exit(main())
