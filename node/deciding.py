"""Replicas finish undecided jobs: the recovery rounds of the job's consensus.

A job whose outcome is proposed but not decided (a final result or a cancel
is stored, votes or seals split, the proposer died between two steps) is not
left waiting for its proposer: once it has waited ``decide_after_s`` (a lease
and its margin by default, plus one second per rank so that the job's first
replica goes first), a placed replica runs a recovery round at a ballot above
every one it knows (:meth:`node.proposer.RoundDriver.recover`). The round
finishes the certified subject if any promise reports one, or proposes the
cancel, or the final result of the newest confirmed attempt. A round that
cannot finish (replicas down, another proposer's higher ballot) is tried
again later with a doubled wait. Bounded: at most ``ROUNDS_MAX`` rounds at
once and ``TRACKED_MAX`` jobs remembered.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from workmesh.node import facts as F
from workmesh.node import lifecycle
from workmesh.node.lifecycle import JobState
from workmesh.node.proposer import RoundDriver

ROUNDS_MAX = 4  # recovery rounds one node runs at once
TRACKED_MAX = 10_000  # undecided jobs whose next round time a node remembers
RANK_STEP_S = 1.0  # the job's k-th replica waits k more seconds before its first round
WAIT_MAX_S = 60.0


def awaits_decision(state: JobState) -> bool:
    """True when an outcome was proposed but the job is not decided: a cancel,
    a final result, or a vote or seal for one is stored."""
    if state.terminal:
        return False
    configs = {f.fact_id for f in state.facts if f.kind == F.CONFIG}
    for f in state.facts:
        if f.kind == F.CANCEL:
            return True
        if f.kind == F.RESULT and lifecycle.is_final_result(state.submit, f):
            return True
        if (
            f.kind == F.BALLOT
            and f.body.step in (F.VOTE, F.SEAL)
            and f.body.subject not in configs  # a replica-set change is the repairs' business
            and (state.epoch_start is None or f.body.ballot > state.epoch_start)
        ):
            return True
    return False


class Decider:
    def __init__(
        self,
        driver: RoundDriver,
        me: bytes,
        wait_s: Callable[[JobState], float],
        spawn: Callable,
        log,
    ) -> None:
        self.driver = driver
        self.me = me
        self.wait_s = wait_s
        self.spawn = spawn
        self.log = log
        self._due: OrderedDict[bytes, tuple[float, float]] = OrderedDict()  # job -> (due at, wait)
        self._running: set[bytes] = set()
        self.counters = {"recoveries": 0, "recoveries_decided": 0, "recoveries_over_budget": 0}

    def note(self, state: JobState, now: float) -> float | None:
        """Remember when this replica should run a round for ``state``'s job (None: not needed)."""
        key = state.job_id
        if not state.is_replica(self.me) or not awaits_decision(state):
            self._due.pop(key, None)
            return None
        got = self._due.get(key)
        if got is None:
            wait = self.wait_s(state) + RANK_STEP_S * state.replicas.index(self.me)
            got = self._due[key] = (now + wait, wait)
            while len(self._due) > TRACKED_MAX:
                self._due.popitem(last=False)
        return got[0]

    def take(self, state: JobState, now: float) -> bool:
        """Start a recovery round for the job if it is due; True when started
        (or running already): the caller then need not announce it."""
        key = state.job_id
        got = self._due.get(key)
        if got is None or now < got[0]:
            return False
        if key in self._running:
            return True
        if len(self._running) >= ROUNDS_MAX:
            self.counters["recoveries_over_budget"] += 1
            return False
        wait = min(WAIT_MAX_S, got[1] * 2)
        self._due[key] = (now + wait, wait)
        self._running.add(key)
        self.counters["recoveries"] += 1
        self.spawn(self._recover(state), "recover")
        return True

    def due_at(self, job_id: bytes) -> float | None:
        got = self._due.get(job_id)
        return got[0] if got is not None else None

    async def _recover(self, state: JobState) -> None:
        try:
            out = await self.driver.recover(state)
            if out.decided is not None:
                self.counters["recoveries_decided"] += 1
            self.log.info(
                "job_recovery",
                job_id=state.job_id.hex(),
                phase=str(out.phase),
                subject=out.subject.kind if out.subject is not None else None,
            )
        finally:
            self._running.discard(state.job_id)

