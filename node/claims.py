"""Claims: the conversation with a job's replicas that wins and closes an attempt.

Steps 2 and 4 of ``docs/protocol.md`` section 4, apart from the worker pool
that decides *when* to claim and runs the handler in between. Winning a lease
(claim with the last lease's grants as evidence, ask again the replicas that
missed it, show the quorum of grants) and filing a result (until a quorum has
sealed it, then telling the rest) are rounds of stores whose rules come from
the replicas' side (``node/leases.py``), not from scheduling: kept here, they
can change without touching dispatch, slots or renewal.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from workmesh.crypto.identity import Identity
from workmesh.dht.quorum import StoreOutcome
from workmesh.dht.server import DHTServer
from workmesh.node import facts as F
from workmesh.node import leases, lifecycle, rounds
from workmesh.node.ballots import Refusal, refusal_code
from workmesh.node.proposer import RoundDriver
from workmesh.node.reads import read_job
from workmesh.node.signer import TurnSigner

RENEW_DATES_MAX = 4096  # (job, attempt) pairs whose last renew date a worker remembers
CLAIM_RESENDS = 2  # times a claim is sent again to replicas that did not answer
CLAIM_BOUNDARY_WAIT_S = 0.3  # before asking again a replica whose clock had not yet released the attempt


@dataclass(frozen=True, slots=True)
class Placed:
    """What the store that placed a job and claimed it at once achieved."""

    stored_ids: frozenset[bytes]  # replicas that hold the submission and its placement
    claimed: bool  # a quorum of them granted this node's claim on attempt 1


def _context(state: lifecycle.JobState) -> list[F.Fact]:
    """The submission and placement: what a replica needs to judge any other fact."""
    return [state.submit, *([state.placement] if state.placement is not None else [])]


def _about_to_allow(outcome: Any) -> set[bytes]:
    """Replicas that refused a claim only because, on their clock, the old
    lease was still live or the retry backoff not over: soon they will grant."""
    return {
        rid
        for rid, refusals in outcome.refusals.items()
        if any(refusal_code(r) in (Refusal.LEASE_LIVE, Refusal.BACKOFF) for _, r in refusals)
    }


def _holding(outcome: Any, first: int) -> frozenset[bytes]:
    """Replicas that answered a store and refused none of its ``first`` records."""
    return frozenset(
        rid
        for rid in outcome.answered_ids
        if not any(index < first for index, _ in outcome.refusals.get(rid, ()))
    )


def _lacking(outcome: Any) -> set[bytes]:
    """Replicas that refused a store because they do not hold the job."""
    return {
        rid for rid, refusals in outcome.refusals.items() if any(refusal_code(r) is Refusal.UNKNOWN_JOB for _, r in refusals)
    }


class Claims:
    """One worker's side of the claim and result rounds, signed as ``identity``.

    ``counters`` is the worker pool's: the claim and result counts land there."""

    def __init__(
        self, identity: Identity, dht: DHTServer, *, wall_ms: Callable[[], int], counters: dict[str, int]
    ) -> None:
        self.identity = identity
        self.signer = TurnSigner.of(identity)  # claims, renews and results of one turn share a signature
        self.dht = dht
        self.wall_ms = wall_ms
        self.counters = counters
        self._renew_ts: OrderedDict[tuple[bytes, int], int] = OrderedDict()  # (job, attempt) -> last renew's ts_ms
        self._rounds: RoundDriver | None = None

    @property
    def rounds(self) -> RoundDriver:
        """The driver of this worker's consensus rounds (made on first use)."""
        if self._rounds is None:
            self._rounds = RoundDriver(self.identity, self.dht.store, self.wall_ms, read=self._read)
        return self._rounds

    async def _read(self, job_id: bytes) -> list[F.Fact]:
        state, _answered = await read_job(self.dht, job_id)
        return list(state.facts) if state is not None else []

    async def claim(
        self,
        state: lifecycle.JobState,
        first: tuple[F.Fact, ...],
        log: Any,
        placed: asyncio.Future | None = None,
    ) -> tuple[int, list[F.Fact]] | None:
        """Win the job's next attempt: returns it with the quorum of lease
        grants that prove it, once a quorum of replicas hold that proof; None
        when the lease went elsewhere or no attempt is left. With ``placed``,
        the job is new: ``first`` (its submission and placement) goes in the
        claim's store, and ``placed`` learns what that store achieved."""
        job_id = state.job_id
        spec: F.Submit = state.submit.body
        # The next attempt after the highest one replicas signed for; their
        # grants go along as evidence, so a replica that missed them can
        # still judge the claim.
        # After a replica-set repair, attempts start above the ballot that decided it.
        floor = state.epoch_start[0] if state.epoch_start is not None else 0
        attempt = max(state.lease_attempt, floor) + 1
        if attempt > spec.max_attempts + 1:
            return None
        evidence = [
            f
            for f in state.facts
            if f.kind == F.GRANT and f.body.action == F.LEASE and (f.attempt, f.body.subject) == (state.lease_attempt, state.lease_worker)
        ]
        self.counters["claims"] += 1
        claim = await self.signer.sign(F.CLAIM, F.Claim(job_id, attempt, self.wall_ms()))
        own_grant = lambda produced: self._lease_grants(produced, job_id, attempt, state.replicas)  # noqa: E731
        fresh = list(first) if placed is not None else []
        # A claim in the placing write is uncontested: once a quorum stored
        # (and granted) it, the worker goes on without waiting out the grace
        # for the last replica (its grant would only be one more of a quorum).
        outcome, own = await self._store_own_first(
            state, [*fresh, *evidence, claim], own_grant, grace_s=0.0 if placed is not None else None
        )
        grants = self._lease_grants(outcome.produced, job_id, attempt, state.replicas)
        if placed is not None and not placed.done():
            placed.set_result(Placed(_holding(outcome, len(fresh)), len(grants) >= spec.quorum))
        shown = self._holding_quorum(state, outcome, own, grants)
        answered = set(outcome.answered_ids) - _lacking(outcome) - _about_to_allow(outcome)
        boundary = bool(_about_to_allow(outcome))
        for _ in range(CLAIM_RESENDS):
            # Replicas that did not answer (a lost datagram), that lack the
            # submission (they missed the write that acknowledged it), or whose
            # own clock had not yet seen the old lease go stale or the retry
            # backoff end (replicas judge a few milliseconds apart) may still
            # grant: ask them again with the same claim and the job's context.
            # Without this, every such near miss costs a whole lease.
            again_ids = [i for i in state.replicas if i not in answered]
            if len(grants) >= spec.quorum or len(grants) + len(again_ids) < spec.quorum:
                break
            if boundary:
                await asyncio.sleep(CLAIM_BOUNDARY_WAIT_S)
            # Wait for as many answers in kind as the claim still lacks: this
            # node's own replica answers at once, and a store that returned on
            # that answer alone would drop the grants of the others, a quorum
            # granting the attempt to a worker that gave it up (a lost attempt).
            need = spec.quorum - len(grants)
            again = await self.dht.store(job_id, [*_context(state), *evidence, claim, *own], targets=again_ids, quorum=need)
            answered |= set(again.answered_ids) - _about_to_allow(again)
            boundary = bool(_about_to_allow(again))
            grants = self._lease_grants([*grants, *again.produced], job_id, attempt, state.replicas)
            shown |= self._holding_quorum(state, again, own, grants)
        if len(grants) < spec.quorum:
            self.counters["claims_lost"] += 1
            log.debug("claim_lost", attempt=attempt, grants=len(grants))
            return None
        if not await self._confirm(state, attempt, grants, shown):
            self.counters["confirms_lost"] += 1
            log.debug("lease_unconfirmed", attempt=attempt)
            return None
        self.counters["claims_won"] += 1
        log.info("lease_acquired", attempt=attempt, grants=len(grants))
        return attempt, grants

    def renewal(self, state: lifecycle.JobState, attempt: int) -> F.Fact:
        """A signed renew of this worker's lease on ``attempt`` (a batch of one): see :meth:`renew_body`."""
        return F.sign(self.identity, F.RENEW, self.renew_body(state, attempt))

    async def signed_renewal(self, state: lifecycle.JobState, attempt: int) -> F.Fact:
        """:meth:`renewal`, signed in this turn's batch."""
        return await self.signer.sign(F.RENEW, self.renew_body(state, attempt))

    def renew_body(self, state: lifecycle.JobState, attempt: int) -> F.Renew:
        """A renew of this worker's lease on ``attempt``, dated now, or
        one millisecond after the previous one if the wall clock stepped back:
        replicas keep one renew per (worker, attempt), the newest by date, and
        refuse one dated at or before it (it would not extend the lease)."""
        key = (state.job_id, attempt)
        ts = max(self.wall_ms(), self._renew_ts.get(key, -1) + 1)
        self._renew_ts[key] = ts
        self._renew_ts.move_to_end(key)
        while len(self._renew_ts) > RENEW_DATES_MAX:
            self._renew_ts.popitem(last=False)
        return F.Renew(state.job_id, attempt, min(ts, F._TS_MAX))

    async def _confirm(
        self, state: lifecycle.JobState, attempt: int, grants: list[F.Fact], shown: set[bytes] = frozenset()
    ) -> bool:
        """Show the quorum of grants to the replicas (with a first renew)
        before running anything. Once a quorum of replicas hold that proof,
        none of them will give this attempt number to another worker, so an
        attempt number is never run twice; a claim that is never confirmed
        leaves its number free for the next worker.

        ``shown``: replicas that hold the proof already (they granted with a
        quorum of grants in hand). When they and this node's own replica make
        a quorum, the proof only has to reach the local store: no datagram."""
        spec: F.Submit = state.submit.body
        me = self.identity.node_id
        renew: F.Fact | None = None  # signed only if another replica must be shown the proof
        holding = {g.author_id for g in grants}
        confirmed: set[bytes] = set(shown) & holding
        for _ in range(1 + CLAIM_RESENDS):
            ask = [i for i in state.replicas if i in holding and i not in confirmed]
            if me in ask and len(confirmed) + 1 >= spec.quorum:
                ask = [me]
            if not ask:
                break
            needed = max(1, min(len(ask), spec.quorum - len(confirmed)))
            if ask == [me]:
                # Only this node's own replica: the grants are the proof, and
                # it saw its own grant a moment ago, which keeps the lease
                # live there as a renew would. No renew to sign or store. But
                # as a renew would be, it is judged (leases.proves_here).
                outcome = await self.dht.store(state.job_id, grants, targets=ask, quorum=1)
                if not leases.proves_here(self.dht.records.state(state.job_id), me, attempt, me):
                    self.counters["confirms_moved_on"] += 1
                    break
            else:
                renew = renew or await self.signed_renewal(state, attempt)
                outcome = await self.dht.store(state.job_id, [*grants, renew], targets=ask, quorum=needed)
            confirmed |= outcome.stored_ids
            if len(confirmed) >= spec.quorum or len(confirmed) + len(ask) - len(outcome.stored_ids) < spec.quorum:
                break
        return len(confirmed) >= spec.quorum

    def _lease_grants(self, produced: list, job_id: bytes, attempt: int, replicas: tuple[bytes, ...]) -> list[F.Fact]:
        by_author: dict[bytes, F.Fact] = {}
        me = self.identity.node_id
        for g in produced:
            b = g.body
            if (
                g.kind == F.GRANT
                and b.action == F.LEASE
                and (b.job_id, b.attempt, b.subject) == (job_id, attempt, me)
                and g.author_id in replicas
            ):
                by_author.setdefault(g.author_id, g)
        return sorted(by_author.values(), key=lambda g: g.author_id)

    async def _store_own_first(
        self,
        state: lifecycle.JobState,
        batch: list[F.Fact],
        pick: Callable[[list], list[F.Fact]],
        *,
        grace_s: float | None = None,
        on_quorum: Callable[[StoreOutcome], None] | None = None,
    ) -> tuple[StoreOutcome, list[F.Fact]]:
        """Store ``batch`` on the job's replicas; when this node is one of them
        and its own answer plus one other replica's make a quorum (r = 3),
        store it here first and send this node's answer (``pick`` finds it in
        what the local replica produced: a lease grant, a seal) along to the
        others. Each other replica that answers in kind then holds a quorum of
        answers at once, which spares the round that would show it them.

        Returns the outcome over all replicas and this node's own answer
        (empty when it gave none or the store went to all replicas at once).
        ``grace_s`` and ``on_quorum`` are :meth:`DHTServer.store`'s, over all
        the replicas."""
        spec: F.Submit = state.submit.body
        me = self.identity.node_id
        if me not in state.replicas or spec.quorum != 2:
            outcome = await self.dht.store(
                state.job_id, batch, targets=list(state.replicas), quorum=spec.quorum, grace_s=grace_s, on_quorum=on_quorum
            )
            return outcome, []
        here = await self.dht.store(state.job_id, batch, targets=[me], quorum=1)
        own = pick(here.produced)
        others = [i for i in state.replicas if i != me]
        there = await self.dht.store(
            state.job_id,
            [*batch, *own],
            targets=others,
            quorum=max(1, spec.quorum - here.stored_on),
            grace_s=grace_s,
            on_quorum=None if on_quorum is None else lambda so_far: on_quorum(here.merged(so_far)),
        )
        return here.merged(there), own

    def _holding_quorum(
        self, state: lifecycle.JobState, outcome: StoreOutcome, own: list[F.Fact], answers: list[F.Fact]
    ) -> set[bytes]:
        """The other replicas that stored every record sent with ``own`` (this
        node's answer) and answered in kind (one of ``answers`` is theirs): each
        holds ``own`` and its own answer, which is a quorum when r = 3."""
        if not own or len(own) + 1 < state.submit.body.quorum:
            return set()
        me = self.identity.node_id
        return {a.author_id for a in answers if a.author_id != me and a.author_id in outcome.stored_ids}

    async def report(self, state: lifecycle.JobState, attempt: int, grants: list[F.Fact], kind: str, data: Any, log: Any) -> bool:
        """File the handler's outcome for ``attempt`` (an error when it is not
        JSON or too large). Returns whether it is final: False means a retry."""
        spec: F.Submit = state.submit.body
        try:
            data_json = F.canonical_json(data)
        except Exception as exc:
            kind, data_json = F.ERROR, F.canonical_json({"error": f"result is not JSON: {exc}"})
        if len(data_json) > F.RESULT_BYTES_MAX:
            kind, data_json = F.ERROR, F.canonical_json({"error": "result exceeds the size limit"})
        result = await self.signer.sign(
            F.RESULT, F.Result(state.job_id, attempt, kind, data_json, tuple(grants), self.wall_ms())
        )
        self.counters["results_ok" if kind == F.OK else "results_error"] += 1
        final = kind == F.OK or attempt >= spec.max_attempts or F.is_permanent_error(kind, data_json)
        await self.file(state, result)
        log.info("execution_finished", attempt=attempt, outcome=kind, final=final)
        return final

    async def file(self, state: lifecycle.JobState, result: F.Fact) -> None:
        """Store a result on the job's replicas. A final one is this worker's
        proposal at its ballot ``(attempt, 0, worker)``, its lease grants the
        promises: a round of the job's consensus (node/proposer.py) gathers
        the votes, shows their certificate, and tells every replica the seals.
        A result that is not this worker's (found undecided in a read) is
        finished by a recovery round instead. A round that cannot finish (a
        canceller's or recovering replica's higher ballot, replicas down)
        leaves the job to the replicas' recovery."""
        spec: F.Submit = state.submit.body
        me = self.identity.node_id
        if not lifecycle.is_final_result(state.submit, result):
            batch = [result]
            for _ in range(5):
                outcome, _own = await self._store_own_first(state, batch, lambda produced: [])
                if _lacking(outcome):
                    batch = [*_context(state), result]  # some replica missed the submission
                if outcome.stored_on >= spec.quorum:
                    return
                await asyncio.sleep(0.2)
            return
        local = me in state.replicas and spec.quorum == 2
        for _ in range(3):
            if result.author_id == me:
                out = await self.rounds.run(state, own=result, grants=list(result.body.grants), local_first=local)
                if out.decided is not None:
                    await self.rounds.tell(state, out)
            else:
                out = await self.rounds.recover(state, own=None)
            if out.phase != rounds.Phase.GAVE_UP:
                break
            await asyncio.sleep(0.2)
        if out.decided is None:
            self.counters["results_undecided"] = self.counters.get("results_undecided", 0) + 1
