"""One simulation run: boot, load under faults, heal, liveness, figures.

:func:`simulate` builds a :class:`VirtualTimeLoop`, runs :meth:`Run.main` on
it and returns the run's figures (a JSON-ready dict). Everything random comes
from ``Params.seed`` through named sub-seeds, so the same parameters give the
same trace hash. Wall time and memory are measured but kept out of the trace.

Phases (virtual time):

1. **boot**: node 0 starts alone; the others start and join through a random
   node that already joined, ``join_concurrency`` at a time; then 5 s settle;
2. **load**: ``jobs`` submissions at random joined nodes, Poisson arrivals
   over ``load_s``; the scenario's faults play at the same time;
3. **heal**: partitions end, links come up, loss stops;
4. **liveness**: every accepted job (``submit`` returned; a
   ``QuorumUnavailable`` is a 503, not accepted) must be decided within
   ``liveness_deadline_s``; the rest are *lost* (a live node still holds the
   submission) or *destroyed* (every node holding it crashed);
5. **audit**: every stored fact is decoded again; every accepted job is read
   from a random live node (record availability).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import resource
import sys
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, TextIO

from workmesh.dht.config import DHTConfig
from workmesh.dht.routing import target_node
from workmesh.node import lifecycle
from workmesh.node.ballots import quorum_size
from workmesh.node.config import NodeConfig
from workmesh.node.errors import QuorumUnavailable
from workmesh.node.reads import read_job

from simulations.sim.checkers import Invariants, LookupStats, TraceLog, verify_stores
from simulations.sim.clock import VirtualTimeLoop
from simulations.sim.figures import run_figures
from simulations.sim.mesh import Executions, LogSink, SimMesh, SimNode, derive_seed
from simulations.sim.network import SimNetwork
from simulations.sim.scenarios import HEALED_LINKS, LEAVE_REPAIR_AFTER_S, SCENARIOS, Params, clock_setup, link_model

SETTLE_S = 5.0
READ_CONCURRENCY = 32
PROGRESS_EVERY_WALL_S = 10.0


@dataclass(slots=True)
class Accepted:
    job_id: bytes
    kind: str
    node: str
    at: float


class Run:
    def __init__(self, params: Params, loop: asyncio.AbstractEventLoop, trace_out: TextIO | None, progress: bool) -> None:
        self.params = params
        self.loop = loop
        self.progress = progress
        self.config = NodeConfig(
            data_dir="/nonexistent/sim",
            workers=params.workers,
            lease_s=params.lease_seconds,
            dht=DHTConfig(replicas=params.replicas, quorum=params.replicas // 2 + 1),
            # The leave scenario: replicas gone for good are replaced within seconds.
            **({"repair_after_s": LEAVE_REPAIR_AFTER_S, "repair_check_s": 1.0} if params.scenario == "leave" else {}),
        )
        self.trace = TraceLog(loop, trace_out)
        self.invariants = Invariants(loop, self.trace)
        self.lookups = LookupStats()
        self.sink = LogSink()
        self.rng = random.Random(derive_seed(params.seed, "scenario"))
        self.network = SimNetwork(loop, random.Random(derive_seed(params.seed, "network")), link_model(params))
        self.executions = Executions(loop, self.trace.event, self.invariants.on_execution)
        drift_max, wall_offset_ms_max = clock_setup(params)
        self.mesh = SimMesh(
            loop,
            params.seed,
            self.network,
            self.config,
            self.executions,
            self.sink,
            on_state=lambda sim, state: self.invariants.on_state(sim.name, state),
            on_lookup=self._on_lookup,
            drift_max=drift_max,
            wall_offset_ms_max=wall_offset_ms_max,
        )
        self.accepted: dict[bytes, Accepted] = {}
        self.counts: Counter[str] = Counter()
        # While the mesh is split: each node's side ("majority" or "minority"),
        # and the submissions made on each side ("majority_accepted", ...).
        self.sides: dict[tuple[str, int], str] = {}
        self.by_side: Counter[str] = Counter()
        self.series: list[dict[str, float]] = []
        self.marks: list[tuple[float, str]] = []
        self.load_started = 0.0
        self._joins: list[asyncio.Task] = []
        self._wall_started = time.perf_counter()
        self._last_progress = self._wall_started
        self.phase = "boot"
        self.reads: dict[str, int] = {}
        self._live_version = -1
        self._live_ids: list[tuple[int, SimNode]] = []
        # The nodes' counters when the load began and when the audit began: the
        # work of the jobs (and the upkeep meanwhile), without boot or audit.
        self.boot_totals: dict[str, int] = {}
        self.quorum_gone: list[str] = []  # undecided jobs whose replica set lost its majority for good
        self.run_totals: dict[str, int] = {}

    # -- hooks --------------------------------------------------------------
    def _on_lookup(self, sim: SimNode, key: bytes, result: Any) -> None:
        """Score a lookup: did it return, first, the live node truly closest to the key?"""
        if not self.lookups.enabled:
            return
        if self._live_version != self.mesh.version:
            self._live_version = self.mesh.version
            self._live_ids = [(int.from_bytes(s.node.identity.node_id, "big"), s) for s in self.mesh.joined()]
        target = int.from_bytes(key, "big")
        me = sim.node.identity.node_id
        candidates = self._live_ids
        if self.network.faulty:
            candidates = [(i, s) for i, s in candidates if self.network.reachable(sim.addr, s.addr)]
        best = min(((i ^ target, s) for i, s in candidates if s is not sim), default=None, key=lambda p: p[0])
        # A lookup of a node's own id (join, refresh, revive) finds the node
        # itself first when a peer returns it: score the first *other* contact.
        first = next((c.id for c in result.contacts if c.id != me), None)
        found = best is None or first == best[1].node.identity.node_id
        self.lookups.record(found, result)

    def mark(self, label: str) -> None:
        self.marks.append((self.loop.time(), label))

    # -- node life ----------------------------------------------------------
    async def crash(self, sim: SimNode) -> None:
        self.trace.event(f"crash {sim.name}")
        self.counts["crashed"] += 1
        await self.mesh.crash(sim)

    def spawn(self) -> SimNode:
        sim = self.mesh.spawn()
        self.trace.event(f"spawn {sim.name} {sim.node.identity.node_id.hex()[:8]} {sim.addr[0]}")
        return sim

    def join_new(self) -> None:
        sim = self.spawn()
        self.counts["joined_later"] += 1
        boot = self.rng.choice(self.mesh.joined())
        self._joins.append(asyncio.ensure_future(self._start(sim, [boot.addr])))

    async def _start(self, sim: SimNode, bootstrap: list) -> None:
        try:
            await self.mesh.start(sim, bootstrap)
        except asyncio.CancelledError:
            if asyncio.current_task().cancelling():
                raise
            self.counts["join_interrupted"] += 1

    async def boot(self) -> None:
        first = self.spawn()
        await self.mesh.start(first, [])
        gate = asyncio.Semaphore(self.params.join_concurrency)

        async def join(sim: SimNode) -> None:
            async with gate:
                await self.mesh.start(sim, [self.rng.choice(self.mesh.joined()).addr])

        await asyncio.gather(*(join(self.spawn()) for _ in range(self.params.nodes - 1)))
        self.trace.event(f"booted {len(self.mesh.joined())}")
        await asyncio.sleep(SETTLE_S)

    # -- load ---------------------------------------------------------------
    def _job_spec(self, i: int) -> tuple[str, Any, int | None]:
        if self.params.job_mix == "fail":
            return "fail", {"message": f"job-{i}"}, 3
        u = self.rng.random()
        if u < 0.80:
            return "work", {"seconds": round(self.rng.uniform(*self.params.work_seconds), 3), "n": i}, None
        if u < 0.95:
            return "sha256", {"data": f"job-{i}", "rounds": 200}, None
        return "fail", {"message": f"job-{i}"}, 2

    async def _submit(self, sim: SimNode, i: int) -> None:
        kind, payload, max_attempts = self._job_spec(i)
        self.counts["submitted"] += 1
        side = self.sides.get(sim.addr)
        try:
            view = await sim.node.submit(kind, payload, max_attempts=max_attempts, lease_seconds=None, timeout_seconds=None, idempotency_key=None)
        except QuorumUnavailable:
            self.counts["rejected_503"] += 1
            if side:
                self.by_side[f"{side}_refused"] += 1
            self.trace.event(f"submit-503 {sim.name} {i}")
            return
        except asyncio.CancelledError:
            if asyncio.current_task().cancelling():
                raise
            self.counts["client_errors"] += 1
            self.trace.event(f"submit-interrupted {sim.name} {i}")
            return
        except Exception as exc:  # the node crashed under us (closed store): the client saw an error
            self.counts["client_errors"] += 1
            self.counts[f"client_error_{type(exc).__name__}"] += 1
            self.trace.event(f"submit-error {sim.name} {i} {type(exc).__name__}")
            return
        if side:
            self.by_side[f"{side}_accepted"] += 1
        job_id = bytes.fromhex(view.id)
        self.accepted[job_id] = Accepted(job_id, kind, sim.name, self.loop.time())
        self.trace.event(f"submit-202 {sim.name} {i} {view.id[:16]}")

    async def load(self) -> None:
        p = self.params
        rate = p.jobs / p.load_seconds
        clients = []
        for i in range(p.jobs):
            await asyncio.sleep(self.rng.expovariate(rate))
            sim = self.rng.choice(self.mesh.joined())
            clients.append(asyncio.ensure_future(self._submit(sim, i)))
        await asyncio.gather(*clients)

    # -- sampling -----------------------------------------------------------
    async def sampler(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self.params.sample_s)

    def sample(self) -> None:
        now = self.loop.time()
        decided = sum(1 for j in self.accepted if j in self.invariants.decided)
        row = {
            "t": round(now, 3),
            "live": len(self.mesh.live()),
            "accepted": len(self.accepted),
            "decided": decided,
            "running": self.executions.running,
            "bytes": sum(self.network.bytes_out.values()),
        }
        self.series.append(row)
        wall = time.perf_counter()
        if self.progress and wall - self._last_progress >= PROGRESS_EVERY_WALL_S:
            self._last_progress = wall
            print(
                f"[sim] {self.phase:9} t={now:7.1f}s live={row['live']} accepted={row['accepted']} "
                f"decided={decided} running={row['running']} wall={wall - self._wall_started:.0f}s",
                file=sys.stderr,
                flush=True,
            )

    # -- liveness and audit -------------------------------------------------
    async def liveness(self) -> tuple[list[str], list[str]]:
        deadline = self.loop.time() + self.params.liveness_deadline_s
        while self.loop.time() < deadline:
            if all(j in self.invariants.decided for j in self.accepted):
                return [], []
            await asyncio.sleep(1.0)
        lost, destroyed = [], []
        live_ids = {s.node.identity.node_id for s in self.mesh.live()}
        for job_id in self.accepted:
            if job_id in self.invariants.decided:
                continue
            holders = [s for s in self.mesh.live() if s.node.store.has(job_id)]
            (lost if holders else destroyed).append(job_id.hex())
            if self._quorum_gone(job_id, holders, live_ids):
                self.quorum_gone.append(job_id.hex())
        return lost, destroyed

    @staticmethod
    def _quorum_gone(job_id: bytes, holders: list[SimNode], live_ids: set[bytes]) -> bool:
        """Did a majority of the job's (current) replica set stop for good? Then
        no protocol may decide it (docs/guarantees.md, assumptions): the run
        went beyond the fault model, and the figures say so beside the loss."""
        states = [st for st in (h.node.store.state(job_id) for h in holders) if st is not None and st.replicas]
        if not states:
            return False
        replicas = max(states, key=lambda st: st.epoch).replicas  # the newest set any holder knows
        return sum(1 for r in replicas if r in live_ids) < quorum_size(len(replicas))

    async def availability(self) -> float:
        """Fraction of accepted jobs a random live node reads back, decided as the mesh decided them."""
        gate = asyncio.Semaphore(READ_CONCURRENCY)
        outcomes: Counter[str] = Counter()

        async def read(job_id: bytes) -> None:
            async with gate:
                sim = self.rng.choice(self.mesh.live())
                state, answered = await read_job(sim.node.dht, job_id)
            if answered == 0:
                outcomes["no_answer"] += 1
            elif state is None:
                outcomes["not_found"] += 1
            elif state.decided is None:
                outcomes["undecided"] += 1
            elif state.decided.fact_id != self.invariants.decided.get(job_id):
                outcomes["other_decision"] += 1
            else:
                outcomes["ok"] += 1

        await asyncio.gather(*(read(j) for j in self.accepted))
        self.reads = dict(outcomes)
        return outcomes["ok"] / max(1, len(self.accepted))

    # -- the run ------------------------------------------------------------
    async def main(self) -> dict[str, Any]:
        p = self.params
        sampler = asyncio.ensure_future(self.sampler())
        try:
            await self.boot()
            self.lookups.enabled = True
            self.phase = "load"
            self.load_started = self.loop.time()
            self.boot_totals = self.mesh.totals()
            self.mark("load")
            await asyncio.gather(self.load(), SCENARIOS[p.scenario](self))
            await asyncio.gather(*self._joins)
            self.phase = "liveness"
            self.network.heal(HEALED_LINKS)
            self.mark("healed")
            self.trace.event("healed")
            healed_at = self.loop.time()
            lost, destroyed = await self.liveness()
            self.phase = "audit"
            self.run_totals = self.mesh.totals()
            self.lookups.enabled = False
            decided_s = self.loop.time() - healed_at
            records = verify_stores(self.mesh.live(), self.invariants)
            available = await self.availability()
            self.sample()
            figures = run_figures(self, lost, destroyed, available, records, decided_s)
        finally:
            sampler.cancel()
            await self.mesh.stop_all()
        self.trace.event("end")
        figures["trace_sha256"] = self.trace.digest
        figures["trace_events"] = self.trace.lines
        return figures


def simulate(params: Params, *, trace_out: TextIO | None = None, progress: bool = False) -> dict[str, Any]:
    """Run one simulation on a fresh virtual-time loop; return its figures."""
    if params.scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {params.scenario!r}; known: {', '.join(SCENARIOS)}")
    loop = VirtualTimeLoop()
    wall0, cpu0 = time.perf_counter(), time.process_time()
    asyncio.set_event_loop(loop)
    try:
        run = Run(params, loop, trace_out, progress)
        figures = loop.run_until_complete(run.main())
    finally:
        pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for task in pending:
            task.cancel()
        with contextlib.suppress(Exception):
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.close()
        asyncio.set_event_loop(None)
    figures["wall_s"] = round(time.perf_counter() - wall0, 2)
    figures["cpu_s"] = round(time.process_time() - cpu0, 2)
    figures["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return figures
