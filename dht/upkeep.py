"""The DHT server's background upkeep: hand-off of keys to new neighbours,
republish, reviving evicted contacts, and refreshing the routing table.

These loops are one concept: what a node does on its own, on timers, so
that keys stay on their replicas and the routing table stays whole while
nodes come and go. :class:`Upkeep` is owned by :class:`dht.server.DHTServer`
and sees only what it is given:

* the record store (``keys``, ``get``) and the policy (its optional
  ``holders``);
* :class:`dht.contacts.Contacts`, through its public round trips
  (``replicas_for``, ``resolve``, ``lookup_self``, ``has_dormant``,
  ``revive``) and its routing table's ``find_neighbors``;
* ``sync_to(contact, key)``: send a replica what it lacks of a key;
* ``save_contacts()``: persist the routing table.

The server calls :meth:`queue_handoff` for each new neighbour and
:meth:`start` once it is bound.
"""

from __future__ import annotations

import asyncio
import math
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from workmesh.dht.config import DHTConfig
from workmesh.dht.contacts import Contacts
from workmesh.dht.routing import Contact, target_node


UNREACHED_MAX = 10_000  # keys a republish tries again next round, at most


def republish_round(changed: list[bytes], held: list[bytes], cursor: int, share: float) -> tuple[list[bytes], int]:
    """The keys one republish round syncs, and the next round's cursor.

    ``changed``: keys that changed since the last round, or that did not
    reach every replica in it (each goes; deduplicated); ``held``:
    every key held, in a stable order; ``share``: the fraction of them a
    round covers besides (interval / full interval), from ``cursor`` on,
    wrapping, so that every held key goes at least once per full interval."""
    if not held:
        return list(changed), 0
    count = min(len(held), math.ceil(len(held) * share))
    start = cursor % len(held)
    rest = held[start : start + count]
    if len(rest) < count:
        rest += held[: count - len(rest)]
    return list(dict.fromkeys([*changed, *rest])), (start + count) % len(held)


class Upkeep:
    def __init__(
        self,
        config: DHTConfig,
        records: Any,  # dht.storage.FactStore
        policy: Any,  # dht.contract.RecordPolicy
        contacts: Contacts,
        sync_to: Callable[[Contact, bytes], Awaitable[int]],
        save_contacts: Callable[[], None],
        stats: dict[str, int],
    ) -> None:
        self.config = config
        self.records = records
        self.policy = policy
        self.contacts = contacts
        self.sync_to = sync_to
        self.save_contacts = save_contacts
        self.stats = stats
        self._handoff: OrderedDict[tuple[bytes, bytes], Contact] = OrderedDict()
        self._handoff_wakeup = asyncio.Event()
        # Keys a republish round could not sync to every replica (one did not
        # answer: down, restarting): the next round tries them again, so a
        # replica back from a restart gets what changed while it was away
        # within a round, not only when the slice comes round to the key.
        self._unreached: OrderedDict[bytes, None] = OrderedDict()
        self.revive_interval_s = 5.0
        self.revive_per_round = 3

    def start(self, spawn: Callable[[Awaitable[Any], str], asyncio.Task]) -> list[asyncio.Task]:
        """Start every loop as a task of ``spawn``; the caller cancels them."""
        return [
            spawn(self.republish_loop(), "republish"),
            spawn(self.refresh_loop(), "refresh"),
            spawn(self.handoff_loop(), "handoff"),
            spawn(self.revive_loop(), "revive"),
        ]

    # ------------------------------------------------------------- hand-off
    def queue_handoff(self, contact: Contact) -> None:
        """A new neighbour: hand it the keys it is now a replica for (stored key, not its hash)."""
        router, node, r = self.contacts.router, self.contacts.node, self.config.replicas
        target_keys = []
        for key in self.records.keys():
            target = target_node(key)
            closest = router.find_neighbors(target, k=r)
            if len(closest) < r or contact.distance_to(target) <= closest[-1].distance_to(target):
                # We hand off only if we are a replica ourselves (closer than the r-th contact).
                if len(closest) < r or node.distance_to(target) <= closest[-1].distance_to(target):
                    target_keys.append(key)
        for key in target_keys:
            if len(self._handoff) >= self.config.handoff_queue_max:
                self.stats["handoffs_dropped"] += 1
                continue
            self._handoff[(contact.id, key)] = contact
        if target_keys:
            self._handoff_wakeup.set()

    async def handoff_loop(self) -> None:
        interval = 1.0 / self.config.handoff_per_s
        while True:
            await self._handoff_wakeup.wait()
            self._handoff_wakeup.clear()
            while self._handoff:
                (_, key), contact = self._handoff.popitem(last=False)
                self.stats["handoffs"] += 1
                await self.sync_to(contact, key)
                await asyncio.sleep(interval)

    # ------------------------------------------------------------ republish
    async def republish(self, keys: Iterable[bytes] | None = None) -> int:
        """Send ``keys`` (default: every key we hold) to their current replicas, only what they lack."""
        sent = 0
        me = self.contacts.node.id
        holders = getattr(self.policy, "holders", None)
        for key in self.records.keys() if keys is None else keys:
            if not self.records.has(key):
                continue  # dropped since the round began
            self.stats["republished_keys"] += 1
            replicas = await self.contacts.replicas_for(key)
            # Nodes the policy says must hold the key too (a fixed replica set).
            named = [i for i in (holders(self.records.get(key)) if holders else ()) if i not in {c.id for c in replicas}]
            if not any(c.id == me for c in replicas) and me not in named:
                continue
            if named:
                replicas = replicas + await self.contacts.resolve(named)
            counts = await asyncio.gather(*(self.sync_to(c, key) for c in replicas if c.id != me))
            sent += sum(c or 0 for c in counts)
            if None in counts:
                self._unreached[key] = None
                if len(self._unreached) > UNREACHED_MAX:
                    self._unreached.popitem(last=False)
        self.stats["republished_records"] += sent
        return sent

    async def republish_loop(self) -> None:
        """Each round, the keys that changed since the last one (a write that
        reached a quorum reaches the other replicas here), and a slice of the
        rest, so that each key goes at least once per full interval (a
        replica that lost what it held). The first round covers what the
        store loaded. Before, every round synced every held key: a sync round
        trip per key and replica each minute, for decided jobs that never
        change (0.05 of a core for 3 nodes idle at 12,000 jobs, rising with
        the jobs held)."""
        mark, cursor = 0, 0
        share = min(1.0, self.config.republish_interval_s / max(self.config.republish_full_interval_s, 1e-9))
        while True:
            await asyncio.sleep(self.config.republish_interval_s)
            next_mark = self.records.change_mark()
            again = list(self._unreached)
            self._unreached.clear()
            changed = [*self.records.changed_since(mark), *again]
            keys, cursor = republish_round(changed, self.records.keys(), cursor, share)
            mark = next_mark
            await self.republish(keys)
            self.save_contacts()

    # ------------------------------------------------------ revive, refresh
    async def revive_loop(self) -> None:
        while True:
            await asyncio.sleep(self.revive_interval_s)
            if self.contacts.has_dormant():
                await self.contacts.revive(self.revive_per_round)

    async def refresh_loop(self) -> None:
        while True:
            thin = len(self.contacts.router) < self.config.k
            await asyncio.sleep(self.config.refresh_thin_interval_s if thin else self.config.refresh_interval_s)
            seeds = self.contacts.router.find_neighbors(self.contacts.node, k=self.config.k)
            if seeds:
                await self.contacts.lookup_self(seeds)
