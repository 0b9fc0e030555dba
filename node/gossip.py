"""Announcements of runnable jobs, spread by bounded gossip.

An announcement is ``[job_id, job_type, ttl, nonce, first]``. The accepting
node sends it to the ``fanout`` contacts that rank best for the job
(rendezvous), so the workers that should claim first hear first; each receiver
that has not seen ``(job_id, nonce)`` before hands it to its workers and,
unless one of them has a free slot for it (it will claim the job, or read it
and find it claimed), forwards it to random contacts with ``ttl - 1`` in a mesh
larger than the fan-out. An idle mesh so hears an announcement on ``fanout``
nodes, a busy one on up to ``fanout + fanout**2``: the work an announcement
causes (mostly the reads of the workers that hear it) follows what it takes
to find a free worker, not the size of the mesh.
A first announcement carries the signed submission and its placement
(``first``), so the best-ranked worker can claim attempt 1 without reading the
job first (it verifies both signatures and that the submission hashes to the
job id); re-announcements carry an empty list. Replicas re-announce jobs that are pending or whose lease went
stale, with a fresh nonce, so a job never depends on one message arriving.
The seen-cache and the fan-out are bounded; announcements carry no authority
(a worker always reads the job's signed facts before claiming), so a forged
announcement costs one read at most. What one sender can make a node do is
bounded too: announcements taken from one sender (node key) per second, and
forwarded for it per second, are token buckets; the excess is counted and
dropped (replicas re-announce what matters). With an API token configured only
token holders may announce at all (``DHTConfig.acting_methods``).
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

from workmesh.dht.envelope import Envelope
from workmesh.dht.peerlimit import PeerBuckets
from workmesh.dht.server import DHTServer
from workmesh.node import facts as F
from workmesh.node import rendezvous

TYPE_CHARS_MAX = 64
# Per sender: announcements handed to the workers, and forwarded, per second (burst twice).
TAKEN_PER_SENDER_PER_S = 2000.0
FORWARDED_PER_SENDER_PER_S = 500.0
SENDERS_MAX = 10_000


class Gossip:
    def __init__(
        self,
        dht: DHTServer,
        on_announce: Callable[[bytes, str, tuple[F.Fact, ...]], bool],
        *,
        fanout: int,
        ttl: int,
        seen_max: int,
        rng: random.Random,
        spawn: Callable[[Awaitable[Any], str], Any] | None = None,
    ) -> None:
        self.dht = dht
        # Where sends run: the node's own tasks (node/tasks.py), which it stops.
        self._spawn = spawn or dht.protocol.spawn
        self._on_announce = on_announce
        self.fanout = fanout
        self.ttl = ttl
        self._seen: OrderedDict[tuple[bytes, bytes], None] = OrderedDict()
        self._seen_max = seen_max
        self._rng = rng
        self._taken = PeerBuckets(TAKEN_PER_SENDER_PER_S, int(2 * TAKEN_PER_SENDER_PER_S), SENDERS_MAX)
        self._forwarded = PeerBuckets(FORWARDED_PER_SENDER_PER_S, int(2 * FORWARDED_PER_SENDER_PER_S), SENDERS_MAX)
        self.counters = {
            "announced": 0, "received": 0, "duplicates": 0, "forwarded": 0, "served_here": 0, "malformed": 0,
            "sender_over_rate": 0, "forward_over_rate": 0,
        }
        dht.register("announce", self._rpc_announce)

    def _remember(self, job_id: bytes, nonce: bytes) -> bool:
        key = (job_id, nonce)
        if key in self._seen:
            return False
        self._seen[key] = None
        while len(self._seen) > self._seen_max:
            self._seen.popitem(last=False)
        return True

    def announce(
        self, job_id: bytes, job_type: str, first: tuple[F.Fact, ...] = (), skip: set[bytes] = frozenset()
    ) -> None:
        """Start an announcement (fire and forget; the sends are tracked tasks).

        ``skip``: nodes that know already (the replicas that just stored the job).
        """
        nonce = self._rng.randbytes(8)
        self._remember(job_id, nonce)
        self.counters["announced"] += 1
        contacts = [c for c in self.dht.router.contacts() if c.id not in skip]
        best = sorted(contacts, key=lambda c: (rendezvous.rank_key(job_id, c.id), c.id))[: self.fanout]
        self._send_to(best, [job_id, job_type, self.ttl, nonce, [f.raw for f in first]])

    def _send_to(self, contacts: list, args: list) -> None:
        for contact in contacts:
            self._spawn(self.dht.call(contact, "announce", args, timeout_s=0.5), "announce")

    def _rpc_announce(self, env: Envelope, addr) -> list:
        job_id, job_type, ttl, nonce, first_raw = env.args
        if not (
            isinstance(job_id, bytes)
            and len(job_id) == 20
            and isinstance(job_type, str)
            and len(job_type) <= TYPE_CHARS_MAX
            and isinstance(ttl, int)
            and 0 <= ttl <= 16
            and isinstance(nonce, bytes)
            and len(nonce) == 8
            and isinstance(first_raw, list)
            and len(first_raw) <= 2
            and all(isinstance(r, bytes) for r in first_raw)
        ):
            self.counters["malformed"] += 1
            raise ValueError("malformed announcement")
        first: tuple[F.Fact, ...] = ()
        if first_raw:
            try:
                first = tuple(F.decode(r, key=job_id) for r in first_raw)
            except F.InvalidFact:
                self.counters["malformed"] += 1
                raise ValueError("announcement carries an invalid fact") from None
            if first[0].kind != F.SUBMIT or first[0].body.job_type != job_type:
                self.counters["malformed"] += 1
                raise ValueError("announcement carries no matching submission")
        self.counters["received"] += 1
        if not self._remember(job_id, nonce):
            self.counters["duplicates"] += 1
            return [False]
        now = self.dht.clock.monotonic()
        if not self._taken.allow(env.sender_id, now):
            self.counters["sender_over_rate"] += 1
            return [False]
        if self._on_announce(job_id, job_type, first):
            # A worker here with a free slot will claim it (or read it and
            # find it claimed): the announcement found what it was sent for,
            # and sending it on would only have more workers read the job.
            self.counters["served_here"] += 1
        elif ttl > 1 and len(self.dht.router) > self.fanout and not self._forwarded.allow(env.sender_id, now):
            self.counters["forward_over_rate"] += 1
        elif ttl > 1 and len(self.dht.router) > self.fanout:
            # In a mesh no larger than the fan-out the sender reached everyone.
            self.counters["forwarded"] += 1
            contacts = [c for c in self.dht.router.contacts() if c.id != env.sender_id]
            chosen = self._rng.sample(contacts, min(self.fanout, len(contacts)))
            self._send_to(chosen, [job_id, job_type, min(ttl - 1, self.ttl), nonce, []])
        return [True]

    def statistics(self) -> dict[str, int]:
        return {**self.counters, "seen_cache": len(self._seen)}
