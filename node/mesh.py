"""What a handler may do in the mesh: read and write blobs, run CPU work off
the loop, and submit jobs of its own ("jobs that submit jobs").

A handler that runs on the event loop (a coroutine function, not
``cpu=True``) receives ``ctx.mesh``, an instance of :class:`Mesh`, and
``ctx.release_slot``. Its CPU-heavy part goes through :meth:`Mesh.run_cpu`
(the node's process pool), so the loop keeps serving.

Fan-out (:meth:`Mesh.fan_out`) is the general form of a parent job:

1. the parent submits one child job per piece of work through the mesh
   (``JobOperations.submit``, from the node running the parent, which so
   becomes the children's submitter). Each child's idempotency key is
   ``child:<parent id>:<index>``, so a retried parent (a new attempt after a
   lost lease or a timeout) run by the same node finds the same children
   instead of submitting new ones. (A job id includes its submitter's key: a
   retry on another node submits new children, and the first ones run to
   their end unobserved);
2. it gives its worker slot back (``ctx.release_slot()``) and waits on the
   children with long-polls, holding no slot: a mesh of busy parents cannot
   starve its own children;
3. every second while waiting it reads its own state: a parent that was
   cancelled cancels its children and ends. A parent task cancelled under it
   (lease lost, node stopping) checks the same in the background;
4. a child that fails or is cancelled fails the parent with the child's error.

The parent's lease keeps being renewed while it waits, as for any handler;
its ``timeout_seconds`` bounds the whole wait.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from workmesh.node.errors import JobNotFound, QuorumUnavailable
from workmesh.node.handlers import HandlerError, JobContext

PARENT_CHECK_S = 1.0  # a waiting parent reads its own status this often
CHILD_WAIT_S = 10.0  # one long-poll on one child, at most
CHILDREN_MAX = 1000  # children of one parent, at most


class Mesh:
    def __init__(self, node: Any, run_cpu: Callable[..., Any]) -> None:
        self._node = node
        self._run_cpu = run_cpu
        self.counters = {"children_submitted": 0, "children_cancelled": 0, "parents_waiting": 0}

    # -- blobs ------------------------------------------------------------------
    async def get_blob(self, digest: str, max_bytes: int | None = None) -> bytes:
        """A blob's bytes (verified), at most ``max_bytes``."""
        return await self._node.blobs.read_all(digest, max_bytes)

    async def put_blob(self, data: bytes) -> str:
        """Store ``data`` as a blob; its hash (refer to it as ``{"blob": hash}``)."""
        return await self._node.blobs.put_bytes(data)

    async def run_cpu(self, fn: Callable[[Any, Any], Any], arg: Any) -> Any:
        """``fn(arg, None)`` in the node's process pool (``fn`` must be a module-level function)."""
        return await self._run_cpu(fn, arg, None)

    # -- jobs -------------------------------------------------------------------
    async def submit(self, job_type: str, payload: Any, *, idempotency_key: str | None = None, **kw: Any) -> str:
        view = await self._node.jobs.submit(job_type, payload, idempotency_key=idempotency_key, **kw)
        return view.id

    async def status(self, job_id: str):
        """The job's current view (``api.service.JobView``)."""
        return await self._node.jobs.get(bytes.fromhex(job_id))

    async def cancel(self, job_ids: list[str], reason: str) -> None:
        for job_id in job_ids:
            try:
                await self._node.jobs.cancel(bytes.fromhex(job_id), reason)
                self.counters["children_cancelled"] += 1
            except Exception:  # already finished, or unreachable now: nothing to do here
                pass

    async def wait(self, job_id: str, timeout_s: float):
        """Long-poll one job until it is terminal or ``timeout_s`` passed; its view."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            left = deadline - loop.time()
            try:
                view = await self._node.jobs.get(bytes.fromhex(job_id), wait_s=max(0.0, min(CHILD_WAIT_S, left)))
            except (QuorumUnavailable, JobNotFound):
                view = None
                await asyncio.sleep(min(0.5, max(0.0, left)))
            if view is not None and (view.status in ("done", "failed", "cancelled") or left <= 0):
                return view
            if left <= 0:
                raise HandlerError(f"child job {job_id} unreadable")

    async def fan_out(self, ctx: JobContext, children: list[tuple[str, Any]], *, timeout_s: float = 3600.0) -> list:
        """Submit ``children`` (``(job type, payload)`` pairs), wait for all of
        them without holding a worker slot, and return their views in order.
        A failed or cancelled child raises :class:`HandlerError` with its error."""
        if len(children) > CHILDREN_MAX:
            raise HandlerError(f"at most {CHILDREN_MAX} child jobs per parent")
        ids = []
        for index, (job_type, payload) in enumerate(children):
            ids.append(await self.submit(job_type, payload, idempotency_key=f"child:{ctx.job_id}:{index}"))
            self.counters["children_submitted"] += 1
        if ctx.release_slot is not None:
            ctx.release_slot()
        self.counters["parents_waiting"] += 1
        try:
            views = await self._wait_children(ctx.job_id, ids, timeout_s)
        except asyncio.CancelledError:
            self._node.tasks.spawn(self._cancel_if_parent_cancelled(ctx.job_id, ids), "cancel_children")
            raise
        finally:
            self.counters["parents_waiting"] -= 1
        for view in views:
            if view.status != "done":
                raise HandlerError(view.error or f"child job {view.id} {view.status}")
        return views

    async def _wait_children(self, parent: str, ids: list[str], timeout_s: float) -> list:
        waits = [asyncio.ensure_future(self.wait(i, timeout_s)) for i in ids]
        try:
            pending = set(waits)
            while pending:
                done, pending = await asyncio.wait(pending, timeout=PARENT_CHECK_S, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    view = task.result()
                    if view.status in ("failed", "cancelled"):
                        # One child failing fails the parent: the others' work is wasted.
                        await self.cancel([i for i in ids if i != view.id], f"sibling {view.id} {view.status}")
                        raise HandlerError(view.error or f"child job {view.id} {view.status}")
                if pending and await self._parent_cancelled(parent):
                    await self.cancel(ids, f"parent {parent} cancelled")
                    raise HandlerError(f"parent {parent} was cancelled")
            return [t.result() for t in waits]
        finally:
            for task in waits:
                task.cancel()

    async def _parent_cancelled(self, parent: str) -> bool:
        try:
            state = await self._node.jobs.read_state(bytes.fromhex(parent))
        except Exception:
            return False
        return state.status == "cancelled"

    async def _cancel_if_parent_cancelled(self, parent: str, ids: list[str]) -> None:
        if await self._parent_cancelled(parent):
            await self.cancel(ids, f"parent {parent} cancelled")

    def statistics(self) -> dict[str, int]:
        return dict(self.counters)
