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

The server is the composition of one part per concept, each in its module:

* ``contacts``: :class:`dht.contacts.Contacts`, the routing table and what
  the node knows of its peers; calls, pings, lookups, replica sets;
* ``rpcs``: :class:`dht.rpcs.RPCHandlers`, what the node answers;
* ``replication``: :class:`dht.replication.Replication`, stores, reads,
  repair, probes, and admitting records into the local store;
* ``upkeep``: :class:`dht.upkeep.Upkeep`, hand-off, republish, revival and
  refresh on timers.

Its own methods are the node layer's interface to them (they delegate), and
the life cycle: ``start``, ``bootstrap``, ``stop``.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable, Collection, Iterable
from typing import Any

import structlog

from workmesh.crypto.identity import Identity
from workmesh.dht.config import DHTConfig
from workmesh.dht.contacts import BOOTSTRAP_PING_TRIES, Contacts
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
from workmesh.dht.envelope import Envelope
from workmesh.dht.protocol import Clock, RPCProtocol
from workmesh.dht.replication import PAGES_PER_READ_MAX, PROBE_PINGS, Replication  # noqa: F401
from workmesh.dht.routing import Contact
from workmesh.dht.rpcs import RECORDS_PER_REPLY_BYTES, SYNC_IDS_PER_REPLY, Handler, RPCHandlers  # noqa: F401
from workmesh.dht.upkeep import Upkeep


class SystemClock:
    """Production clock: the event loop's monotonic time, the system's wall time."""

    def monotonic(self) -> float:
        return asyncio.get_running_loop().time()

    def wall_ms(self) -> int:
        return int(time.time() * 1000)


def _tunable(part: str, name: str) -> property:
    """A setting of one of the server's parts, read and set on the server."""
    return property(
        lambda self: getattr(getattr(self, part), name),
        lambda self, value: setattr(getattr(self, part), name, value),
        doc=f"``{part}.{name}``",
    )


