"""Job status as a pure function of the job's facts (docs/protocol.md, section 3).

Theory of operation
-------------------
A job is a *set* of signed facts, and replicas merge by set union, so any two
nodes that hold the same facts must show the same status whatever order the
facts arrived in. :func:`derive` is therefore a function of the set alone: it
drops facts that fail :func:`node.facts.check_in_context` or belong to another
job, applies the renew max-register (as storage does), and never reads a
clock. Liveness of a lease is a matter of each replica's own clock and lives
in :mod:`node.leases`; here "running" only means "a quorum granted the newest
attempt and no result for it exists yet".

A job's replica set is fixed when it is accepted: the submitter signs a
``place`` grant naming the r replica node ids. Only those replicas' lease and
seal grants count, and a result counts only with lease grants from a quorum
of them. Every worker and reader therefore counts votes in the same set,
whatever its own view of the DHT, so quorums intersect. Without a placement
no lease or seal counts and the job reads as pending.

Terminal states need a quorum of the placed replicas' ``seal`` steps for one
(ballot, subject), the subject a cancel or a final result: the job's
consensus (:mod:`node.consensus`, :mod:`node.ballots`) makes every ballot's
certified subject the decided one once any is, so once a subject is decided no
other one can be, and more facts can never move a terminal job. The allowed moves between statuses are the table
:data:`TRANSITIONS`; :func:`diagram` draws the documentation picture from it
so the picture cannot drift from the code.

Nodes derive a job again each time its set grows by a fact or two, so
:func:`derive_with` starts from an earlier :class:`Derivation` and admits only
the new facts; it returns what :func:`derive` returns for the whole set
(tests/unit/test_derive_incremental.py checks both against a reference).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from operator import attrgetter, itemgetter
from typing import Any

# The statuses are the contract's (workmesh/contract.py), defined once.
from workmesh.contract import CANCELLED, DONE, FAILED, PENDING, RUNNING, STATUSES
from workmesh.contract import TERMINAL_STATUSES as TERMINAL
from workmesh.node import facts as F
from workmesh.node.epochs import Epoch, ballot_key, epochs_of, members_at  # noqa: F401 (re-exported)
from workmesh.node.facts import Fact

# The lifecycle as data. A reader can see any of these moves, because facts
# arrive in any order (a quorum of seals may arrive before the grants did);
# nothing ever leaves a terminal status.
TRANSITIONS: dict[str, frozenset[str]] = {
    PENDING: frozenset({RUNNING, DONE, FAILED, CANCELLED}),
    RUNNING: frozenset({PENDING, DONE, FAILED, CANCELLED}),
    DONE: frozenset(),
    FAILED: frozenset(),
    CANCELLED: frozenset(),
}

# Why each move happens; only used to label the diagram.
_REASONS: dict[tuple[str, str], str] = {
    (PENDING, RUNNING): "quorum of lease grants",
    (PENDING, DONE): "ok result sealed by quorum",
    (PENDING, FAILED): "final error sealed by quorum",
    (PENDING, CANCELLED): "cancel sealed by quorum",
    (RUNNING, PENDING): "error result (retry)",
    (RUNNING, DONE): "ok result sealed by quorum",
    (RUNNING, FAILED): "final error sealed by quorum",
    (RUNNING, CANCELLED): "cancel sealed by quorum",
}

# Deterministic order of JobState.facts: protocol table order of kinds.
KIND_ORDER = {kind: i for i, kind in enumerate((F.SUBMIT, F.CLAIM, F.RENEW, F.GRANT, F.RESULT, F.CANCEL, F.BALLOT, F.CONFIG))}


@dataclass(frozen=True, slots=True)
class JobState:
    """Everything a node shows about a job, derived from its facts alone."""

    job_id: bytes
    submit: Fact
    status: str
    attempts: int  # highest attempt with a quorum of lease grants, capped at max_attempts
    result: Any | None  # decoded JSON of the decided ok result
    error: str | None  # message of the decided error result
    last_error: str | None  # message of the newest error result of any attempt
    worker: bytes | None  # lease holder while running, author of the decided result
    decided: Fact | None  # the decided result or cancel
    lease_attempt: int  # highest attempt with a quorum of lease grants (0 if none)
    lease_worker: bytes | None
    highest_attempt: int  # highest attempt named by any claim/renew/grant/result (0 if none)
    replicas: tuple[bytes, ...]  # the placement: node ids whose grants count (empty: none yet)
    placement: Fact | None
    facts: tuple[Fact, ...]  # the valid facts (incl. grants carried by results), sorted
    epoch: int = 0  # how many replica-set changes were decided (replicas: the current set)
    epoch_start: tuple | None = None  # the ballot that decided the current set; its ballots lie above

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    @property
    def spec(self) -> F.Submit:
        return self.submit.body

    def is_replica(self, node_id: bytes) -> bool:
        return node_id in self.replicas


def is_final_result(submit: Fact, result: Fact) -> bool:
    """True for a result that may end the job: ok, or an error of attempt >= max_attempts."""
    if result.kind != F.RESULT:
        return False
    body = result.body
    return body.outcome == F.OK or result.attempt >= submit.body.max_attempts or F.is_permanent_error(body.outcome, body.data_json)


def error_message(result: Fact) -> str:
    """The message of an error result; tolerant of data that is not ``{"error": str}``."""
    data = result.body.data
    if isinstance(data, dict) and isinstance(data.get("error"), str):
        return data["error"]
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def sort_key(fact: Fact) -> tuple[int, int, bytes]:
    return (KIND_ORDER[fact.kind], fact.attempt, fact.fact_id)


def placement_of(facts: Iterable[Fact], submit: Fact) -> Fact | None:
    """The job's placement: the submitter's ``place`` grant (the lowest fact id
    if a submitter ever signed two; an honest one signs exactly one)."""
    job_id = submit.job_id
    best: Fact | None = None
    for f in facts:
        if f.kind == F.GRANT and f.body.action == F.PLACE and (best is None or f.fact_id < best.fact_id):
            if F.context_error(submit, f, job_id) is None:
                best = f
    return best


def counts_in(
    replicas: tuple[bytes, ...] | frozenset[bytes], submit: Fact, fact: Fact, epochs: tuple[Epoch, ...] = ()
) -> str | None:
    """None when ``fact`` counts under the placement ``replicas`` (or, given
    ``epochs``, under the replica set that owns its ballot), else why not.

    Lease grants and acceptor steps count only from the job's replicas; a
    result only with lease grants from a quorum of them.
    """
    def members(ballot: tuple | None):
        return members_at(epochs, ballot) if len(epochs) > 1 else replicas

    if fact.kind == F.GRANT and fact.body.action != F.PLACE and fact.author_id not in members(ballot_key(fact)):
        return "grant by a node that is not a replica of the job"
    if fact.kind == F.BALLOT and fact.body.step in (F.PROMISE, F.VOTE, F.SEAL) and fact.author_id not in members(fact.body.ballot):
        return f"{fact.body.step} by a node that is not a replica of the job"
    if fact.kind == F.RESULT:
        voters = members((fact.attempt, 0, fact.author_id))
        if sum(1 for g in fact.body.grants if g.author_id in voters) < submit.body.quorum:
            return "result lacks lease grants from a quorum of the job's replicas"
    return None


def seal_counts(valid: Iterable[Fact]) -> dict[bytes, int]:
    """Subject fact id -> the most distinct replicas that sealed it at one ballot."""
    signers: dict[tuple, set[bytes]] = {}
    for f in valid:
        if f.kind == F.BALLOT and f.body.step == F.SEAL:
            b = f.body
            signers.setdefault((b.subject, b.attempt, b.round, b.proposer), set()).add(f.author_id)
    best: dict[bytes, int] = {}
    for key, who in signers.items():
        best[key[0]] = max(best.get(key[0], 0), len(who))
    return best
    return {subject: len(who) for subject, who in signers.items()}


class Derivation:
    """What :func:`derive` learned from a set of facts, kept so that a larger
    set can be derived from it (:func:`derive_with`) by admitting only the
    facts it has not seen.

    Once the submission and the placement are chosen, whether a fact is valid
    depends only on the fact, them and (for renews) the other renews of its
    slot, and every tally below only grows when a fact is admitted, or keeps
    the newest of its kind (a replica's lease grants of one attempt, a
    slot's renews: a function of the set, whatever the order); a renew
    that loses its slot leaves behind one of the same attempt. So admitting
    the new facts into a copy gives what admitting all of them gives. A new
    submission or placement may change those choices: it is derived afresh.
    Never mutated once built (copies are), so it may be shared.
    """

    __slots__ = (
        "job_id", "seen", "submit", "submit_job_id", "placement", "replica_ids", "replicas", "valid", "epochs",
        "renew_slots", "leases", "lease_newest", "seals", "result_attempts", "last_error", "last_error_message", "highest",
        "keyed", "facts", "added", "dropped", "state", "fresh",
    )  # fmt: skip

    def __init__(self, job_id: bytes | None, seen: frozenset[bytes]) -> None:
        self.job_id = job_id  # the job asked for (None: the lowest job id present)
        self.seen = seen  # ids of every fact considered, valid or not
        self.submit: Fact | None = None
        self.submit_job_id = b""
        self.placement: Fact | None = None
        self.replica_ids: tuple[bytes, ...] = ()  # the placement's replicas, in its order
        self.replicas: frozenset[bytes] = frozenset()
        self.epochs: tuple[Epoch, ...] = ()  # the replica sets (more than one after a repair)
        self.valid: dict[bytes, Fact] = {}  # fact id -> valid fact (incl. grants carried by results)
        self.renew_slots: dict[bytes, Fact] = {}  # slot -> the renew holding it
        self.leases: dict[tuple[int, bytes], frozenset[bytes]] = {}  # (attempt, worker) -> granting replicas
        # (attempt, replica) -> (ts_ms, worker) of that replica's newest grant of the attempt: only it counts
        self.lease_newest: dict[tuple[int, bytes], tuple[int, bytes]] = {}
        self.seals: dict[tuple, frozenset[bytes]] = {}  # (attempt, round, proposer, subject) -> sealing replicas
        self.result_attempts: frozenset[int] = frozenset()
        self.last_error: Fact | None = None  # the error result with the highest (attempt, fact id)
        self.last_error_message: str | None = None
        self.highest = 0
        self.keyed: list[tuple[tuple[int, int, bytes], Fact]] = []  # (sort_key, fact) of the valid facts, sorted
        self.facts: tuple[Fact, ...] = ()  # the valid facts in sort_key order
        self.added: list[Fact] = []  # admitted since the copy (may since have lost their slot)
        self.dropped = False  # a renew lost its slot since the copy
        self.state: JobState | None = None
        self.fresh = True  # False when built from an earlier derivation

    def _copy(self, seen: frozenset[bytes]) -> Derivation:
        d = Derivation(self.job_id, seen)
        d.fresh = False
        d.submit, d.submit_job_id, d.placement = self.submit, self.submit_job_id, self.placement
        d.replica_ids, d.replicas, d.epochs = self.replica_ids, self.replicas, self.epochs
        d.valid, d.renew_slots = self.valid.copy(), self.renew_slots.copy()
        d.leases, d.lease_newest, d.seals = self.leases.copy(), self.lease_newest.copy(), self.seals.copy()
        d.result_attempts, d.highest = self.result_attempts, self.highest
        d.last_error, d.last_error_message = self.last_error, self.last_error_message
        d.keyed, d.facts = self.keyed, self.facts  # replaced, not changed, by _finish
        return d

    def _members(self, ballot: tuple) -> frozenset[bytes] | tuple[bytes, ...]:
        """The replicas whose grants and steps count at ``ballot``."""
        return self.replicas if len(self.epochs) < 2 else members_at(self.epochs, ballot)

    def _tally_lease(self, attempt: int, replica: bytes, ts_ms: int, worker: bytes) -> None:
        """Count ``replica``'s grant of ``attempt`` to ``worker`` if it is the
        replica's newest grant of that attempt (by ``ts_ms``, then worker id,
        as :func:`node.leases.current_grant`), taking back its older one.

        A replica grants an attempt that never ran again to another worker
        once the first grant went stale (a split vote): the newer grant
        supersedes the older, which it refuses to send again. Counting both
        let a worker's superseded grant and a later grant from another
        replica make a "quorum" no replica ever held at once: the attempt
        read as confirmed, nobody ran it, and once its lease went stale the
        job went on to the next attempt (the simulator: a fail job whose
        third attempt never ran closed on the closing attempt)."""
        rank = (ts_ms, worker)
        old = self.lease_newest.get((attempt, replica))
        if old is not None and old >= rank:
            return
        self.lease_newest[(attempt, replica)] = rank
        if old is not None and old[1] != worker:
            was = (attempt, old[1])
            left = self.leases[was] - {replica}
            if left:
                self.leases[was] = left
            else:
                del self.leases[was]
        key = (attempt, worker)
        self.leases[key] = self.leases.get(key, frozenset()) | {replica}

    def _admit(self, fact: Fact) -> None:
        """Add ``fact`` to the valid facts if it counts: the rules of
        :func:`node.facts.context_error` and :func:`counts_in`, inlined, and
        one renew per slot as storage keeps (docs/protocol.md, section 3)."""
        valid = self.valid
        if fact.fact_id in valid:
            return
        kind = fact.kind
        submit = self.submit
        assert submit is not None
        if kind == F.GRANT:
            body = fact.body
            action = body.action
            if action == F.PLACE:
                if fact != self.placement:
                    return
            elif fact.author_id not in self._members((body.attempt, 0, body.subject)):
                return  # a grant by a node that is not a replica of the job
            elif action == F.LEASE and body.attempt < 1:
                return  # a lease for attempt 0 endorses nothing
            if F.context_error(submit, fact, self.submit_job_id) is not None:
                return
            if action == F.LEASE:
                self._tally_lease(body.attempt, fact.author_id, body.ts_ms, body.subject)
        elif kind == F.CONFIG:
            if F.context_error(submit, fact, self.submit_job_id) is not None:
                return
        elif kind == F.BALLOT:
            body = fact.body
            if body.step in (F.PROMISE, F.VOTE, F.SEAL) and fact.author_id not in self._members(body.ballot):
                return  # an acceptor's step by a node that is not a replica of the job
            if F.context_error(submit, fact, self.submit_job_id) is not None:
                return
            if body.step == F.SEAL:
                key = (body.attempt, body.round, body.proposer, body.subject)
                self.seals[key] = self.seals.get(key, frozenset()) | {fact.author_id}
        else:
            if F.context_error(submit, fact, self.submit_job_id) is not None:
                return
            if kind == F.RESULT:
                replicas = self._members((fact.attempt, 0, fact.author_id))
                if sum(1 for g in fact.body.grants if g.author_id in replicas) < submit.body.quorum:
                    return  # lacks lease grants from a quorum of the job's replicas
            elif kind == F.RENEW:
                slot = fact.slot
                old = self.renew_slots.get(slot)
                if old is not None:
                    if (old.version, old.fact_id) >= (fact.version, fact.fact_id):
                        return
                    del valid[old.fact_id]
                    self.dropped = True
                self.renew_slots[slot] = fact
        valid[fact.fact_id] = fact
        self.added.append(fact)
        attempt = fact.attempt
        if attempt > self.highest:
            self.highest = attempt
        if kind == F.RESULT:
            self.result_attempts |= {attempt}
            if fact.body.outcome == F.ERROR:
                last = self.last_error
                if last is None or (last.attempt, last.fact_id) < (attempt, fact.fact_id):
                    self.last_error = fact
                    self.last_error_message = error_message(fact)
            for grant in fact.body.grants:
                self._admit(grant)

    def _finish(self) -> Derivation:
        if self.submit is None:
            return self
        if self.added or self.dropped:
            valid = self.valid
            keyed = [p for p in self.keyed if p[1].fact_id in valid] if self.dropped else list(self.keyed)
            keyed.extend((sort_key(f), f) for f in self.added if f.fact_id in valid)
            keyed.sort()  # keys are unique (they end with the fact id): facts are never compared
            self.keyed, self.facts = keyed, tuple(map(itemgetter(1), keyed))
            self.added, self.dropped = [], False
        self.state = _state(self)
        return self

    def _extended(self, new: list[Fact], seen: frozenset[bytes]) -> Derivation | None:
        """The derivation of what ``seen`` names, being the facts seen so far
        (less some that do not count) and ``new``; None when a new submission
        or placement calls for deriving afresh."""
        if self.submit is None:
            return None
        if len(self.epochs) > 1:
            return None  # a repaired job (rare): its epochs are found afresh
        for f in new:
            if f.kind in (F.SUBMIT, F.CONFIG) or (f.kind == F.GRANT and f.body.action == F.PLACE):
                return None
            if f.kind == F.BALLOT and f.body.step == F.SEAL and any(v.kind == F.CONFIG for v in self.valid.values()):
                return None
        d = self._copy(seen)
        for f in new:
            d._admit(f)
        return d._finish()


_fact_id = attrgetter("fact_id")


def derivation(facts: Iterable[Fact], *, job_id: bytes | None = None) -> Derivation:
    """Derive the job's state from ``facts`` afresh (see :func:`derive`)."""
    pool = {f.fact_id: f for f in facts}
    d = Derivation(job_id, frozenset(pool))
    submits = [f for f in pool.values() if f.kind == F.SUBMIT]
    chosen = [(f.job_id, f) for f in submits if job_id is None or f.job_id == job_id]
    if not chosen:
        return d
    # Several submissions only when facts of several jobs were mixed, or two
    # different keyed submissions by one owner raced (node/keyed.py); choose stably.
    d.submit_job_id, d.submit = min(chosen, key=lambda p: (p[0], p[1].fact_id))
    d.placement = placement_of(pool.values(), d.submit)
    if d.placement is not None:
        d.epochs = epochs_of(pool.values(), d.submit, d.placement)
        d.replica_ids = d.epochs[-1].replicas
        d.replicas = frozenset(d.replica_ids)
    for f in pool.values():
        d._admit(f)
    return d._finish()


