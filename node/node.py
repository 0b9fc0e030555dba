"""A workmesh node: every part wired together, with clock and transport injected.

``Node`` composes the identity, the record store, the DHT, the replica rules,
gossip, the local job index, the worker pool and the client operations. It
serves the REST API's ``JobService`` interface. Production starts it with a
UDP socket (``bind_udp``) and the system clock; the simulator with its
in-memory network and virtual clock: the same code either way.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import random
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import structlog

from workmesh.crypto.identity import Identity, verify_statistics
from workmesh.dht.protocol import Clock
from workmesh.dht.routing import target_node
from workmesh.dht.server import DHTServer, SystemClock
from workmesh.dht.storage import FactStore
from workmesh.node import __version__
from workmesh.node import blobs, keyed, leases, lifecycle, meshview
from workmesh.node.config import NodeConfig
from workmesh.node.deciding import Decider
from workmesh.node.derived import JobDeriver
from workmesh.node.gossip import Gossip
from workmesh.node.handlers import BUILTINS, Registry
from workmesh.node.insight import NodeInsight
from workmesh.node.jobindex import JobIndex
from workmesh.node.jobs import JobOperations
from workmesh.node.mesh import Mesh
from workmesh.node.metrics import Metrics
from workmesh.node.proposer import RoundDriver
from workmesh.node.reads import read_job
from workmesh.node.repairs import Repairs
from workmesh.node.replica import JobReplica
from workmesh.node.retention import Retention
from workmesh.node.samples import SAMPLE_HANDLERS
from workmesh.node.signer import TurnSigner
from workmesh.node.tasks import TaskSet
from workmesh.node.watch import JobWatch
from workmesh.node.worker import RunCpu, WorkerPool

REANNOUNCE_BATCH = 256
OWNERS_FILE = "owners.sqlite"  # the owner keys of the keyed jobs this node accepted (node/keyed.py)
OWN_REFRESH_MAX = 32  # own jobs held elsewhere read again per list or status request
REJOIN_FIRST_S = 2.0  # a node left without contacts tries its bootstrap addresses again after this
REJOIN_MAX_S = 60.0  # ...doubling the wait after each failure, up to this
UDP_BUFFER_BYTES = 4 * 2**20


def bind_udp(host: str, port: int, advertise_host: str | None = None) -> Callable[[Any], Awaitable[tuple[str, int]]]:
    async def bind(protocol: Any) -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: protocol, local_addr=(host, port))
        sock = transport.get_extra_info("socket")
        for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            # Bursts of replies arrive while the loop is busy verifying; the
            # default ~200 KiB buffer overflows and silently drops them.
            try:
                sock.setsockopt(socket.SOL_SOCKET, opt, UDP_BUFFER_BYTES)
            except OSError:
                pass
        bound = transport.get_extra_info("sockname")
        return (advertise_host or bound[0], bound[1])

    return bind


def usable_cores() -> int:
    """The cores this process may run on (its affinity, not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def process_pool_runner(slots: int, cores: int | None = None) -> tuple[RunCpu, Callable[[], None]]:
    """CPU handlers run in a process pool, off the event loop: one process per
    slot, but never more than the usable cores. CPU-bound work gains nothing
    from more processes than cores, and each forked process holds ~40 MiB
    (with fork, the pool starts all its processes at the first CPU job)."""
    workers = max(1, min(slots, usable_cores() if cores is None else cores))
    pool = concurrent.futures.ProcessPoolExecutor(max_workers=workers)

    async def run(fn, payload, ctx):
        return await asyncio.get_running_loop().run_in_executor(pool, fn, payload, ctx)

    return run, lambda: pool.shutdown(wait=False, cancel_futures=True)


JOBS_REPAIRED_MAX = 256  # unfinished jobs whose replicas a node checks per round


class Node:
    def __init__(
        self,
        config: NodeConfig,
        *,
        identity: Identity | None = None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        run_cpu: RunCpu | None = None,
        registry: Registry | None = None,
        in_memory: bool = False,
        logger: Any = None,
    ) -> None:
        self.config = config
        if not in_memory:
            Path(config.data_dir).mkdir(parents=True, exist_ok=True)
        self.identity = identity or Identity.load_or_create(config.data_dir, puzzle=config.dht.identity_puzzle_bits)
        self.clock = clock or SystemClock()
        self.rng = rng or random.Random(os.urandom(16))
        self.log = (logger or structlog.get_logger()).bind(node_id=self.identity.node_id.hex()[:12])
        self.registry = registry or Registry(BUILTINS + SAMPLE_HANDLERS)
        self._close_pool: Callable[[], None] = lambda: None
        # Every task the node starts for itself; stop() cancels and awaits them (node/tasks.py).
        self.tasks = TaskSet(self._on_task_error, self._on_tasks_stuck)
        if run_cpu is None:
            run_cpu, self._close_pool = process_pool_runner(config.workers)
        self.replica = JobReplica(
            self.identity, config.leases, self._monotonic, self.clock.wall_ms, self._on_stored,
            state_of=self._state_of,
        )
        path = None if in_memory else os.path.join(config.data_dir, "store.sqlite")
        # The store keeps each job's state up to date as facts merge (node/derived.py).
        self.deriver = JobDeriver()
        self.store = FactStore(
            path, self.replica.validate, config.store_limits,
            tombstones_max=config.tombstones_max, group_commit=config.group_commit, deriver=self.deriver,
        )
        self.retention = Retention(
            self.store,
            config.retention_s,
            monotonic=self._monotonic,
            wall_ms=self.clock.wall_ms,
            state_of=self.store.state,
            on_dropped=self._on_dropped,
        )
        self.dht = DHTServer(
            self.identity,
            self.store,
            self.replica,
            config=config.dht,
            clock=self.clock,
            new_msg_id=lambda: self.rng.randbytes(16),
            logger=self.log,
        )
        self.index = JobIndex(
            config.job_index_max, config.reannounce_first_s, config.reannounce_max_s, config.reannounce_rank_step_s
        )
        self.workers = WorkerPool(
            self.identity,
            self.dht,
            self.registry,
            slots=config.workers,
            rules=config.leases,
            monotonic=self._monotonic,
            wall_ms=self.clock.wall_ms,
            run_cpu=run_cpu,
            runnable_max=config.runnable_max,
            logger=self.log,
            on_state=self._on_worker_state,
            spawn=self.tasks.spawn,
        )
        self.gossip = Gossip(
            self.dht,
            self.workers.offer,
            fanout=config.gossip_fanout,
            ttl=config.gossip_ttl,
            seen_max=config.gossip_seen_max,
            rng=self.rng,
            spawn=self.tasks.spawn,
        )
        self.watch = JobWatch()
        self.jobs = JobOperations(
            self.identity,
            self.dht,
            self.index,
            self.registry.names,
            defaults=config,
            wall_ms=self.clock.wall_ms,
            announce=self._announce_new,
            watch=self.watch,
            spawn=self.tasks.spawn,
        )
        self.jobs.type_defaults = self.registry.defaults_for
        if not in_memory:
            self.jobs.owners = keyed.Owners(path=os.path.join(config.data_dir, OWNERS_FILE))
        self.jobs.take_fresh = self.workers.take_fresh
        self.dht.register("cancel_job", self.jobs.rpc_cancel_job)
        self.dht.register("api_address", self._rpc_api_address)
        self.blobs = blobs.attach(self, in_memory=in_memory)
        self.workers.mesh = Mesh(self, run_cpu)  # what handlers may do in the mesh (node/mesh.py)
        self._rejoining = False
        self._reannounce_wakeup: asyncio.Event | None = None
        self._reannounce_until = 0.0  # when the re-announce loop wakes up by itself next (monotonic s)
        self.started_at = 0.0
        self.api_address: tuple[str, int] | None = None
        self.counters = {"reannounced": 0, "reannounce_over_budget": 0, "status_changes": 0}
        self.metrics = Metrics(self)
        # fn(job_id, status, previous) on each status change that newly stored facts caused
        # (previous "" = first seen); the dashboard's flow chart and event stream listen.
        self.status_listeners: list[Callable[[bytes, str, str], None]] = []
        self.insight = NodeInsight(self)
        self.repairs = Repairs(
            self.identity,
            self.dht,
            RoundDriver(self.identity, self.dht.store, self.clock.wall_ms, read=self._read_facts),
            lambda: self.index.unfinished(JOBS_REPAIRED_MAX),
            self._read_state,
            self._monotonic,
            self.clock.wall_ms,
            repair_after_s=config.repair_after_s,
            check_s=config.repair_check_s,
            log=self.log,
        )
        self.decider = Decider(
            RoundDriver(self.identity, self.dht.store, self.clock.wall_ms, read=self._read_facts),
            self.identity.node_id,
            lambda state: self.config.decide_after_s or self.config.leases.stale_after_s(state.spec.lease_ms),
            self.tasks.spawn,
            self.log,
        )

    def _monotonic(self) -> float:
        return self.clock.monotonic()

    # -- life -------------------------------------------------------------------
    async def start(self, bind: Callable[[Any], Awaitable[tuple[str, int]]] | None = None) -> None:
        self.started_at = self._monotonic()
        self._reannounce_wakeup = asyncio.Event()
        self.store.open()
        self.blobs.open()
        for key in self.store.keys():
            self._on_stored(key, [])
        bind = bind or bind_udp(self.config.host, self.config.p2p_port, self.config.advertise_host)
        await self.dht.start(bind)
        for loop, name in (
            (self.workers.run(), "workers"),
            (self._reannounce_loop(), "reannounce"),
            (self.retention.run(), "retention"),
            (self.blobs.run(), "blobs"),
            (self.repairs.run(), "repairs"),
        ):
            self.tasks.spawn(loop, name)
        self.log.info("node_started", p2p=f"{self.dht.address[0]}:{self.dht.address[1]}", workers=self.config.workers)

    async def join(self, bootstrap: list[tuple[str, int]] | None = None) -> int:
        addrs = list(bootstrap if bootstrap is not None else self.config.bootstrap)
        peers = await self.dht.bootstrap(addrs) if addrs or len(self.dht.router) else 0
        self.log.info("node_joined", peers=peers)
        if addrs and not self._rejoining:
            # A join whose datagrams were all lost leaves a node alone; so
            # does losing every contact later. Keep trying while that lasts.
            self._rejoining = True
            self.jobs.expects_peers = True
            self.tasks.spawn(self._rejoin_loop(addrs), "rejoin")
        return peers

    async def _rejoin_loop(self, addrs: list[tuple[str, int]]) -> None:
        delay = REJOIN_FIRST_S
        while True:
            await asyncio.sleep(delay)
            alone = not len(self.dht.router)
            known = len(self.dht.router) + self.dht.dormant_count()
            replied = self.dht.stats["find_node_replies"] > 0
            thin = known < self.config.dht.k and known * 2 < self.dht.heard_count()
            if not alone and replied and not thin:
                delay = REJOIN_FIRST_S
                continue
            # Alone, or no lookup was ever answered, or a table of fewer than
            # k contacts while lookups named twice as many nodes: a join whose
            # replies were lost leaves a thin table that may look complete,
            # and reads and placements from it ask too few nodes. Join again.
            # (A large mesh's table holds k or more contacts and far fewer
            # than the nodes lookups name: that is not thin.)
            peers = await self.dht.bootstrap(addrs)
            if alone:
                self.log.info("node_rejoined" if peers else "node_rejoin_failed", peers=peers)
            delay = REJOIN_FIRST_S if peers else min(REJOIN_MAX_S, delay * 2)

    async def stop(self) -> None:
        """Stop every task of the node and wait for them to end, then the DHT, then close the store."""
        self.workers.stop()
        await self.tasks.stop()
        await self.dht.stop()
        self.store.close()
        self.jobs.owners.close()
        self._close_pool()
        self.log.info("node_stopped")

    # -- reactions --------------------------------------------------------------
    def _on_stored(self, key: bytes, new: list) -> None:
        """Facts for ``key`` were stored here: re-derive, index (if we are one
        of the job's replicas), log, wake waiters."""
        state = self.store.state(key)
        if state is None:
            return
        self.retention.observe(key, state)
        if state.status == lifecycle.PENDING and state.placement is not None and state.placement in new:
            # A replica of a new job is a worker that has heard of it.
            self.workers.offer(key, state.submit.body.job_type, (state.submit, state.placement))
        if state.replicas and self.identity.node_id not in state.replicas:
            # We only store this job (hand-off, republish, read repair); its
            # placed replicas index it, count it and re-announce it. Indexing
            # it here would show a copy that may lag behind the replicas;
            # unless we accepted or ran it: then it is ours to list and count.
            if self.index.is_own(key):
                self.index.note(state)
            self._wake(key)
            return
        obs = self.replica.observations(key)
        if not (obs.holder_seen or obs.error_seen or obs.grantee):
            # After a restart: what we granted before counts as seen now, so a
            # dead holder's lease goes stale and the job is re-announced.
            leases.observe(obs, state.facts, self.identity.node_id, self._monotonic())
        deadline = leases.lease_deadline(state, self.identity.node_id, obs, self.config.leases)
        decide_at = self.decider.note(state, self._monotonic())
        if decide_at is not None:
            deadline = decide_at if deadline is None else min(deadline, decide_at)
        previous = self.index.update(state, self._monotonic(), deadline, self._replica_rank(key, state))
        if previous is not None and new:
            self.counters["status_changes"] += 1
            if state.status in lifecycle.TERMINAL and state.replicas[:1] == (self.identity.node_id,):
                self.metrics.observe_terminal(state)  # once per job: on its first replica
            self.log.info(
                "job_state", job_id=key.hex(), status=state.status, previous=previous or None, attempts=state.attempts
            )
            for listener in self.status_listeners:
                listener(key, state.status, previous)
        wakeup = self._reannounce_wakeup
        if wakeup is not None and not wakeup.is_set():
            # Only when a job became due before the loop wakes up anyway: most
            # stored facts move no due time earlier, and a wakeup costs a task.
            due = self.index.next_due_in(now := self._monotonic())
            if due is not None and now + due < self._reannounce_until:
                wakeup.set()
        self._wake(key)

    def _state_of(self, job_id: bytes, facts: list) -> lifecycle.JobState | None:
        """The state a candidate set of a job's facts decides (the replica judges
        a fact against the store plus that fact), from the store's derivation."""
        return self.store.state_of(job_id, facts)

    def _derive_statistics(self) -> dict[str, int]:
        kept = self.store.derived_statistics()
        mine = self.deriver.statistics()
        return {
            "hits": kept["hits"] + mine["hits"], "misses": mine["misses"], "incremental": mine["incremental"],
            "cached": kept["kept"] + mine["jobs"],
        }

    def _on_task_error(self, name: str, exc: BaseException) -> None:
        self.log.error("task_failed", task=name, error=repr(exc))

    def _on_tasks_stuck(self, names: list[str]) -> None:
        self.log.error("tasks_not_stopped", tasks=names)

    def _on_dropped(self, key: bytes) -> None:
        """A decided job's facts were dropped here (its retention passed)."""
        self.index.forget(key)
        self._wake(key)

    def _wake(self, key: bytes) -> None:
        """Wake clients waiting (``?wait``) on this job."""
        self.watch.notify(key)

    def _replica_rank(self, key: bytes, state: lifecycle.JobState) -> int:
        """Our position among the job's replicas: 0 speaks first. A placed job
        ranks by its placement (a node that only stores it speaks last), less
        the lease holder: when its lease goes stale it is most likely the node
        that died, and the next replica must not wait a rank step for it;
        otherwise by the routing table."""
        me = self.identity.node_id
        if state.replicas:
            order = [r for r in state.replicas if r != state.lease_worker]
            return order.index(me) if me in order else len(order)
        target = target_node(key)
        mine = self.dht.node.distance_to(target)
        others = self.dht.router.find_neighbors(target, k=self.config.replicas)
        return sum(1 for c in others if c.distance_to(target) < mine)

    def _announce_new(self, submit, placement, replicas: frozenset[bytes]) -> None:
        """A job was accepted: its replicas know (they offer it to their own
        workers); announce it to the best-ranked other workers."""
        job_id, job_type = submit.job_id, submit.body.job_type
        self.gossip.announce(job_id, job_type, (submit, placement), skip=replicas)
        self.workers.offer(job_id, job_type, (submit, placement))

    def _reannounce_rate(self) -> float:
        """Re-announcements per second this node may send now: bounded by the
        capacity to run them, not by the backlog. A saturated mesh gains
        nothing from hearing of more pending jobs; it only loses the datagrams."""
        cfg = self.config
        w = self.workers
        free = max(0, cfg.workers - w.busy - w.queued) if cfg.workers > 0 else 0
        return min(cfg.reannounce_per_s, cfg.reannounce_min_per_s + cfg.reannounce_per_free_slot_s * free)

    async def _reannounce_loop(self) -> None:
        """Replicas re-announce jobs that are pending or whose lease went stale.

        The safety net stays (every due job is looked at again, with a backoff
        up to ``reannounce_max_s``) but its cost is bounded: a token bucket
        refilled at ``_reannounce_rate`` (free worker slots, not pending jobs),
        halved while this node's RPCs time out. (Skipping jobs our own workers
        already hold was tried and lost a job in the lossy simulation: a job
        must not depend on this node's workers either.) A due job over the budget is rescheduled with its backoff, not dropped."""
        tokens = 1.0
        factor = 1.0
        last = self._monotonic()
        adapt_at = last + 1.0
        timeouts = self.dht.protocol.counters["timeouts"]
        while True:
            now = self._monotonic()
            rate = self._reannounce_rate() * factor
            wait = self.index.next_due_in(now)
            if wait is not None and tokens < 1.0:
                wait = max(wait, (1.0 - tokens) / rate)
            self._reannounce_wakeup.clear()
            self._reannounce_until = now + (wait if wait is not None else 3600)
            try:
                await asyncio.wait_for(self._reannounce_wakeup.wait(), wait if wait is not None else 3600)
            except asyncio.TimeoutError:
                pass
            now = self._monotonic()
            if now >= adapt_at:
                seen = self.dht.protocol.counters["timeouts"]
                # Back off while our own RPCs time out; recover gently.
                factor = max(self.config.reannounce_backoff_min, factor / 2) if seen > timeouts else min(1.0, factor * 1.5)
                timeouts, adapt_at = seen, now + 1.0
            rate = self._reannounce_rate() * factor
            tokens = min(max(1.0, rate), tokens + (now - last) * rate)
            last = now
            if tokens < 1.0:
                continue
            for summary in self.index.pop_due(now, REANNOUNCE_BATCH):
                if self.decider.take(summary.state, now):
                    continue  # a recovery round decides it (node/deciding.py)
                decide_at = self.decider.due_at(summary.job_id)
                if decide_at is not None:
                    self.index.remind(summary.job_id, decide_at)
                if tokens >= 1.0:
                    tokens -= 1.0
                    self.counters["reannounced"] += 1
                    self.gossip.announce(summary.job_id, summary.job_type)
                    self.workers.offer(summary.job_id, summary.job_type)
                else:
                    self.counters["reannounce_over_budget"] += 1

    # -- JobService (REST) ------------------------------------------------------
    @property
    def job_types(self) -> frozenset[str]:
        return self.registry.names

    async def submit(self, job_type, payload, **kw):
        view = await self.jobs.submit(job_type, payload, **kw)
        self.index.mark_own(bytes.fromhex(view.id))
        return view

    async def get(self, job_id: bytes, *, wait_s: float = 0.0, history: bool = False):
        return await self.jobs.get(job_id, wait_s=wait_s, history=history)

    async def cancel(self, job_id: bytes, reason: str):
        return await self.jobs.cancel(job_id, reason)

    def list_jobs(self, status, limit, after):
        return self.jobs.list_jobs(status, limit, after)

    async def list_mesh_jobs(self, status: str | None, limit: int) -> dict:
        """This node's jobs and its peers', merged (``GET /jobs?scope=mesh``)."""
        await self.refresh_own()
        mine, _ = self.jobs.list_jobs(status, limit, None)
        urls = await meshview.peer_urls(self.dht)
        pages, failed = await meshview.fetch_pages(urls, status, limit)
        jobs = meshview.merge([[v.to_json() for v in mine], *pages], limit)
        return {"jobs": jobs, "next": None, "nodes_asked": 1 + len(urls), "nodes_failed": failed}

    async def refresh_own(self) -> None:
        """Read again (at most OWN_REFRESH_MAX of) the unfinished jobs this node
        accepted or ran but holds no current copy of, and keep what the read
        found, so that ``GET /jobs`` and the counts in ``/status`` show them."""
        stale = self.index.unsettled(self.identity.node_id, OWN_REFRESH_MAX)
        if not stale:
            return
        states = await asyncio.gather(*(read_job(self.dht, j) for j in stale), return_exceptions=True)
        for job_id, got in zip(stale, states):
            if isinstance(got, tuple) and got[0] is not None:
                self.dht.ingest(job_id, list(got[0].facts), self.identity.node_id)

    def _drivers(self) -> list:
        """Every round driver of this node: recovery, repair, its worker's, its canceller's."""
        return [self.decider.driver, self.repairs.driver, self.workers.claims.rounds, self.jobs._rounds()]

    async def _read_state(self, job_id: bytes):
        state, _answered = await read_job(self.dht, job_id)
        return state

    async def _read_facts(self, job_id: bytes) -> list:
        state, _answered = await read_job(self.dht, job_id)
        return list(state.facts) if state is not None else []

    def _on_worker_state(self, job_id: bytes, status: str, attempt: int) -> None:
        self.index.mark_own(job_id)

    def _rpc_api_address(self, env, addr) -> list:
        """A peer asks where our REST API listens (for a mesh-wide job list)."""
        return list(self.api_address) if self.api_address else []

    def status(self) -> dict:
        p2p = self.dht.address
        return {
            "node_id": self.identity.node_id.hex(),
            "public_key": self.identity.public_key.hex(),
            "version": __version__,
            "p2p": f"{p2p[0]}:{p2p[1]}",
            "api": f"{self.api_address[0]}:{self.api_address[1]}" if self.api_address else None,
            "peers": len(self.dht.router),
            "peer_list": [
                {"node_id": c.id.hex(), "address": f"{c.ip}:{c.port}"} for c in self.dht.router.contacts()[:64]
            ],
            "uptime_seconds": round(self._monotonic() - self.started_at, 3),
            # Which event loop runs this node: "uvloop" or "asyncio" (workmesh/app.py).
            "event_loop": type(asyncio.get_running_loop()).__module__.split(".")[0],
            "jobs": self.index.counts(),
            "job_types": sorted(self.registry.names),
            "workers": {"slots": self.config.workers, "busy": self.workers.busy},
            "replication": {"replicas": self.config.replicas, "quorum": self.config.quorum, "k": self.config.dht.k},
            "storage": {**self.store.budget(), **self.retention.statistics(),
                        "tombstones": self.store.statistics()["tombstones"]},
            "dht": {**self.dht.statistics(), **{f"store_{k}": v for k, v in self.store.statistics().items()}},
            "gossip": {
                **self.gossip.statistics(),
                **{k: self.counters[k] for k in ("reannounced", "reannounce_over_budget")},
            },
            "leases": {**self.replica.statistics(), **self.workers.statistics()},
            # The job's consensus: recovery rounds of undecided jobs (node/deciding.py),
            # and every round this node ran as worker, canceller or recovering replica.
            "consensus": {
                **self.decider.counters,
                **self.repairs.counters,
                **{k: sum(d.counters[k] for d in self._drivers()) for k in self.decider.driver.counters},
            },
            "jobs_api": dict(self.jobs.counters),
            "waits": self.watch.statistics(),
            "tasks": self.tasks.statistics(),
            "derive_cache": self._derive_statistics(),
            "crypto": {**verify_statistics(), **{f"signer_{k}": v for k, v in TurnSigner.of(self.identity).stats.items()}},
            "blobs": self.blobs.statistics(),
        }

    def metrics_registry(self):
        return self.metrics.registry
