"""How one replica judges claims, renews and seals (docs/protocol.md, section 4). Pure.

Theory of operation
-------------------
A lease is a quorum of ``grant`` facts (action ``lease``) for one attempt and
one worker. Each replica decides alone, from the job's facts
(:class:`node.lifecycle.JobState`) and its own local memory of the job
(:class:`Observations`), and judges time only on its own monotonic clock,
passed in as ``now``: nothing here reads a clock, so the simulator and the
tests drive time explicitly.

Why the rules are safe:

* A replica's *current* grant names one worker, and it only ever moves to
  higher attempts, except that an attempt that was never *confirmed* in its
  view (no quorum of grants for one worker, no result) may go to another
  worker once the first grant is stale. A worker runs an attempt only after
  a quorum of replicas stored its quorum of grants (it shows them with its
  first renew), and those replicas then never re-grant that attempt: quorums
  intersect, so no attempt number is ever run by two workers, and a claim
  that won only a minority uses up no attempt number.
* A replica grants a new attempt only when its own grant is over (a result
  exists, or it heard nothing from the holder for ``lease + margin`` on its own
  clock). The margin and ``rate_tolerance`` absorb clocks that run at slightly
  different rates; clocks need not agree on the time.
* A lease grant for attempt n to worker W is also the replica's Paxos promise
  at ballot (n, 0, W) (node/consensus.py): after it, the replica votes for no
  lower ballot, so a quorum that took over an attempt never votes for the old
  attempt's late result. A replica that sealed an outcome, or holds a cancel,
  grants no more leases; one that promised a higher ballot (a canceller's or
  a recovering replica's) refuses claims and renews below it.

The node shell: store a fact, call :func:`observe` with the facts that were
*newly* stored (a replayed duplicate must not refresh a lease), derive the
state, then call the decision functions and sign what they return. After a
restart, create an empty :class:`Observations` and observe everything stored:
what was already granted counts as seen at that moment (conservative).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field

from workmesh.node import facts as F
from workmesh.node.ballots import Refusal, refusal_text
from workmesh.node.errors import InvalidFact
from workmesh.node.facts import Fact, Grant
from workmesh.node.lifecycle import JobState, is_final_result


@dataclass(frozen=True, slots=True)
class LeaseRules:
    """Timing rules every replica applies; the defaults are the protocol's."""

    margin_s: float = 0.25  # added to every lease before it counts as stale
    rate_tolerance: float = 0.02  # clocks may run this much faster or slower
    backoff_base_s: float = 0.5  # retry delay after the first error
    backoff_cap_s: float = 30.0  # retry delay never exceeds this (before jitter)
    # A split vote seen whole (see unwinnable) is re-announced this long after
    # this replica's grant instead of a whole lease later: long enough for a
    # worker that just got a re-grant to gather its quorum first.
    split_retry_s: float = 1.0

    def stale_after_s(self, lease_ms: int) -> float:
        """Silence after which a holder counts as gone: lease*(1+rate_tolerance)+margin."""
        return lease_ms / 1000.0 * (1.0 + self.rate_tolerance) + self.margin_s

    def backoff_s(self, job_id: bytes, attempt: int) -> float:
        """Delay after an error of ``attempt`` before the next attempt may be granted.

        ``min(cap, base * 2^(n-1)) * (0.5 + 0.5*u)`` with ``u`` in [0, 1) taken
        from BLAKE2b-64(job_id || n as 2-byte big-endian). Every replica
        computes the same delay for a job, yet jobs that failed together do
        not all retry in the same instant.
        """
        n = max(1, attempt)
        digest = hashlib.blake2b(job_id + n.to_bytes(2, "big"), digest_size=8).digest()
        u = int.from_bytes(digest, "big") / 2.0**64
        return min(self.backoff_cap_s, self.backoff_base_s * 2.0 ** (n - 1)) * (0.5 + 0.5 * u)


