"""The scenarios: a run's parameters, its link model and its fault schedule.

Every scenario runs the same phases (see :mod:`simulations.sim.driver`):
boot the mesh, submit jobs at random nodes for ``load_s`` virtual seconds
while the scenario's faults play, heal everything, then wait for every
accepted job to be decided. A scenario only adds the faults:

* ``steady``: no faults, mild jitter; the baseline;
* ``crash``: workers stop abruptly, preferably while they execute a job;
* ``churn``: a fraction of the mesh leaves (abruptly) and as many new nodes
  join, under load;
* ``partition``: a few links go down, then the mesh splits in two groups for
  several lease lengths, then heals;
* ``loss``: every datagram may be lost (``--loss``, 5-20%), duplicated or
  delayed out of order;
* ``drift``: every node's monotonic clock runs up to ``drift_max`` fast or
  slow, wall clocks start apart and are stepped forward and back;
* ``clockstep``: wall clocks of workers and replicas are stepped by +-1, 5
  and 30 s while 2 s leases are renewed (issue 13, item 4: a worker whose
  clock stepped back must neither lose its lease silently nor share its
  attempt with a second worker);
* ``cancelrace``: one node crashes for good early, and every job's submitter
  cancels it 0.2-3.5 s after accepting it, racing results that are being
  filed (issue 13, item 1: seals split 2/2 between a result and the cancel
  when a replica is down);
* ``equivocate``: a third of the nodes run workers that file two different
  ok results of one attempt, each to part of the job's replicas, and never
  finish their round (issue 13, item 1: votes split 2/2/1);
* ``leave``: three times, the node that is a replica of the most unfinished
  (20-30 s) jobs leaves for good, its data gone, a few seconds apart; the
  jobs' replica sets are repaired through their consensus (issue 13, item 3).

Fault times and victims come from the scenario's own seeded ``random.Random``.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from simulations.sim.network import LinkModel

if TYPE_CHECKING:
    from simulations.sim.driver import Run


@dataclass(frozen=True, slots=True)
class Params:
    scenario: str = "steady"
    nodes: int = 16
    jobs: int = 30
    seed: int = 1
    load_s: float | None = None  # default: at least 30 s, about 0.2 job/s per node
    workers: int = 2  # handler slots per node
    replicas: int = 5  # replicas per job (r); the quorum is a majority of them
    loss: float = 0.1  # the loss scenario's datagram loss
    churn: float = 0.3  # the churn scenario: fraction of the mesh replaced
    crash_fraction: float = 0.2  # the crash scenario: fraction of the mesh crashed
    drift_max: float = 0.015  # the drift scenario: clock rate error, within LeaseRules.rate_tolerance
    wall_step_ms_max: int = 10_000  # the drift scenario: wall clock steps
    wall_steps_ms: tuple[int, ...] = (1_000, 5_000, 30_000)  # the clockstep scenario: step sizes, either way
    lease_s: float | None = None  # the jobs' lease (default: the node's, 2 s in the clockstep scenario)
    liveness_deadline_s: float = 300.0  # after healing, every accepted job must be decided within this
    sample_s: float = 1.0  # time-series resolution (virtual seconds)
    join_concurrency: int = 16  # nodes joining at once during boot
    # "mixed": 80% work, 15% sha256, 5% fail (two attempts); "fail": only
    # fail jobs with three attempts (each must end on attempt 3's own error)
    job_mix: str = "mixed"

    @property
    def work_seconds(self) -> tuple[float, float]:
        """The range of a ``work`` job's duration: several leases long in the clockstep scenario."""
        if self.scenario == "leave":
            return (4.0, 12.0)  # jobs that run while replicas leave
        return (1.0, 8.0) if self.scenario == "clockstep" else (0.3, 3.0)

    @property
    def lease_seconds(self) -> float:
        if self.lease_s is not None:
            return self.lease_s
        return 2.0 if self.scenario == "clockstep" else 10.0

    @property
    def load_seconds(self) -> float:
        return self.load_s if self.load_s is not None else max(30.0, self.jobs / (0.2 * self.nodes))


BASE_LINKS = LinkModel(latency_ms_min=1.0, latency_ms_max=20.0, duplicate=0.005, reorder=0.01)
HEALED_LINKS = BASE_LINKS


def link_model(params: Params) -> LinkModel:
    if params.scenario == "loss":
        return replace(BASE_LINKS, loss=params.loss, duplicate=0.02, reorder=0.05, latency_ms_max=40.0)
    return BASE_LINKS


def clock_setup(params: Params) -> tuple[float, int]:
    """(drift_max, wall_offset_ms_max) for the nodes' clocks."""
    if params.scenario == "drift":
        return params.drift_max, 20_000
    return 0.0, 0


def _spread(rng: random.Random, count: int, start_s: float, end_s: float) -> list[float]:
    return sorted(rng.uniform(start_s, end_s) for _ in range(count))


