"""Records on their replicas: replicated writes and reads, repair, probes,
and the replica's side of a write.

:class:`Replication` offers:

* ``store(key, records)``: write to the ``r`` closest replicas (or a fixed
  replica set); reports how many really stored (never raises on an empty
  or dead neighbourhood), and the records the replicas produced in
  response (grants, seals);
* ``fetch(key)``: ask the ``r`` closest replicas, merge every valid record
  of every reply (never a majority vote), and push back what each lacked
  (read repair); ``read_all``: every page one replica holds of a key;
* ``sync_to(contact, key)``: send a replica only the records it lacks
  (hand-off and republish);
* ``probe(contacts)``: which of them answer a ping now;
* ``ingest`` and ``durable``: the replica side, which
  :class:`dht.ingest.LocalWrites` does (admitting verified records into the
  local store under its budgets and the injected :class:`RecordPolicy`, and
  waiting for them to be on disk before answering).

It reaches replicas through :class:`dht.contacts.Contacts` and waits for a
quorum of them with :mod:`dht.quorum`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection, Iterable
from typing import Any

from workmesh.dht.commit import StorageError
from workmesh.dht.config import DHTConfig
from workmesh.dht.contacts import Contacts
from workmesh.dht.contract import REFUSED_DISK, STORE_MANY_KEYS_MAX, Fetched, Record, RecordPolicy, StoreOutcome
from workmesh.dht.ingest import Ingested, LocalWrites
from workmesh.dht.protocol import RPCProtocol
from workmesh.dht.quorum import call_once, gather, gather_quorum, store_outcome
from workmesh.dht.routing import Contact
from workmesh.dht.rpcs import digest_ids

# Pages a reader follows for one key from one replica before it calls the
# answer incomplete: every page carries at least one record, and a key holds
# at most StorageLimits.records_per_key_max (256) records.
PAGES_PER_READ_MAX = 300
# Pings sent at once to each contact a probe asks (DHTServer.probe).
PROBE_PINGS = 2


def _groups(items: list, cost: Callable[[Any], int], limit: int, count_max: int = 0) -> list[list]:
    """``items`` cut, in order, into groups of at most ``limit`` in ``cost``
    (and ``count_max`` items, when given); an item larger than ``limit`` goes alone."""
    out: list[list] = [[]]
    size = 0
    for item in items:
        c = cost(item)
        if out[-1] and (size + c > limit or len(out[-1]) == count_max):
            out.append([])
            size = 0
        out[-1].append(item)
        size += c
    return out


def _chunks(raws: list[bytes], limit: int) -> list[list[bytes]]:
    """Records cut into store requests within ``limit`` bytes."""
    return _groups(raws, lambda raw: len(raw) + 8, limit)


def _store_groups(items: list[tuple[bytes, list[bytes], asyncio.Future]], limit: int) -> list[list]:
    """``items`` (key, raws, future) cut into ``store_many`` requests, in
    order: at most STORE_MANY_KEYS_MAX keys and ``limit`` bytes of records each."""
    return _groups(items, lambda item: sum(len(r) + 8 for r in item[1]) + 32, limit, STORE_MANY_KEYS_MAX)


class Replication:
    def __init__(
        self,
        config: DHTConfig,
        records: Any,  # dht.storage.FactStore
        policy: RecordPolicy,
        protocol: RPCProtocol,
        contacts: Contacts,
        stats: dict[str, int],
        log: Any,
    ) -> None:
        self.config = config
        self.records = records
        self.policy = policy
        self.protocol = protocol
        self.contacts = contacts
        self.node = contacts.node
        self.stats = stats
        self.log = log
        # After a quorum of replicas answered, wait for the rest as long again
        # as the quorum took, at most this long (see dht.quorum.gather_quorum).
        self.quorum_grace_s = 0.05
        self.local = LocalWrites(records, policy, stats, log)
        # Stores to one replica in one event-loop turn, sent as one request
        # (store_many) when there are several: contact id -> (contact, items).
        self._store_queue: dict[bytes, tuple[Contact, list[tuple[bytes, list[bytes], asyncio.Future]]]] = {}

    # ---------------------------------------------------------------- store
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
                return await self.contacts.resolve(targets, fresh=fresh)
            return await self.contacts.replicas_for(key, count=replicas, fresh=fresh)

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
                try:
                    ok, refused, produced = self.ingest(key, records, self.node.id)
                except StorageError:
                    return False, False, [], []  # this node is stopping: it answers as a down replica would
                if not await self.durable(mark):
                    return True, False, [(i, REFUSED_DISK) for i in range(len(records))], []
                return True, ok, refused, produced
            ok_all, refused_all, produced_all = True, [], []
            for chunk in _chunks(raws, self.config.datagram_bytes_max - 2000):
                reply = await self._send_store(contact, key, chunk)
                if reply is None or len(reply) != 3:
                    return False, False, [], []
                ok, refused, produced_raw = reply
                ok_all = ok_all and ok is True
                refused_all.extend(tuple(r) for r in refused if isinstance(r, list))
                produced, _bad = self.decode_all(key, produced_raw if isinstance(produced_raw, list) else [])
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

    def _send_store(self, contact: Contact, key: bytes, raws: list[bytes]) -> asyncio.Future:
        """Store ``raws`` under ``key`` on ``contact``: its reply (``[ok, refused,
        produced]``), None when it gave none. The stores queued for one
        contact in one event-loop turn leave together at the end of the turn,
        as one ``store_many`` request when there are several: the replica
        judges them in one go, signs its answers to all of them with one
        signature, and answers once (one quorum write for many jobs)."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        if not self._store_queue:
            loop.call_soon(self._flush_stores)
        queued = self._store_queue.get(contact.id)
        if queued is None:
            queued = self._store_queue[contact.id] = (contact, [])
        queued[1].append((key, raws, future))
        return future

    def _flush_stores(self) -> None:
        queue, self._store_queue = self._store_queue, {}
        for contact, items in queue.values():
            for group in _store_groups(items, self.config.datagram_bytes_max - 2000):
                self.protocol.spawn(self._store_group(contact, group), "store")

    async def _store_group(self, contact: Contact, group: list[tuple[bytes, list[bytes], asyncio.Future]]) -> None:
        replies: list = [None] * len(group)
        try:
            if len(group) == 1:
                key, raws, _ = group[0]
                replies = [await self.contacts.call(contact, "store", [key, raws])]
            else:
                self.stats["store_many_sent"] += 1
                self.stats["store_many_keys"] += len(group)
                reply = await self.contacts.call(contact, "store_many", [[key, raws] for key, raws, _ in group])
                if isinstance(reply, list) and len(reply) == len(group):
                    replies = reply
        finally:  # every waiter hears, also when this task is cancelled (the node stopping)
            for (_, _, future), reply in zip(group, replies):
                if not future.done():
                    future.set_result(reply if isinstance(reply, list) else None)

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
        replicas = await self.contacts.replicas_for(key, count=replicas)
        extra = [i for i in also if i not in {c.id for c in replicas}]
        if extra:
            replicas = replicas + await self.contacts.resolve(extra)
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
        answered_ids = frozenset(c.id for c, recs in answers if recs is not None)
        return Fetched(list(merged.values()), answered, frozenset(gone), answered_ids)

    async def read_all(self, contact: Contact, key: bytes, gone: set[bytes] | None = None) -> list[Record] | None:
        """Every record ``contact`` holds for ``key``, page after page; None when
        it did not answer every page (an incomplete answer counts as none: a
        reader never derives anything from part of a key's records).
        A reply without a cursor (``[same, raws]``) is a whole answer. A
        contact that says it dropped the key is added to ``gone``."""
        out: list[Record] = []
        cursor = b""
        for _ in range(PAGES_PER_READ_MAX):
            reply = await self.contacts.call(contact, "find_records", [key, b"", cursor] if cursor else [key, b""])
            if reply is None or len(reply) not in (2, 3, 4) or not isinstance(reply[1], list):
                break
            records, _bad = self.decode_all(key, reply[1])
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

    # --------------------------------------------------------------- repair
    def worth_repairing(self, record: Record) -> bool:
        check = getattr(self.policy, "worth_repairing", None)
        return check is None or check(record)

    async def _push(self, contact: Contact, key: bytes, records: list[Record]) -> bool:
        ok = True
        for chunk in _chunks([r.raw for r in records], self.config.datagram_bytes_max - 2000):
            reply = await self.contacts.call(contact, "store", [key, chunk])
            ok = ok and reply is not None and reply[0] is True
        return ok

    async def sync_to(self, contact: Contact, key: bytes) -> int | None:
        """Send ``contact`` only the records of ``key`` it lacks. Returns records
        sent, or None when it did not answer."""
        records = self.records.get(key)
        if not records:
            return 0
        digest = digest_ids(r.record_id for r in records)
        theirs: set[bytes] = set()
        cursor = b""
        for _ in range(PAGES_PER_READ_MAX):
            reply = await self.contacts.call(contact, "sync", [key, digest, cursor] if cursor else [key, digest])
            if reply is None:
                return None
            if len(reply) < 2 or reply[0] is True:
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

    # ---------------------------------------------------------------- probe
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
            tries = [self.protocol.spawn(self.contacts.ping_contact(contact), "probe") for _ in range(PROBE_PINGS)]
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

    # ---------------------------------------------------------- replica side (dht/ingest.py)
    async def durable(self, since: int | None = None) -> bool:
        return await self.local.durable(since)

    def decode_all(self, key: bytes, raws: list) -> tuple[list[Record], list[tuple[int, str]]]:
        return self.local.decode_all(key, raws)

    def ingest(self, key: bytes, records: list[Record], sender_id: bytes) -> Ingested:
        return self.local.ingest(key, records, sender_id)