@dataclass(slots=True)
class Observations:
    """One replica's local memory of one job: NOT facts, never shared, not persisted.

    Bounded: keys are attempt numbers, at most ``ATTEMPTS_MAX + 1`` of them.
    """

    holder_seen: dict[int, float] = field(default_factory=dict)  # attempt -> last time its holder was seen
    error_seen: dict[int, float] = field(default_factory=dict)  # attempt -> first time an error result was seen
    grantee: dict[int, bytes] = field(default_factory=dict)  # attempt -> worker this replica granted it to


def _flatten(facts: Iterable[Fact]) -> list[Fact]:
    out: list[Fact] = []
    for fact in facts:
        out.append(fact)
        if fact.kind == F.RESULT:
            out.extend(fact.body.grants)
    return out


def observe(obs: Observations, facts: Iterable[Fact], me: bytes, now: float) -> None:
    """Fold newly stored facts into ``obs`` at local time ``now``.

    Own lease grants (also those carried inside results), and renews by the
    worker this replica granted that attempt to, refresh ``holder_seen``; an
    error result sets ``error_seen`` the first time only. A claim does not
    (:func:`decide_claim` refreshes a re-asking holder only once its attempt
    is confirmed): a worker that asks again for an attempt it holds only a
    minority of grants for must not keep that grant alive, or a split vote
    (each replica granted another worker, each worker keeps asking) would
    never go stale and the job would wait for ever.
    Pass only facts that were new to storage: a replayed old renew must not
    keep a dead holder's lease alive.
    """
    batch = _flatten(facts)
    for f in batch:  # grants first, so a batch may carry a grant and its renew
        if f.kind == F.GRANT and f.body.action == F.LEASE and f.author_id == me and f.attempt >= 1:
            obs.grantee.setdefault(f.attempt, f.body.subject)
            _refresh(obs, f.attempt, now)
    for f in batch:
        if f.kind == F.RENEW and obs.grantee.get(f.attempt) == f.author_id:
            _refresh(obs, f.attempt, now)
        elif f.kind == F.RESULT and f.body.outcome == F.ERROR:
            obs.error_seen.setdefault(f.attempt, now)


def _refresh(obs: Observations, attempt: int, now: float) -> None:
    obs.holder_seen[attempt] = max(now, obs.holder_seen.get(attempt, now))


def _own(state: JobState, me: bytes, action: str) -> list[Fact]:
    return [f for f in state.facts if f.kind == F.GRANT and f.author_id == me and f.body.action == action]


def _current(state: JobState, ballot: tuple) -> bool:
    """True for a ballot of the job's current replica set (node/consensus.py)."""
    return state.epoch_start is None or ballot > state.epoch_start


def _closed(state: JobState, me: bytes) -> str | None:
    """Why this replica hands out no more leases, or None: it sealed a
    certificate (a lease grant is a promise that reports nothing sealed, so
    it must not promise any more, node/consensus.py), or it holds a cancel
    (the canceller's round must not be outrun by new attempts)."""
    for f in state.facts:
        if f.kind == F.BALLOT and f.body.step == F.SEAL and f.author_id == me and _current(state, f.body.ballot):
            return "this replica sealed an outcome"
        if f.kind == F.CANCEL:
            return "the job is being cancelled"
    return None


def _promised(state: JobState, me: bytes) -> tuple[int, int, bytes] | None:
    """The highest ballot this replica promised, voted or sealed in a ballot step."""
    own = [f.body.ballot for f in state.facts if f.kind == F.BALLOT and f.author_id == me and f.body.step != F.PREPARE]
    if state.epoch_start is not None:
        own.append(state.epoch_start)  # the ballot that decided the current replica set
    return max(own, default=None)


def _belongs(state: JobState, fact: Fact, kinds: tuple[str, ...]) -> str | None:
    if fact.kind not in kinds:
        return refusal_text(Refusal.INVALID, f"not a {'/'.join(kinds)}")
    try:
        F.check_in_context(state.submit, fact)
    except InvalidFact as exc:
        return refusal_text(Refusal.INVALID, str(exc))
    return None


