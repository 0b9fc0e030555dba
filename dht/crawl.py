"""Iterative node lookup: find the contacts closest to a key.

Kademlia's lookup with ``alpha`` parallel queries per round. Unlike the
library's ``NodeSpiderCrawl`` it returns only contacts that answered, checks
every third-party contact (its id must be the hash of its key) before using
it, and reports the number of rounds (hops) for the simulator's figures.

When it stops (libp2p kad-dht's rule, generalised): once the ``want`` closest
contacts known and not failed have all answered (:func:`lookup_done`). A
lookup for one answer (a node id, a read's first replica) wants ``beta`` = 3;
one that places or finds a replica set wants as many as it will use; a lookup
of our own id (join, refresh) wants ``k`` to fill the table. The library ran
every lookup until all ``k`` closest had answered: about k / alpha rounds of
confirmation after it had found the neighbourhood.

Which contacts a round asks (:func:`next_batch`): the ``alpha`` closest not
asked yet, among the ``max(want, alpha)`` closest known; after a round that
found nothing closer than what was known before it (the lookup converged),
every one of those not asked yet at once (Kademlia's final round), so a wide
``want`` costs one round, not ``want / alpha``.

A dead contact does not cost a whole round: a round goes on once its replies
are in or ``patience_s`` passed; a late reply still counts when it comes, and
the lookup waits for the ones it needs (a pending contact among the ``want``
closest) only when there is nothing else to ask.
"""

from __future__ import annotations

import asyncio
import bisect
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

from workmesh.dht.routing import Contact

# ask(contact) -> list of contacts it returned, or None if it did not answer
Ask = Callable[[Contact], Awaitable[list[Contact] | None]]
Spawn = Callable[[Awaitable[Any]], "asyncio.Future[Any]"]

# How many of the closest must answer before a lookup for one answer stops (libp2p's beta).
BETA = 3


@dataclass(frozen=True, slots=True)
class LookupResult:
    contacts: list[Contact]  # closest first, all of them answered
    hops: int
    queries: int
    failures: int


def lookup_done(order: Sequence[bytes], answered: Collection[bytes], want: int) -> bool:
    """Are the ``want`` closest of ``order`` (ids of the contacts known and not
    failed, closest first) all answered? Then nothing closer can be learned
    from asking further: each of them named its closest contacts already."""
    return all(i in answered for i in order[:want])


def next_batch(order: Sequence[bytes], asked: Collection[bytes], want: int, alpha: int, *, wide: bool) -> list[bytes]:
    """The ids to ask in the next round: the closest not asked yet among the
    ``max(want, alpha)`` closest known, ``alpha`` of them, or all of them in a
    ``wide`` round (the round after one that found nothing closer)."""
    fresh = [i for i in order[: max(want, alpha)] if i not in asked]
    return fresh if wide else fresh[:alpha]


class _Candidates:
    """Contacts known to a lookup, by distance, with set lookups (the library's
    ``NodeHeap`` tested membership with a linear scan)."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.by_id: dict[bytes, Contact] = {}
        self.failed: set[bytes] = set()
        self._order: list[tuple[int, bytes]] = []

    def add(self, contacts: list[Contact]) -> None:
        for c in contacts:
            if c.id in self.by_id or c.id in self.failed:
                continue
            self.by_id[c.id] = c
            bisect.insort(self._order, (int.from_bytes(c.id, "big") ^ self.target, c.id))

    def fail(self, node_id: bytes) -> None:
        self.failed.add(node_id)
        contact = self.by_id.pop(node_id, None)
        if contact is not None:
            self._order.remove((int.from_bytes(node_id, "big") ^ self.target, node_id))

    def ids(self, count: int) -> list[bytes]:
        return [i for _, i in self._order[:count]]

    def closest_distance(self) -> int | None:
        return self._order[0][0] if self._order else None


async def lookup(
    key: bytes,
    seeds: list[Contact],
    ask: Ask,
    *,
    k: int,
    alpha: int,
    want: int | None = None,
    patience_s: float | None = None,
    rounds_max: int = 32,
    spawn: Spawn = asyncio.ensure_future,
) -> LookupResult:
    """The (up to) ``k`` closest contacts that answered, closest first; the
    ``want`` (default ``k``) closest known of them all answered, unless
    ``rounds_max`` rounds or the contacts ran out first.

    ``patience_s``: how long a round waits for its slowest reply before the
    next round starts (None: for all of them). Replies still awaited when the
    lookup ends are left to finish in the tasks ``spawn`` made (the asker's
    own bookkeeping, a lost reply counted against its contact, still runs)."""
    want = max(1, min(want or k, k))
    found = _Candidates(int.from_bytes(key, "big"))
    found.add(seeds)
    asked: set[bytes] = set()
    answered: set[bytes] = set()
    inflight: dict[asyncio.Future, Contact] = {}
    queries = failures = hops = 0
    wide = False
    while True:
        order = found.ids(max(want, alpha))
        if lookup_done(order, answered, want):
            break
        batch = next_batch(order, asked, want, alpha, wide=wide) if hops < rounds_max else []
        before = found.closest_distance()
        if batch:
            hops += 1
            queries += len(batch)
            this_round = []
            for node_id in batch:
                asked.add(node_id)
                contact = found.by_id[node_id]
                task = spawn(ask(contact))
                inflight[task] = contact
                this_round.append(task)
            await asyncio.wait(this_round, timeout=patience_s)
        elif inflight:
            await asyncio.wait(list(inflight), return_when=asyncio.FIRST_COMPLETED)
        else:
            break
        for task in [t for t in inflight if t.done()]:
            contact = inflight.pop(task)
            reply = task.result()
            if reply is None:
                failures += 1
                found.fail(contact.id)
                continue
            answered.add(contact.id)
            found.add(reply)
        after = found.closest_distance()
        # Converged: the round learned nothing closer (Kademlia: "fails to return
        # a node any closer than the closest already seen"); the next asks wide.
        wide = before is not None and after is not None and after >= before
    closest = [found.by_id[i] for i in found.ids(len(found.by_id)) if i in answered][:k]
    return LookupResult(closest, hops, queries, failures)
