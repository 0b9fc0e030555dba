"""What a DHT node knows about its peers, and how it reaches them.

:class:`Contacts` owns the routing table and everything the node learns
about other nodes as it talks to them:

* which contacts proved themselves (answered a request sent to their
  address) and when each last answered (``answered_age_s``, ``failures``);
* the evicted (*dormant*) contacts, pinged now and then so a healed
  partition reconnects (``revive``);
* the node ids lookups named (``heard_count``: a lower bound of the mesh's
  size that a thin table cannot shrink);
* short-lived caches of replica sets and resolved node ids.

Its round trips: ``call`` (request/reply with a known contact, routing-table
bookkeeping included), ``ping``, iterative ``lookup``, ``replicas_for``
(the r closest nodes of a key) and ``resolve`` (contacts for node ids).
Every lookup goes through the ``lookup`` attribute, so an instance wrapper
(the simulator's tracing) sees them all.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from typing import Any

from workmesh.crypto.identity import Identity
from workmesh.dht.config import DHTConfig
from workmesh.dht.crawl import BETA, LookupResult, lookup
from workmesh.dht.envelope import Envelope, check_contact
from workmesh.dht.protocol import Clock, RPCProtocol
from workmesh.dht.routing import Contact, WorkmeshRoutingTable, target_node


def remember(cache: OrderedDict, key: Any, value: Any, size_max: int) -> None:
    """Put ``key`` in a bounded recency map as its newest entry, and drop the
    oldest entries past ``size_max`` (the caches of contacts, answers and
    replica sets are all kept this way)."""
    cache[key] = value
    cache.move_to_end(key)
    while len(cache) > size_max:
        cache.popitem(last=False)


KNOWN, ADMIT, VERIFY = "known", "admit", "verify"

# Pings of a bootstrap address before it counts as unreachable: one lost
# datagram (everyday at 5-20% loss) must not leave a joining node alone.
BOOTSTRAP_PING_TRIES = 3
# An empty table asks the bootstrap addresses again before a lookup, at most
# once per this (callers in between share the attempt or go on without it).
REJOIN_MIN_INTERVAL_S = 1.0


def new_sender_rule(known_addr: tuple[str, int] | None, addr: tuple[str, int], proven: bool) -> str:
    """What a request from a sender makes of it, given the address the routing
    table holds for it (None: not in the table) and whether it already proved
    ``addr`` (it answered a request of ours sent there):

    * ``KNOWN``: in the table at this address; nothing to do;
    * ``ADMIT``: proved already; into the table without a ping (a sender that
      sits in a full bucket's replacement list used to be pinged again on
      every request it made);
    * ``VERIFY``: ping it back first (its signature proves its key, not its address).
    """
    if known_addr == addr:
        return KNOWN
    return ADMIT if proven else VERIFY


def sender_contact(env: Envelope, addr: tuple[str, int]) -> Contact:
    """The contact a request claims to come from (its key proved, its address not yet)."""
    return Contact(env.sender_id, addr[0], addr[1], env.sender_key)


class Contacts:
    def __init__(
        self, identity: Identity, config: DHTConfig, clock: Clock, protocol: RPCProtocol, stats: dict[str, int]
    ) -> None:
        self.identity = identity
        self.config = config
        self.clock = clock
        self.protocol = protocol
        self.stats = stats
        self.node = Contact(identity.node_id, "0.0.0.0", 0, identity.public_key)
        self.router = WorkmeshRoutingTable(
            self.node,
            config.k,
            evict_after_failures=config.evict_after_failures,
            contacts_per_prefix_max=config.contacts_per_prefix_max,
            on_full=self._check_head,
        )
        # Called with each contact that newly joined the table (the server hands it keys).
        self.on_new_neighbour: Callable[[Contact], None] = lambda contact: None
        self._verifying: set[bytes] = set()
        self._verifying_addrs: set[tuple[str, int]] = set()
        self._met: OrderedDict[bytes, float] = OrderedDict()
        self._replica_cache: OrderedDict[bytes, tuple[float, list[Contact]]] = OrderedDict()
        self._resolved: OrderedDict[bytes, tuple[float, Contact]] = OrderedDict()
        # Evicted contacts, pinged now and then so a healed partition reconnects.
        self._dormant: OrderedDict[bytes, Contact] = OrderedDict()
        self.dormant_max = 256
        # Node ids named in lookup replies: evidence of how large the mesh is,
        # even when a lossy join left this node's own table thin.
        self._heard: OrderedDict[bytes, None] = OrderedDict()
        self.heard_max = 1024
        # When each contact last answered a request of ours (monotonic s), the
        # most recent answered_max: what placing a job on it now relies on.
        self._answered: OrderedDict[bytes, float] = OrderedDict()
        self.answered_max = 10_000
        self._revive_lock = asyncio.Lock()
        # Where this node joined (``DHTServer.bootstrap``): asked again when
        # the routing table is empty, before a lookup would ask nobody.
        self.bootstrap_addrs: tuple[tuple[str, int], ...] = ()
        self._rejoin: asyncio.Future | None = None
        self._rejoined_at = float("-inf")
        self.replica_cache_ttl_s = 5.0
        self.lookups: deque[LookupResult] = deque(maxlen=1000)

    # -------------------------------------------------------- proving peers
    def _proved(self, contact: Contact) -> None:
        """``contact`` answered a request we sent to its address: it holds its key there."""
        remember(self._answered, contact.id, self.clock.monotonic(), self.answered_max)
        self.admit(contact)

    def admit(self, contact: Contact) -> None:
        """A sender that proved its address before: into the table, no ping
        (and no claim that it answered now: ``answered_age_s`` is untouched)."""
        is_new = self.router.get(contact.id) is None
        self.router.add_contact(contact)
        if is_new and self.router.get(contact.id) is not None and self._newly_met(contact.id):
            self.on_new_neighbour(contact)

    def on_sender(self, env: Envelope, addr: tuple[str, int]) -> None:
        """A verified request came from ``env``'s sender at ``addr`` (see :func:`new_sender_rule`)."""
        known = self.router.get(env.sender_id)
        # A node without the API token proves its address too (protocol.py), but it is never
        # a contact: only a sender that may act is admitted on its proof; others are pinged,
        # and their unauthorized reply keeps them out, as before.
        may_act = self.protocol.token is None or env.authorized
        proven = may_act and self.protocol.is_proven(addr, env.sender_id)
        rule = new_sender_rule(known and known.addr, addr, proven)
        if rule == ADMIT:
            self.stats["senders_admitted_proven"] += 1
            self.admit(sender_contact(env, addr))
        elif rule == VERIFY:
            contact = sender_contact(env, addr)
            if self.router.wants(contact):
                self.verify_later(contact)
            else:
                self.stats["senders_not_needed"] += 1

    def _newly_met(self, node_id: bytes) -> bool:
        """True unless we met this peer within a republish interval (an evicted,
        re-added peer already holds what we would hand it; republish covers the rest)."""
        now = self.clock.monotonic()
        last = self._met.get(node_id)
        remember(self._met, node_id, now, 10_000)
        return last is None or now - last > self.config.republish_interval_s

    def _check_head(self, head: Contact) -> None:
        self.protocol.spawn(self.ping_contact(head), "ping_head")

    def verify_later(self, contact: Contact) -> None:
        """A signed request proves the key; a reply to our ping proves the address.

        Bounded: one verification per node id and one per source address at a
        time (many keys behind one address earn one ping, not one each), and
        ``pending_verifications_max`` in all; the ping is no larger than any
        request that can cause it (a MAC'd ping, the smallest request there is)."""
        if (
            contact.id in self._verifying
            or contact.addr in self._verifying_addrs
            or len(self._verifying) >= self.config.pending_verifications_max
        ):
            self.stats["verifications_skipped"] += 1
            return
        self._verifying.add(contact.id)
        self._verifying_addrs.add(contact.addr)

        async def verify() -> None:
            try:
                await self.ping_contact(contact)
            finally:
                self._verifying.discard(contact.id)
                self._verifying_addrs.discard(contact.addr)

        self.protocol.spawn(verify(), "verify_contact")

    # ----------------------------------------------------------- round trips
    async def ping_contact(self, contact: Contact) -> bool:
        return await self.call(contact, "ping", []) is not None

    async def ping(self, addr: tuple[str, int], *, tries: int = 1) -> Contact | None:
        """Ping an address (``tries`` times at most, one after the other's
        timeout: a lost datagram is everyday on a lossy link); its contact, proved."""
        for _ in range(max(1, tries)):
            env = await self.protocol.request(addr, "ping", [], expect_id=None)
            if env is not None:
                break
        if env is None or env.method == "error":
            return None
        contact = Contact(env.sender_id, addr[0], addr[1], env.sender_key)
        self._proved(contact)
        return contact

    async def call(self, contact: Contact, method: str, args: list, timeout_s: float | None = None) -> list | None:
        """Request/reply with a known contact; routing-table bookkeeping included."""
        env = await self.protocol.request(
            contact.addr, method, args, expect_id=contact.id, peer_key=contact.public_key, timeout_s=timeout_s
        )
        if env is None:
            if self.router.record_failure(contact):
                self._replica_cache.clear()  # an evicted contact may sit in cached replica sets
                remember(self._dormant, contact.id, contact, self.dormant_max)
            return None
        self._proved(contact)
        if env.method == "error":
            return None
        return env.args

    async def ask_find_node(self, key: bytes, contact: Contact, count: int | None = None) -> list[Contact] | None:
        """The contacts ``contact`` knows closest to ``key`` (``count`` of them; default k), checked."""
        wanted = count is not None and count < self.config.k
        reply = await self.call(contact, "find_node", [key, count] if wanted else [key])
        if reply is None:
            return None
        self.stats["find_node_replies"] += 1
        found = []
        for entry in reply[: self.config.k * 2]:
            checked = check_contact(entry)
            if checked is None:
                self.stats["third_party_contacts_rejected"] += 1
                continue
            if checked[0] != self.identity.node_id:
                found.append(Contact(*checked))
                remember(self._heard, checked[0], None, self.heard_max)
        return found

    async def lookup(self, key: bytes, seeds: list[Contact], *, want: int | None = None) -> LookupResult:
        """The closest contacts to ``key`` that answered; it stops once the
        ``want`` (default k) closest known have answered (``dht/crawl.py``)."""
        self.stats["lookups"] += 1
        # A reply need name no more than the lookup can use (dht/crawl.py: max(want, alpha)),
        # twice that: some of the contacts a peer names may be gone (churn).
        count = min(self.config.k, 2 * max(want or self.config.k, self.config.alpha))
        result = await lookup(
            key,
            seeds,
            lambda c: self.ask_find_node(key, c, count),
            k=self.config.k,
            alpha=self.config.alpha,
            want=want,
            patience_s=self.config.lookup_patience_s,
            spawn=lambda coro: self.protocol.spawn(coro, "lookup_ask"),
        )
        self.lookups.append(result)
        return result

    async def lookup_self(self, seeds: list[Contact]) -> LookupResult:
        """Look this node's own id up (join, refresh, after a revival): until
        the k closest answered, to fill the table's nearest buckets."""
        return await self.lookup(self.identity.node_id, seeds, want=self.config.k)

    # ------------------------------------------------------- an empty table
    async def rejoin_if_alone(self) -> None:
        """Before a lookup from an empty routing table (it would ask nobody):
        ping the bootstrap addresses and the evicted contacts again, and look
        this node up through those that answer.

        A join whose datagrams were all lost (or a table that lost every
        contact later) leaves a node alone: its reads then answer "not found"
        and its placements name itself alone, although the mesh is there.
        Concurrent callers share one attempt; after one, the next waits
        ``REJOIN_MIN_INTERVAL_S`` (a node that is truly alone does not pay a
        round of pings per read)."""
        if len(self.router):
            return
        if self._rejoin is None:
            if self.clock.monotonic() - self._rejoined_at < REJOIN_MIN_INTERVAL_S:
                return
            if not self.bootstrap_addrs and not self._dormant:
                return
            self._rejoin = self.protocol.spawn(self._rejoin_now(), "rejoin_before_lookup")
        rejoin = self._rejoin
        try:
            await asyncio.shield(rejoin)
        except asyncio.CancelledError:
            if not rejoin.done():
                raise
        except Exception:  # the table stays empty; the caller goes on with what it knows
            pass

    async def _rejoin_now(self) -> None:
        try:
            self.stats["rejoins_before_lookup"] = self.stats.get("rejoins_before_lookup", 0) + 1
            await asyncio.gather(*(self.ping(addr, tries=BOOTSTRAP_PING_TRIES) for addr in self.bootstrap_addrs))
            if not len(self.router) and self._dormant:
                await self.revive(self.config.k)
            seeds = self.router.contacts()
            if seeds:
                self._replica_cache.clear()
                await self.lookup_self(seeds)
        finally:
            self._rejoin = None
            self._rejoined_at = self.clock.monotonic()

    # ---------------------------------------------------------- replica sets
    async def replicas_for(self, key: bytes, *, count: int | None = None, fresh: bool = False) -> list[Contact]:
        """The ``count`` (default r) closest nodes to ``key``, this node included
        when it is one. ``count`` may exceed r (a wider read, a placement's
        candidates), up to k."""
        count = min(count or self.config.replicas, self.config.k)
        await self.rejoin_if_alone()
        now = self.clock.monotonic()
        cached = self._replica_cache.get(key)
        if cached is not None and not fresh and now - cached[0] < self.replica_cache_ttl_s and len(cached[1]) >= count:
            return cached[1][:count]
        target = target_node(key)
        seeds = self.router.find_neighbors(target, k=self.config.k)
        if self.router_is_complete():
            # No bucket ever overflowed: the table holds the whole mesh we can
            # reach (at most k other nodes), so the closest are known locally.
            return sorted([*seeds, self.node], key=target.distance_to)[:count]
        wanted = max(count, self.config.replicas)
        found = (await self.lookup(key, seeds, want=wanted)).contacts if seeds else []
        everyone = {c.id: c for c in found}
        everyone[self.node.id] = self.node
        if len(everyone) < wanted + 1:
            # A lookup cut short by lost replies: fall back on contacts we know.
            for c in seeds:
                everyone.setdefault(c.id, c)
        closest = sorted(everyone.values(), key=target.distance_to)[:wanted]
        remember(self._replica_cache, key, (now, closest), 4096)
        return closest[:count]

    async def resolve(self, ids: Iterable[bytes], *, fresh: bool = False) -> list[Contact]:
        """Contacts for node ids (this node included), from the routing table
        or, for ids it lacks, from a lookup of each id. Ids nobody knows are
        left out."""
        out: list[Contact] = []
        ids = list(ids)
        if any(i != self.node.id for i in ids):
            await self.rejoin_if_alone()
        now = self.clock.monotonic()
        for node_id in ids:
            if node_id == self.node.id:
                out.append(self.node)
                continue
            contact = self.router.get(node_id)
            if contact is None and not fresh:
                cached = self._resolved.get(node_id)
                if cached is not None and now - cached[0] < self.replica_cache_ttl_s:
                    contact = cached[1]
            if contact is None:
                seeds = self.router.find_neighbors(target_node(node_id), k=self.config.k)
                found = (await self.lookup(node_id, seeds, want=BETA)).contacts if seeds else []
                contact = next((c for c in found if c.id == node_id), None)
                if contact is not None:
                    remember(self._resolved, node_id, (now, contact), 4096)
            if contact is not None:
                out.append(contact)
        return out

    def is_replica_locally(self, key: bytes) -> bool:
        """From our routing table alone: are we among the r closest to ``key``?"""
        target = target_node(key)
        others = self.router.find_neighbors(target, k=self.config.replicas)
        if len(others) < self.config.replicas:
            return True
        return self.node.distance_to(target) < others[-1].distance_to(target)

    # ------------------------------------------------------ what we know
    def answered_age_s(self, node_id: bytes) -> float | None:
        """Seconds since ``node_id`` last answered a request of ours (0 for this
        node itself; None if it never did, or that was forgotten)."""
        if node_id == self.node.id:
            return 0.0
        at = self._answered.get(node_id)
        return None if at is None else self.clock.monotonic() - at

    def failures(self, node_id: bytes) -> int:
        """Requests to ``node_id`` that went unanswered in a row (0 once it answers)."""
        return 0 if node_id == self.node.id else self.router.failures(node_id)

    def router_is_complete(self) -> bool:
        """True while the table is one unsplit bucket, not full and without
        replacements: it never held more than k contacts, so it knows the whole
        mesh it can reach. A table that split once may miss closer nodes, and
        so does one that lacks nodes lookups named (a join whose replies were
        lost leaves a thin table that only looks complete)."""
        buckets = self.router.buckets
        return (
            len(buckets) == 1
            and len(buckets[0]) < self.config.k
            and not buckets[0].replacement_nodes
            and all(i in buckets[0].nodes or i in self._dormant for i in self._heard)
        )

    def heard_count(self) -> int:
        """Distinct other nodes named in lookup replies (bounded): a lower bound
        of the mesh's size that a thin routing table cannot shrink."""
        return len(self._heard)

    # ------------------------------------------------------ evicted contacts
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
            await self.lookup_self(seeds)
        return revived

    async def _revive(self, count: int) -> int:
        """Ping up to ``count`` evicted contacts together (a round costs one
        round trip timeout, not one per contact that stays silent)."""
        asked = []
        for contact in list(self._dormant.values())[:count]:
            self._dormant.move_to_end(contact.id)  # the next round tries others
            if self.router.get(contact.id) is not None:
                self._dormant.pop(contact.id, None)
                continue
            asked.append(contact)
        answers = await asyncio.gather(*(self.ping(c.addr) for c in asked))
        revived = 0
        for contact, back in zip(asked, answers):
            if back is not None and back.id == contact.id and self._dormant.pop(contact.id, None) is not None:
                revived += 1
        return revived
