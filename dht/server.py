"""A DHT peer: routing, signed RPCs, replicated record sets, repair.

``DHTServer`` owns the routing table, the RPC protocol and the record store,
and offers the node layer these operations:

* ``store(key, records)``: write to the ``r`` closest replicas; reports how
  many really stored (never raises on an empty or dead neighbourhood), and
  the records the replicas produced in response (grants, seals);
* ``fetch(key)``: ask the ``r`` closest replicas, merge every valid record of
  every reply (never a majority vote), and push back what each lacked;
* ``lookup(key)``: the ``r`` closest live contacts;
* ``probe(contacts)``: which of them answer a ping now (with
  ``answered_age_s`` and ``failures``, what the node knows already);
* ``register(method, handler)``: more RPCs (gossip) over the same envelope.

What a record means is not this layer's business: an injected
:class:`RecordPolicy` validates records and decides what to admit (the
contract between the two layers is ``dht/contract.py``).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Collection, Iterable
from typing import Any

import structlog

from workmesh.crypto.identity import Identity
from workmesh.dht.config import DHTConfig
from workmesh.dht.contract import (  # noqa: F401 (re-exported: their old home)
    REFUSED_BUDGET,
    REFUSED_DISK,
    REFUSED_GONE,
    AcceptAll,
    Admission,
    Fetched,
    Record,
    RecordPolicy,
    StoreOutcome,
)
from workmesh.dht.crawl import LookupResult, lookup
from workmesh.dht.envelope import Envelope, check_contact
from workmesh.dht.protocol import Clock, RPCProtocol
from workmesh.dht.quorum import call_once, gather, gather_quorum, store_outcome
from workmesh.dht.routing import Contact, WorkmeshRoutingTable, target_node
from workmesh.dht.upkeep import Upkeep

# One reply page of find_records (records by id after a cursor): within the
# 60,000-byte datagram bound with room for the envelope.
RECORDS_PER_REPLY_BYTES = 48_000
# Record ids (32 bytes each) per page of a sync reply.
SYNC_IDS_PER_REPLY = 1_000
# Pages a reader follows for one key from one replica before it calls the
# answer incomplete: every page carries at least one record, and a key holds
# at most StorageLimits.records_per_key_max (256) records.
PAGES_PER_READ_MAX = 300
# Pings sent at once to each contact a probe asks (DHTServer.probe).
PROBE_PINGS = 2


def remember(cache: OrderedDict, key: Any, value: Any, size_max: int) -> None:
    """Put ``key`` in a bounded recency map as its newest entry, and drop the
    oldest entries past ``size_max`` (the server's caches of contacts, answers
    and replica sets are all kept this way)."""
    cache[key] = value
    cache.move_to_end(key)
    while len(cache) > size_max:
        cache.popitem(last=False)


class SystemClock:
    """Production clock: the event loop's monotonic time, the system's wall time."""

    def monotonic(self) -> float:
        return asyncio.get_running_loop().time()

    def wall_ms(self) -> int:
        return int(time.time() * 1000)


def _digest_ids(ids: Iterable[bytes]) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    for i in sorted(ids):
        h.update(i)
    return h.digest()


def _chunks(raws: list[bytes], limit: int) -> list[list[bytes]]:
    out: list[list[bytes]] = [[]]
    size = 0
    for raw in raws:
        if out[-1] and size + len(raw) + 8 > limit:
            out.append([])
            size = 0
        out[-1].append(raw)
        size += len(raw) + 8
    return out


class DHTServer(Upkeep):
    def __init__(
        self,
        identity: Identity,
        store: Any,  # dht.storage.FactStore
        policy: RecordPolicy,
        *,
        config: DHTConfig = DHTConfig(),
        clock: Clock | None = None,
        new_msg_id: Callable[[], bytes] | None = None,
        logger: Any = None,
    ) -> None:
        import os

        self.identity = identity
        self.config = config
        self.records = store
        self.policy = policy
        self.clock = clock or SystemClock()
        self.log = (logger or structlog.get_logger()).bind(node_id=identity.node_id.hex()[:12])
        self.node = Contact(identity.node_id, "0.0.0.0", 0, identity.public_key)
        self.router = WorkmeshRoutingTable(
            self.node,
            config.k,
            evict_after_failures=config.evict_after_failures,
            contacts_per_prefix_max=config.contacts_per_prefix_max,
            on_full=self._check_head,
        )
        self.protocol = RPCProtocol(
            identity, config, self.clock, new_msg_id or (lambda: os.urandom(16)), self._on_request, self._on_task_error
        )
        self._handlers: dict[str, Callable[[Envelope, tuple[str, int]], Awaitable[list] | list]] = {
            "ping": self._rpc_ping,
            "find_node": self._rpc_find_node,
            "find_records": self._rpc_find_records,
            "store": self._rpc_store,
            "sync": self._rpc_sync,
        }
        self._verifying: set[bytes] = set()
        self._verifying_addrs: set[tuple[str, int]] = set()
        self._met: OrderedDict[bytes, float] = OrderedDict()
        self._handoff: OrderedDict[tuple[bytes, bytes], Contact] = OrderedDict()
        self._handoff_wakeup = asyncio.Event()
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
        self.revive_interval_s = 5.0
        self.revive_per_round = 3
        self.replica_cache_ttl_s = 5.0
        # After a quorum of replicas answered, wait for the rest as long again
        # as the quorum took, at most this long (see dht.quorum.gather_quorum).
        self.quorum_grace_s = 0.05
        self._loops: list[asyncio.Task] = []
        self.lookups: deque[LookupResult] = deque(maxlen=1000)
        self.stats: dict[str, int] = {
            "stores": 0,
            "store_quorum_missed": 0,
            "fetches": 0,
            "record_requests": 0,
            "repairs_sent": 0,
            "records_refused": 0,
            "records_invalid": 0,
            "third_party_contacts_rejected": 0,
            "handoffs": 0,
            "handoffs_dropped": 0,
            "republished_records": 0,
            "lookups": 0,
            "contacts_revived": 0,
            "find_node_replies": 0,
            "find_records_pages": 0,
            "reads_incomplete": 0,
            "budget_refusals": 0,
            "commit_failures_seen": 0,
            "verifications_skipped": 0,
        }

    # ------------------------------------------------------------------ life
    @property
    def address(self) -> tuple[str, int]:
        return self.node.addr

    async def start(self, bind: Callable[[RPCProtocol], Awaitable[tuple[str, int]]]) -> None:
        """``bind`` attaches the protocol to a transport and returns our address."""
        ip, port = await bind(self.protocol)
        self.node.ip, self.node.port = ip, port
        for node_id, cip, cport, key in self.records.load_contacts():
            if node_id != self.identity.node_id:
                self.router.add_contact(Contact(node_id, cip, cport, key))
        self._loops = [
            self.protocol.spawn(self._republish_loop(), "republish"),
            self.protocol.spawn(self._refresh_loop(), "refresh"),
            self.protocol.spawn(self._handoff_loop(), "handoff"),
            self.protocol.spawn(self._revive_loop(), "revive"),
        ]

    async def bootstrap(self, addrs: Iterable[tuple[str, int]]) -> int:
        """Ping the given addresses, then look ourselves up. Returns contacts known."""
        found = await asyncio.gather(*(self.ping(addr) for addr in addrs))
        seeds = [c for c in found if c is not None] + self.router.contacts()
        if seeds:
            await self._lookup(self.identity.node_id, seeds)
        self.save_contacts()
        return len(self.router)

    def save_contacts(self) -> None:
        self.records.save_contacts([(c.id, c.ip, c.port, c.public_key) for c in self.router.contacts()])

    async def stop(self) -> None:
        for task in self._loops:
            task.cancel()
        try:
            self.save_contacts()
        except Exception as exc:  # storage may already be closed
            self.log.warning("save_contacts_failed", error=str(exc))
        self.protocol.close()

    def register(self, method: str, handler: Callable[[Envelope, tuple[str, int]], Awaitable[list] | list]) -> None:
        if method in self._handlers:
            raise ValueError(f"RPC {method} already registered")
        self._handlers[method] = handler

    def _on_task_error(self, name: str, exc: BaseException) -> None:
        self.log.error("task_failed", task=name, error=repr(exc))

    # ------------------------------------------------------------ contacts
    def _contact_from(self, env: Envelope, addr: tuple[str, int]) -> Contact:
        return Contact(env.sender_id, addr[0], addr[1], env.sender_key)

    def _proved(self, contact: Contact) -> None:
        """``contact`` answered a request we sent to its address: it holds its key there."""
        remember(self._answered, contact.id, self.clock.monotonic(), self.answered_max)
        is_new = self.router.get(contact.id) is None
        self.router.add_contact(contact)
        if is_new and self.router.get(contact.id) is not None and self._newly_met(contact.id):
            self._queue_handoff(contact)

    def _newly_met(self, node_id: bytes) -> bool:
        """True unless we met this peer within a republish interval (an evicted,
        re-added peer already holds what we would hand it; republish covers the rest)."""
        now = self.clock.monotonic()
        last = self._met.get(node_id)
        remember(self._met, node_id, now, 10_000)
        return last is None or now - last > self.config.republish_interval_s

    def _check_head(self, head: Contact) -> None:
        self.protocol.spawn(self._ping_contact(head), "ping_head")

    async def _ping_contact(self, contact: Contact) -> bool:
        return await self.call(contact, "ping", []) is not None

    async def ping(self, addr: tuple[str, int]) -> Contact | None:
        env = await self.protocol.request(addr, "ping", [], expect_id=None)
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

    # ------------------------------------------------------------ requests
    async def _on_request(self, env: Envelope, addr: tuple[str, int]) -> list | None:
        handler = self._handlers.get(env.method)
        if handler is None:
            self.protocol.dropped["unknown_method"] += 1
            return None
        known = self.router.get(env.sender_id)
        if known is None or known.addr != addr:
            self._verify_later(self._contact_from(env, addr))
        try:
            result = handler(env, addr)
            if asyncio.iscoroutine(result):
                result = await result
        except (ValueError, TypeError, KeyError, IndexError) as exc:
            self.protocol.dropped["bad_arguments"] += 1
            self.log.debug("bad_rpc_arguments", method=env.method, error=str(exc))
            return None
        return result

    def _verify_later(self, contact: Contact) -> None:
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
                await self._ping_contact(contact)
            finally:
                self._verifying.discard(contact.id)
                self._verifying_addrs.discard(contact.addr)

        self.protocol.spawn(verify(), "verify_contact")

    def _rpc_ping(self, env: Envelope, addr) -> list:
        return []

    def _rpc_find_node(self, env: Envelope, addr) -> list:
        (key,) = env.args
        if not isinstance(key, bytes) or len(key) != 20:
            raise ValueError("find_node needs a 20-byte key")
        sender = self._contact_from(env, addr)
        return [c.to_wire() for c in self.router.find_neighbors(target_node(key), exclude=sender)]

    async def _rpc_find_records(self, env: Envelope, addr) -> list | None:
        # Serve what is on disk: a grant or seal written this turn goes out
        # only once its commit returned.
        if not await self.durable():
            return None
        return self.find_records_page(env.args)

    def find_records_page(self, args: list) -> list:
        """``[key, digest]`` or ``[key, digest, cursor]`` -> ``[same, raws, next]``
        (``[False, [], b"", True]``: the key was dropped when its retention passed).

        ``same``: the caller's digest of record ids matches ours (nothing
        sent). Otherwise one page of records after ``cursor`` (b"": from the
        first) within ``RECORDS_PER_REPLY_BYTES``, and ``next``: the cursor of
        the following page, b"" when this page is the last. A reader follows
        ``next`` until b"", so a reply never silently cuts a key's records."""
        key, known_digest, *rest = args
        cursor = rest[0] if rest else b""
        if (
            not isinstance(key, bytes) or len(key) != 20 or not isinstance(known_digest, bytes)
            or not isinstance(cursor, bytes) or len(rest) > 1
        ):
            raise ValueError("find_records needs a key, a digest and an optional cursor")
        if known_digest and not cursor and known_digest == _digest_ids(self.records.record_ids(key)):
            return [True, [], b""]
        records, nxt = self.records.page(key, cursor, RECORDS_PER_REPLY_BYTES, committed_only=True)
        self.stats["find_records_pages"] += 1
        if not records and self.records.is_gone(key):
            return [False, [], b"", True]  # held once, dropped when its retention passed
        return [False, [r.raw for r in records], nxt]

    async def _rpc_store(self, env: Envelope, addr) -> list:
        key, raws = env.args
        if not isinstance(key, bytes) or len(key) != 20 or not isinstance(raws, list):
            raise ValueError("store needs a key and a list of records")
        mark = self.records.write_mark()
        ok, refused, produced = self._store_local(key, raws, env.sender_id)
        if not await self.durable(mark):
            return [False, [[i, REFUSED_DISK] for i in range(len(raws))], []]
        return [ok, [list(r) for r in refused], [r.raw for r in produced]]

    async def durable(self, since: int | None = None) -> bool:
        """Wait until every write so far is on disk (the store's group commit);
        False if that commit failed (or one that undid a write made after the
        ``since`` mark). Every answer that reports a store (an ack, a grant,
        a seal) waits for this first."""
        try:
            await self.records.durable(since)
        except Exception as exc:  # StorageError: the disk refused the commit
            self.stats["commit_failures_seen"] += 1
            self.log.warning("store_commit_failed", error=str(exc))
            return False
        return True

    def _rpc_sync(self, env: Envelope, addr) -> list:
        """``[key, digest]`` or ``[key, digest, cursor]`` -> ``[same, ids, next]``:
        the record ids we hold after ``cursor``, a page at a time (``next`` b"":
        the last page)."""
        key, digest, *rest = env.args
        cursor = rest[0] if rest else b""
        if not isinstance(key, bytes) or len(key) != 20 or not isinstance(digest, bytes) or not isinstance(cursor, bytes):
            raise ValueError("sync needs a key, a digest and an optional cursor")
        ids = self.records.record_ids(key)
        if not cursor and _digest_ids(ids) == digest:
            return [True, [], b""]
        page = sorted(i for i in ids if i > cursor)
        if len(page) > SYNC_IDS_PER_REPLY:
            return [False, page[:SYNC_IDS_PER_REPLY], page[SYNC_IDS_PER_REPLY - 1]]
        return [False, page, b""]

    def _decode_all(self, key: bytes, raws: list) -> tuple[list[Record], list[tuple[int, str]]]:
        records, bad = [], []
        for i, raw in enumerate(raws):
            try:
                if not isinstance(raw, bytes):
                    raise ValueError("a record is bytes")
                records.append(self.policy.validate(key, raw))
            except Exception as exc:
                self.stats["records_invalid"] += 1
                bad.append((i, str(exc)[:80]))
        return records, bad

    def _store_local(self, key: bytes, raws: list, sender_id: bytes) -> tuple[bool, list[tuple[int, str]], list[Record]]:
        records, bad = self._decode_all(key, raws)
        if bad:
            return False, bad, []
        return self.ingest(key, records, sender_id)

    def ingest(self, key: bytes, records: list[Record], sender_id: bytes) -> tuple[bool, list[tuple[int, str]], list[Record]]:
        """Admit verified records into local storage (replica side of a store).

        Budgets come before promises: a batch that would not fit the store is
        refused before the policy judges it, and what the policy accepts and
        produces (grants, seals) is stored all or nothing. A replica never
        answers with a grant or a seal it did not store."""
        if self.records.is_gone(key):
            self.stats["records_refused"] += len(records)
            return False, [(i, REFUSED_GONE) for i in range(len(records))], []
        if not self.records.fits(key, records):
            self.stats["budget_refusals"] += 1
            return False, [(i, REFUSED_BUDGET) for i in range(len(records))], []
        existing = self.records.get(key)
        admission = self.policy.admit(key, records, existing, sender_id)
        self.stats["records_refused"] += len(admission.refused)
        new = self.records.merge_all(key, [*admission.accept, *admission.produced])
        if new is None:
            # What the policy accepted and signed would not fit after all (its
            # products are larger than the batch): refuse, hand out nothing.
            self.stats["budget_refusals"] += 1
            return False, [(i, REFUSED_BUDGET) for i in range(len(records))], []
        if new:
            self.policy.stored(key, new)
        held = self.records.record_ids(key)
        ok = not admission.refused and all(r.record_id in held or r.slot is not None for r in admission.accept)
        return ok, admission.refused, admission.produced

    # -------------------------------------------------------------- lookups
    async def _ask_find_node(self, key: bytes, contact: Contact) -> list[Contact] | None:
        reply = await self.call(contact, "find_node", [key])
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

    async def _lookup(self, key: bytes, seeds: list[Contact]) -> LookupResult:
        self.stats["lookups"] += 1
        result = await lookup(
            key, seeds, lambda c: self._ask_find_node(key, c), k=self.config.k, alpha=self.config.alpha
        )
        self.lookups.append(result)
        return result

    async def replicas_for(self, key: bytes, *, count: int | None = None, fresh: bool = False) -> list[Contact]:
        """The ``count`` (default r) closest nodes to ``key``, this node included
        when it is one. ``count`` may exceed r (a wider read, a placement's
        candidates), up to k."""
        count = min(count or self.config.replicas, self.config.k)
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
        found = (await self._lookup(key, seeds)).contacts if seeds else []
        everyone = {c.id: c for c in found}
        everyone[self.node.id] = self.node
        wanted = max(count, self.config.replicas)
        if len(everyone) < wanted + 1:
            # A lookup cut short by lost replies: fall back on contacts we know.
            for c in seeds:
                everyone.setdefault(c.id, c)
        closest = sorted(everyone.values(), key=target.distance_to)[:wanted]
        remember(self._replica_cache, key, (now, closest), 4096)
        return closest[:count]

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

    async def probe(
        self,
        contacts: list[Contact],
        *,
        enough: int,
        grace_s: float,
        until: Callable[[set[bytes], set[bytes]], bool] = lambda answered, pending: False,
    ) -> set[bytes]:
        """Ping ``contacts`` at once, each ``PROBE_PINGS`` times (one lost
        datagram must not pass a live node over); the ids that answered.
        Returns when every ping is answered or timed out, when
        ``until(answered, pending ids)`` holds, or ``grace_s`` after ``enough``
        answered (from the start when ``enough`` is 0): a node that does not
        answer then costs no whole RPC timeout. Pings still running go on in
        tracked tasks."""
        if not contacts:
            return set()

        async def ping(contact: Contact) -> bool:
            tries = [self.protocol.spawn(self._ping_contact(contact), "probe") for _ in range(PROBE_PINGS)]
            for first in asyncio.as_completed(tries):
                if await first:
                    return True
            return False

        answers = await gather(
            contacts,
            ping,
            spawn=self.protocol.spawn,
            name="probe",
            missing=False,
            success=bool,
            enough=enough,
            grace=lambda took: grace_s,
            until=lambda so_far, pending: until({i for i, ok in so_far.items() if ok}, pending),
        )
        return {i for i, ok in answers.items() if ok}

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

    def is_replica_locally(self, key: bytes) -> bool:
        """From our routing table alone: are we among the r closest to ``key``?"""
        target = target_node(key)
        others = self.router.find_neighbors(target, k=self.config.replicas)
        if len(others) < self.config.replicas:
            return True
        return self.node.distance_to(target) < others[-1].distance_to(target)

    # ---------------------------------------------------------------- store
    async def resolve(self, ids: Iterable[bytes], *, fresh: bool = False) -> list[Contact]:
        """Contacts for node ids (this node included), from the routing table
        or, for ids it lacks, from a lookup of each id. Ids nobody knows are
        left out."""
        out: list[Contact] = []
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
                found = (await self._lookup(node_id, seeds)).contacts if seeds else []
                contact = next((c for c in found if c.id == node_id), None)
                if contact is not None:
                    remember(self._resolved, node_id, (now, contact), 4096)
            if contact is not None:
                out.append(contact)
        return out

    async def store(
        self,
        key: bytes,
        records: list[Record],
        *,
        replicas: int | None = None,
        quorum: int | None = None,
        targets: list[bytes] | None = None,
        grace_s: float | None = None,
        on_quorum: Callable[[StoreOutcome], None] | None = None,
    ) -> StoreOutcome:
        """Write ``records`` to the ``replicas`` (default r) closest nodes of
        ``key``, or to the nodes named by ``targets`` (a fixed replica set).

        ``grace_s``: how long to wait for the other replicas once a quorum
        stored (default: the adaptive grace of :meth:`_gather_quorum`; 0 for
        a caller that needs no more answers than the quorum's).
        ``on_quorum``: called once, with the outcome so far, the moment a
        quorum stored, while the store still waits out the grace (a caller
        can act on the quorum at once and still see the later answers)."""
        self.stats["stores"] += 1
        if targets is not None:
            replicas = len(targets)
        quorum = quorum or (replicas // 2 + 1 if replicas else self.config.quorum)

        async def where(fresh: bool) -> list[Contact]:
            if targets is not None:
                return await self.resolve(targets, fresh=fresh)
            return await self.replicas_for(key, count=replicas, fresh=fresh)

        raws = [r.raw for r in records]
        once = call_once(on_quorum)
        outcome = await self._store_on(key, raws, records, await where(False), quorum, grace_s, once)
        if outcome.stored_on < quorum and outcome.answered < (targets and len(targets) or outcome.asked):
            # The cached replica set or addresses may be stale: look again and retry once.
            outcome = await self._store_on(key, raws, records, await where(True), quorum, grace_s, once)
        if outcome.stored_on < quorum:
            self.stats["store_quorum_missed"] += 1
        return outcome

    async def _gather_quorum(self, contacts, call, quorum: int, success, missing, grace_s=None, on_quorum=None):
        """:func:`dht.quorum.gather_quorum` with this server's tasks and grace."""
        return await gather_quorum(
            contacts,
            call,
            quorum,
            success,
            missing,
            spawn=self.protocol.spawn,
            grace_max_s=self.quorum_grace_s,
            grace_s=grace_s,
            on_quorum=on_quorum,
        )

    async def _store_on(
        self,
        key: bytes,
        raws: list[bytes],
        records: list[Record],
        replicas: list[Contact],
        quorum: int,
        grace_s: float | None = None,
        on_quorum: Callable[[StoreOutcome], None] | None = None,
    ) -> StoreOutcome:
        async def one(contact: Contact) -> tuple[bool, bool, list, list[Record]]:
            """(answered, stored all, refusals, produced records)"""
            if contact.id == self.node.id:
                mark = self.records.write_mark()
                ok, refused, produced = self.ingest(key, records, self.node.id)
                if not await self.durable(mark):
                    return True, False, [(i, REFUSED_DISK) for i in range(len(records))], []
                return True, ok, refused, produced
            ok_all, refused_all, produced_all = True, [], []
            for chunk in _chunks(raws, self.config.datagram_bytes_max - 2000):
                reply = await self.call(contact, "store", [key, chunk])
                if reply is None or len(reply) != 3:
                    return False, False, [], []
                ok, refused, produced_raw = reply
                ok_all = ok_all and ok is True
                refused_all.extend(tuple(r) for r in refused if isinstance(r, list))
                produced, _bad = self._decode_all(key, produced_raw if isinstance(produced_raw, list) else [])
                produced_all.extend(p for p in produced if p.author_id == contact.id)
            return True, ok_all, refused_all, produced_all

        missing = (False, False, [], [])
        answers = await self._gather_quorum(
            replicas,
            one,
            quorum,
            lambda r: r[1],
            missing,
            grace_s,
            None if on_quorum is None else lambda so_far: on_quorum(store_outcome(replicas, so_far, missing)),
        )
        return store_outcome(replicas, answers, missing)

    # ---------------------------------------------------------------- fetch
    async def fetch(
        self,
        key: bytes,
        *,
        repair: bool = True,
        replicas: int | None = None,
        also: Iterable[bytes] = (),
        until_found: bool = False,
        skip: Collection[bytes] = (),
    ) -> Fetched:
        """Every valid record the replicas of ``key`` hold, and how many answered
        in full (``.gone``: the ids of those that dropped the key for good).

        ``also`` names more nodes to ask (a fixed replica set that may have
        drifted from the r closest). ``until_found``: a search rather than a
        read: wait for every answer (up to the RPC timeout) unless one node
        answers with records, instead of returning after a majority.
        ``skip``: nodes not to ask (a wider read after a miss skips those the
        first read asked)."""
        self.stats["fetches"] += 1
        replicas = await self.replicas_for(key, count=replicas)
        extra = [i for i in also if i not in {c.id for c in replicas}]
        if extra:
            replicas = replicas + await self.resolve(extra)
        if skip:
            replicas = [c for c in replicas if c.id not in skip]
        if not replicas:
            return Fetched([], 0)
        self.stats["record_requests"] += sum(1 for c in replicas if c.id != self.node.id)

        gone: set[bytes] = set()

        async def one(contact: Contact) -> tuple[Contact, list[Record] | None]:
            if contact.id == self.node.id:
                if self.records.is_gone(key):
                    gone.add(contact.id)
                return contact, self.records.get(key)
            return contact, await self.read_all(contact, key, gone)

        if until_found:
            by_id = await self._gather_quorum(replicas, one, 1, lambda a: bool(a[1]), None)
        else:
            by_id = await self._gather_quorum(replicas, one, len(replicas) // 2 + 1, lambda a: a[1] is not None, None)
        answers = [by_id[c.id] or (c, None) for c in replicas]
        merged: dict[bytes, Record] = {}
        for _, records in answers:
            for r in records or ():
                merged.setdefault(r.record_id, r)
        answered = sum(1 for _, recs in answers if recs is not None)
        if repair and merged:
            for contact, records in answers:
                if records is None:
                    continue
                have = {r.record_id for r in records}
                missing = [r for rid, r in merged.items() if rid not in have and self.worth_repairing(r)]
                if missing:
                    self.stats["repairs_sent"] += len(missing)
                    if contact.id == self.node.id:
                        self.ingest(key, missing, self.node.id)
                    else:
                        self.protocol.spawn(self._push(contact, key, missing), "repair")
        return Fetched(list(merged.values()), answered, frozenset(gone))

    async def read_all(self, contact: Contact, key: bytes, gone: set[bytes] | None = None) -> list[Record] | None:
        """Every record ``contact`` holds for ``key``, page after page; None when
        it did not answer every page (an incomplete answer counts as none: a
        reader never derives anything from part of a key's records).
        A reply without a cursor (``[same, raws]``) is a whole answer. A
        contact that says it dropped the key is added to ``gone``."""
        out: list[Record] = []
        cursor = b""
        for _ in range(PAGES_PER_READ_MAX):
            reply = await self.call(contact, "find_records", [key, b"", cursor] if cursor else [key, b""])
            if reply is None or len(reply) not in (2, 3, 4) or not isinstance(reply[1], list):
                break
            records, _bad = self._decode_all(key, reply[1])
            out.extend(records)
            cursor = reply[2] if len(reply) >= 3 else b""
            if not isinstance(cursor, bytes):
                break
            if not cursor:
                if len(reply) == 4 and reply[3] is True and not out and gone is not None:
                    gone.add(contact.id)
                return out
        self.stats["reads_incomplete"] += 1
        return None

    def worth_repairing(self, record: Record) -> bool:
        check = getattr(self.policy, "worth_repairing", None)
        return check is None or check(record)

    async def _push(self, contact: Contact, key: bytes, records: list[Record]) -> bool:
        ok = True
        for chunk in _chunks([r.raw for r in records], self.config.datagram_bytes_max - 2000):
            reply = await self.call(contact, "store", [key, chunk])
            ok = ok and reply is not None and reply[0] is True
        return ok

    async def sync_to(self, contact: Contact, key: bytes) -> int:
        """Send ``contact`` only the records of ``key`` it lacks. Returns records sent."""
        records = self.records.get(key)
        if not records:
            return 0
        digest = _digest_ids(r.record_id for r in records)
        theirs: set[bytes] = set()
        cursor = b""
        for _ in range(PAGES_PER_READ_MAX):
            reply = await self.call(contact, "sync", [key, digest, cursor] if cursor else [key, digest])
            if reply is None or len(reply) < 2 or reply[0] is True:
                return 0
            if isinstance(reply[1], list):
                theirs.update(i for i in reply[1] if isinstance(i, bytes))
            cursor = reply[2] if len(reply) > 2 and isinstance(reply[2], bytes) else b""
            if not cursor:
                break
        missing = [r for r in records if r.record_id not in theirs]
        if missing:
            await self._push(contact, key, missing)
        return len(missing)

    def statistics(self) -> dict[str, Any]:
        return {
            "peers": len(self.router),
            "evictions": self.router.evictions,
            "keys": len(self.records),
            **self.stats,
            **self.protocol.statistics(),
        }
