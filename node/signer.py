"""The per-turn batching signer: one Ed25519 signature for all the facts a node
signs during one event-loop turn, across jobs (record format v2, node/facts.py).

``await signer.sign(kind, body)`` checks the fact at once (a bad one raises
:class:`InvalidFact` to its caller alone) and queues it; the first request of
a turn schedules a callback with ``loop.call_soon``, which runs after every
callback ready in this turn, signs the queue as one batch and resolves each
caller's future with its fact. A fact costs its caller one more turn of
latency, and the node one signature per turn instead of one per fact.

The pure part is :func:`facts.sign_prepared`; this is the thin shell that
picks the batch. Code that must sign synchronously (the replica's store
policy, the consensus rounds) keeps ``facts.sign``: a batch of one.
"""

from __future__ import annotations

import asyncio
import os
import weakref

from workmesh.crypto.identity import Identity
from workmesh.node import facts as F


# A benchmark's A/B switch: WORKMESH_SIGN_BATCH=0 signs every fact alone (a
# batch of one each, the cost of the per-fact signatures before format v2).
BATCHING = os.environ.get("WORKMESH_SIGN_BATCH", "1") != "0"


class TurnSigner:
    """Batches the facts ``identity`` signs in one loop turn under one signature."""

    _of: weakref.WeakKeyDictionary[Identity, TurnSigner] = weakref.WeakKeyDictionary()

    def __init__(self, identity: Identity, batch_max: int = F.BATCH_FACTS_MAX) -> None:
        self.identity = identity
        self.batch_max = min(batch_max, F.BATCH_FACTS_MAX)
        self._queue: list[tuple[F.Unsigned, asyncio.Future]] = []
        self._scheduled: asyncio.Handle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.stats = {"batches": 0, "facts": 0, "largest_batch": 0}

    @classmethod
    def of(cls, identity: Identity) -> TurnSigner:
        """The signer of ``identity``: one per identity, shared by the node's parts
        so that a submission and a claim signed in one turn share a signature."""
        signer = cls._of.get(identity)
        if signer is None:
            signer = cls._of[identity] = cls(identity)
        return signer

    async def sign(self, kind: str, body: F.Body) -> F.Fact:
        """``body`` signed as a fact of ``kind``, in this turn's batch; raise :class:`InvalidFact`."""
        prepared = F.prepare(self.identity, kind, body)
        if not BATCHING:
            return F.sign_prepared(self.identity, [prepared])[0]
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a new loop (tests, the simulator): what the old one left is moot
            for _, stale in self._queue:
                stale.cancel()
            self._queue, self._scheduled, self._loop = [], None, loop
        future = loop.create_future()
        self._queue.append((prepared, future))
        if len(self._queue) >= self.batch_max:
            self._flush()
        elif self._scheduled is None:
            self._scheduled = loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        if self._scheduled is not None:
            self._scheduled.cancel()
            self._scheduled = None
        queue, self._queue = self._queue, []
        if not queue:
            return
        try:
            signed = F.sign_prepared(self.identity, [prepared for prepared, _ in queue])
        except Exception as exc:  # prepared facts sign; this is a bug, told to every caller
            for _, future in queue:
                if not future.done():
                    future.set_exception(exc)
            return
        self.stats["batches"] += 1
        self.stats["facts"] += len(signed)
        self.stats["largest_batch"] = max(self.stats["largest_batch"], len(signed))
        for (_, future), fact in zip(queue, signed):
            if not future.done():  # a caller that gave up (cancelled) still had its fact signed
                future.set_result(fact)