def current_grant(state: JobState, me: bytes) -> tuple[int, bytes] | None:
    """(attempt, worker id) of this replica's highest lease grant, or None.

    An unconfirmed attempt may have been granted again to another worker;
    the newer grant carries a larger ``ts_ms`` (see :func:`_grant`), so the
    facts alone say which is current, also after a restart."""
    leases = _own(state, me, F.LEASE)
    if not leases:
        return None
    m = max(g.attempt for g in leases)
    newest = max((g for g in leases if g.attempt == m), key=lambda g: (g.body.ts_ms, g.body.subject))
    return m, newest.body.subject


def proves_here(state: JobState | None, me: bytes, attempt: int, worker: bytes) -> bool:
    """May replica ``me``, whose store is ``state``, count as holding the
    proof of ``worker``'s lease on ``attempt`` when shown only its grants?
    Only while its current grant is still that one: a renew would be judged
    the same way (:func:`accept_renew`). In the moment between its grant and
    the proof it may have granted the attempt again (a split vote seen whole,
    rule 4), and the new holder may be confirming elsewhere already."""
    return state is not None and current_grant(state, me) == (attempt, worker)


def _newest_grants(state: JobState, attempt: int) -> dict[bytes, bytes] | None:
    """Each granting replica's current grant of ``attempt``: replica -> worker
    (its newest grant, as :func:`current_grant`); None when a result of the
    attempt exists."""
    newest: dict[bytes, tuple[int, bytes]] = {}  # replica -> (ts_ms, worker) of its newest grant
    for f in state.facts:
        if f.attempt != attempt:
            continue
        if f.kind == F.RESULT:
            return None
        if f.kind == F.GRANT and f.body.action == F.LEASE:
            rank = (f.body.ts_ms, f.body.subject)
            if f.author_id not in newest or rank > newest[f.author_id]:
                newest[f.author_id] = rank
    return {replica: worker for replica, (_ts, worker) in newest.items()}


def _tally(grants: Iterable[bytes]) -> dict[bytes, int]:
    counts: dict[bytes, int] = {}
    for worker in grants:
        counts[worker] = counts.get(worker, 0) + 1
    return counts


def standing(state: JobState, attempt: int) -> tuple[bool, bool]:
    """``(confirmed, unwinnable)`` of ``attempt``, from one pass over the
    job's facts (rule 4 and :func:`lease_deadline` ask both)."""
    newest = _newest_grants(state, attempt)
    if newest is None:
        return True, False
    quorum = state.spec.quorum
    ran = any(n >= quorum for n in _tally(newest.values()).values())
    counts = _tally(w for r, w in newest.items() if r in state.replicas)
    if not counts:
        return ran, False
    missing = sum(1 for r in state.replicas if r not in newest)
    return ran, all(n + missing < quorum for n in counts.values())


def confirmed(state: JobState, attempt: int) -> bool:
    """True when ``attempt`` provably ran or may run: a quorum of the job's
    replicas granted it to one worker (the worker shows those grants to the
    replicas before it starts its handler), or a result for it exists.

    Only each replica's current grant of the attempt counts (its newest, as
    :func:`current_grant`): a grant it superseded (rule 4) was never part of a
    quorum that ran, since a replica holding a worker's quorum of grants does
    not grant the attempt again, and the worker confirms its quorum with the
    granting replicas before it runs."""
    return standing(state, attempt)[0]


def unwinnable(state: JobState, attempt: int) -> bool:
    """True for a split vote seen whole: the facts hold a current grant of
    ``attempt`` from enough of the job's replicas that no worker can reach a
    quorum of them, even with every replica yet to grant (r = 3: three grants
    to three workers; r = 5: say 2, 2 and 1). As things stand nobody can win
    the attempt, so waiting for the grants to go stale (a whole lease) only
    delays the job; rule 4 grants it again at once instead.

    Safe for the reason rule 4 is (module docstring): a worker runs an
    attempt only after a quorum of replicas, each holding it as its current
    grant, stored its quorum of grants, and a replica that re-grants has moved
    its current grant away, so no two workers can both confirm."""
    return standing(state, attempt)[1]


