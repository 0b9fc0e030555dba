"""The record store's in-memory index: what every read is served from.

Per key: its records by id, its slots (slot -> record id), and when it last
changed; across keys: records per author, the bytes and records held. A
:class:`dht.records.MergePlan` is applied with :meth:`RecordIndex.apply`
and, should its commit fail, reverted with :meth:`RecordIndex.unapply`.
No I/O: ``dht/storage.py`` writes the same plans to SQLite.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable

from workmesh.dht.records import MergePlan, Record, StorageLimits, plan_merge

RECORD_OVERHEAD_BYTES = 8  # msgpack's framing of one record in a reply, rounded up


class RecordIndex:
    """``clock`` (monotonic seconds) stamps changes for :meth:`touched_since`."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._version_next = 1  # survives reset(): versions never repeat
        self.reset()

    def reset(self) -> None:
        """Forget every key (a store re-opened loads them again)."""
        self._records: dict[bytes, dict[bytes, Record]] = {}
        self._slots: dict[bytes, dict[bytes, bytes]] = {}
        self.author_counts: dict[bytes, int] = {}
        self.bytes_total = 0
        self.record_count = 0
        self._touched: OrderedDict[bytes, float] = OrderedDict()  # oldest change first
        # Per-key change counter: bumped whenever a key's record set changes,
        # so callers can cache what they derive from it against (key, version).
        self._versions: dict[bytes, int] = {}

    # ------------------------------------------------------------- changes
    def plan(self, key: bytes, records: Iterable[Record], limits: StorageLimits) -> MergePlan:
        """What merging ``records`` into ``key`` would do now (nothing changes)."""
        current = self._records.get(key)
        return plan_merge(
            current or {},
            self._slots.get(key, {}),
            records,
            author_counts=self.author_counts,
            bytes_total=self.bytes_total,
            key_allowed=current is not None or len(self._records) < limits.keys_max,
            limits=limits,
        )

    def far_below_limits(self, key: bytes, records: list[Record] | tuple[Record, ...], limits: StorageLimits) -> bool:
        """True when even storing every one of ``records`` as a new record
        breaks no limit: then no plan of them is refused for one. (A sufficient
        condition only; False says nothing.)"""
        held = self._records.get(key)
        if held is None and len(self._records) >= limits.keys_max:
            return False
        if (len(held) if held else 0) + len(records) > limits.records_per_key_max:
            return False
        size = 0
        counts = self.author_counts
        for r in records:
            raw, author = r.raw, r.author_id
            if (
                not isinstance(raw, bytes) or not isinstance(author, bytes)
                or counts.get(author, 0) + len(records) > limits.records_per_author_max
            ):
                return False  # malformed (the plan counts it) or near a limit: plan it
            size += len(raw)
        return self.bytes_total + size <= limits.bytes_total_max

    def apply(self, key: bytes, plan: MergePlan) -> None:
        """Apply a committed plan to the in-memory index."""
        if not plan.added:
            return
        held = self._records.setdefault(key, {})
        counts = self.author_counts
        for r in plan.removed:
            del held[r.record_id]
            self._uncount_author(r.author_id)
        for r in plan.added:
            held[r.record_id] = r
            counts[r.author_id] = counts.get(r.author_id, 0) + 1
            if r.slot is not None:
                self._slots.setdefault(key, {})[r.slot] = r.record_id
        self.record_count += len(plan.added) - len(plan.removed)
        self.bytes_total += plan.bytes_delta
        self._touched[key] = self._clock()
        self._touched.move_to_end(key)
        self._bump(key)

    def unapply(self, key: bytes, plan: MergePlan) -> None:
        """Undo :meth:`apply` of a plan whose commit failed (newest first)."""
        held = self._records.get(key, {})
        slots = self._slots.get(key, {})
        for r in plan.added:
            if held.pop(r.record_id, None) is not None:
                self._uncount_author(r.author_id)
                if r.slot is not None and slots.get(r.slot) == r.record_id:
                    del slots[r.slot]
        for r in plan.removed:
            held[r.record_id] = r
            self.author_counts[r.author_id] = self.author_counts.get(r.author_id, 0) + 1
            if r.slot is not None:
                slots[r.slot] = r.record_id
        self.record_count -= len(plan.added) - len(plan.removed)
        self.bytes_total -= plan.bytes_delta
        if not held:
            self._records.pop(key, None)
            self._slots.pop(key, None)
            self._touched.pop(key, None)
            self._versions.pop(key, None)
        else:
            self._bump(key)

    def drop(self, key: bytes) -> None:
        """Forget ``key`` and its records (it must be held)."""
        held = self._records.pop(key)
        self._slots.pop(key, None)
        self._touched.pop(key, None)
        self._versions.pop(key, None)
        for r in held.values():
            self._uncount_author(r.author_id)
            self.bytes_total -= len(r.raw)
        self.record_count -= len(held)

    def _bump(self, key: bytes) -> None:
        # Drawn from one process-wide sequence: a key dropped and stored
        # again never repeats a version it had before.
        self._versions[key] = self._version_next
        self._version_next += 1

    def _uncount_author(self, author: bytes) -> None:
        n = self.author_counts[author] - 1
        if n:
            self.author_counts[author] = n
        else:
            del self.author_counts[author]

    # --------------------------------------------------------------- reads
    def version(self, key: bytes) -> int:
        """A number that changes whenever the record set of ``key`` changes (0: unknown key)."""
        return self._versions.get(key, 0)

    def get(self, key: bytes) -> list[Record]:
        """The records of ``key`` ordered by record id; [] if unknown."""
        held = self._records.get(key)
        if not held:
            return []
        return [held[rid] for rid in sorted(held)]

    def page(
        self, key: bytes, after: bytes, bytes_max: int, leave_out: Callable[[], set[bytes]] | None = None
    ) -> tuple[list[Record], bytes]:
        """The records of ``key`` whose ids follow ``after`` (b"": from the first), by
        record id, as many as fit in ``bytes_max`` (at least one); and the cursor to
        ask with next, b"" when this page ends the key.

        Each record costs ``len(raw) + RECORD_OVERHEAD_BYTES``: what msgpack adds.
        ``leave_out()``: ids not to serve (records whose commit has not returned)."""
        held = self._records.get(key)
        if not held:
            return [], b""
        ids = sorted(rid for rid in held if rid > after)
        if leave_out is not None:
            pending = leave_out()
            ids = [rid for rid in ids if rid not in pending]
        out: list[Record] = []
        size = 0
        for rid in ids:
            r = held[rid]
            size += len(r.raw) + RECORD_OVERHEAD_BYTES
            if out and size > bytes_max:
                return out, out[-1].record_id
            out.append(r)
        return out, b""

    def record_ids(self, key: bytes) -> set[bytes]:
        return set(self._records.get(key, ()))

    def missing(self, key: bytes, ids: Iterable[bytes]) -> list[Record]:
        """My records for ``key`` whose ids are not in ``ids``, by record id: what the other side lacks."""
        held = self._records.get(key)
        if not held:
            return []
        theirs = set(ids)
        return [held[rid] for rid in sorted(held) if rid not in theirs]

    def has(self, key: bytes) -> bool:
        return key in self._records

    def keys(self) -> list[bytes]:
        return list(self._records)

    def __len__(self) -> int:
        return len(self._records)

    def change_mark(self) -> int:
        """A mark for :meth:`changed_since`: every change from now on is at or above it."""
        return self._version_next

    def changed_since(self, mark: int) -> list[bytes]:
        """Keys whose record set changed since :meth:`change_mark` gave ``mark``, most recent first."""
        out = []
        for key in reversed(self._touched):
            if self._versions.get(key, 0) < mark:
                break
            out.append(key)
        return out

    def touched_since(self, t: float) -> list[bytes]:
        """Keys whose record set changed at clock time >= ``t``, most recent first."""
        out = []
        for key in reversed(self._touched):
            if self._touched[key] < t:
                break
            out.append(key)
        return out