async def _at(run: Run, times: list[float], action: Callable[[], Awaitable[None]]) -> None:
    """Run ``action`` at each virtual time in ``times`` (relative to the load start)."""
    for t in times:
        delay = run.load_started + t - run.loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        await action()


async def steady(run: Run) -> None:
    return None


async def crash(run: Run) -> None:
    p = run.params
    count = max(1, round(p.crash_fraction * p.nodes))

    async def one() -> None:
        candidates = run.mesh.joined()
        if len(candidates) <= p.nodes // 2:
            return
        busy = [s for s in candidates if s.node.workers.busy > 0]
        victim = run.rng.choice(busy or candidates)
        await run.crash(victim)

    await _at(run, _spread(run.rng, count, 0.1 * p.load_seconds, 0.8 * p.load_seconds), one)


async def churn(run: Run) -> None:
    p = run.params
    count = max(1, round(p.churn * p.nodes))
    times = _spread(run.rng, 2 * count, 0.05 * p.load_seconds, 0.9 * p.load_seconds)
    turn = {"leave": True}

    async def one() -> None:
        if turn["leave"]:
            candidates = run.mesh.joined()
            if len(candidates) > 3:
                await run.crash(run.rng.choice(candidates))
        else:
            run.join_new()
        turn["leave"] = not turn["leave"]

    await _at(run, times, one)