def _attempt_over(state: JobState, m: int, obs: Observations, now: float, rules: LeaseRules) -> str | None:
    """None when attempt ``m`` is over on this replica's clock, else why not.

    Anything not yet in ``obs`` counts as seen ``now`` (conservative).
    """
    results = [f for f in state.facts if f.kind == F.RESULT and f.attempt == m]
    if any(f.body.outcome == F.OK for f in results):
        # The job succeeded; it only waits for seals. Never run it again.
        return refusal_text(Refusal.DECIDED, f"attempt {m} succeeded; its result awaits seals")
    if any(is_final_result(state.submit, f) for f in results):
        # The last attempt failed: that error ends the job once sealed. A
        # closing attempt now would only file a second final result to race
        # it for the seals (workers file the unsealed one again instead).
        return refusal_text(Refusal.DECIDED, f"attempt {m} was the last; its error awaits seals")
    if results:
        wait = rules.backoff_s(state.job_id, m) - (now - obs.error_seen.setdefault(m, now))
        return None if wait <= 0 else refusal_text(Refusal.BACKOFF, f"retry backoff of attempt {m}: {wait:.3f}s left")
    quiet = now - obs.holder_seen.setdefault(m, now)
    if quiet >= rules.stale_after_s(state.spec.lease_ms):
        return None
    return refusal_text(Refusal.LEASE_LIVE, f"lease of attempt {m} is live")


def decide_claim(
    state: JobState, claim: Fact, me: bytes, obs: Observations, now: float, rules: LeaseRules
) -> Grant | str:
    """The lease grant body to sign for ``claim``, or a refusal (its wire form:
    a :class:`node.ballots.Refusal` code and a detail).

    Rules 1-5 of protocol.md section 4, in order. A re-asked grant returns
    the existing body unchanged (idempotent). A new grant records the holder
    as seen ``now`` in ``obs``.
    """
    why = _belongs(state, claim, (F.CLAIM,))
    if why:
        return why
    n, worker, spec = claim.attempt, claim.author_id, state.spec
    if not state.is_replica(me):
        return refusal_text(Refusal.NOT_REPLICA, "not a replica of this job")
    if state.terminal:  # rule 1
        return refusal_text(Refusal.DECIDED, f"job is {state.status}")
    closed = _closed(state, me)
    if closed:
        return refusal_text(Refusal.DECIDED, closed)
    if not 1 <= n <= spec.max_attempts + 1:  # rule 2
        return refusal_text(Refusal.INVALID, f"attempt {n} outside 1..{spec.max_attempts + 1}")
    promised = _promised(state, me)
    if promised is not None and promised > (n, 0, worker):
        return refusal_text(Refusal.PROMISED_HIGHER, f"promised ballot {promised[0]}.{promised[1]}")
    leases = _own(state, me, F.LEASE)
    cur = current_grant(state, me)
    m = cur[0] if cur else 0
    for g in leases:  # rule 3
        if g.attempt == n and g.body.subject == worker:
            if cur != (n, worker):
                # Re-sending a superseded grant would let the worker count it
                # as fresh and believe it holds a lease it lost.
                return refusal_text(Refusal.PROMISED_HIGHER, f"grant of attempt {n} was superseded")
            if confirmed(state, n):
                _refresh(obs, n, now)  # the holder of a lease that runs is asking: it is alive
            # A holder of a minority asking again gets the same grant, but its
            # asking does not extend it (see observe): a split vote goes stale.
            return g.body
    if n == m:
        ran, split = standing(state, m)
        if not ran:  # rule 4, an attempt that never ran
            # Our grant of m never became a confirmed lease (the claim won only
            # a minority, or its worker vanished before showing a quorum): once
            # it is stale, m goes to the next worker, so lost claims burn no
            # attempt. A split vote seen whole cannot be won by anyone: m goes
            # at once.
            if split:
                return _grant(state, claim, obs, now, me)
            return _attempt_over(state, m, obs, now, rules) or _grant(state, claim, obs, now, me)
    if n <= m:
        return refusal_text(Refusal.PROMISED_HIGHER, f"attempt {n} is not above granted attempt {m}")
    # Only confirmed attempts count: the next attempt is one above the
    # highest that replicas' grants prove ran. Workers send those grants
    # along with their claim, so a replica that missed them can judge.
    known = max(state.lease_attempt, state.epoch_start[0] if state.epoch_start is not None else 0)
    if n > known + 1:
        return refusal_text(Refusal.INVALID, f"attempt {n} is more than one above confirmed attempt {known}")
    if m:  # rule 5
        why = _attempt_over(state, m, obs, now, rules)
        if why:
            return why
    return _grant(state, claim, obs, now, me)


