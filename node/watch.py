"""Clients waiting on jobs (``GET /jobs/{id}?wait=``): one registry per node.

Theory of operation. A wait enters ``with watch.watching(job_id, ...) as w``;
the job's entry exists only while at least one client waits on it (reference
counted), so a wait on an unknown, finished or vanished id leaves nothing
behind, whatever way it ends (answer, timeout, error, client gone).

Two things end a wait early:

- ``notify(job_id)``: the node stored facts of the job (its own store, a push
  from a replica, a read repair). Every waiter on the job wakes at once; each
  generation of waiters has its own ``asyncio.Event`` (a new one replaces it
  when it fires), so nobody has to clear an event another waiter still reads.
- a re-read of the job's replicas (``refresh``) that the waiters of one job
  share: at most one read of a job is in flight at a time, and the next one is
  due only after the job's poll interval, which doubles from its first value
  up to its maximum. A thousand clients waiting on one job cost one read per
  interval, not a thousand; a node that is not a replica of the job (nobody
  pushes changes to it) backs off instead of re-reading at a fixed rate.

The registry holds no task: the read runs in the waiter that found it due;
the others await its outcome, and if that waiter goes away (its client
disconnected) the next one reads instead.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any


class Watched:
    """One job someone waits on: its waiters, wake-ups and shared reads."""

    __slots__ = ("job_id", "waiters", "changed", "state", "poll_s", "poll_s_max", "due_at", "reading")

    def __init__(self, job_id: bytes, poll_s: float, poll_s_max: float, now: float) -> None:
        self.job_id = job_id
        self.waiters = 0
        self.changed = asyncio.Event()
        self.state: Any = None  # what the latest shared read found
        self.poll_s = poll_s
        self.poll_s_max = poll_s_max
        self.due_at = now + poll_s
        self.reading: asyncio.Future | None = None

    def fire(self) -> None:
        """Wake every current waiter; later ones wait on a fresh event."""
        event, self.changed = self.changed, asyncio.Event()
        event.set()

    def backoff(self, now: float) -> None:
        self.poll_s = min(self.poll_s_max, self.poll_s * 2)
        self.due_at = now + self.poll_s


class JobWatch:
    """Every job some client waits on, and how to wake or re-read it."""

    def __init__(self, monotonic: Callable[[], float] | None = None) -> None:
        # The event loop's clock by default: the one asyncio's timeouts use.
        self._monotonic = monotonic or (lambda: asyncio.get_running_loop().time())
        self._jobs: dict[bytes, Watched] = {}
        self.counters = {"waits": 0, "wakeups": 0, "reads": 0, "reads_shared": 0}

    @contextmanager
    def watching(self, job_id: bytes, poll_s: float, poll_s_max: float) -> Iterator[Watched]:
        """Wait on ``job_id`` for the ``with`` block. The first waiter of a job
        sets its poll schedule (``poll_s`` doubling up to ``poll_s_max``)."""
        entry = self._jobs.get(job_id)
        if entry is None:
            entry = self._jobs[job_id] = Watched(job_id, poll_s, poll_s_max, self._monotonic())
        entry.waiters += 1
        self.counters["waits"] += 1
        try:
            yield entry
        finally:
            entry.waiters -= 1
            if entry.waiters == 0 and self._jobs.get(job_id) is entry:
                del self._jobs[job_id]

    def notify(self, job_id: bytes) -> None:
        """Facts of ``job_id`` were stored here: wake its waiters."""
        entry = self._jobs.get(job_id)
        if entry is not None:
            self.counters["wakeups"] += 1
            entry.fire()

    async def wait_changed(self, entry: Watched, deadline: float) -> bool:
        """Until the job changes (True), or its next read is due or the
        deadline passes (False)."""
        timeout_s = min(entry.due_at, deadline) - self._monotonic()
        if timeout_s <= 0:
            return False
        try:
            await asyncio.wait_for(entry.changed.wait(), timeout_s)
            return True
        except TimeoutError:
            return False

    def read_due(self, entry: Watched) -> bool:
        return entry.reading is not None or self._monotonic() >= entry.due_at

    async def refresh(self, entry: Watched, read: Callable[[], Awaitable[Any]]) -> Any:
        """The job's state from one read shared by its waiters: join the read
        in flight, or run one. Raises what the read raised."""
        while entry.reading is not None:
            pending = entry.reading
            await asyncio.wait([pending])  # our cancellation does not cancel it
            if not pending.cancelled():
                self.counters["reads_shared"] += 1
                try:
                    return pending.result()
                finally:
                    pending = None  # no cycle: exception -> traceback -> this frame -> future -> exception
            # Its reader went away mid-read: read ourselves.
        pending = entry.reading = asyncio.get_running_loop().create_future()
        self.counters["reads"] += 1
        try:
            state = await read()
        except asyncio.CancelledError:
            pending.cancel()
            raise
        except Exception as exc:
            pending.set_exception(exc)
            pending.exception()  # retrieved: nobody else may be waiting
            raise
        else:
            pending.set_result(state)
            entry.state = state
        finally:
            # The exception's traceback holds this frame: drop the future so
            # a failed read (a 404) is freed at once, not by the collector.
            pending = None
            entry.reading = None
            entry.backoff(self._monotonic())
        entry.fire()  # the other waiters of this job see what was read
        return state

    def __len__(self) -> int:
        return len(self._jobs)

    def statistics(self) -> dict[str, int]:
        return {
            "jobs_watched": len(self._jobs),
            "waiting": sum(e.waiters for e in self._jobs.values()),
            **self.counters,
        }
