"""Iterative node lookup: find the contacts closest to a key.

Kademlia's lookup, run the way libp2p's kad-dht runs it rather than in
lock-step rounds:

* up to ``alpha`` queries are in flight at once, and a new one starts as soon
  as any reply (or timeout) comes back, so a dead contact costs one slot for
  one timeout, not a whole round for everyone;
* the lookup ends once the ``want`` closest contacts it knows of have all
  answered (libp2p: the beta closest), not once all ``k`` have been asked.
  ``want`` is what the caller needs: the ``r`` replicas of a key, or ``k``
  for a lookup of one's own id that fills the routing table.

Unlike the library's ``NodeSpiderCrawl`` it returns only contacts that
answered, checks every third-party contact (its id must be the hash of its
key) before using it (``ask`` does), and reports its hops: the longest chain
of replies that led to a query (a seed asked is hop 1, a contact learned from
a hop-h reply is hop h+1), which is what "rounds" means in Kademlia's
analysis (about log N / log(k) ... log2 N / b).

The shortlist is a dict by id plus a sort on demand: the library's
``NodeHeap`` tests membership by a linear scan on every push.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from workmesh.dht.routing import Contact, target_node

# ask(contact) -> list of contacts it returned, or None if it did not answer
Ask = Callable[[Contact], Awaitable[list[Contact] | None]]


@dataclass(frozen=True, slots=True)
class LookupResult:
    contacts: list[Contact]  # closest first, all of them answered
    hops: int
    queries: int
    failures: int


class Shortlist:
    """Contacts known to a lookup, by distance to its key; dead ones dropped."""

    def __init__(self, key: bytes, k: int) -> None:
        self._target = target_node(key)
        self._k = k
        self._by_id: dict[bytes, tuple[int, Contact]] = {}
        self._dead: set[bytes] = set()
        self._order: list[Contact] | None = None

    def add(self, contacts: list[Contact]) -> None:
        for c in contacts:
            if c.id not in self._by_id and c.id not in self._dead:
                self._by_id[c.id] = (self._target.distance_to(c), c)
                self._order = None

    def drop(self, node_id: bytes) -> None:
        self._dead.add(node_id)
        if self._by_id.pop(node_id, None) is not None:
            self._order = None

    def nearest(self) -> list[Contact]:
        """The ``k`` closest live contacts known, closest first."""
        if self._order is None:
            ranked = sorted(self._by_id.values(), key=lambda p: (p[0], p[1].id))
            self._order = [c for _, c in ranked[: self._k]]
        return self._order


async def lookup(
    key: bytes,
    seeds: list[Contact],
    ask: Ask,
    *,
    k: int,
    alpha: int,
    want: int | None = None,
    rounds_max: int = 32,
) -> LookupResult:
    want = max(1, min(want or k, k))
    shortlist = Shortlist(key, k)
    shortlist.add(list(seeds))
    hop_of: dict[bytes, int] = {c.id: 1 for c in seeds}
    asked: set[bytes] = set()
    answered: set[bytes] = set()
    in_flight: dict[asyncio.Task, Contact] = {}
    queries = failures = hops = 0

    def settled() -> bool:
        return all(c.id in answered for c in shortlist.nearest()[:want])

    def launch() -> None:
        nonlocal queries, hops
        for c in shortlist.nearest():
            if len(in_flight) >= alpha or settled():
                return
            if c.id in asked or hop_of.get(c.id, 1) > rounds_max:
                continue
            asked.add(c.id)
            queries += 1
            hops = max(hops, hop_of.get(c.id, 1))
            in_flight[asyncio.ensure_future(ask(c))] = c

    launch()
    try:
        while in_flight:
            done, _ = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
            # A set's order depends on object addresses: take replies in a
            # fixed order so that the simulator replays a run exactly.
            for task in sorted(done, key=lambda t: in_flight[t].id):
                contact = in_flight.pop(task)
                found = task.result()
                if found is None:
                    failures += 1
                    shortlist.drop(contact.id)
                    continue
                answered.add(contact.id)
                fresh = [c for c in found if c.id not in hop_of]
                for c in fresh:
                    hop_of[c.id] = hop_of[contact.id] + 1
                shortlist.add(fresh)
            launch()
    finally:
        for task in in_flight:
            task.cancel()
    closest = [c for c in shortlist.nearest() if c.id in answered]
    return LookupResult(closest, hops, queries, failures)