def derive_with(previous: Derivation | None, facts: Iterable[Fact], *, ids: frozenset[bytes] | None = None) -> Derivation:
    """``derivation(facts, job_id=previous.job_id)``, from ``previous`` when it can be.

    ``facts`` is the whole current set (``ids``: their fact ids, if the
    caller has them). When it holds everything ``previous`` saw, only the new
    facts are admitted. A fact may also be gone from the set if it is not
    among the valid facts once the new ones are in (a store drops a renew
    that a newer one replaced): a fact that does not count, or no longer
    counts, changes nothing. Anything else is derived afresh.
    """
    facts = list(facts)
    if previous is None:
        return derivation(facts)
    if ids is None:
        ids = frozenset(map(_fact_id, facts))
    seen = previous.seen
    if ids == seen:
        return previous
    gone = seen - ids
    if len(ids) - (len(seen) - len(gone)) == 0:  # nothing new: only facts gone
        d: Derivation | None = previous._copy(ids)
        d.state = previous.state  # type: ignore[union-attr]
    else:
        d = previous._extended([f for f in facts if f.fact_id not in seen], ids)
    if d is not None and gone and any(fid in d.valid for fid in gone):
        d = None
    if d is None:
        return derivation(facts, job_id=previous.job_id)
    return d


def _lease_holder(leases: dict[tuple[int, bytes], frozenset[bytes]], quorum: int) -> tuple[int, bytes | None]:
    """Highest attempt with ``quorum`` distinct lease grant authors for one
    worker; for equal attempts the lowest worker id wins (only possible with a
    split replica set; any stable choice will do)."""
    best: tuple[int, bytes | None] = (0, None)
    for (attempt, worker), who in leases.items():
        if len(who) >= quorum and attempt > 0 and (attempt > best[0] or (attempt == best[0] and worker < best[1])):  # type: ignore[operator]
            best = (attempt, worker)
    return best


