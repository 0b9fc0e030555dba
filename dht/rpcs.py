"""The DHT's RPC handlers: what a node answers when a peer asks.

:class:`RPCHandlers` dispatches every verified request by method name to its
handler (a sender whose address the routing table does not know yet is
pinged back before it is trusted, unless it proved that address before; see
:meth:`Contacts.on_sender`) and
serves the DHT's own methods:

* ``ping`` -> ``[]``;
* ``find_node [key]`` -> the k closest contacts we know;
* ``find_records [key, digest(, cursor)]`` -> one page of records (only what
  is on disk);
* ``store [key, raws]`` -> ``[ok, refusals, produced]``, answered once the
  records are on disk;
* ``store_many [[key, raws], ...]`` -> one such answer per key: the stores
  one peer sends this node in one event-loop turn;
* ``sync [key, digest(, cursor)]`` -> one page of the record ids we hold.

More methods (gossip) are added with :meth:`register`. Admitting records
into the local store is :class:`dht.replication.Replication`'s business.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from workmesh.dht.contacts import Contacts, sender_contact
from workmesh.dht.contract import REFUSED_DISK, STORE_MANY_KEYS_MAX
from workmesh.dht.envelope import Envelope
from workmesh.dht.protocol import RPCProtocol
from workmesh.dht.routing import target_node

# One reply page of find_records (records by id after a cursor): within the
# 60,000-byte datagram bound with room for the envelope.
RECORDS_PER_REPLY_BYTES = 48_000
# Record ids (32 bytes each) per page of a sync reply.
SYNC_IDS_PER_REPLY = 1_000

Handler = Callable[[Envelope, tuple[str, int]], Awaitable[list] | list]


def digest_ids(ids: Iterable[bytes]) -> bytes:
    """The digest of a key's record ids that ``find_records`` and ``sync`` compare."""
    h = hashlib.blake2b(digest_size=16)
    for i in sorted(ids):
        h.update(i)
    return h.digest()


class RPCHandlers:
    def __init__(
        self,
        protocol: RPCProtocol,
        contacts: Contacts,
        records: Any,  # dht.storage.FactStore
        replication: Any,  # dht.replication.Replication: durable, and local (the replica side)
        stats: dict[str, int],
        log: Any,
    ) -> None:
        self.protocol = protocol
        self.contacts = contacts
        self.records = records
        self.replication = replication
        self.stats = stats
        self.log = log
        self.handlers: dict[str, Handler] = {
            "ping": self.rpc_ping,
            "find_node": self.rpc_find_node,
            "find_records": self.rpc_find_records,
            "store": self.rpc_store,
            "store_many": self.rpc_store_many,
            "sync": self.rpc_sync,
        }

    def register(self, method: str, handler: Handler) -> None:
        if method in self.handlers:
            raise ValueError(f"RPC {method} already registered")
        self.handlers[method] = handler

    async def on_request(self, env: Envelope, addr: tuple[str, int]) -> list | None:
        handler = self.handlers.get(env.method)
        if handler is None:
            self.protocol.dropped["unknown_method"] += 1
            return None
        self.contacts.on_sender(env, addr)
        try:
            result = handler(env, addr)
            if asyncio.iscoroutine(result):
                result = await result
        except (ValueError, TypeError, KeyError, IndexError) as exc:
            self.protocol.dropped["bad_arguments"] += 1
            self.log.debug("bad_rpc_arguments", method=env.method, error=str(exc))
            return None
        return result

    def rpc_ping(self, env: Envelope, addr) -> list:
        return []

    def rpc_find_node(self, env: Envelope, addr) -> list:
        """``[key]`` or ``[key, count]`` -> the ``count`` (default and at most k)
        closest contacts we know. A lookup that stops at its ``want`` closest
        needs no more than ``max(want, alpha)`` from each reply (``dht/crawl.py``)."""
        key, *rest = env.args
        if not isinstance(key, bytes) or len(key) != 20:
            raise ValueError("find_node needs a 20-byte key")
        count = rest[0] if rest else None
        if len(rest) > 1 or (count is not None and (type(count) is not int or count < 1)):
            raise ValueError("find_node takes a key and an optional count of at least 1")
        sender = sender_contact(env, addr)
        k = self.contacts.config.k if count is None else min(count, self.contacts.config.k)
        neighbours = self.contacts.router.find_neighbors(target_node(key), k=k, exclude=sender)
        return [w for w in (c.to_wire() for c in neighbours) if w is not None]

    async def rpc_find_records(self, env: Envelope, addr) -> list | None:
        # Serve what is on disk: a grant or seal written this turn goes out
        # only once its commit returned.
        if not await self.replication.durable():
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
        if known_digest and not cursor and known_digest == digest_ids(self.records.record_ids(key)):
            return [True, [], b""]
        records, nxt = self.records.page(key, cursor, RECORDS_PER_REPLY_BYTES, committed_only=True)
        self.stats["find_records_pages"] += 1
        if not records and self.records.is_gone(key):
            return [False, [], b"", True]  # held once, dropped when its retention passed
        return [False, [r.raw for r in records], nxt]

    async def rpc_store(self, env: Envelope, addr) -> list:
        key, raws = env.args
        if not isinstance(key, bytes) or len(key) != 20 or not isinstance(raws, list):
            raise ValueError("store needs a key and a list of records")
        return (await self._store([(key, raws)], env.sender_id))[0]

    async def rpc_store_many(self, env: Envelope, addr) -> list:
        """``[[key, records], ...]`` (1..STORE_MANY_KEYS_MAX) -> one ``store``
        answer per key, in order: the stores a peer sent this node in one
        turn, judged together (one signature for what this replica produces
        for all of them) and answered once everything is on disk."""
        items = env.args
        if not 1 <= len(items) <= STORE_MANY_KEYS_MAX or not all(
            isinstance(item, list) and len(item) == 2 and isinstance(item[0], bytes) and len(item[0]) == 20
            and isinstance(item[1], list)
            for item in items
        ):
            raise ValueError(f"store_many needs 1..{STORE_MANY_KEYS_MAX} [key, records] pairs")
        return await self._store([(key, raws) for key, raws in items], env.sender_id)

    async def _store(self, items: list[tuple[bytes, list]], sender_id: bytes) -> list[list]:
        """The replica side of ``store`` and ``store_many``: each key's
        ``[ok, refusals, produced]``, once what it stored is on disk."""
        mark = self.records.write_mark()
        outcomes = self.replication.local.store_local(items, sender_id)
        if not await self.replication.durable(mark):
            return [[False, [[i, REFUSED_DISK] for i in range(len(raws))], []] for _, raws in items]
        return [[ok, [list(r) for r in refused], [r.raw for r in produced]] for ok, refused, produced in outcomes]

    def rpc_sync(self, env: Envelope, addr) -> list:
        """``[key, digest]`` or ``[key, digest, cursor]`` -> ``[same, ids, next]``:
        the record ids we hold after ``cursor``, a page at a time (``next`` b"":
        the last page)."""
        key, digest, *rest = env.args
        cursor = rest[0] if rest else b""
        if not isinstance(key, bytes) or len(key) != 20 or not isinstance(digest, bytes) or not isinstance(cursor, bytes):
            raise ValueError("sync needs a key, a digest and an optional cursor")
        ids = self.records.record_ids(key)
        if not cursor and digest_ids(ids) == digest:
            return [True, [], b""]
        page = sorted(i for i in ids if i > cursor)
        if len(page) > SYNC_IDS_PER_REPLY:
            return [False, page[:SYNC_IDS_PER_REPLY], page[SYNC_IDS_PER_REPLY - 1]]
        return [False, page, b""]
