"""Chunks over the DHT transport: placement, store, fetch, touch, repair.

Four RPCs ride the same signed envelopes as the DHT's own (``dht/protocol.py``):

=================  ==========================  ====================================
method             request args                reply
=================  ==========================  ====================================
``store_chunk``    ``[key, data]``             ``[code, detail]``: ``ok``, ``bad_chunk``, ``full``
``fetch_chunk``    ``[key]``                   ``["ok", data]`` or ``["missing", b""]``
``touch_chunks``   ``[[key, ...]]``            ``["ok", [missing key, ...]]``
``drop_chunks``    ``[[key, ...]]``            ``["ok", dropped count]``
=================  ==========================  ====================================

A chunk is at most ``CHUNK_BYTES_MAX`` (48 KiB), so a request or reply fits
one datagram. A chunk lives on the ``r`` nodes closest to it (XOR distance of
the first 20 bytes of its key, the width of a node id), found as job replicas
are (``DHTServer.replicas_for``). Every chunk that arrives, in a request or in
a reply, is checked against its key; a wrong one is refused, counted
(``chunks_rejected``) and never stored or passed on. A fetch asks the closest
nodes first, then a wider set; those of the closest that lacked the chunk get
it pushed back (read repair, as for facts). ``drop_chunks`` only removes
chunks the asking node itself stored here and nobody else has stored or
touched since (an upload that failed takes back its copies; no one can drop
another's data).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from typing import Any

from workmesh.dht.chunks import KEY_BYTES, BudgetExceeded, ChunkRejected, ChunkStore, check_chunk
from workmesh.dht.routing import Contact

OK, MISSING, BAD_CHUNK, FULL = "ok", "missing", "bad_chunk", "full"
TOUCH_KEYS_MAX = 1200  # keys per touch_chunks request (32 bytes each, within a datagram)
FRESH_MAX = 200_000  # chunks remembered as newly stored by their sender (for drop_chunks)
ATTEMPTS = 2  # tries per RPC before a peer counts as not answering
HEDGE_S = 0.3  # a fetch also asks the next holder when none answered within this


def _consume(task: asyncio.Task) -> None:
    if not task.cancelled():
        task.exception()


def placement_key(key: bytes) -> bytes:
    """The id-sized point a chunk is placed around."""
    return key[:20]


class ChunkNet:
    def __init__(self, dht: Any, store: ChunkStore, *, replicas: int, quorum: int, logger: Any = None) -> None:
        self.dht = dht
        self.store = store
        self.replicas = replicas
        self.quorum = quorum
        self.log = logger
        self._fresh: OrderedDict[bytes, bytes] = OrderedDict()  # chunk key -> sender id
        self.counters = {
            "chunk_rpcs_in": 0,
            "chunk_push_failed": 0,
            "chunk_fetch_remote": 0,
            "chunk_fetch_failed": 0,
            "chunk_repairs": 0,
            "chunks_dropped_by_owner": 0,
        }
        for name, fn in (
            ("store_chunk", self._rpc_store),
            ("fetch_chunk", self._rpc_fetch),
            ("touch_chunks", self._rpc_touch),
            ("drop_chunks", self._rpc_drop),
        ):
            dht.register(name, fn)

    @property
    def me(self) -> bytes:
        return self.dht.identity.node_id

    # -- serving ----------------------------------------------------------------
    def _rpc_store(self, env, addr) -> list:
        key, data = env.args
        self.counters["chunk_rpcs_in"] += 1
        try:
            new = self.store.put(key, data)
        except ChunkRejected as exc:
            if self.log is not None:
                self.log.debug("chunk_rejected", sender=env.sender_id.hex()[:12], reason=str(exc))  # counted; a hostile peer must not flood the log
            return [BAD_CHUNK, str(exc)]
        except BudgetExceeded as exc:
            return [FULL, str(exc)]
        if new:
            self._fresh[key] = env.sender_id
            while len(self._fresh) > FRESH_MAX:
                self._fresh.popitem(last=False)
        elif self._fresh.get(key) != env.sender_id:
            self._fresh.pop(key, None)  # someone else wants it too
        return [OK, ""]

    def _rpc_fetch(self, env, addr) -> list:
        (key,) = env.args
        self.counters["chunk_rpcs_in"] += 1
        if not isinstance(key, bytes) or len(key) != KEY_BYTES:
            raise ValueError("fetch_chunk needs a 32-byte key")
        data = self.store.get(key)
        return [OK, data] if data is not None else [MISSING, b""]

    def _rpc_touch(self, env, addr) -> list:
        (keys,) = env.args
        self.counters["chunk_rpcs_in"] += 1
        if not isinstance(keys, list) or len(keys) > TOUCH_KEYS_MAX or not all(isinstance(k, bytes) for k in keys):
            raise ValueError("touch_chunks needs a list of keys")
        for key in keys:
            if self._fresh.get(key) not in (None, env.sender_id):
                self._fresh.pop(key, None)
        return [OK, self.store.touch(keys)]

    def _rpc_drop(self, env, addr) -> list:
        (keys,) = env.args
        self.counters["chunk_rpcs_in"] += 1
        if not isinstance(keys, list) or len(keys) > TOUCH_KEYS_MAX:
            raise ValueError("drop_chunks needs a list of keys")
        dropped = self.drop_own(keys, env.sender_id)
        return [OK, dropped]

    def drop_own(self, keys: list[bytes], owner: bytes) -> int:
        dropped = 0
        for key in keys:
            if isinstance(key, bytes) and self._fresh.get(key) == owner:
                del self._fresh[key]
                dropped += self.store.delete(key)
        self.counters["chunks_dropped_by_owner"] += dropped
        return dropped

    # -- asking -----------------------------------------------------------------
    async def placement(self, key: bytes, count: int | None = None) -> list[Contact]:
        """The nodes a chunk belongs on, closest first (this node included when one of them)."""
        return await self.dht.replicas_for(placement_key(key), count=count or self.replicas)

    async def _call(self, contact: Contact, method: str, args: list) -> list | None:
        for _ in range(ATTEMPTS):
            reply = await self.dht.call(contact, method, args)
            if reply is not None:
                return reply
        return None

    async def push(self, contact: Contact, key: bytes, data: bytes) -> str | None:
        """Store one chunk on one peer: the reply code, or None if it did not answer."""
        reply = await self._call(contact, "store_chunk", [key, data])
        if not reply or not isinstance(reply[0], str):
            self.counters["chunk_push_failed"] += 1
            return None
        return reply[0]

    async def peers_for(self, key: bytes) -> list[Contact]:
        """The placement's nodes other than this one."""
        return [c for c in await self.placement(key) if c.id != self.me]

    async def replicate(self, key: bytes, data: bytes, targets: list[Contact]) -> tuple[int, list[Contact], bool]:
        """Store ``data`` on ``targets`` (the local copy is the caller's).
        Returns (copies now held by the targets, the peers that took it,
        whether any refused for lack of room)."""
        codes = await asyncio.gather(*(self.push(c, key, data) for c in targets))
        took = [c for c, code in zip(targets, codes) if code == OK]
        return len(took), took, FULL in codes

    async def fetch(self, key: bytes) -> bytes | None:
        """The chunk's bytes from this node or the mesh, verified; ``None`` if nobody has it."""
        data = self.store.get(key)
        if data is not None:
            return data
        self.counters["chunk_fetch_remote"] += 1
        # Nodes whose last requests went unanswered are asked last (a dead
        # replica costs a timeout per chunk until the table evicts it).
        closest = sorted((c for c in await self.placement(key) if c.id != self.me), key=lambda c: self.dht.failures(c.id) > 0)
        lacked: list[Contact] = []
        asked: set[bytes] = set()
        for stage in (closest, None):
            if stage is None:
                wider = await self.dht.replicas_for(placement_key(key), count=self.dht.config.k, fresh=True)
                stage = [c for c in wider if c.id != self.me and c.id not in asked]
            asked.update(c.id for c in stage)
            data = await self._first_answer(key, stage, lacked if stage is closest else [])
            if data is not None:
                for peer in lacked:
                    self.counters["chunk_repairs"] += 1
                    self.dht.protocol.spawn(self.push(peer, key, data), "chunk_repair")
                return data
        self.counters["chunk_fetch_failed"] += 1
        return None

    async def _ask(self, contact: Contact, key: bytes) -> bytes | str | None:
        """The verified chunk from one peer, ``MISSING``, or None (no answer, or wrong bytes)."""
        reply = await self._call(contact, "fetch_chunk", [key])
        if not reply or len(reply) != 2:
            return None
        if reply[0] != OK:
            return MISSING
        try:
            check_chunk(key, reply[1])
        except ChunkRejected:
            self.store.counters["chunks_rejected"] += 1
            return None
        return reply[1]

    async def _first_answer(self, key: bytes, contacts: list[Contact], lacked: list[Contact]) -> bytes | None:
        """Ask ``contacts`` in order, the next one also whenever none answered
        within ``HEDGE_S`` (a dead peer costs that, not a timeout); the first
        verified chunk wins. Those that said they lack it go in ``lacked``."""
        running: dict[asyncio.Task, Contact] = {}
        queue = list(contacts)
        try:
            while queue or running:
                if queue:
                    contact = queue.pop(0)
                    running[asyncio.ensure_future(self._ask(contact, key))] = contact
                done, _ = await asyncio.wait(
                    set(running), timeout=HEDGE_S if queue else None, return_when=asyncio.FIRST_COMPLETED
                )
                for task in done:
                    contact = running.pop(task)
                    answer = task.result()
                    if isinstance(answer, bytes):
                        return answer
                    if answer == MISSING:
                        lacked.append(contact)
            return None
        finally:
            # Let the slower asks end on their own: a peer that never answers
            # must have its timeouts recorded (so the table evicts it and
            # later fetches ask it last), not be forgiven by a cancel.
            for task in running:
                task.add_done_callback(_consume)

    async def touch(self, keys: list[bytes]) -> int:
        """Refresh chunks on their placement; push those a placed node lacks
        (and this node can find). Returns the number of chunks repaired."""
        self.store.touch(keys)
        by_peer: dict[bytes, tuple[Contact, list[bytes]]] = {}
        for key in keys:
            for contact in await self.placement(key):
                if contact.id != self.me:
                    by_peer.setdefault(contact.id, (contact, []))[1].append(key)
        repaired = 0
        for contact, wanted in by_peer.values():
            for i in range(0, len(wanted), TOUCH_KEYS_MAX):
                reply = await self._call(contact, "touch_chunks", [wanted[i : i + TOUCH_KEYS_MAX]])
                if not reply or len(reply) != 2 or not isinstance(reply[1], list):
                    continue
                for key in reply[1]:
                    if key not in wanted:
                        continue
                    data = await self.fetch(key)
                    if data is not None and await self.push(contact, key, data) == OK:
                        repaired += 1
        self.counters["chunk_repairs"] += repaired
        return repaired

    async def drop(self, placed: dict[bytes, list[Contact]]) -> None:
        """Take back chunks this node stored on peers (a failed upload)."""
        by_peer: dict[bytes, tuple[Contact, list[bytes]]] = {}
        for key, contacts in placed.items():
            for contact in contacts:
                by_peer.setdefault(contact.id, (contact, []))[1].append(key)
        for contact, keys in by_peer.values():
            for i in range(0, len(keys), TOUCH_KEYS_MAX):
                await self.dht.call(contact, "drop_chunks", [keys[i : i + TOUCH_KEYS_MAX]])

    def statistics(self) -> dict[str, int]:
        return dict(self.counters)
