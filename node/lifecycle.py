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

Terminal states need a quorum of ``seal`` grants naming one result or cancel.
Honest replicas seal at most one subject per job and two quorums intersect,
so once a subject is decided no other one can be, and more facts can never
move a terminal job. The allowed moves between statuses are the table
:data:`TRANSITIONS`; :func:`diagram` draws the documentation picture from it
so the picture cannot drift from the code.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from node import facts as F
from node.errors import InvalidFact
from node.facts import Fact

PENDING, RUNNING, DONE, FAILED, CANCELLED = "pending", "running", "done", "failed", "cancelled"
STATUSES = (PENDING, RUNNING, DONE, FAILED, CANCELLED)
TERMINAL: frozenset[str] = frozenset({DONE, FAILED, CANCELLED})

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
KIND_ORDER = {kind: i for i, kind in enumerate((F.SUBMIT, F.CLAIM, F.RENEW, F.GRANT, F.RESULT, F.CANCEL))}


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
    return result.body.outcome == F.OK or result.attempt >= submit.body.max_attempts


def error_message(result: Fact) -> str:
    """The message of an error result; tolerant of data that is not ``{"error": str}``."""
    data = result.body.data
    if isinstance(data, dict) and isinstance(data.get("error"), str):
        return data["error"]
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def sort_key(fact: Fact) -> tuple[int, int, bytes]:
    return (KIND_ORDER[fact.kind], fact.attempt, fact.fact_id)


def _pick_submit(pool: set[Fact], job_id: bytes | None) -> Fact | None:
    submits = [f for f in pool if f.kind == F.SUBMIT and (job_id is None or f.job_id == job_id)]
    if not submits:
        return None
    # Several submissions only when facts of several jobs were mixed; choose stably.
    return min(submits, key=lambda f: f.job_id)


def placement_of(facts: Iterable[Fact], submit: Fact) -> Fact | None:
    """The job's placement: the submitter's ``place`` grant (the lowest fact id
    if a submitter ever signed two; an honest one signs exactly one)."""
    best: Fact | None = None
    for f in facts:
        if f.kind == F.GRANT and f.body.action == F.PLACE and (best is None or f.fact_id < best.fact_id):
            try:
                F.check_in_context(submit, f)
            except InvalidFact:
                continue
            best = f
    return best


def counts_in(replicas: tuple[bytes, ...] | frozenset[bytes], submit: Fact, fact: Fact) -> str | None:
    """None when ``fact`` counts under the placement ``replicas``, else why not.

    Lease and seal grants count only from the job's replicas; a result only
    with lease grants from a quorum of them.
    """
    if fact.kind == F.GRANT and fact.body.action != F.PLACE and fact.author_id not in replicas:
        return "grant by a node that is not a replica of the job"
    if fact.kind == F.RESULT:
        if sum(1 for g in fact.body.grants if g.author_id in replicas) < submit.body.quorum:
            return "result lacks lease grants from a quorum of the job's replicas"
    return None


def valid_facts(facts: Iterable[Fact], submit: Fact, placement: Fact | None = None) -> list[Fact]:
    """The facts of ``submit``'s job that pass validation in context, sorted.

    Grants carried inside results are included (they are facts of this job in
    their own right, and a replica must count its own grants however it
    learns them). Renews keep one winner per slot, the highest
    ``(version, fact_id)``, exactly as storage does, so ``derive`` agrees with
    what a store would hold.
    """
    facts = list(facts)
    if placement is None:
        placement = placement_of(facts, submit)
    replicas = frozenset(F.placement_ids(placement.body.subject)) if placement is not None else frozenset()
    out: dict[bytes, Fact] = {}
    renew_slots: dict[bytes, Fact] = {}

    def admit(fact: Fact) -> None:
        if fact.fact_id in out:
            return
        if fact.kind == F.GRANT and fact.body.action == F.PLACE and fact != placement:
            return
        try:
            F.check_in_context(submit, fact)
        except InvalidFact:
            return
        if counts_in(replicas, submit, fact):
            return
        if fact.kind == F.GRANT and fact.body.action == F.LEASE and fact.attempt < 1:
            return  # a lease for attempt 0 endorses nothing
        if fact.kind == F.RENEW:
            old = renew_slots.get(fact.slot)
            if old is not None and (old.version, old.fact_id) >= (fact.version, fact.fact_id):
                return
            if old is not None:
                del out[old.fact_id]
            renew_slots[fact.slot] = fact
        out[fact.fact_id] = fact
        if fact.kind == F.RESULT:
            for grant in fact.body.grants:
                admit(grant)

    for fact in facts:
        admit(fact)
    return sorted(out.values(), key=sort_key)


