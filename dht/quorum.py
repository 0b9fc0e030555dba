"""Asking several contacts at once and returning before the slowest answers.

A replicated write or read needs a quorum of replicas, not all of them, and a
placement needs enough live nodes, not every ping: a dead contact must not
stall the caller for a whole RPC timeout. :func:`gather` runs one call per
contact and stops waiting once a caller's rule says it has enough plus a
grace for the stragglers; :func:`gather_quorum` is the replicas' rule, and
:func:`store_outcome` what a store learnt from the replicas' answers
(a :class:`dht.contract.StoreOutcome`).

Nothing here needs a server: the caller passes how to spawn a tracked task,
so calls still running when the wait ends go on (and are reaped) there.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

from workmesh.dht.contract import StoreOutcome
from workmesh.dht.routing import Contact

T = TypeVar("T")
Spawn = Callable[[Awaitable[Any], str], asyncio.Task]


def store_outcome(replicas: list[Contact], answers: dict[bytes, tuple], missing: tuple) -> StoreOutcome:
    """A store's outcome from each replica's (answered, stored all, refusals, produced)."""
    results = [answers.get(c.id, missing) for c in replicas]
    return StoreOutcome(
        stored_on=sum(1 for _, ok, _, _ in results if ok),
        answered=sum(1 for answered, _, _, _ in results if answered),
        asked=len(replicas),
        produced=[p for _, _, _, ps in results for p in ps],
        refusals={c.id: r[2] for c, r in zip(replicas, results) if r[2]},
        stored_ids=frozenset(c.id for c, r in zip(replicas, results) if r[1]),
        answered_ids=frozenset(c.id for c, r in zip(replicas, results) if r[0]),
    )


def call_once(fn: Callable[[StoreOutcome], None] | None) -> Callable[[StoreOutcome], None] | None:
    """``fn`` that runs on its first call only (a store may be retried)."""
    if fn is None:
        return None
    done = False

    def call(outcome: StoreOutcome) -> None:
        nonlocal done
        if not done:
            done = True
            fn(outcome)

    return call


async def gather(
    contacts: Iterable[Contact],
    call: Callable[[Contact], Awaitable[T]],
    *,
    spawn: Spawn,
    name: str,
    missing: T,
    success: Callable[[T], bool],
    enough: int,
    grace: Callable[[float], float],
    on_enough: Callable[[dict[bytes, T]], None] | None = None,
    until: Callable[[dict[bytes, T], set[bytes]], bool] | None = None,
) -> dict[bytes, T]:
    """Run ``call(contact)`` for every contact, each in a task ``spawn(coro,
    name)`` tracks; the answers by contact id, ``missing`` for a call that
    raised, was cancelled or still runs.

    Returns once every call finished, once ``until(answers so far, ids still
    pending)`` holds, or ``grace(seconds enough took)`` after ``enough``
    answers met ``success`` (from the start when ``enough`` is 0): the
    stragglers then cost no whole RPC timeout. ``on_enough(answers so far)``
    is called once, when ``enough`` succeeded while calls are still pending.
    Calls still running go on in their tasks."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    tasks = {spawn(call(c), name): c.id for c in contacts}
    answers: dict[bytes, T] = {}
    pending = set(tasks)
    grace_until = loop.time() + grace(0.0) if enough <= 0 else None
    while pending:
        timeout = None if grace_until is None else max(0.0, grace_until - loop.time())
        done, pending = await asyncio.wait(pending, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if not done:
            break
        for task in done:
            answers[tasks[task]] = missing if task.cancelled() or task.exception() else task.result()
        if until is not None and until(answers, {tasks[t] for t in pending}):
            break
        if grace_until is None and sum(1 for a in answers.values() if success(a)) >= enough:
            now = loop.time()
            grace_until = now + grace(now - started)
            if on_enough is not None and pending:
                on_enough(answers)
    for node_id in tasks.values():
        answers.setdefault(node_id, missing)
    return answers


async def gather_quorum(
    contacts: Iterable[Contact],
    call: Callable[[Contact], Awaitable[T]],
    quorum: int,
    success: Callable[[T], bool],
    missing: T,
    *,
    spawn: Spawn,
    grace_max_s: float,
    grace_s: float | None = None,
    on_quorum: Callable[[dict[bytes, T]], None] | None = None,
) -> dict[bytes, T]:
    """:func:`gather` for replicas: return once all answered, or ``quorum``
    succeeded and a short grace passed. The grace is the time the quorum
    took, at most ``grace_max_s``: a replica as fast as the others still
    counts (its refusals and grants are seen), a slow or dead one costs a
    job's four sequential quorum writes no fixed 50 ms each. ``grace_s``
    overrides it. ``on_quorum(answers so far)`` is called once when the
    quorum succeeded and replicas are still pending."""

    def grace(took: float) -> float:
        return min(grace_max_s, took) if grace_s is None else grace_s

    return await gather(
        contacts,
        call,
        spawn=spawn,
        name="replica_call",
        missing=missing,
        success=success,
        enough=quorum,
        grace=grace,
        on_enough=on_quorum,
    )
