"""Announcements of runnable jobs, spread by bounded gossip.

An announcement is ``[job_id, job_type, ttl, nonce]``. The accepting node sends
it to ``fanout`` random contacts; each receiver that has not seen
``(job_id, nonce)`` before hands it to its workers and forwards it with
``ttl - 1``. Replicas re-announce jobs that are pending or whose lease went
stale, with a fresh nonce, so a job never depends on one message arriving.
The seen-cache and the fan-out are bounded; announcements carry no authority
(a worker always reads the job's signed facts before claiming), so a forged
announcement costs one read at most.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Callable

from dht.envelope import Envelope
from dht.server import DHTServer

TYPE_CHARS_MAX = 64


class Gossip:
    def __init__(
        self,
        dht: DHTServer,
        on_announce: Callable[[bytes, str], None],
        *,
        fanout: int,
        ttl: int,
        seen_max: int,
        rng: random.Random,
    ) -> None:
        self.dht = dht
        self._on_announce = on_announce
        self.fanout = fanout
        self.ttl = ttl
        self._seen: OrderedDict[tuple[bytes, bytes], None] = OrderedDict()
        self._seen_max = seen_max
        self._rng = rng
        self.counters = {"announced": 0, "received": 0, "duplicates": 0, "forwarded": 0, "malformed": 0}
        dht.register("announce", self._rpc_announce)

    def _remember(self, job_id: bytes, nonce: bytes) -> bool:
        key = (job_id, nonce)
        if key in self._seen:
            return False
        self._seen[key] = None
        while len(self._seen) > self._seen_max:
            self._seen.popitem(last=False)
        return True

    def announce(self, job_id: bytes, job_type: str) -> None:
        """Start an announcement (fire and forget; the sends are tracked tasks)."""
        nonce = self._rng.randbytes(8)
        self._remember(job_id, nonce)
        self.counters["announced"] += 1
        self._send(job_id, job_type, self.ttl, nonce, exclude=None)

    def _send(self, job_id: bytes, job_type: str, ttl: int, nonce: bytes, exclude: bytes | None) -> None:
        contacts = [c for c in self.dht.router.contacts() if c.id != exclude]
        for contact in self._rng.sample(contacts, min(self.fanout, len(contacts))):
            self.dht.protocol.spawn(
                self.dht.call(contact, "announce", [job_id, job_type, ttl, nonce], timeout_s=0.5), "announce"
            )

    def _rpc_announce(self, env: Envelope, addr) -> list:
        job_id, job_type, ttl, nonce = env.args
        if not (
            isinstance(job_id, bytes)
            and len(job_id) == 20
            and isinstance(job_type, str)
            and len(job_type) <= TYPE_CHARS_MAX
            and isinstance(ttl, int)
            and 0 <= ttl <= 16
            and isinstance(nonce, bytes)
            and len(nonce) == 8
        ):
            self.counters["malformed"] += 1
            raise ValueError("malformed announcement")
        self.counters["received"] += 1
        if not self._remember(job_id, nonce):
            self.counters["duplicates"] += 1
            return [False]
        self._on_announce(job_id, job_type)
        if ttl > 1 and len(self.dht.router) > self.fanout:
            # In a mesh no larger than the fan-out the sender reached everyone.
            self.counters["forwarded"] += 1
            self._send(job_id, job_type, min(ttl - 1, self.ttl), nonce, exclude=env.sender_id)
        return [True]

    def statistics(self) -> dict[str, int]:
        return {**self.counters, "seen_cache": len(self._seen)}
