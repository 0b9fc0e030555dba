"""The simulated mesh: production ``node.node.Node`` objects on the sim network and clock.

Each node is built exactly as production builds it, with the seams filled by
the simulator: an ``Identity`` from a seed, a :class:`SimClock`, a seeded
``random.Random``, an inline CPU runner (no process or thread pool: a pool
would run outside virtual time and make runs irreproducible), an in-memory
store, and a registry of instrumented handlers. ``Node.start`` receives the
network's ``bind``; nothing else differs from ``workmesh start``.

Observation hooks wrap two bound methods on each node *instance* (never the
node code): the job index's ``update``, which the node calls with every
state it derives, and the DHT's ``_lookup``, to learn each lookup's key. A
crash detaches the node from the network first (it sends and hears nothing
more), then cancels its tasks with ``Node.stop``; there is no goodbye.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from workmesh.crypto.identity import Identity
from workmesh.node import handlers as H
from workmesh.node.config import NodeConfig
from workmesh.node.node import Node

from simulations.sim.clock import SimClock
from simulations.sim.network import Addr, SimNetwork

ERRORS_KEPT_MAX = 50


def derive_seed(seed: int, *labels: object) -> int:
    """A 64-bit sub-seed for one named use of the run's seed (stable across Python versions)."""
    text = "/".join([str(seed), *map(str, labels)]).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "big")


# -- logs ---------------------------------------------------------------------
class LogSink:
    """Counts node log events by level and name; keeps the first errors and warnings."""

    def __init__(self) -> None:
        self.counts: Counter[tuple[str, str]] = Counter()
        self.errors: list[dict] = []

    def emit(self, level: str, event: str, context: dict, kw: dict) -> None:
        self.counts[(level, event)] += 1
        if level == "error" and len(self.errors) < ERRORS_KEPT_MAX:
            self.errors.append({"event": event, **{k: str(v)[:200] for k, v in {**context, **kw}.items()}})


class SimLogger:
    """The few structlog methods the node code calls, at a fraction of the cost."""

    __slots__ = ("_sink", "_context")

    def __init__(self, sink: LogSink, context: dict | None = None) -> None:
        self._sink = sink
        self._context = context or {}

    def bind(self, **kw: Any) -> SimLogger:
        return SimLogger(self._sink, {**self._context, **kw})

    def debug(self, event: str, **kw: Any) -> None:
        pass

    def info(self, event: str, **kw: Any) -> None:
        self._sink.counts[("info", event)] += 1

    def warning(self, event: str, **kw: Any) -> None:
        self._sink.emit("warning", event, self._context, kw)

    def error(self, event: str, **kw: Any) -> None:
        self._sink.emit("error", event, self._context, kw)

    exception = error


# -- handlers -----------------------------------------------------------------
@dataclass(slots=True)
class Execution:
    node: str
    job_id: str
    attempt: int
    started: float
    ended: float | None = None
    outcome: str = "running"  # ok, error, cancelled


