"""What this node knows of jobs locally, and when to look at each again.

Every time facts for a job are stored here (as a replica), the job's state is
derived again and the index is updated: its summary (for ``GET /jobs`` and the
counts in ``/status``) and its next *due* time. A due job is one a replica
should act on: a pending job nobody claimed (re-announce it, with a delay
that doubles), or a running job whose lease this replica will judge stale
(re-announce it so that a worker takes it over). This is the safety net that
makes a job independent of any single gossip message.
"""

from __future__ import annotations

import heapq
from collections import Counter, OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass

from workmesh.node import lifecycle


@dataclass(slots=True)
class Summary:
    job_id: bytes
    job_type: str
    status: str
    created_ms: int
    state: lifecycle.JobState


UNSETTLED_MAX = 10_000  # own jobs whose state this node still reads again (oldest forgotten first)


class JobIndex:
    def __init__(
        self, size_max: int, reannounce_first_s: float, reannounce_max_s: float, rank_step_s: float = 0.0
    ) -> None:
        self._jobs: OrderedDict[bytes, Summary] = OrderedDict()
        self._size_max = size_max
        self._first_s = reannounce_first_s
        self._max_s = reannounce_max_s
        # The deadline of a pending job (a retry's backoff after an error, a
        # split vote, a first grant never confirmed) is the same moment on
        # every replica: each waits this long per rank after it, so the first
        # replica's re-announcement draws one claim and the claim, stored on
        # the others, moves their due time before they speak. A running job's
        # stale holder is not staggered: each replica judges it on its own
        # clock from the renews it got, which may lag by a renew period, and
        # a takeover must not wait for the replica that judges it last.
        self._rank_step_s = rank_step_s
        self._due: list[tuple[float, bytes]] = []
        self._next_due: dict[bytes, float] = {}
        self._delay: dict[bytes, float] = {}
        # Jobs this node accepted or ran: listed and counted here even when
        # it is not one of their replicas (see note), newest last; and those
        # of them not yet seen finished or held as a replica here.
        self._own: OrderedDict[bytes, None] = OrderedDict()
        self._unsettled: OrderedDict[bytes, None] = OrderedDict()

    def update(self, state: lifecycle.JobState, now: float, lease_deadline: float | None, rank: int = 0) -> str | None:
        """Record the job's new state; the previous status if it changed, else None.

        ``rank``: this node's position among the job's replicas (0 speaks
        first); it staggers the lease deadline of a pending job."""
        job_id = state.job_id
        if lease_deadline is not None and state.status == lifecycle.PENDING:
            lease_deadline += rank * self._rank_step_s
        old = self._jobs.get(job_id)
        spec = state.submit.body
        self._jobs[job_id] = Summary(job_id, spec.job_type, state.status, spec.created_ms, state)
        while len(self._jobs) > self._size_max:
            evicted, _ = self._jobs.popitem(last=False)
            self._forget_due(evicted)
        if state.status in lifecycle.TERMINAL:
            self._forget_due(job_id)
        elif state.status == lifecycle.RUNNING and lease_deadline is not None:
            self._delay.pop(job_id, None)
            self._schedule(job_id, lease_deadline)
        elif state.status == lifecycle.PENDING and job_id not in self._next_due:
            # First seen: re-announce later, by rank; but a job first seen
            # with a grant already (claimed in the write that placed it) is
            # looked at again no later than when that grant goes stale.
            when = now + self._first_s * (1 + rank)
            self._schedule(job_id, when if lease_deadline is None else min(when, lease_deadline))
        elif lease_deadline is not None:
            self._schedule(job_id, lease_deadline)
        if old is None:
            return ""
        return old.status if old.status != state.status else None

    def mark_own(self, job_id: bytes) -> None:
        """This node accepted or ran ``job_id``."""
        for marks, size in ((self._own, self._size_max), (self._unsettled, UNSETTLED_MAX)):
            marks[job_id] = None
            marks.move_to_end(job_id)
            while len(marks) > size:
                marks.popitem(last=False)

    def is_own(self, job_id: bytes) -> bool:
        return job_id in self._own

    def unsettled(self, node_id: bytes, limit: int) -> list[bytes]:
        """Up to ``limit`` own jobs, newest first, that this node holds no
        current copy of: not indexed, or indexed unfinished and not as a
        replica. Jobs seen finished or held as a replica are forgotten here."""
        out: list[bytes] = []
        for job_id in reversed(list(self._unsettled)):
            summary = self._jobs.get(job_id)
            if summary is not None and (summary.state.terminal or summary.state.is_replica(node_id)):
                del self._unsettled[job_id]
            elif len(out) < limit:
                out.append(job_id)
        return out

    def note(self, state: lifecycle.JobState) -> None:
        """Show a job this node accepted or ran but is not a replica of: in
        the list and the counts, never due (its replicas re-announce it)."""
        spec = state.submit.body
        self._jobs[state.job_id] = Summary(state.job_id, spec.job_type, state.status, spec.created_ms, state)
        while len(self._jobs) > self._size_max:
            evicted, _ = self._jobs.popitem(last=False)
            self._forget_due(evicted)

    def _schedule(self, job_id: bytes, when: float) -> None:
        self._next_due[job_id] = when
        heapq.heappush(self._due, (when, job_id))

    def _forget_due(self, job_id: bytes) -> None:
        self._next_due.pop(job_id, None)
        self._delay.pop(job_id, None)

    def unfinished(self, limit: int) -> list[lifecycle.JobState]:
        """Up to ``limit`` indexed jobs that are not terminal, oldest first."""
        out = []
        for summary in self._jobs.values():
            if summary.status not in lifecycle.TERMINAL:
                out.append(summary.state)
                if len(out) >= limit:
                    break
        return out

    def remind(self, job_id: bytes, when: float) -> None:
        """Look at ``job_id`` again no later than ``when`` (a recovery round's time)."""
        if job_id in self._jobs and self._next_due.get(job_id, float("inf")) > when:
            self._schedule(job_id, when)

    def pop_due(self, now: float, limit: int) -> list[Summary]:
        """Jobs due now (at most ``limit``); each is rescheduled with backoff."""
        out: list[Summary] = []
        while self._due and self._due[0][0] <= now and len(out) < limit:
            when, job_id = heapq.heappop(self._due)
            if self._next_due.get(job_id) != when:
                continue  # superseded by a later schedule
            summary = self._jobs.get(job_id)
            if summary is None or summary.status in lifecycle.TERMINAL:
                self._forget_due(job_id)
                continue
            delay = min(self._max_s, self._delay.get(job_id, self._first_s / 2) * 2)
            self._delay[job_id] = delay
            self._schedule(job_id, now + delay)
            out.append(summary)
        # Compact the heap when superseded entries pile up.
        if len(self._due) > 4 * max(16, len(self._next_due)):
            self._due = [(w, j) for j, w in self._next_due.items()]
            heapq.heapify(self._due)
        return out

    def next_due_in(self, now: float) -> float | None:
        while self._due and self._next_due.get(self._due[0][1]) != self._due[0][0]:
            heapq.heappop(self._due)
        return max(0.0, self._due[0][0] - now) if self._due else None

    def forget(self, job_id: bytes) -> None:
        """The job's facts were dropped here (its retention passed)."""
        self._jobs.pop(job_id, None)
        self._forget_due(job_id)

    def get(self, job_id: bytes) -> Summary | None:
        return self._jobs.get(job_id)

    def page(self, status: str | None, limit: int, after: bytes | None) -> tuple[list[Summary], bytes | None]:
        """Jobs in the order this node learned of them; ``after`` is the last id of the previous page."""
        items = list(self._jobs.values())
        start = 0
        if after is not None:
            for i, s in enumerate(items):
                if s.job_id == after:
                    start = i + 1
                    break
        out = []
        for s in items[start:]:
            if status is None or s.status == status:
                out.append(s)
                if len(out) == limit:
                    break
        more = out and out[-1] is not items[-1] and len(out) == limit
        return out, (out[-1].job_id if more else None)

    def newest_first(self) -> Iterator[Summary]:
        """Every summary, the job learned of last first (the dashboard's list; do not await while iterating)."""
        return reversed(self._jobs.values())

    def counts(self) -> dict[str, int]:
        c = Counter(s.status for s in self._jobs.values())
        return {status: c.get(status, 0) for status in (lifecycle.PENDING, lifecycle.RUNNING, lifecycle.DONE, lifecycle.FAILED, lifecycle.CANCELLED)}

    def __len__(self) -> int:
        return len(self._jobs)
