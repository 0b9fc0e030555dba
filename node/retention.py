"""Retention: a decided job's facts are dropped once its retention has passed.

Every job system expires finished work (Celery's ``result_expires``, RQ's
``result_ttl``); a mesh that kept every fact would fill its stores and then
refuse work. Each node that holds a job, replica or copy, drops it on its
own: ``retention_s`` after it *saw* the job decided (its own wall clock when
the decision first showed in its store, written to the store so that a
restart does not reset it). No coordination is needed because a decision is
final (terminal states never change) and the dropped key is remembered as
*gone* (``FactStore.forget``): a replica that saw the decision later, and
republishes it meanwhile, cannot bring it back. A job that is not decided
is never dropped: the sweep derives the job's state again just before it
drops it.

**Under pressure** a decided job goes before its time. A store has budgets
(bytes, keys, and records per author: ``dht.records.StorageLimits``), and a
replica signs about four facts per job it holds, so a 3-node mesh reached the
records-per-author budget after some 23,000 jobs, within a retention of days
and minutes of full load: every replica then refused the grants the next job
needed, and accepted jobs waited for ever. Now, when the fullest budget is
above :data:`PRESSURE_HIGH`, the sweep drops decided jobs, the one seen
decided first first (its due time is the earliest), until it is below
:data:`PRESSURE_LOW`; an undecided job is never dropped, so what a full store
of live jobs refuses is new work, not the jobs it holds.

The pure part is :func:`parse_duration` and :func:`expires_in_s`; the shell
(:class:`Retention`) keeps a heap of due times on the node's monotonic clock
and is driven by the node's task group (``run``), or by calling ``sweep``.
"""

from __future__ import annotations

import asyncio
import heapq
import math
import re
from collections.abc import Callable
from typing import Any

from workmesh.node import lifecycle

RETENTION_S_DEFAULT = 7 * 86_400.0
SWEEP_BATCH_MAX = 256  # keys dropped per sweep, then the loop yields
SWEEP_INTERVAL_S_MAX = 1.0  # the sweep looks at its heap at least this often
# The fullest storage budget above which decided jobs are dropped early, and
# below which that stops (a band, so that drops come in batches, not one per job).
PRESSURE_HIGH = 0.9
PRESSURE_LOW = 0.8
PRESSURE_BATCH = 32  # decided jobs dropped early per sweep; the next sweep looks again at once

_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86_400.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")


def parse_duration(text: str) -> float:
    """``"90"``, ``"90s"``, ``"30m"``, ``"12h"``, ``"7d"`` -> seconds (> 0)."""
    m = _DURATION.match(str(text).lower())
    if m is None:
        raise ValueError(f"expected a duration such as 90, 90s, 30m, 12h or 7d, got {text!r}")
    seconds = float(m.group(1)) * _UNITS[m.group(2)]
    if seconds <= 0:
        raise ValueError("a retention must be positive")
    return seconds


def expires_in_s(decided_ms: int, now_ms: int, retention_s: float) -> float:
    """Seconds until a job decided at wall time ``decided_ms`` may be dropped.

    The age is clamped to [0, retention]: a wall clock stepped back does not
    extend a retention past one more period, and one stepped forward drops
    at once what is due (never a job that is not decided)."""
    age_s = min(max(0.0, (now_ms - decided_ms) / 1000.0), retention_s)
    return retention_s - age_s


class Retention:
    """Drops the store's decided keys when their retention has passed."""

    def __init__(
        self,
        store: Any,  # dht.storage.FactStore
        retention_s: float,
        *,
        monotonic: Callable[[], float],
        wall_ms: Callable[[], int],
        state_of: Callable[[bytes], lifecycle.JobState | None],
        on_dropped: Callable[[bytes], None] = lambda key: None,
        batch_max: int = SWEEP_BATCH_MAX,
        pressure_batch: int = PRESSURE_BATCH,
    ) -> None:
        self.store = store
        self.retention_s = retention_s
        self._monotonic = monotonic
        self._wall_ms = wall_ms
        self._state_of = state_of
        self._on_dropped = on_dropped
        self._batch_max = batch_max
        self._pressure_batch = pressure_batch
        self._due: list[tuple[float, bytes]] = []
        self._scheduled: set[bytes] = set()
        self._wakeup = asyncio.Event()
        # jobs_dropped: their retention passed; jobs_dropped_early: under pressure.
        self.counters = {"jobs_dropped": 0, "facts_dropped": 0, "kept_undecided": 0, "jobs_dropped_early": 0}
        self.pressed = False  # between PRESSURE_HIGH and PRESSURE_LOW, on the way down

    def observe(self, key: bytes, state: lifecycle.JobState | None) -> None:
        """The store's state of ``key`` changed: schedule its drop once decided."""
        if state is None or state.status not in lifecycle.TERMINAL or key in self._scheduled:
            return
        now_ms = self._wall_ms()
        decided_ms = self.store.mark_decided(key, now_ms)
        due = self._monotonic() + expires_in_s(decided_ms, now_ms, self.retention_s)
        self._scheduled.add(key)
        if not self._due or due < self._due[0][0] or (not self.pressed and self.store.fullness(PRESSURE_LOW) > PRESSURE_HIGH):
            self._wakeup.set()  # a sooner drop, or the store just came under pressure
        heapq.heappush(self._due, (due, key))

    def next_due_in(self, now: float) -> float | None:
        return max(0.0, self._due[0][0] - now) if self._due else None

    def sweep(self, now: float) -> int:
        """Drop what is due at ``now``, and while the store is under pressure
        what is due next (at most ``batch_max`` keys, in one transaction);
        keys dropped."""
        due: list[bytes] = []
        full = self.store.fullness(PRESSURE_LOW)
        if full > PRESSURE_HIGH:
            self.pressed = True
        elif full < PRESSURE_LOW:
            self.pressed = False
        early_count = 0
        # About the share of held jobs above PRESSURE_LOW, at most a batch: the
        # next sweep (at once) sees what these drops freed.
        quota = min(self._pressure_batch, max(1, math.ceil((full - PRESSURE_LOW) / full * self.store.key_count()))) if full else 0
        while self._due and len(due) < self._batch_max:
            early = self._due[0][0] > now
            if early and (not self.pressed or early_count >= quota):
                break
            _, key = heapq.heappop(self._due)
            self._scheduled.discard(key)
            state = self._state_of(key)
            if state is None or state.status not in lifecycle.TERMINAL:
                # Never happens to a decided job (terminal states are final);
                # a key already dropped, or not a job, is left alone.
                self.counters["kept_undecided"] += state is not None
                continue
            due.append(key)
            early_count += early
        if not due:
            return 0
        self.counters["facts_dropped"] += self.store.forget_many(due, self._wall_ms())
        self.counters["jobs_dropped"] += len(due) - early_count
        self.counters["jobs_dropped_early"] += early_count
        for key in due:
            self._on_dropped(key)
        return len(due)

    async def run(self) -> None:
        """The sweep loop (one of the node's tasks)."""
        dropped = 0
        while True:
            # Under pressure, sweep again at once while sweeps still drop.
            wait = 0.0 if self.pressed and dropped else self.next_due_in(self._monotonic())
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), min(SWEEP_INTERVAL_S_MAX, wait if wait is not None else 1e9))
            except asyncio.TimeoutError:
                pass
            dropped = self.sweep(self._monotonic())
            if dropped >= self._batch_max:
                await asyncio.sleep(0)

    def statistics(self) -> dict[str, Any]:
        return {"retention_s": self.retention_s, "scheduled": len(self._scheduled), "pressed": self.pressed, **self.counters}