class Executions:
    """Every handler run in the mesh: who ran which job's attempt, when, and how it ended."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        on_event: Callable[[str], None],
        on_start: Callable[[str, str, int], None] | None = None,
    ) -> None:
        self._loop = loop
        self._on_event = on_event
        self._on_start = on_start or (lambda node, job, attempt: None)
        self.runs: list[Execution] = []
        self.running = 0

    def start(self, node: str, ctx: H.JobContext) -> Execution:
        run = Execution(node, ctx.job_id, ctx.attempt, self._loop.time())
        self.runs.append(run)
        self.running += 1
        self._on_event(f"exec-start {node} {ctx.job_id[:16]} {ctx.attempt}")
        self._on_start(node, ctx.job_id, ctx.attempt)
        return run

    def end(self, run: Execution, outcome: str) -> None:
        run.ended, run.outcome = self._loop.time(), outcome
        self.running -= 1
        self._on_event(f"exec-end {run.node} {run.job_id[:16]} {run.attempt} {outcome}")

    def by_job(self) -> dict[str, list[Execution]]:
        out: dict[str, list[Execution]] = {}
        for run in self.runs:
            out.setdefault(run.job_id, []).append(run)
        return out


def sim_registry(node: str, executions: Executions) -> H.Registry:
    """The job types of the simulation, each recording its executions.

    ``work`` waits a virtual duration (a job that takes time, so leases must be
    renewed and can be lost), ``sha256`` is the production CPU handler run
    through the inline ``run_cpu``, ``fail`` always fails (retries, backoff,
    the failed status).
    """

    async def work(payload: Any, ctx: H.JobContext) -> dict:
        run = executions.start(node, ctx)
        try:
            await asyncio.sleep(payload["seconds"])
        except asyncio.CancelledError:
            executions.end(run, "cancelled")
            raise
        executions.end(run, "ok")
        return {"slept": payload["seconds"], "n": payload["n"]}

    def sha256(payload: Any, ctx: H.JobContext) -> dict:
        run = executions.start(node, ctx)
        out = H.sha256(payload, ctx)
        executions.end(run, "ok")
        return out

    def fail(payload: Any, ctx: H.JobContext) -> Any:
        run = executions.start(node, ctx)
        executions.end(run, "error")
        raise H.HandlerError(f"failed on purpose (attempt {ctx.attempt})")

    return H.Registry((H.Handler("work", work), H.Handler("sha256", sha256, cpu=True), H.Handler("fail", fail, inline=True)), load_entry_points=False)


async def run_inline(fn: Callable[..., Any], payload: Any, ctx: H.JobContext) -> Any:
    """``run_cpu`` for the simulator: the CPU handler runs on the loop, in zero virtual time."""
    return fn(payload, ctx)


# -- nodes --------------------------------------------------------------------
@dataclass(slots=True)
class SimNode:
    index: int
    name: str
    addr: Addr
    node: Node
    clock: SimClock
    born: float
    died: float | None = None
    joined: bool = False
    lookups: list = field(default_factory=list)

    @property
    def alive(self) -> bool:
        return self.died is None


class SimMesh:
    """Creates, starts and crashes nodes; every random choice comes from ``seed``."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        seed: int,
        network: SimNetwork,
        config: NodeConfig,
        executions: Executions,
        sink: LogSink,
        *,
        on_state: Callable[[SimNode, Any], None],
        on_lookup: Callable[[SimNode, bytes, Any], None],
        drift_max: float = 0.0,
        wall_offset_ms_max: int = 0,
    ) -> None:
        self.loop = loop
        self.seed = seed
        self.network = network
        self.config = config
        self.executions = executions
        self.sink = sink
        self._on_state = on_state
        self._on_lookup = on_lookup
        self._rng = random.Random(derive_seed(seed, "clocks"))
        self.drift_max = drift_max
        self.wall_offset_ms_max = wall_offset_ms_max
        self.nodes: list[SimNode] = []
        self.by_addr: dict[Addr, SimNode] = {}
        self.version = 0  # bumped whenever the set of joined live nodes changes

    def live(self) -> list[SimNode]:
        return [n for n in self.nodes if n.alive]

    def joined(self) -> list[SimNode]:
        return [n for n in self.nodes if n.alive and n.joined]

    def spawn(self) -> SimNode:
        """A new node (new identity, new address), built but not started."""
        i = len(self.nodes)
        name = f"n{i:04d}"
        addr = (f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}", 4000)
        clock = SimClock(
            self.loop,
            base_s=self._rng.uniform(0.0, 10_000.0),
            drift=self._rng.uniform(-self.drift_max, self.drift_max) if self.drift_max else 0.0,
            wall_offset_ms=self._rng.randint(-self.wall_offset_ms_max, self.wall_offset_ms_max) if self.wall_offset_ms_max else 0,
        )
        node = Node(
            self.config,
            identity=Identity.from_seed(hashlib.blake2b(f"{self.seed}/identity/{i}".encode(), digest_size=32).digest()),
            clock=clock,
            rng=random.Random(derive_seed(self.seed, "node", i)),
            run_cpu=run_inline,
            registry=sim_registry(name, self.executions),
            in_memory=True,
            logger=SimLogger(self.sink, {"node": name}),
        )
        sim = SimNode(i, name, addr, node, clock, self.loop.time())
        self._instrument(sim)
        self.nodes.append(sim)
        self.by_addr[addr] = sim
        return sim

    def _instrument(self, sim: SimNode) -> None:
        """Observe derived states and lookups through the node's own calls (instance wrappers)."""
        index_update = sim.node.index.update
        on_state = self._on_state

        def update(state, *args, **kw):
            previous = index_update(state, *args, **kw)
            on_state(sim, state)
            return previous

        sim.node.index.update = update
        contacts = sim.node.dht.contacts  # every lookup of the node goes through contacts.lookup
        lookup = contacts.lookup
        on_lookup = self._on_lookup

        async def traced_lookup(key, seeds, **kw):
            result = await lookup(key, seeds, **kw)
            on_lookup(sim, key, result)
            return result

        contacts.lookup = traced_lookup

    async def start(self, sim: SimNode, bootstrap: list[Addr]) -> int:
        await sim.node.start(bind=self.network.bind(sim.addr))
        peers = await sim.node.join(bootstrap)
        sim.joined = True
        self.version += 1
        return peers

    async def crash(self, sim: SimNode) -> None:
        """Abrupt stop: off the network at once, then every task cancelled. No goodbye."""
        if not sim.alive:
            return
        sim.died = self.loop.time()
        self.version += 1
        self.network.detach(sim.addr)
        await sim.node.stop()

    def totals(self) -> dict[str, int]:
        """The node components' own counters, summed over every node that ever ran."""
        out: Counter[str] = Counter()
        for sim in self.nodes:
            n = sim.node
            parts = (
                ("worker", n.workers.counters),
                ("gossip", n.gossip.counters),
                ("dht", n.dht.stats),
                ("replica", n.replica.counters),
                ("rpc", n.dht.protocol.counters),
                ("node", n.counters),
                ("jobs", n.jobs.counters),
                ("decider", n.decider.counters),
                ("repairs", n.repairs.counters),
                ("rounds", {k: sum(d.counters[k] for d in n._drivers()) for k in n.decider.driver.counters}),
            )
            for prefix, counters in parts:
                for name, value in counters.items():
                    if isinstance(value, int):
                        out[f"{prefix}_{name}"] += value
        return dict(sorted(out.items()))

    async def stop_all(self) -> None:
        for sim in self.live():
            sim.died = self.loop.time()
            self.network.detach(sim.addr)
            await sim.node.stop()
