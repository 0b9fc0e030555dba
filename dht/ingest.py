"""The replica's side of a write: records admitted into the local store.

:class:`LocalWrites` decodes and verifies what a peer sent (``decode_all``),
has the injected :class:`RecordPolicy` judge it under the store's budgets
(``ingest``; ``ingest_many`` for a ``store_many`` request, whose keys the
policy judges together so that what it signs for all of them is one batch),
stores what the policy accepted and produced all or nothing, and waits for
it to be on disk before anything that depends on it is answered
(``durable``). :class:`dht.replication.Replication` writes to and reads from
other replicas through this for its own node.
"""

from __future__ import annotations

import contextlib
from typing import Any

from workmesh.dht.contract import REFUSED_BUDGET, REFUSED_GONE, Admission, Record, RecordPolicy

# What the replica side of a store answers: (stored all, refusals, produced).
Ingested = tuple[bool, list[tuple[int, str]], list[Record]]


class LocalWrites:
    def __init__(self, records: Any, policy: RecordPolicy, stats: dict[str, int], log: Any) -> None:
        self.records = records  # dht.storage.FactStore
        self.policy = policy
        self.stats = stats
        self.log = log

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

    def decode_all(self, key: bytes, raws: list) -> tuple[list[Record], list[tuple[int, str]]]:
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

    def store_local(self, items: list[tuple[bytes, list]], sender_id: bytes) -> list[Ingested]:
        """The records of a ``store`` or ``store_many`` (``(key, raws)`` pairs),
        decoded, verified and ingested; each key's answer, in order. A key
        with a record that does not decode is refused alone."""
        out: list[Ingested | None] = []
        good: list[tuple[bytes, list[Record]]] = []
        for key, raws in items:
            records, bad = self.decode_all(key, raws)
            if bad:
                out.append((False, bad, []))
            else:
                out.append(None)
                good.append((key, records))
        done = iter(self.ingest_many(good, sender_id))
        return [o if o is not None else next(done) for o in out]

    def ingest(self, key: bytes, records: list[Record], sender_id: bytes) -> Ingested:
        """Admit verified records into local storage (replica side of a store).

        Budgets come before promises: a batch that would not fit the store is
        refused before the policy judges it, and what the policy accepts and
        produces (grants, seals) is stored all or nothing. A replica never
        answers with a grant or a seal it did not store."""
        judged = self._judge(key, records, sender_id)
        return judged if isinstance(judged, tuple) else self._keep(key, records, judged)

    def ingest_many(self, items: list[tuple[bytes, list[Record]]], sender_id: bytes) -> list[Ingested]:
        """:meth:`ingest` for several keys (one ``store_many`` request): the
        policy judges them all, signs what it produces for all of them with
        one signature (``one_signature``, when it offers it), and only then
        is anything stored. A key that comes twice is judged after the first
        one's products are stored (it must see them): a new batch starts."""
        out: list[Ingested] = []
        start = 0
        while start < len(items):
            seen: set[bytes] = set()
            end = start
            while end < len(items) and items[end][0] not in seen:
                seen.add(items[end][0])
                end += 1
            batch = items[start:end]
            together = getattr(self.policy, "one_signature", None)
            with together() if together is not None else contextlib.nullcontext():
                judged = [self._judge(key, records, sender_id) for key, records in batch]
            # Signed now: store, in order.
            out.extend(j if isinstance(j, tuple) else self._keep(key, records, j) for (key, records), j in zip(batch, judged))
            start = end
        return out

    def _judge(self, key: bytes, records: list[Record], sender_id: bytes) -> Admission | Ingested:
        """The policy's admission of ``records``, or the refusal of all of them."""
        if self.records.is_gone(key):
            self.stats["records_refused"] += len(records)
            return False, [(i, REFUSED_GONE) for i in range(len(records))], []
        if not self.records.fits(key, records):
            self.stats["budget_refusals"] += 1
            return False, [(i, REFUSED_BUDGET) for i in range(len(records))], []
        admission = self.policy.admit(key, records, self.records.get(key), sender_id)
        self.stats["records_refused"] += len(admission.refused)
        return admission

    def _keep(self, key: bytes, records: list[Record], admission: Admission) -> Ingested:
        """Store what ``admission`` accepted and produced, all or nothing."""
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