class DHTServer:
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
        self.identity = identity
        self.config = config
        self.records = store
        self.policy = policy
        self.clock = clock or SystemClock()
        self.log = (logger or structlog.get_logger()).bind(node_id=identity.node_id.hex()[:12])
        self.stats: dict[str, int] = {
            "stores": 0,
            "store_quorum_missed": 0,
            "store_many_sent": 0,  # requests that carried several keys' stores to one replica
            "store_many_keys": 0,  # the keys they carried
            "fetches": 0,
            "record_requests": 0,
            "repairs_sent": 0,
            "records_refused": 0,
            "records_invalid": 0,
            "third_party_contacts_rejected": 0,
            "handoffs": 0,
            "handoffs_dropped": 0,
            "republished_records": 0,
            "republished_keys": 0,
            "lookups": 0,
            "contacts_revived": 0,
            "rejoins_before_lookup": 0,
            "find_node_replies": 0,
            "find_records_pages": 0,
            "reads_incomplete": 0,
            "budget_refusals": 0,
            "commit_failures_seen": 0,
            "verifications_skipped": 0,
            "senders_not_needed": 0,
            "senders_admitted_proven": 0,
        }
        self.protocol = RPCProtocol(
            identity, config, self.clock, new_msg_id or (lambda: os.urandom(16)), self._on_request, self._on_task_error
        )
        self.contacts = Contacts(identity, config, self.clock, self.protocol, self.stats)
        self.node: Contact = self.contacts.node
        self.router = self.contacts.router
        self.lookups = self.contacts.lookups
        self.replication = Replication(config, store, policy, self.protocol, self.contacts, self.stats, self.log)
        self.rpcs = RPCHandlers(self.protocol, self.contacts, store, self.replication, self.stats, self.log)
        self._handlers = self.rpcs.handlers
        self.upkeep = Upkeep(
            config, store, policy, self.contacts, self.replication.sync_to, self.save_contacts, self.stats
        )
        self.contacts.on_new_neighbour = self.upkeep.queue_handoff
        self._loops: list[asyncio.Task] = []

    dormant_max = _tunable("contacts", "dormant_max")
    heard_max = _tunable("contacts", "heard_max")
    answered_max = _tunable("contacts", "answered_max")
    replica_cache_ttl_s = _tunable("contacts", "replica_cache_ttl_s")
    quorum_grace_s = _tunable("replication", "quorum_grace_s")
    revive_interval_s = _tunable("upkeep", "revive_interval_s")
    revive_per_round = _tunable("upkeep", "revive_per_round")

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
        self._loops = self.upkeep.start(self.protocol.spawn)

    async def bootstrap(self, addrs: Iterable[tuple[str, int]]) -> int:
        """Ping the given addresses, then look ourselves up. Returns contacts known.

        The addresses are remembered: a routing table that empties (a lossy
        join, every contact lost) asks them again before a lookup would ask
        nobody (``Contacts.rejoin_if_alone``); with none given, an empty table
        asks the remembered ones."""
        addrs = list(addrs)
        if addrs:
            self.contacts.bootstrap_addrs = tuple(addrs)
        elif not len(self.router):
            addrs = list(self.contacts.bootstrap_addrs)
        found = await asyncio.gather(*(self.contacts.ping(addr, tries=BOOTSTRAP_PING_TRIES) for addr in addrs))
        seeds = [c for c in found if c is not None] + self.router.contacts()
        if seeds:
            await self.contacts.lookup_self(seeds)
        self.save_contacts()
        return len(self.router)

    def save_contacts(self) -> None:
        self.records.save_contacts([(c.id, c.ip, c.port, c.public_key) for c in self.router.contacts()])

    async def stop(self) -> None:
        for task in self._loops:
            task.cancel()
        if self._loops:
            await asyncio.wait(self._loops)  # they end before the store they use is closed
        try:
            self.save_contacts()
        except Exception as exc:  # storage may already be closed
            self.log.warning("save_contacts_failed", error=str(exc))
        self.protocol.close()

    def register(self, method: str, handler: Handler) -> None:
        self.rpcs.register(method, handler)

    async def _on_request(self, env: Envelope, addr: tuple[str, int]) -> list | None:
        return await self.rpcs.on_request(env, addr)

    def _on_task_error(self, name: str, exc: BaseException) -> None:
        self.log.error("task_failed", task=name, error=repr(exc))

    def statistics(self) -> dict[str, Any]:
        return {
            "peers": len(self.router),
            "evictions": self.router.evictions,
            "keys": len(self.records),
            **self.stats,
            **self.protocol.statistics(),
        }

    # ------------------------------------------- contacts (dht/contacts.py)
    async def ping(self, addr: tuple[str, int]) -> Contact | None:
        return await self.contacts.ping(addr)

    async def call(self, contact: Contact, method: str, args: list, timeout_s: float | None = None) -> list | None:
        """Request/reply with a known contact; routing-table bookkeeping included."""
        return await self.contacts.call(contact, method, args, timeout_s)

    async def replicas_for(self, key: bytes, *, count: int | None = None, fresh: bool = False) -> list[Contact]:
        """The ``count`` (default r) closest nodes to ``key``, this node included when it is one."""
        return await self.contacts.replicas_for(key, count=count, fresh=fresh)

    async def resolve(self, ids: Iterable[bytes], *, fresh: bool = False) -> list[Contact]:
        """Contacts for node ids (this node included); ids nobody knows are left out."""
        return await self.contacts.resolve(ids, fresh=fresh)

    def is_replica_locally(self, key: bytes) -> bool:
        return self.contacts.is_replica_locally(key)

    def answered_age_s(self, node_id: bytes) -> float | None:
        return self.contacts.answered_age_s(node_id)

    def failures(self, node_id: bytes) -> int:
        return self.contacts.failures(node_id)

    def router_is_complete(self) -> bool:
        return self.contacts.router_is_complete()

    def heard_count(self) -> int:
        return self.contacts.heard_count()

    def has_dormant(self) -> bool:
        return self.contacts.has_dormant()

    def dormant_count(self) -> int:
        return self.contacts.dormant_count()

    async def revive(self, count: int) -> int:
        """Ping up to ``count`` evicted contacts; how many rejoined the table."""
        return await self.contacts.revive(count)

    # ------------------------------------- replication (dht/replication.py)
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
        """Write ``records`` to the replicas of ``key`` (see :meth:`Replication.store`)."""
        return await self.replication.store(
            key, records, replicas=replicas, quorum=quorum, targets=targets, grace_s=grace_s, on_quorum=on_quorum
        )

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
        """Every valid record the replicas of ``key`` hold (see :meth:`Replication.fetch`)."""
        return await self.replication.fetch(
            key, repair=repair, replicas=replicas, also=also, until_found=until_found, skip=skip
        )

    async def read_all(self, contact: Contact, key: bytes, gone: set[bytes] | None = None) -> list[Record] | None:
        """Every record ``contact`` holds for ``key``; None unless it answered every page."""
        return await self.replication.read_all(contact, key, gone)

    async def sync_to(self, contact: Contact, key: bytes) -> int:
        """Send ``contact`` only the records of ``key`` it lacks. Returns records sent."""
        return (await self.replication.sync_to(contact, key)) or 0

    async def probe(
        self,
        contacts: list[Contact],
        *,
        enough: int,
        grace_s: float,
        until: Callable[[set[bytes], set[bytes]], bool] = lambda answered, pending: False,
    ) -> set[bytes]:
        """The ids of ``contacts`` that answer a ping now (see :meth:`Replication.probe`)."""
        return await self.replication.probe(contacts, enough=enough, grace_s=grace_s, until=until)

    def worth_repairing(self, record: Record) -> bool:
        return self.replication.worth_repairing(record)

    def ingest(self, key: bytes, records: list[Record], sender_id: bytes) -> tuple[bool, list[tuple[int, str]], list[Record]]:
        """Admit verified records into local storage (see :meth:`Replication.ingest`)."""
        return self.replication.ingest(key, records, sender_id)

    async def durable(self, since: int | None = None) -> bool:
        """Wait until every write so far is on disk; False if that commit failed."""
        return await self.replication.durable(since)

    # ------------------------------------------ handlers (dht/rpcs.py), upkeep
    def find_records_page(self, args: list) -> list:
        """One page of a ``find_records`` reply (see :meth:`RPCHandlers.find_records_page`)."""
        return self.rpcs.find_records_page(args)

    async def republish(self) -> int:
        """Send every key we hold to its current replicas, only what they lack."""
        return await self.upkeep.republish()