def _decided(d: Derivation, submit: Fact) -> Fact | None:
    """The subject a quorum of the placed replicas sealed at one ballot (the
    lowest such ballot; by the consensus they all name one subject)."""
    quorum = submit.body.quorum
    best: tuple | None = None
    for key, who in d.seals.items():
        if len(who) < quorum or (best is not None and key >= best):
            continue
        f = d.valid.get(key[3])
        if f is None or not (f.kind == F.CANCEL or is_final_result(submit, f)):
            continue
        best = key
    return None if best is None else d.valid[best[3]]


def _state(d: Derivation) -> JobState:
    submit = d.submit
    assert submit is not None
    spec: F.Submit = submit.body
    lease_attempt, lease_worker = _lease_holder(d.leases, spec.quorum)
    decided = _decided(d, submit)
    result: Any | None = None
    error: str | None = None
    worker: bytes | None = None
    if decided is not None and decided.kind == F.CANCEL:
        status = CANCELLED
    elif decided is not None and decided.body.outcome == F.OK:
        status, result, worker = DONE, decided.body.data, decided.author_id
    elif decided is not None:
        status, error, worker = FAILED, error_message(decided), decided.author_id
    elif lease_attempt and lease_attempt not in d.result_attempts:
        status, worker = RUNNING, lease_worker
    else:
        status = PENDING
    return JobState(
        job_id=d.submit_job_id,
        submit=submit,
        status=status,
        attempts=min(lease_attempt, spec.max_attempts),
        result=result,
        error=error,
        last_error=d.last_error_message,
        worker=worker,
        decided=decided,
        lease_attempt=lease_attempt,
        lease_worker=lease_worker,
        highest_attempt=d.highest,
        replicas=d.replica_ids,
        placement=d.placement,
        facts=d.facts,
        epoch=max(0, len(d.epochs) - 1),
        epoch_start=d.epochs[-1].start if d.epochs else None,
    )


def derive(facts: Iterable[Fact], *, job_id: bytes | None = None) -> JobState | None:
    """Derive the job's state from a collection of facts; ``None`` without a submit.

    A deterministic function of the *set* of facts: order and duplicates do
    not matter, invalid facts and facts of other jobs are ignored. ``job_id``
    chooses the job when facts of several jobs are mixed (otherwise the
    submission with the lowest job id is taken).
    """
    return derivation(facts, job_id=job_id).state


def can_move(old: str, new: str) -> bool:
    """True when the lifecycle allows ``old`` -> ``new`` (staying put is always allowed)."""
    return old == new or new in TRANSITIONS[old]


def diagram() -> str:
    """A mermaid ``stateDiagram-v2`` drawn from :data:`TRANSITIONS`."""
    lines = ["stateDiagram-v2", f"    [*] --> {PENDING}"]
    for old in STATUSES:
        for new in sorted(TRANSITIONS[old], key=STATUSES.index):
            reason = _REASONS.get((old, new))
            lines.append(f"    {old} --> {new}" + (f": {reason}" if reason else ""))
    for state in STATUSES:
        if state in TERMINAL:
            lines.append(f"    {state} --> [*]")
    return "\n".join(lines) + "\n"