def _grant(state: JobState, claim: Fact, obs: Observations, now: float, me: bytes) -> Grant:
    """Grant ``claim``'s attempt to its worker, who counts as seen ``now``.

    A grant that replaces an earlier one of the same attempt gets a ``ts_ms``
    above every earlier grant's, so the current grant follows from the facts.
    """
    n = claim.attempt
    ts = max([claim.body.ts_ms, *(g.body.ts_ms + 1 for g in _own(state, me, F.LEASE) if g.attempt == n)])
    obs.grantee[n] = claim.author_id
    obs.holder_seen[n] = now
    return Grant(state.job_id, F.LEASE, n, claim.author_id, min(ts, F._TS_MAX))


def accept_renew(state: JobState, renew: Fact, me: bytes, obs: Observations, now: float | None = None) -> bool:
    """Accept a renew of (n, W) only while (n, W) is this replica's current grant.

    Also refused once this replica sealed a cancel or the job is decided (the
    worker then stops its handler). With ``now``, an accepted renew refreshes
    the holder observation; otherwise :func:`observe` does when it is stored.
    """
    if _belongs(state, renew, (F.RENEW,)) or state.terminal or not state.is_replica(me):
        return False
    if _closed(state, me):
        return False
    promised = _promised(state, me)
    if promised is not None and promised > (renew.attempt, 0, renew.author_id):
        return False  # a canceller or recovering replica's ballot is above the lease
    if current_grant(state, me) != (renew.attempt, renew.author_id):
        return False
    if now is not None:
        obs.grantee.setdefault(renew.attempt, renew.author_id)
        _refresh(obs, renew.attempt, now)
    return True


def lease_live(state: JobState, me: bytes, obs: Observations, now: float, rules: LeaseRules) -> bool:
    """True while this replica's current lease is live on its own clock: its
    attempt has no result and its holder was heard within the lease. A
    recovering replica's prepare is refused then (a cancel's is not)."""
    cur = current_grant(state, me)
    if cur is None or state.terminal:
        return False
    m = cur[0]
    if any(f.kind == F.RESULT and f.attempt == m for f in state.facts):
        return False
    seen = obs.holder_seen.get(m)
    return seen is not None and now - seen < rules.stale_after_s(state.spec.lease_ms)


def lease_deadline(state: JobState, me: bytes, obs: Observations, rules: LeaseRules) -> float | None:
    """Local time at which this replica's current attempt will be over, or None.

    That is when its holder goes stale or, after an error result, when the
    retry backoff ends: the shell re-announces the job then so a worker
    claims the next attempt. A split vote seen whole (:func:`unwinnable`)
    is due ``split_retry_s`` after this replica's grant. None when there is no grant, the job is decided,
    the attempt ended for good (ok result, closing attempt), this replica
    sealed a cancel, or ``obs`` never observed the grant (call :func:`observe`).
    """
    cur = current_grant(state, me)
    if cur is None or state.terminal or _closed(state, me):
        return None
    m = cur[0]
    results = [f for f in state.facts if f.kind == F.RESULT and f.attempt == m]
    if any(f.body.outcome == F.OK for f in results):
        return None
    if results:
        if m > state.spec.max_attempts or m not in obs.error_seen:
            return None
        return obs.error_seen[m] + rules.backoff_s(state.job_id, m)
    if m not in obs.holder_seen:
        return None
    ran, split = standing(state, m)
    if split and not ran:
        return obs.holder_seen[m] + min(rules.split_retry_s, rules.stale_after_s(state.spec.lease_ms))
    return obs.holder_seen[m] + rules.stale_after_s(state.spec.lease_ms)
