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

This module keeps the pool (offers, slots, running and renewing); the rounds
with the replicas in steps 2 and 4 are :mod:`node.claims`.

The runnable index is bounded; offers carry a not-before time derived from
the rendezvous rank, so the best-ranked free worker claims first.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import structlog

from workmesh.crypto.identity import Identity
from workmesh.dht.server import DHTServer
from workmesh.node import facts as F
from workmesh.node import lifecycle, rendezvous
from workmesh.node.claims import Claims
from workmesh.node.handlers import Handler, HandlerError, JobContext, PermanentError, Registry
from workmesh.node.leases import LeaseRules
from workmesh.node.reads import read_job

RunCpu = Callable[[Callable[..., Any], Any, JobContext], Awaitable[Any]]
# Handler threads beyond one per slot: room for threads still running past
# their deadline (they cannot be stopped) before new attempts must queue.
THREADS_SPARE = 4
# An attempt that ends waits this long for its handler and renewer to take their
# cancellation (a coroutine handler that ignores it is left behind, and counted).
CANCEL_GRACE_S = 5.0


def strict_json_outcome(value: Any) -> tuple[str, Any]:
    """``(ok, value)``, or an error result when ``value`` holds NaN or
    Infinity, which strict JSON (RFC 8259) cannot carry: Python's json would
    write them as bare ``NaN`` tokens that clients cannot parse."""
    try:
        json.dumps(value, allow_nan=False)
    except ValueError as exc:
        if "Out of range float" in str(exc):
            return F.ERROR, {"error": "the handler's result holds NaN or Infinity, which JSON cannot carry"}
    except (TypeError, RecursionError):
        pass  # not JSON at all: node/claims.py turns that into an error result with its reason
    return F.OK, value


@dataclass(slots=True)
class _Offer:
    job_type: str
    not_before: float
    first: tuple[F.Fact, ...]  # submission and placement, from a first announcement
    best: bool  # this worker ranks first for the job


