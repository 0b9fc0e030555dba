"""Iterative node lookup: find the contacts closest to a key.

Kademlia's lookup with ``alpha`` parallel queries per round. Unlike the
library's ``NodeSpiderCrawl`` it returns only contacts that answered, checks
every third-party contact (its id must be the hash of its key) before using
it, and reports the number of rounds (hops) for the simulator's figures.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from kademlia.node import NodeHeap

from workmesh.dht.routing import Contact, target_node

# ask(contact) -> list of contacts it returned, or None if it did not answer
Ask = Callable[[Contact], Awaitable[list[Contact] | None]]


@dataclass(frozen=True, slots=True)
class LookupResult:
    contacts: list[Contact]  # closest first, all of them answered
    hops: int
    queries: int
    failures: int


async def lookup(key: bytes, seeds: list[Contact], ask: Ask, *, k: int, alpha: int, rounds_max: int = 32) -> LookupResult:
    target = target_node(key)
    nearest = NodeHeap(target, k)
    nearest.push(list(seeds))
    answered: set[bytes] = set()
    queries = failures = hops = 0
    while hops < rounds_max:
        uncontacted = nearest.get_uncontacted()
        if not uncontacted:
            break
        batch = uncontacted[:alpha]
        hops += 1
        for contact in batch:
            nearest.mark_contacted(contact)
        replies = await asyncio.gather(*(ask(c) for c in batch))
        queries += len(batch)
        dead = []
        for contact, found in zip(batch, replies):
            if found is None:
                failures += 1
                dead.append(contact.id)
                continue
            answered.add(contact.id)
            nearest.push([c for c in found if c.id not in nearest.contacted or c.id in answered])
        nearest.remove(dead)
    closest = [c for c in nearest if c.id in answered]
    return LookupResult(closest, hops, queries, failures)
