"""Workers: claim runnable jobs with quorum leases, run handlers, report results.

The worker side of ``docs/protocol.md`` section 4. For one job:

1. read the job's facts from its replicas and derive its state;
2. claim attempt ``highest + 1``; the replicas answer with lease grants;
   without grants from a quorum of them, walk away (nothing to undo: the
   grants we did get expire);
3. run the handler (the attempt number is its fencing token) while renewing
   the lease every third of its length; when fewer than a quorum of replicas
   accept a renewal, stop the handler: the lease is lost and another worker
   may already hold the next attempt;
4. file the result with the grants that prove the lease; the replicas seal a
   final result, and a quorum of seals decides the job.

The runnable index is bounded; offers carry a not-before time derived from
the rendezvous rank, so the best-ranked free worker claims first.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import structlog

from crypto.identity import Identity
from dht.server import DHTServer, StoreOutcome
from node import facts as F
from node import lifecycle, rendezvous
from node.derived import DerivedStates, local_state, state_of
from node.handlers import Handler, HandlerError, JobContext, Registry
from node.leases import LeaseRules
from node.reads import read_job

CLAIM_RESENDS = 2  # times a claim is sent again to replicas that did not answer
CLAIM_BOUNDARY_WAIT_S = 0.3  # before asking again a replica whose clock had not yet released the attempt

RunCpu = Callable[[Callable[..., Any], Any, JobContext], Awaitable[Any]]


@dataclass(slots=True)
class _Offer:
    job_type: str
    not_before: float
    first: tuple[F.Fact, ...]  # submission and placement, from a first announcement
    best: bool  # this worker ranks first for the job


@dataclass(frozen=True, slots=True)
class Placed:
    """What the store that placed a job and claimed it at once achieved."""

    stored_ids: frozenset[bytes]  # replicas that hold the submission and its placement
    claimed: bool  # a quorum of them granted this node's claim on attempt 1


class LeaseLost(Exception):
    pass


def _context(state: lifecycle.JobState) -> list[F.Fact]:
    """The submission and placement: what a replica needs to judge any other fact."""
    return [state.submit, *([state.placement] if state.placement is not None else [])]


def _about_to_allow(outcome: Any) -> set[bytes]:
    """Replicas that refused a claim only because, on their clock, the old
    lease was still live or the retry backoff not over: soon they will grant."""
    return {
        rid
        for rid, refusals in outcome.refusals.items()
        if any(r.endswith(" is live") or r.startswith("retry backoff") for _, r in refusals)
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
    return {rid for rid, refusals in outcome.refusals.items() if any(r == "unknown job" for _, r in refusals)}


class WorkerPool:
    def __init__(
        self,
        identity: Identity,
        dht: DHTServer,
        registry: Registry,
        *,
        slots: int,
        rules: LeaseRules,
        monotonic: Callable[[], float],
        wall_ms: Callable[[], int],
        run_cpu: RunCpu,
        runnable_max: int,
        on_state: Callable[[bytes, str, int], None] | None = None,
        logger: Any = None,
    ) -> None:
        self.identity = identity
        self.dht = dht
        self.registry = registry
        self.slots = slots
        self.rules = rules
        self.monotonic = monotonic
        self.wall_ms = wall_ms
        self._run_cpu = run_cpu
        self._runnable: OrderedDict[bytes, _Offer] = OrderedDict()
        self._best: OrderedDict[bytes, None] = OrderedDict()  # the offers this worker ranks first for
        self._runnable_max = runnable_max
        self._active: dict[bytes, asyncio.Task] = {}
        self._executing = 0  # attempts holding a slot (claiming or running a handler)
        self.reports_max = 256  # attempts past their handler, filing results, at most
        self._wakeup = asyncio.Event()
        self._on_state = on_state or (lambda job_id, status, attempt: None)
        # The node's memo of derived states over its store (None: derive every time).
        self.derived: DerivedStates | None = None
        self.log = logger or structlog.get_logger()
        self.counters = {
            "offers": 0,
            "offers_dropped": 0,
            "offers_skipped": 0,
            "claims": 0,
            "claims_won": 0,
            "claims_lost": 0,
            "executions": 0,
            "leases_lost": 0,
            "results_ok": 0,
            "results_error": 0,
            "renewals": 0,
            "results_refiled": 0,
            "confirms_lost": 0,
            "claims_with_submit": 0,
        }

    def derive_local(self, job_id: bytes) -> lifecycle.JobState | None:
        """The state of what the local store holds for a job."""
        return local_state(self.derived, self.dht.records, job_id)

    def derive(self, facts: Iterable[F.Fact]) -> lifecycle.JobState | None:
        """The state a set of facts decides (through the node's memo when plugged in)."""
        return state_of(self.derived, facts)

    @property
    def busy(self) -> int:
        return self._executing

    @property
    def queued(self) -> int:
        """Offers waiting for a slot."""
        return len(self._runnable)

    # -- offers -------------------------------------------------------------
    def offer(
        self, job_id: bytes, job_type: str, first: tuple[F.Fact, ...] = (), *, delay_s: float | None = None
    ) -> None:
        """A job that may be runnable. Cheap; the claim decides."""
        if self.slots <= 0 or self.registry.get(job_type) is None or job_id in self._active:
            return
        best = False
        if delay_s is None:
            peers = [c.id for c in self.dht.router.contacts()]
            position = rendezvous.rank(job_id, self.identity.node_id, peers)
            delay_s = rendezvous.claim_delay_s(position)
            best = position == 0
        not_before = self.monotonic() + delay_s
        current = self._runnable.get(job_id)
        if current is not None and current.not_before <= not_before:
            return
        self.counters["offers"] += 1
        self._runnable[job_id] = _Offer(job_type, not_before, first, best)
        if best:
            self._best[job_id] = None
        else:
            self._best.pop(job_id, None)
        while len(self._runnable) > self._runnable_max:
            dropped, _ = self._runnable.popitem(last=False)
            self._best.pop(dropped, None)
            self.counters["offers_dropped"] += 1
        self._wakeup.set()

    def _take(self, job_id: bytes) -> _Offer:
        self._best.pop(job_id, None)
        return self._runnable.pop(job_id)

    def take_fresh(self, submit: F.Fact, place: F.Fact) -> asyncio.Future | None:
        """A job this node is accepting, while one of its slots is free: claim
        attempt 1 in the same store that places the job (one round fewer than
        placing, then claiming). The future gives the :class:`Placed` outcome
        of that store (the submitter answers the client from it), or ``None``
        when the claim never stored anything and the job must be placed as
        usual. ``None`` instead of a future: no free slot or no handler."""
        job_id, job_type = submit.job_id, submit.body.job_type
        if (
            self._executing >= self.slots
            or len(self._active) >= self.slots + self.reports_max
            or self.registry.get(job_type) is None
            or job_id in self._active
        ):
            return None
        placed: asyncio.Future = asyncio.get_running_loop().create_future()
        self.counters["claims_with_submit"] += 1
        self._start(job_id, _Offer(job_type, self.monotonic(), (submit, place), True), placed)
        return placed

    def _start(self, job_id: bytes, offer: _Offer, placed: asyncio.Future | None = None) -> None:
        self._executing += 1
        task = asyncio.ensure_future(self._attempt(job_id, offer, placed))
        self._active[job_id] = task
        task.add_done_callback(lambda t, j=job_id: self._done(j, t))

    def _next_due(self, now: float) -> tuple[bytes | None, float | None]:
        """The offer to claim next: the oldest due one this worker ranks first
        for, else the oldest due one. Under a backlog every offer is due, and
        taking them in one shared order would send every worker after the
        same jobs; taking one's own first spreads them, as the ranks do."""
        for job_id in self._best:
            if self._runnable[job_id].not_before <= now:
                return job_id, None
        soonest = None
        for job_id, offer in self._runnable.items():
            if offer.not_before <= now:
                return job_id, None
            soonest = offer.not_before if soonest is None else min(soonest, offer.not_before)
        return None, soonest

    async def run(self) -> None:
        """The dispatch loop: start an attempt whenever a slot and a due job exist."""
        while True:
            if self._executing >= self.slots or len(self._active) >= self.slots + self.reports_max or not self._runnable:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            job_id, soonest = self._next_due(self.monotonic())
            if job_id is None:
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), max(0.0, soonest - self.monotonic()))
                except asyncio.TimeoutError:
                    pass
                continue
            self._start(job_id, self._take(job_id))

    def _done(self, job_id: bytes, task: asyncio.Task) -> None:
        self._active.pop(job_id, None)
        self._wakeup.set()
        if not task.cancelled() and task.exception() is not None:
            self.log.error("attempt_crashed", job_id=job_id.hex(), error=repr(task.exception()))

    def stop(self) -> None:
        for task in list(self._active.values()):
            task.cancel()

    # -- one attempt ----------------------------------------------------------
    async def _attempt(self, job_id: bytes, offer: _Offer, placed: asyncio.Future | None = None) -> None:
        """Claim, run and report one attempt. Holds a slot until the handler
        ends. With ``placed``, the job is new: its submission and placement go
        in the claim's store, and ``placed`` learns what that store achieved."""
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self._executing -= 1
                self._wakeup.set()

        try:
            await self._claim_and_run(job_id, offer, release, placed)
        finally:
            release()
            if placed is not None and not placed.done():
                placed.set_result(None)  # nothing stored: the submitter places the job itself

    async def _claim_and_run(
        self, job_id: bytes, offer: _Offer, release: Callable[[], None], placed: asyncio.Future | None = None
    ) -> None:
        log = self.log.bind(job_id=job_id.hex())
        local = self.derive_local(job_id)
        if local is not None and (
            local.status in lifecycle.TERMINAL or (offer.first and local.highest_attempt > 0)
        ):
            # Our own replica store says it is decided, or (for a fresh job)
            # that another worker claimed it already: no need to ask anyone.
            self.counters["offers_skipped"] += 1
            return
        state = None
        if offer.first and local is not None and local.is_replica(self.identity.node_id):
            # A fresh job this node holds as a placed replica: claims go to
            # every replica, and this one has seen none (above), so its copy
            # is as good as a read (if it is behind, the claim is refused).
            state = local
        elif offer.first and offer.best:
            state = self.derive(offer.first)
        if state is None or not state.replicas:
            # Not a fresh job we rank first for: read it before claiming.
            state, _answered = await read_job(self.dht, job_id, self.derived)
        if state is None or state.status in lifecycle.TERMINAL or not state.replicas:
            return
        spec: F.Submit = state.submit.body
        undecided = [f for f in state.facts if f.kind == F.RESULT and lifecycle.is_final_result(state.submit, f)]
        if undecided:
            # A final result that a quorum has not sealed yet (replicas that
            # granted a later attempt refused it then): file it again rather
            # than run the job again; replicas whose later grant went stale seal it.
            self.counters["results_refiled"] += 1
            await self._file(state, min(undecided, key=lifecycle.sort_key))
            return
        # The next attempt after the highest one replicas signed for; their
        # grants go along as evidence, so a replica that missed them can
        # still judge the claim.
        attempt = state.lease_attempt + 1
        if attempt > spec.max_attempts + 1:
            return
        evidence = [
            f
            for f in state.facts
            if f.kind == F.GRANT and f.body.action == F.LEASE and (f.attempt, f.body.subject) == (state.lease_attempt, state.lease_worker)
        ]
        self.counters["claims"] += 1
        claim = F.sign(self.identity, F.CLAIM, F.Claim(job_id, attempt, self.wall_ms()))
        own_grant = lambda produced: self._lease_grants(produced, job_id, attempt, state.replicas)  # noqa: E731
        fresh = list(offer.first) if placed is not None else []
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
            return
        if not await self._confirm(state, attempt, grants, shown):
            self.counters["confirms_lost"] += 1
            log.debug("lease_unconfirmed", attempt=attempt)
            return
        self.counters["claims_won"] += 1
        log.info("lease_acquired", attempt=attempt, grants=len(grants))
        self._on_state(job_id, "running", attempt)
        try:
            outcome_kind, data = await self._execute(state, attempt, log)
        except LeaseLost:
            self.counters["leases_lost"] += 1
            log.warning("lease_lost", attempt=attempt)
            return
        release()  # filing the result needs no slot
        await self._report(state, attempt, grants, outcome_kind, data, log)

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
        renew = F.sign(self.identity, F.RENEW, F.Renew(state.job_id, attempt, self.wall_ms()))
        holding = {g.author_id for g in grants}
        confirmed: set[bytes] = set(shown) & holding
        for _ in range(1 + CLAIM_RESENDS):
            ask = [i for i in state.replicas if i in holding and i not in confirmed]
            if me in ask and len(confirmed) + 1 >= spec.quorum:
                ask = [me]
            if not ask:
                break
            needed = max(1, min(len(ask), spec.quorum - len(confirmed)))
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

    async def _execute(self, state: lifecycle.JobState, attempt: int, log: Any) -> tuple[str, Any]:
        spec: F.Submit = state.submit.body
        if attempt > spec.max_attempts:
            return F.ERROR, {"error": f"attempts exhausted: attempt {spec.max_attempts} lost its lease"}
        handler = self.registry.get(spec.job_type)
        if handler is None:
            return F.ERROR, {"error": f"no handler for job type {spec.job_type!r}"}
        self.counters["executions"] += 1
        ctx = JobContext(state.job_id.hex(), attempt)
        log.info("execution_started", attempt=attempt, job_type=spec.job_type)
        work = asyncio.ensure_future(self._call(handler, spec.payload, ctx, spec.timeout_ms / 1000))
        renewer = asyncio.ensure_future(self._renew_until(work, state, attempt))
        try:
            done, _ = await asyncio.wait({work, renewer}, return_when=asyncio.FIRST_COMPLETED)
            if renewer in done and not work.done():
                work.cancel()
                renewer.result()  # raises LeaseLost
            return work.result()
        finally:
            renewer.cancel()
            if not work.done():
                work.cancel()

    async def _call(self, handler: Handler, payload: Any, ctx: JobContext, timeout_s: float) -> tuple[str, Any]:
        try:
            if asyncio.iscoroutinefunction(handler.fn):
                value = await asyncio.wait_for(handler.fn(payload, ctx), timeout_s)
            elif handler.cpu:
                value = await asyncio.wait_for(self._run_cpu(handler.fn, payload, ctx), timeout_s)
            else:
                value = handler.fn(payload, ctx)  # declared cheap (cpu=False): runs on the loop
        except asyncio.TimeoutError:
            return F.ERROR, {"error": f"timed out after {timeout_s:g} s"}
        except HandlerError as exc:
            return F.ERROR, {"error": str(exc)}
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            return F.ERROR, {"error": f"{type(exc).__name__}: {exc}"}
        return F.OK, value

    async def _renew_until(self, work: asyncio.Future, state: lifecycle.JobState, attempt: int) -> None:
        spec: F.Submit = state.submit.body
        interval = spec.lease_ms / 3000
        while not work.done():
            await asyncio.sleep(interval)
            if work.done():
                return
            renew = F.sign(self.identity, F.RENEW, F.Renew(state.job_id, attempt, self.wall_ms()))
            outcome = await self.dht.store(state.job_id, [renew], targets=list(state.replicas), quorum=spec.quorum)
            self.counters["renewals"] += 1
            if outcome.stored_on < spec.quorum and not work.done():
                raise LeaseLost()

    async def _report(self, state: lifecycle.JobState, attempt: int, grants: list[F.Fact], kind: str, data: Any, log: Any) -> None:
        spec: F.Submit = state.submit.body
        try:
            data_json = F.canonical_json(data)
        except Exception as exc:
            kind, data_json = F.ERROR, F.canonical_json({"error": f"result is not JSON: {exc}"})
        if len(data_json) > F.RESULT_BYTES_MAX:
            kind, data_json = F.ERROR, F.canonical_json({"error": "result exceeds the size limit"})
        result = F.sign(
            self.identity, F.RESULT, F.Result(state.job_id, attempt, kind, data_json, tuple(grants), self.wall_ms())
        )
        self.counters["results_ok" if kind == F.OK else "results_error"] += 1
        final = kind == F.OK or attempt >= spec.max_attempts
        await self._file(state, result)
        log.info("execution_finished", attempt=attempt, outcome=kind, final=final)
        if not final:
            # Retry later: the replicas grant the next attempt once the backoff has passed.
            self.offer(state.job_id, spec.job_type, delay_s=self.rules.backoff_s(state.job_id, attempt) + 0.05)

    async def _file(self, state: lifecycle.JobState, result: F.Fact) -> None:
        """Store a result on the job's replicas; once a quorum sealed it, tell
        every replica (so each can answer reads and stop re-announcing)."""
        spec: F.Submit = state.submit.body
        final = lifecycle.is_final_result(state.submit, result)
        seals = {
            f.author_id: f
            for f in state.facts
            if f.kind == F.GRANT and f.body.action == F.SEAL and f.body.subject == result.fact_id
        }
        me = self.identity.node_id

        def sealed(produced: list, by: bytes | None = None) -> list[F.Fact]:
            return [
                p
                for p in produced
                if p.kind == F.GRANT
                and p.body.action == F.SEAL
                and p.body.subject == result.fact_id
                and p.author_id in state.replicas
                and by in (None, p.author_id)
            ]

        batch = [result]
        decided: set[bytes] = set()  # replicas that hold a quorum of seals already
        told_me = False

        def tell_me_early(so_far: StoreOutcome) -> None:
            # A quorum sealed while the store still waits for the last
            # replica: this node's own store (and so a client waiting on it)
            # learns the outcome now, not after the grace.
            nonlocal told_me
            found = dict(seals)
            for p in sealed(so_far.produced):
                found.setdefault(p.author_id, p)
            if me in state.replicas and len(found) >= spec.quorum:
                self.dht.ingest(state.job_id, list(found.values()), me)
                told_me = True

        for _ in range(5):
            outcome, own = await self._store_own_first(
                state, batch, lambda produced: sealed(produced, me), on_quorum=tell_me_early
            )
            if _lacking(outcome):
                batch = [*_context(state), result]  # some replica missed the submission
            for p in sealed(outcome.produced):
                seals.setdefault(p.author_id, p)
            decided |= self._holding_quorum(state, outcome, own, list(seals.values()))
            if not final or len(seals) >= spec.quorum or outcome.stored_on >= spec.quorum:
                break
            await asyncio.sleep(0.2)
        if len(seals) >= spec.quorum:
            # Tell the replicas that do not know yet (this node's own store
            # costs no datagram).
            tell = [i for i in state.replicas if i not in decided and not (i == me and told_me)]
            if tell:
                await self.dht.store(state.job_id, list(seals.values()), targets=tell, quorum=min(len(tell), spec.quorum))

    def statistics(self) -> dict[str, int]:
        return {**self.counters, "slots": self.slots, "busy": self.busy, "runnable": self.queued}