def _lease_holder(valid: list[Fact], quorum: int) -> tuple[int, bytes | None]:
    """Highest attempt with ``quorum`` distinct lease grant authors for one worker."""
    signers: dict[tuple[int, bytes], set[bytes]] = {}
    for f in valid:
        if f.kind == F.GRANT and f.body.action == F.LEASE:
            signers.setdefault((f.attempt, f.body.subject), set()).add(f.author_id)
    best: tuple[int, bytes | None] = (0, None)
    for (attempt, worker), who in sorted(signers.items()):
        # sorted: for equal attempts the lowest worker id wins (only possible
        # with a split replica set; any stable choice will do)
        if len(who) >= quorum and attempt > best[0]:
            best = (attempt, worker)
    return best


def seal_counts(valid: Iterable[Fact]) -> dict[bytes, int]:
    """Subject fact id -> number of distinct replicas that sealed it."""
    signers: dict[bytes, set[bytes]] = {}
    for f in valid:
        if f.kind == F.GRANT and f.body.action == F.SEAL:
            signers.setdefault(f.body.subject, set()).add(f.author_id)
    return {subject: len(who) for subject, who in signers.items()}


def _decided(valid: list[Fact], submit: Fact) -> Fact | None:
    quorum = submit.body.quorum
    counts = seal_counts(valid)
    candidates = [
        f
        for f in valid
        if counts.get(f.fact_id, 0) >= quorum and (f.kind == F.CANCEL or is_final_result(submit, f))
    ]
    if not candidates:
        return None
    return min(candidates, key=lambda f: (f.kind != F.RESULT, f.attempt, f.fact_id))


def derive(facts: Iterable[Fact], *, job_id: bytes | None = None) -> JobState | None:
    """Derive the job's state from a collection of facts; ``None`` without a submit.

    A deterministic function of the *set* of facts: order and duplicates do
    not matter, invalid facts and facts of other jobs are ignored. ``job_id``
    chooses the job when facts of several jobs are mixed (otherwise the
    submission with the lowest job id is taken).
    """
    pool = set(facts)
    submit = _pick_submit(pool, job_id)
    if submit is None:
        return None
    spec: F.Submit = submit.body
    placement = placement_of(pool, submit)
    valid = valid_facts(pool, submit, placement)

    lease_attempt, lease_worker = _lease_holder(valid, spec.quorum)
    results = [f for f in valid if f.kind == F.RESULT]
    highest = max((f.attempt for f in valid if f.kind in (F.CLAIM, F.RENEW, F.GRANT, F.RESULT)), default=0)
    errors = [f for f in results if f.body.outcome == F.ERROR]
    last_error = error_message(max(errors, key=lambda f: (f.attempt, f.fact_id))) if errors else None

    decided = _decided(valid, submit)
    result: Any | None = None
    error: str | None = None
    worker: bytes | None = None
    if decided is not None and decided.kind == F.CANCEL:
        status = CANCELLED
    elif decided is not None and decided.body.outcome == F.OK:
        status, result, worker = DONE, decided.body.data, decided.author_id
    elif decided is not None:
        status, error, worker = FAILED, error_message(decided), decided.author_id
    elif lease_attempt and not any(f.attempt == lease_attempt for f in results):
        status, worker = RUNNING, lease_worker
    else:
        status = PENDING

    return JobState(
        job_id=submit.job_id,
        submit=submit,
        status=status,
        attempts=min(lease_attempt, spec.max_attempts),
        result=result,
        error=error,
        last_error=last_error,
        worker=worker,
        decided=decided,
        lease_attempt=lease_attempt,
        lease_worker=lease_worker,
        highest_attempt=highest,
        replicas=F.placement_ids(placement.body.subject) if placement is not None else (),
        placement=placement,
        facts=tuple(valid),
    )


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
