"""The node's background tasks, owned by the node: :meth:`TaskSet.stop`
cancels every one and returns once they have all ended.

Every task a node starts for itself (its loops, worker attempts, gossip
sends, recovery rounds, blob replication) is spawned here, so that a stopped
node leaves nothing running behind it: no task touches the store after it is
closed, and a test or the simulator that stops a node sees it gone.

Why not ``asyncio.TaskGroup``: it has the same guarantee (no task outlives
the group), but it also cancels every task when one fails and raises that
failure from its ``async with``. That is right for one request fanning out,
wrong for a node's long-lived services: a failed gossip send must not stop
the worker loop. And a TaskGroup is entered by one task for the group's
whole life, while ``Node.start`` returns once the node runs. So this is a set
of tasks with TaskGroup's ownership and none of its fail-all: a failure is
counted and reported (``on_error``), the other tasks go on.

A task spawned once :meth:`stop` began is never started: its coroutine is
closed and a cancelled future stands for it (a task cancelled while it stops
may spawn; it must not outlive the node either).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

STOP_WAIT_S = 10.0  # a task that ignores its cancellation is left behind (and reported) after this


class TaskSet:
    def __init__(self, on_error: Callable[[str, BaseException], None], on_stuck: Callable[[list[str]], None] | None = None) -> None:
        self._tasks: dict[asyncio.Future, str] = {}
        self._stopping = False
        self._on_error = on_error
        self._on_stuck = on_stuck or (lambda names: None)
        self.counters = {"spawned": 0, "task_errors": 0}

    def spawn(self, coro: Awaitable[Any], name: str) -> asyncio.Future:
        """Run ``coro`` in a task of this set; its failure is reported, never lost."""
        if self._stopping:
            if asyncio.iscoroutine(coro):
                coro.close()
            elif asyncio.isfuture(coro):
                coro.cancel()
            never: asyncio.Future = asyncio.get_running_loop().create_future()
            never.cancel()
            return never
        if asyncio.iscoroutine(coro):
            task: asyncio.Future = asyncio.get_running_loop().create_task(coro, name=name)
        else:
            task = asyncio.ensure_future(coro)
        self._tasks[task] = name
        self.counters["spawned"] += 1
        task.add_done_callback(self._reap)
        return task

    def _reap(self, task: asyncio.Future) -> None:
        name = self._tasks.pop(task, "task")
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self.counters["task_errors"] += 1
            self._on_error(name, exc)

    def __len__(self) -> int:
        return len(self._tasks)

    async def stop(self, wait_s: float = STOP_WAIT_S) -> None:
        """Cancel every task and wait until they have ended (at most ``wait_s``:
        the ones still running then are reported to ``on_stuck``)."""
        self._stopping = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if not tasks:
            return
        _done, pending = await asyncio.wait(tasks, timeout=wait_s)
        if pending:
            self._on_stuck(sorted(self._tasks.get(t, "task") for t in pending))

    def statistics(self) -> dict[str, int]:
        return {"running": len(self._tasks), **self.counters}
