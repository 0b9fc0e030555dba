"""The DHT server's background upkeep: hand-off of keys to new neighbours,
republish, reviving evicted contacts, and refreshing the routing table.

A mixin of :class:`dht.server.DHTServer`, split out of it because these
loops are one concept: what a node does on its own, on timers, so that keys
stay on their replicas and the routing table stays whole while nodes come
and go. It uses the server's state (``records``, ``router``, ``config``,
``stats``, the hand-off queue and the dormant contacts) and its round trips
(``sync_to``, ``ping``, ``_lookup``, ``replicas_for``, ``resolve``).
"""

from __future__ import annotations

import asyncio
from typing import Any

from workmesh.dht.routing import Contact, target_node


class Upkeep:
    # Set by DHTServer.__init__ (see there); declared for readers and checkers.
    records: Any
    router: Any
    config: Any
    policy: Any
    stats: dict[str, int]
    node: Contact

    def _queue_handoff(self, contact: Contact) -> None:
        """A new neighbour: hand it the keys it is now a replica for (stored key, not its hash)."""
        target_keys = []
        for key in self.records.keys():
            target = target_node(key)
            closest = self.router.find_neighbors(target, k=self.config.replicas)
            if len(closest) < self.config.replicas or contact.distance_to(target) <= closest[-1].distance_to(target):
                # We hand off only if we are a replica ourselves (closer than the r-th contact).
                if len(closest) < self.config.replicas or self.node.distance_to(target) <= closest[-1].distance_to(target):
                    target_keys.append(key)
        for key in target_keys:
            if len(self._handoff) >= self.config.handoff_queue_max:
                self.stats["handoffs_dropped"] += 1
                continue
            self._handoff[(contact.id, key)] = contact
        if target_keys:
            self._handoff_wakeup.set()

    async def _handoff_loop(self) -> None:
        interval = 1.0 / self.config.handoff_per_s
        while True:
            await self._handoff_wakeup.wait()
            self._handoff_wakeup.clear()
            while self._handoff:
                (_, key), contact = self._handoff.popitem(last=False)
                self.stats["handoffs"] += 1
                await self.sync_to(contact, key)
                await asyncio.sleep(interval)

    async def republish(self) -> int:
        """Send every key we hold to its current replicas, only what they lack."""
        sent = 0
        holders = getattr(self.policy, "holders", None)
        for key in self.records.keys():
            replicas = await self.replicas_for(key)
            # Nodes the policy says must hold the key too (a fixed replica set).
            named = [i for i in (holders(self.records.get(key)) if holders else ()) if i not in {c.id for c in replicas}]
            if not any(c.id == self.node.id for c in replicas) and self.node.id not in named:
                continue
            if named:
                replicas = replicas + await self.resolve(named)
            counts = await asyncio.gather(*(self.sync_to(c, key) for c in replicas if c.id != self.node.id))
            sent += sum(counts)
        self.stats["republished_records"] += sent
        return sent

    async def _republish_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.republish_interval_s)
            await self.republish()
            self.save_contacts()

    def has_dormant(self) -> bool:
        return bool(self._dormant)

    def dormant_count(self) -> int:
        """Evicted contacts still remembered (and pinged now and then)."""
        return len(self._dormant)

    async def revive(self, count: int) -> int:
        """Ping up to ``count`` evicted contacts, oldest first; those that answer
        (and prove their key) rejoin the routing table. Returns how many did.

        Without this, the two sides of a healed partition would each have
        evicted the other and never look across again."""
        async with self._revive_lock:  # one round at a time (the loop, reads that missed)
            revived = await self._revive(count)
        if revived:
            self.stats["contacts_revived"] += revived
            self._replica_cache.clear()
            seeds = self.router.find_neighbors(self.node, k=self.config.k)
            await self._lookup(self.identity.node_id, seeds)
        return revived

    async def _revive(self, count: int) -> int:
        revived = 0
        for contact in list(self._dormant.values())[:count]:
            if contact.id not in self._dormant:
                continue
            self._dormant.move_to_end(contact.id)  # the next round tries others
            if self.router.get(contact.id) is not None:
                self._dormant.pop(contact.id, None)
                continue
            back = await self.ping(contact.addr)
            if back is not None and back.id == contact.id:
                self._dormant.pop(contact.id, None)
                revived += 1
        return revived

    async def _revive_loop(self) -> None:
        while True:
            await asyncio.sleep(self.revive_interval_s)
            if self._dormant:
                await self.revive(self.revive_per_round)

    async def _refresh_loop(self) -> None:
        while True:
            thin = len(self.router) < self.config.k
            await asyncio.sleep(self.config.refresh_thin_interval_s if thin else self.config.refresh_interval_s)
            seeds = self.router.find_neighbors(self.node, k=self.config.k)
            if seeds:
                await self._lookup(self.identity.node_id, seeds)
