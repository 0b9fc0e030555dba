"""Replica-set repair: a job outlives its placed replicas leaving for good.

A job's replicas are fixed when it is placed; in a peer-to-peer mesh nodes
leave for good (a wiped node even returns with a new id). Every
``check_s``, a replica pings the other replicas of the unfinished jobs it
holds (at most ``PEERS_MAX`` nodes per check). A replica that has not
answered for ``repair_after_s`` (default 3 minutes, ``--repair-after``)
is gone for this job: the first live replica in the set's order (so one
node acts, not all) proposes a new replica set, the survivors and the
nodes now closest to the job id in place of the gone ones, as a ``config``
fact, and decides it through the job's own consensus
(:meth:`node.proposer.RoundDriver.recover`), at a ballot above every one
the job shows. A quorum of the current set must promise, so a repair never
races a decision: if a promise reports a certified outcome, that outcome
is finished instead, and a job with a final result or a cancel is decided
rather than moved. A repair preempts a running attempt (the attempt runs
again, under the next attempt number, in the new set), so while a job runs
it waits until one more loss would leave no quorum. Once decided, the job's facts are handed to the new
members. The new set owns every ballot above the one that decided it
(``lifecycle.epochs_of``), so a job survives replicas leaving one at a time
as long as a quorum survives each step.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from workmesh.crypto.identity import Identity
from workmesh.node import consensus, facts as F
from workmesh.node.lifecycle import RUNNING, JobState
from workmesh.node.proposer import RoundDriver

PEERS_MAX = 64  # replicas pinged per check
JOBS_MAX = 256  # unfinished jobs looked at per check
REPAIRS_MAX = 2  # repairs one node runs at once
PING_TIMEOUT_S = 2.0


class Repairs:
    def __init__(
        self,
        identity: Identity,
        dht: Any,
        driver: RoundDriver,
        jobs: Callable[[], list[JobState]],
        read: Callable[[bytes], Awaitable[JobState | None]],
        monotonic: Callable[[], float],
        wall_ms: Callable[[], int],
        *,
        repair_after_s: float,
        check_s: float,
        log: Any,
    ) -> None:
        self.identity = identity
        self.dht = dht
        self.driver = driver
        self.jobs = jobs
        self.read = read
        self.monotonic = monotonic
        self.wall_ms = wall_ms
        self.repair_after_s = repair_after_s
        self.check_s = check_s
        self.log = log
        self.silent_since: dict[bytes, float] = {}  # node id -> when it first failed to answer
        self._running: set[bytes] = set()
        self.counters = {"repair_checks": 0, "repairs": 0, "repairs_decided": 0, "repairs_finished_outcome": 0}

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.check_s)
            try:
                await self.check()
            except Exception as exc:  # a failed check must not end the loop
                self.log.warning("repair_check_failed", error=repr(exc))

    async def check(self) -> None:
        self.counters["repair_checks"] += 1
        me = self.identity.node_id
        jobs = [s for s in self.jobs() if not s.terminal and s.is_replica(me)][:JOBS_MAX]
        peers: list[bytes] = []
        for state in jobs:
            for rid in state.replicas:
                if rid != me and rid not in peers:
                    peers.append(rid)
        peers = peers[:PEERS_MAX]
        answered = await asyncio.gather(*(self._alive(p) for p in peers))
        now = self.monotonic()
        for peer, ok in zip(peers, answered):
            if ok:
                self.silent_since.pop(peer, None)
            else:
                self.silent_since.setdefault(peer, now)
        for peer in list(self.silent_since):
            if peer not in peers:
                del self.silent_since[peer]
        for state in jobs:
            gone = self.gone(state, now)
            if not gone or state.job_id in self._running or len(self._running) >= REPAIRS_MAX:
                continue
            live = [r for r in state.replicas if r not in gone]
            if not live or live[0] != me:
                continue  # the first live replica repairs
            if state.status == RUNNING and len(live) > state.spec.quorum:
                # A repair preempts the running attempt (its worker's lease is
                # below the repair's ballot, and the attempt runs again in the
                # new set): wait while one more loss would still leave a quorum.
                continue
            self._running.add(state.job_id)
            self.dht.protocol.spawn(self._repair(state.job_id, gone), "repair")

    def gone(self, state: JobState, now: float) -> list[bytes]:
        return [
            r
            for r in state.replicas
            if r in self.silent_since and now - self.silent_since[r] >= self.repair_after_s
        ]

    async def _alive(self, node_id: bytes) -> bool:
        found = await self.dht.resolve([node_id])
        if not found:
            return False
        reply = await self.dht.call(found[0], "ping", [], timeout_s=PING_TIMEOUT_S)
        return reply is not None

    async def _repair(self, job_id: bytes, gone: list[bytes]) -> None:
        try:
            await self.repair(job_id, gone)
        finally:
            self._running.discard(job_id)

    async def repair(self, job_id: bytes, gone: list[bytes]) -> bool:
        """Decide a new replica set for ``job_id`` without ``gone``; True when decided."""
        state = await self.read(job_id)
        if state is None or state.terminal:
            return False
        gone = [g for g in gone if g in state.replicas]
        if not gone:
            return False  # repaired already (the check's view was older)
        self.counters["repairs"] += 1
        if consensus.free_choice(state) is not None:
            # An outcome waits for its decision: decide it rather than move the job.
            out = await self.driver.recover(state)
            if out.decided is not None:
                self.counters["repairs_finished_outcome"] += 1
            return False
        spec = state.spec
        closest = await self.dht.replicas_for(job_id, count=2 * spec.replicas, fresh=True)
        keep = [r for r in state.replicas if r not in gone]
        fresh = [c.id for c in closest if c.id not in state.replicas and c.id not in self.silent_since]
        # Only nodes that answer now: a routing table may still hold nodes that left.
        alive = await asyncio.gather(*(self._alive(i) for i in fresh))
        fresh = [i for i, ok in zip(fresh, alive) if ok]
        new = keep + fresh[: spec.replicas - len(keep)]
        if len(new) < spec.replicas:
            self.log.warning("repair_no_candidates", job_id=job_id.hex(), needed=spec.replicas - len(keep))
            return False
        config = F.sign(
            self.identity, F.CONFIG, F.Config(job_id, state.epoch + 1, b"".join(new), self.wall_ms())
        )
        out = await self.driver.recover(state, own=config, extra=[config])
        if out.subject is None or out.subject.fact_id != config.fact_id:
            self.log.info("repair_not_decided", job_id=job_id.hex(), phase=str(out.phase))
            return False
        # Hand the job to the new members: everything it holds, the new set and its seals.
        facts = [*state.facts, config, *out.seals]
        added = [r for r in new if r not in state.replicas]
        await self.dht.store(job_id, facts, targets=added, quorum=max(1, len(added)))
        self.counters["repairs_decided"] += 1
        self.log.info(
            "replicas_repaired",
            job_id=job_id.hex(),
            epoch=state.epoch + 1,
            gone=[g.hex()[:12] for g in gone],
            added=[a.hex()[:12] for a in added],
        )
        return True