class LeaseLost(Exception):
    pass


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
        run_sync: RunCpu | None = None,
        spawn: Callable[[Awaitable[Any], str], asyncio.Future] | None = None,
    ) -> None:
        self.identity = identity
        self.dht = dht
        self.registry = registry
        self.slots = slots
        self.rules = rules
        self.monotonic = monotonic
        self.wall_ms = wall_ms
        self._run_cpu = run_cpu
        # Where attempts run: the node's own tasks (node/tasks.py), which it stops.
        self._spawn = spawn or (lambda coro, name: asyncio.ensure_future(coro))
        # Plain (synchronous) handlers: a thread each, at most one per slot
        # plus the threads that outlived their deadline (see _call).
        self._threads: concurrent.futures.ThreadPoolExecutor | None = None
        self._run_sync = run_sync or self._in_thread
        self._runnable: OrderedDict[bytes, _Offer] = OrderedDict()
        self._best: OrderedDict[bytes, None] = OrderedDict()  # the offers this worker ranks first for
        self._runnable_max = runnable_max
        self._active: dict[bytes, asyncio.Future] = {}
        self._executing = 0  # attempts holding a slot (claiming or running a handler)
        self.reports_max = 256  # attempts past their handler, filing results, at most
        self._wakeup = asyncio.Event()
        self._on_state = on_state or (lambda job_id, status, attempt: None)
        # What handlers on the loop may do in the mesh (node/mesh.py); None: nothing.
        self.mesh: Any = None
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
            "confirms_moved_on": 0,
            "claims_with_submit": 0,
            "thread_runs": 0,
            "timeouts": 0,
            "handlers_left_running": 0,
        }
        self.claims = Claims(identity, dht, wall_ms=wall_ms, counters=self.counters)

    def derive_local(self, job_id: bytes) -> lifecycle.JobState | None:
        """The state of what the local store holds for a job."""
        return self.dht.records.state(job_id)

    def derive(self, job_id: bytes, facts: Iterable[F.Fact]) -> lifecycle.JobState | None:
        """The state a set of a job's facts decides."""
        return self.dht.records.state_of(job_id, facts)

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
    ) -> bool:
        """A job that may be runnable. Cheap; the claim decides. True when this
        pool serves it: it runs the job's type and has a slot free for it now
        (or runs the job already); gossip forwards only what no slot here takes."""
        if self.slots <= 0 or self.registry.get(job_type) is None:
            return False
        if job_id in self._active:
            return True
        serving = self._executing < self.slots
        best = False
        if delay_s is None:
            peers = [c.id for c in self.dht.router.contacts()]
            position = rendezvous.rank(job_id, self.identity.node_id, peers)
            # Without the signed submission: a re-announcement, maybe of a
            # lease the replicas are only now judging stale (rendezvous.py).
            settle_s = 0.0 if first else rendezvous.REANNOUNCED_SETTLE_S
            delay_s = rendezvous.claim_delay_s(position, settle_s=settle_s)
            best = position == 0
        not_before = self.monotonic() + delay_s
        current = self._runnable.get(job_id)
        if current is not None and current.not_before <= not_before:
            return serving
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
        return serving

    def _take(self, job_id: bytes) -> _Offer:
        self._best.pop(job_id, None)
        return self._runnable.pop(job_id)

    def take_fresh(self, submit: F.Fact, place: F.Fact) -> asyncio.Future | None:
        """A job this node is accepting, while one of its slots is free: claim
        attempt 1 in the same store that places the job (one round fewer than
        placing, then claiming). The future gives the :class:`node.claims.Placed` outcome
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
        task = self._spawn(self._attempt(job_id, offer, placed), "attempt")
        self._active[job_id] = task
        task.add_done_callback(lambda t, j=job_id: self._done(j, t))
        if placed is not None:
            # However the attempt ends, even cancelled before its first step
            # (the node stopping, a crash in the simulator), the submitter
            # awaiting ``placed`` is answered: unless the claim's store said
            # otherwise, nothing was stored and it places the job itself.
            task.add_done_callback(lambda _t, p=placed: p.done() or p.set_result(None))

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

    async def _in_thread(self, fn: Callable[..., Any], payload: Any, ctx: JobContext) -> Any:
        if self._threads is None:
            self._threads = concurrent.futures.ThreadPoolExecutor(
                max_workers=max(1, self.slots) + THREADS_SPARE, thread_name_prefix="workmesh-handler"
            )
        return await asyncio.get_running_loop().run_in_executor(self._threads, fn, payload, ctx)

    def stop(self) -> None:
        for task in list(self._active.values()):
            task.cancel()
        if self._threads is not None:
            self._threads.shutdown(wait=False, cancel_futures=True)

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
            state = self.derive(job_id, offer.first)
        if state is None or not state.replicas:
            # Not a fresh job we rank first for: read it before claiming.
            state, _answered = await read_job(self.dht, job_id)
        if state is None or state.status in lifecycle.TERMINAL or not state.replicas:
            return
        spec: F.Submit = state.submit.body
        undecided = [f for f in state.facts if f.kind == F.RESULT and lifecycle.is_final_result(state.submit, f)]
        if undecided:
            # A final result whose round did not finish (its worker died, a
            # split): once it is older than a lease, finish it with a recovery
            # round rather than run the job again (a younger one is most
            # likely still being decided by its worker).
            newest = max(f.body.ts_ms for f in undecided)
            if self.claims.wall_ms() - newest >= self.rules.stale_after_s(spec.lease_ms) * 1000:
                self.counters["results_refiled"] += 1
                await self.claims.file(state, min(undecided, key=lifecycle.sort_key))
            return
        won = await self.claims.claim(state, offer.first, log, placed)
        if won is None:
            return
        attempt, grants = won
        self._on_state(job_id, "running", attempt)
        try:
            outcome_kind, data = await self._execute(state, attempt, log, release)
        except LeaseLost:
            self.counters["leases_lost"] += 1
            log.warning("lease_lost", attempt=attempt)
            return
        release()  # filing the result needs no slot
        if not await self.claims.report(state, attempt, grants, outcome_kind, data, log):
            # Retry later: the replicas grant the next attempt once the backoff has passed.
            self.offer(job_id, spec.job_type, delay_s=self.rules.backoff_s(job_id, attempt) + 0.05)

    async def _execute(
        self, state: lifecycle.JobState, attempt: int, log: Any, release: Callable[[], None] | None = None
    ) -> tuple[str, Any]:
        spec: F.Submit = state.submit.body
        if attempt > spec.max_attempts:
            return F.ERROR, {"error": f"attempts exhausted: attempt {spec.max_attempts} lost its lease"}
        handler = self.registry.get(spec.job_type)
        if handler is None:
            return F.ERROR, {"error": f"no handler for job type {spec.job_type!r}"}
        self.counters["executions"] += 1
        ctx = JobContext(state.job_id.hex(), attempt, spec.job_type)
        if not handler.cpu and self.mesh is not None:
            # Handlers on the loop may use the mesh (blobs, child jobs: node/mesh.py)
            # and give their slot back while they only wait.
            ctx = JobContext(state.job_id.hex(), attempt, spec.job_type, mesh=self.mesh, release_slot=release)
        log.info("execution_started", attempt=attempt, job_type=spec.job_type)
        # The handler and its renewer belong to this attempt: they end before it does.
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
            _ended, left = await asyncio.wait({work, renewer}, timeout=CANCEL_GRACE_S)
            if left:
                self.counters["handlers_left_running"] += 1

    async def _call(self, handler: Handler, payload: Any, ctx: JobContext, timeout_s: float) -> tuple[str, Any]:
        """Run the handler where its kind runs (node/handlers.py), its timeout enforced."""
        try:
            if asyncio.iscoroutinefunction(handler.fn):
                value = await asyncio.wait_for(handler.fn(payload, ctx), timeout_s)
            elif handler.cpu:
                value = await asyncio.wait_for(self._run_cpu(handler.fn, payload, ctx), timeout_s)
            elif handler.inline:
                value = handler.fn(payload, ctx)  # a built-in cheaper than a thread hop
            else:
                # Off the loop, so a blocking handler cannot stop lease renewals.
                # A thread cannot be stopped: at the deadline the attempt ends
                # and the thread's eventual result is dropped.
                self.counters["thread_runs"] += 1
                value = await asyncio.wait_for(self._run_sync(handler.fn, payload, ctx), timeout_s)
        except asyncio.TimeoutError:
            self.counters["timeouts"] += 1
            return F.ERROR, {"error": f"timed out after {timeout_s:g} s"}
        except PermanentError as exc:
            return F.ERROR, {"error": str(exc) or type(exc).__name__, "permanent": True}
        except HandlerError as exc:
            return F.ERROR, {"error": str(exc)}
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            return F.ERROR, {"error": f"{type(exc).__name__}: {exc}"}
        return strict_json_outcome(value)

    async def _renew_until(self, work: asyncio.Future, state: lifecycle.JobState, attempt: int) -> None:
        spec: F.Submit = state.submit.body
        interval = spec.lease_ms / 3000
        while not work.done():
            await asyncio.sleep(interval)
            if work.done():
                return
            renew = await self.claims.signed_renewal(state, attempt)
            outcome = await self.dht.store(state.job_id, [renew], targets=list(state.replicas), quorum=spec.quorum)
            self.counters["renewals"] += 1
            if outcome.stored_on < spec.quorum and not work.done():
                raise LeaseLost()

    def statistics(self) -> dict[str, int]:
        return {**self.counters, "slots": self.slots, "busy": self.busy, "runnable": self.queued}