async def partition(run: Run) -> None:
    p = run.params
    lease_s = run.config.lease_s
    nodes = run.mesh.joined()
    # A few single links down for the whole load phase.
    for _ in range(max(1, len(nodes) // 4)):
        a, b = run.rng.sample(nodes, 2)
        run.network.set_link(a.addr, b.addr, up=False)
    run.mark("links down")
    await _at(run, [0.2 * p.load_seconds], lambda: asyncio.sleep(0))
    nodes = run.mesh.joined()
    run.rng.shuffle(nodes)
    cut = max(1, int(len(nodes) * 0.6))
    run.network.partition([[s.addr for s in nodes[:cut]], [s.addr for s in nodes[cut:]]])
    run.sides = {s.addr: "majority" if i < cut else "minority" for i, s in enumerate(nodes)}
    run.mark("partition")
    run.trace.event(f"partition {cut}/{len(nodes) - cut}")
    await asyncio.sleep(max(3 * lease_s, 0.4 * p.load_seconds))
    run.network.heal()
    run.sides = {}
    run.mark("heal")
    run.trace.event("heal")


async def loss(run: Run) -> None:
    return None  # the loss is in the link model for the whole load phase


async def drift(run: Run) -> None:
    p = run.params
    steps = max(2, p.nodes // 2)

    async def one() -> None:
        sim = run.rng.choice(run.mesh.joined())
        delta = run.rng.randint(-p.wall_step_ms_max, p.wall_step_ms_max)
        sim.clock.step_wall(delta)
        run.trace.event(f"wall-step {sim.name} {delta}")

    await _at(run, _spread(run.rng, steps, 0.05 * p.load_seconds, 0.9 * p.load_seconds), one)


async def clockstep(run: Run) -> None:
    p = run.params
    steps = max(4, 4 * p.nodes)

    async def one() -> None:
        sim = run.rng.choice(run.mesh.joined())
        delta = run.rng.choice(p.wall_steps_ms) * run.rng.choice((-1, 1))
        # Each clock stays within WALL_OFFSET_MAX_MS of true time, so any two
        # stay inside the DHT's replay window (dht/config.py replay_window_s,
        # 60 s), a separate assumption: steps that add up past it make peers
        # drop each other's datagrams as stale, which is not what this tests.
        target = max(-WALL_OFFSET_MAX_MS, min(WALL_OFFSET_MAX_MS, sim.clock.wall_offset_ms + delta))
        step = target - sim.clock.wall_offset_ms
        sim.clock.step_wall(step)
        run.trace.event(f"wall-step {sim.name} {step} -> {target}")

    await _at(run, _spread(run.rng, steps, 0.05 * p.load_seconds, 0.9 * p.load_seconds), one)


async def cancelrace(run: Run) -> None:
    p = run.params
    outcomes: dict[str, int] = {}
    tasks: list[asyncio.Task] = []

    async def cancel_later(job_id: bytes, node: str, delay_s: float) -> None:
        await asyncio.sleep(delay_s)
        sim = next((s for s in run.mesh.joined() if s.name == node), None)
        if sim is None:
            outcomes["submitter_gone"] = outcomes.get("submitter_gone", 0) + 1
            return
        try:
            view = await sim.node.cancel(job_id, "race")
            status = getattr(view, "status", "unknown")
            key = f"answered_{status}"
            if status in ("done", "failed", "cancelled"):
                run.invariants.expect(job_id, status)  # a cancel answered "cancelled" must hold
        except Exception as exc:  # a refusal (QuorumUnavailable, ...) is an outcome to count
            key = f"refused_{type(exc).__name__}"
        outcomes[key] = outcomes.get(key, 0) + 1
        run.trace.event(f"cancel {job_id.hex()[:16]} {key}")

    await asyncio.sleep(max(0.0, run.load_started + 0.05 * p.load_seconds - run.loop.time()))
    victim = run.rng.choice(run.mesh.joined())
    await run.crash(victim)
    seen: set[bytes] = set()
    end = run.load_started + p.load_seconds
    while run.loop.time() < end:
        for job_id, acc in list(run.accepted.items()):
            if job_id not in seen:
                seen.add(job_id)
                tasks.append(asyncio.ensure_future(cancel_later(job_id, acc.node, run.rng.uniform(0.2, 3.5))))
        await asyncio.sleep(0.05)
    await asyncio.gather(*tasks)
    run.trace.event(f"cancels {sorted(outcomes.items())}")
    run.cancel_outcomes = outcomes  # read by the figures of a large run


def _equivocating(claims) -> None:
    """Make a worker file two different ok results of one attempt, each to
    part of the replicas, and stop there: a bug or malice (issue 13, item 1:
    seals split 2/2/1 and the job could end neither way)."""
    from workmesh.node import facts as F

    async def report(state, attempt, grants, kind, data, log) -> bool:
        me = claims.identity
        results = [
            F.sign(me, F.RESULT, F.Result(state.job_id, attempt, F.OK, F.canonical_json({"copy": i, "data": data}), tuple(grants), claims.wall_ms()))
            for i in (1, 2)
        ]
        half = max(1, len(state.replicas) // 2)
        for result, targets in ((results[0], state.replicas[:half]), (results[1], state.replicas[half:])):
            await claims.dht.store(state.job_id, [result], targets=list(targets), quorum=1, grace_s=0.0)
        claims.counters["equivocated"] = claims.counters.get("equivocated", 0) + 1
        return True

    claims.report = report


async def equivocate(run: Run) -> None:
    """A third of the nodes run workers that equivocate on every job they finish."""
    nodes = run.mesh.joined()
    liars = run.rng.sample(nodes, max(1, len(nodes) // 3))
    for sim in liars:
        _equivocating(sim.node.workers.claims)
    run.trace.event(f"equivocating workers {sorted(s.name for s in liars)}")


LEAVE_REPAIR_AFTER_S = 3.0  # the leave scenario's --repair-after
LEAVE_STEPS = 3


def _unfinished_sets(run: Run) -> list[tuple[bytes, ...]]:
    """The current replica set of every accepted job not yet decided, as a live holder sees it."""
    live = run.mesh.joined()
    out = []
    for job_id in list(run.accepted):
        if job_id in run.invariants.decided:
            continue
        holder = next((s for s in live if s.node.store.has(job_id)), None)
        state = holder.node.store.state(job_id) if holder is not None else None
        if state is not None and not state.terminal:
            out.append(state.replicas)
    return out


async def leave(run: Run) -> None:
    """Replicas leave for good, one at a time, as long as a quorum of every
    job's current replica set survives each step: three times, the node
    that is a replica of the most unfinished jobs (among those whose loss
    leaves every such job a quorum) crashes, its data gone, and the next one
    leaves only once every unfinished job's set has a live member more than a
    quorum again (or after a minute). Every job must still be decided
    (issue 13, item 3)."""
    p = run.params
    quorum = p.replicas // 2 + 1
    await asyncio.sleep(max(0.0, run.load_started + 0.3 * p.load_seconds - run.loop.time()))
    for _ in range(LEAVE_STEPS):
        deadline = run.loop.time() + 60.0
        while run.loop.time() < deadline:
            ids = {s.node.identity.node_id for s in run.mesh.joined()}
            if all(sum(1 for r in rs if r in ids) > quorum for rs in _unfinished_sets(run)):
                break
            await asyncio.sleep(0.5)
        live = run.mesh.joined()
        if len(live) <= p.replicas:
            return
        ids = {s.node.identity.node_id: s.name for s in live}
        sets = _unfinished_sets(run)
        weight: dict[str, int] = {}
        for sim in live:
            me = sim.node.identity.node_id
            if all(sum(1 for r in rs if r in ids and r != me) >= quorum for rs in sets):
                weight[sim.name] = sum(1 for rs in sets if me in rs)
        if not weight:
            return
        name = max(sorted(weight), key=lambda n: weight[n])
        victim = next(s for s in live if s.name == name)
        run.trace.event(f"leave {name} replica of {weight[name]} unfinished jobs")
        await run.crash(victim)
        await asyncio.sleep(LEAVE_REPAIR_AFTER_S)


WALL_OFFSET_MAX_MS = 29_500  # the clockstep scenario: how far a wall clock strays from true time

SCENARIOS: dict[str, Callable[[Run], Awaitable[None]]] = {
    "steady": steady,
    "crash": crash,
    "churn": churn,
    "partition": partition,
    "loss": loss,
    "drift": drift,
    "clockstep": clockstep,
    "cancelrace": cancelrace,
    "equivocate": equivocate,
    "leave": leave,
}
