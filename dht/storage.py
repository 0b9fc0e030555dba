"""The DHT's persistent record store: per key, a set of signed records.

Theory of operation
-------------------
Reads are served from an in-memory index (key -> record id -> record,
``dht/index.py``); SQLite (WAL, ``synchronous=FULL``: a commit returns after
its fsync, ``dht/commit.py``) is the durable copy. Every call is synchronous
and short, so the node calls it straight from the event loop; commits run in
a writer thread (group commit, below).

A merge is split in two. :func:`dht.records.plan_merge` is pure: given what a key holds,
the incoming records and the limits, it decides what to add, what each slot
replacement removes and what is refused. The shell applies that plan to
memory at once and queues its SQL; a commit that fails undoes it in memory.

Group commit: the writes queued during one event-loop turn are committed in
one transaction (one fsync) at the start of the next turn: its statements run
on the loop (CPU only, no fsync), its COMMIT (the fsync) in the store's writer
thread while the loop goes on; writes arriving meanwhile form the next
commit. :meth:`FactStore.durable` returns once everything written so far is
committed; a replica awaits it before any answer that reports a write (an
ack, a grant, a seal), so nothing it promised can be lost by a power cut.
Commit listeners (:meth:`FactStore.add_commit_listener`) see every commit
that returned: the seam tests observe durability through.

Merging is set union plus a max-register per ``(key, slot)`` (see
:mod:`dht.records`), so the result does not depend on the order records arrive
in, as long as no limit is reached. Limits are never an error: a record that
would break one is not stored and is counted (``rejected_limit``), because a
peer's excess must not take the node down.

Records handed to :meth:`FactStore.merge` are trusted to be verified (they are
the output of the validator). Records read back from disk are not: on
:meth:`FactStore.open` every stored record goes through the validator again and
what fails is deleted and counted (``load_rejected``). A restart therefore costs
one signature check per stored record.

Derived state: a store given a :class:`dht.contract.Deriver` (the node's
turns a job's facts into its state) keeps, per key, what the deriver made of
the key's records, and brings it up to date as records merge, from the value
kept before (so a deriver may work incrementally). :meth:`FactStore.state`
answers it; :meth:`FactStore.state_of` derives a candidate set of records
for a key (a read's merge, or what is held plus an incoming record) from it,
keeping nothing. What is kept is bounded (``derived_max`` keys, least
recently used first out) and goes with its key when the key is dropped; a key
whose value was let go is derived again when asked.

Retention (``node/retention.py``) drops decided keys for good with
:meth:`FactStore.forget_many` and remembers them as gone (bounded), so a late
republish cannot bring them back. Budgets are checked before a replica
promises anything: :meth:`FactStore.fits` and the all-or-nothing
:meth:`FactStore.merge_all`.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable

from workmesh.crypto.identity import NODE_ID_BYTES, PUBLIC_KEY_BYTES, node_id_of
from workmesh.dht.commit import CommitEvent, Database, GroupCommit, StorageError
from workmesh.dht.contract import Derived, Deriver
from workmesh.dht.index import RECORD_OVERHEAD_BYTES, RecordIndex  # noqa: F401 (re-exported)
from workmesh.dht.records import KEY_BYTES, MergePlan, Record, StorageLimits, Validator

__all__ = ["CommitEvent", "FactStore", "StorageError", "StorageLimits", "Contact"]

CONTACTS_MAX = 10_000  # saved contacts; a full routing table holds 160 * k
META_NAME_CHARS_MAX = 128
META_VALUE_BYTES_MAX = 2**20
TOMBSTONES_MAX = 100_000  # keys remembered as dropped (about 60 bytes each with the SQLite row)
DERIVED_MAX = 1024  # keys whose derived value is kept (a job's: about 8 KB at 20 facts; the jobs that are changing)

Contact = tuple[bytes, str, int, bytes]  # (node_id, ip, port, public_key)


def _check_key(key: bytes) -> None:
    if not isinstance(key, bytes) or len(key) != KEY_BYTES:
        raise ValueError(f"a DHT key is {KEY_BYTES} bytes")


class FactStore:
    """Per-key sets of signed records in memory, written through to SQLite.

    ``path`` None keeps the database in memory (simulator, tests): the same
    code runs, nothing survives :meth:`close`. ``clock`` (monotonic seconds)
    stamps changes for :meth:`touched_since`; inject the simulator's clock.
    ``deriver``: what :meth:`state` derives from a key's records (None: the
    store derives nothing, and :meth:`state` raises).
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None,
        validator: Validator,
        limits: StorageLimits = StorageLimits(),
        *,
        clock: Callable[[], float] = time.monotonic,
        tombstones_max: int = TOMBSTONES_MAX,
        group_commit: bool = True,
        deriver: Deriver | None = None,
        derived_max: int = DERIVED_MAX,
    ) -> None:
        self._path = path
        self._stats: Counter[str] = Counter()
        self._database = Database(path, self._stats)
        # Group commit: the writes of one event-loop turn go to disk in one
        # transaction (one fsync), flushed at the start of the next turn;
        # without it every write commits (and fsyncs) on its own.
        self._commits = GroupCommit(self._database, self._stats, group=group_commit)
        self._tombstones_max = tombstones_max
        self._validator = validator
        self._limits = limits
        self._index = RecordIndex(clock)
        self._deriver = deriver
        self._derived_max = derived_max
        self._reset_memory()

    def _reset_memory(self) -> None:
        self._index.reset()
        # Retention: when this node saw each held key decided (wall ms), and the
        # keys it dropped (wall ms of the drop), oldest first, bounded.
        self._decided: dict[bytes, int] = {}
        self._gone: OrderedDict[bytes, int] = OrderedDict()
        # key -> (its version when derived, what the deriver made of it), least recently used first
        self._derived: OrderedDict[bytes, tuple[int, Derived]] = OrderedDict()

    @property
    def _conn(self) -> sqlite3.Connection | None:
        """The SQLite connection (tests reach the database through it)."""
        return self._database.conn

    # ------------------------------------------------------------------ lifecycle

    def open(self) -> None:
        """Create the schema, or load the database and re-verify every record in it.

        Costs one signature check per stored record (about 85 us each), so
        100k records take seconds: run it before serving, or in a worker thread.
        """
        if self._database.conn is not None:
            raise StorageError("store is already open")
        try:
            self._database.connect()
            try:
                self._reset_memory()
                self._load()
            except BaseException:
                self._database.close()
                raise
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open store {self._path!s}: {exc}") from exc

    def close(self) -> None:
        if self._database.conn is not None:
            self._commits.close()
            self._database.close()

    def __enter__(self) -> FactStore:
        self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _load(self) -> None:
        """Re-verify every stored record; delete what fails or no longer fits the limits."""
        conn = self._database.db()
        valid: dict[bytes, list[Record]] = {}
        bad_rows: list[tuple[int]] = []
        for rowid, key, rid, raw in conn.execute("SELECT rowid, key, record_id, raw FROM records ORDER BY key, record_id"):
            try:
                _check_key(key)
                record = self._validator(key, raw)
                if record.record_id != rid or record.raw != raw:
                    raise ValueError("stored record id does not match its bytes")
            except Exception:  # the validator may raise anything for a bad record
                bad_rows.append((rowid,))
                continue
            valid.setdefault(key, []).append(record)
        self._stats["load_rejected"] += len(bad_rows)
        dropped: list[tuple[bytes, bytes]] = []
        for key, records in valid.items():
            plan = self._index.plan(key, records, self._limits)
            self._count(plan)
            self._index.apply(key, plan)
            kept = {r.record_id for r in plan.added}
            dropped.extend((key, r.record_id) for r in records if r.record_id not in kept)
        if bad_rows or dropped:
            with self._database.transaction() as conn:
                conn.executemany("DELETE FROM records WHERE rowid = ?", bad_rows)
                conn.executemany("DELETE FROM records WHERE key = ? AND record_id = ?", dropped)
        for key, at_ms in conn.execute("SELECT key, at_ms FROM decided"):
            if self._index.has(key):
                self._decided[key] = at_ms
        for key, at_ms in conn.execute("SELECT key, at_ms FROM gone ORDER BY at_ms"):
            if not self._index.has(key):
                self._gone[key] = at_ms
        stale = [(k,) for k in self._evict_tombstones()]
        if stale:
            with self._database.transaction() as conn:
                conn.executemany("DELETE FROM gone WHERE key = ?", stale)

    # ------------------------------------------------------------------ records

    def merge(self, key: bytes, records: Iterable[Record]) -> list[Record]:
        """Union ``records`` into ``key``; return the ones newly stored.

        A record whose slot already holds a higher ``(version, record_id)`` is
        ignored, and one that would break a limit is refused and counted;
        neither is returned. One SQLite transaction per call.
        """
        return self._merge(key, records, all_or_nothing=False) or []

    def merge_all(self, key: bytes, records: Iterable[Record]) -> list[Record] | None:
        """:meth:`merge`, but all or nothing: when any record would break a
        storage budget (or ``key`` was dropped, see :meth:`forget`), nothing is
        stored and None is returned. A replica stores what it promises (a
        grant, a seal) with the request that called for it this way."""
        return self._merge(key, records, all_or_nothing=True)

    def fits(self, key: bytes, records: Iterable[Record]) -> bool:
        """Would :meth:`merge_all` store ``records`` now? (Nothing is written.)"""
        if key in self._gone:
            return False
        records = records if isinstance(records, (list, tuple)) else list(records)
        if self._index.far_below_limits(key, records, self._limits):
            return True  # what the plan would say, without planning the merge twice
        return self._index.plan(key, records, self._limits).rejected_limit == 0

    def _merge(self, key: bytes, records: Iterable[Record], *, all_or_nothing: bool) -> list[Record] | None:
        _check_key(key)
        self._database.db()
        self._stats["merges"] += 1
        if key in self._gone:
            self._stats["rejected_gone"] += 1
            return None
        plan = self._index.plan(key, records, self._limits)
        if all_or_nothing and plan.rejected_limit:
            self._stats["rejected_budget"] += 1
            self._stats["rejected_limit"] += plan.rejected_limit
            return None
        self._count(plan)
        if plan.added:
            ops = []
            if plan.removed:
                ops.append(("DELETE FROM records WHERE key = ? AND record_id = ?", [(key, r.record_id) for r in plan.removed]))
            ops.append((
                "INSERT OR REPLACE INTO records (key, record_id, slot, version, author, raw) VALUES (?, ?, ?, ?, ?, ?)",
                [(key, r.record_id, r.slot, r.version, r.author_id, r.raw) for r in plan.added],
            ))
            self._index.apply(key, plan)
            self._commits.write(ops, lambda: self._undo(key, plan), [(key, r.record_id) for r in plan.added])
            if self._deriver is not None:
                self._derived_now(key)  # kept up to date as records merge
        return plan.added

    def _undo(self, key: bytes, plan: MergePlan) -> None:
        """A commit failed: its plan leaves memory, and so does what was derived from it."""
        self._index.unapply(key, plan)
        self._derived.pop(key, None)

    def _count(self, plan: MergePlan) -> None:
        s = self._stats
        s["rejected_limit"] += plan.rejected_limit
        s["rejected_malformed"] += plan.rejected_malformed
        s["superseded"] += plan.superseded
        s["replaced"] += len(plan.removed)
        s["added"] += len(plan.added)

    # ------------------------------------------------------------------ derived state

    def state(self, key: bytes) -> object:
        """What the deriver makes of the records ``key`` holds now (a job's
        state); None when the key is not held. Kept up to date as records
        merge: a key asked again unchanged costs two dict look-ups."""
        derived = self._derived_now(key)
        return None if derived is None else derived.state

    def state_of(self, key: bytes, records: Iterable[Record]) -> object:
        """What the deriver makes of ``records`` as the records of ``key`` (a
        candidate set: a read's merge, or what is held plus an incoming
        record), derived from the value kept for ``key``; nothing is kept."""
        previous = self._derived_now(key)
        return self._deriver.derive(key, records if isinstance(records, list) else list(records), previous).state  # type: ignore[union-attr]

    def _derived_now(self, key: bytes) -> Derived | None:
        """The deriver's value for ``key``'s records now (None: not held), derived
        from the one kept before when the records changed since."""
        deriver = self._deriver
        if deriver is None:
            raise StorageError("this store derives nothing: it was built without a deriver")
        version = self._index.version(key)
        if version == 0:
            return None  # a key never held, or dropped: nothing to keep (reads of random ids)
        kept = self._derived.get(key)
        if kept is not None:
            self._derived.move_to_end(key)
            if kept[0] == version:
                self._stats["derived_hits"] += 1
                return kept[1]
        self._stats["derived"] += 1
        derived = deriver.derive(key, self._index.get(key), None if kept is None else kept[1])
        self._derived[key] = (version, derived)
        if len(self._derived) > self._derived_max:
            self._derived.popitem(last=False)
        return derived

    def derived_statistics(self) -> dict[str, int]:
        """Keys whose derived value is kept, asks answered from it, derivations made."""
        return {"kept": len(self._derived), "hits": self._stats["derived_hits"], "derived": self._stats["derived"]}

    def version(self, key: bytes) -> int:
        """A number that changes whenever the record set of ``key`` changes (0: unknown key)."""
        return self._index.version(key)

    def get(self, key: bytes) -> list[Record]:
        """The records of ``key`` ordered by record id; [] if unknown."""
        return self._index.get(key)

    def page(self, key: bytes, after: bytes, bytes_max: int, *, committed_only: bool = False) -> tuple[list[Record], bytes]:
        """The records of ``key`` whose ids follow ``after`` (b"": from the first), by
        record id, as many as fit in ``bytes_max`` (at least one); and the cursor to
        ask with next, b"" when this page ends the key.

        Each record costs ``len(raw) + RECORD_OVERHEAD_BYTES``: what msgpack adds.
        A reader that follows the cursors gets every record held throughout its
        read (one added meanwhile below the cursor is left for the next read).
        ``committed_only``: leave out records whose commit has not returned yet
        (to a reader they arrive with the next read).
        """
        leave_out = None
        if committed_only and self._commits.has_pending():
            leave_out = lambda: self._commits.uncommitted_ids(key)  # noqa: E731
        return self._index.page(key, after, bytes_max, leave_out)

    def record_ids(self, key: bytes) -> set[bytes]:
        return self._index.record_ids(key)

    def missing(self, key: bytes, ids: Iterable[bytes]) -> list[Record]:
        """My records for ``key`` whose ids are not in ``ids``, by record id: what the other side lacks."""
        return self._index.missing(key, ids)

    def has(self, key: bytes) -> bool:
        return self._index.has(key)

    def keys(self) -> list[bytes]:
        return self._index.keys()

    def __len__(self) -> int:
        return len(self._index)

    def change_mark(self) -> int:
        """A mark for :meth:`changed_since` (no clock: a process-wide change counter)."""
        return self._index.change_mark()

    def changed_since(self, mark: int) -> list[bytes]:
        """Keys whose record set changed since ``mark`` (loading counts), most recent first."""
        return self._index.changed_since(mark)

    def touched_since(self, t: float) -> list[bytes]:
        """Keys whose record set changed at clock time >= ``t``, most recent first.

        Loading counts as a change, so a restarted node republishes what it holds.
        """
        return self._index.touched_since(t)

    def drop(self, key: bytes) -> None:
        """Forget ``key`` (the node stopped being one of its replicas long ago)."""
        if not self._index.has(key):
            return
        self._commits.flush()
        with self._database.transaction() as conn:
            conn.execute("DELETE FROM records WHERE key = ?", (key,))
            conn.execute("DELETE FROM decided WHERE key = ?", (key,))
        self._drop_memory(key)

    def forget(self, key: bytes, at_ms: int) -> int:
        """Drop ``key`` for good (its retention passed); see :meth:`forget_many`."""
        return self.forget_many([key], at_ms)

    def forget_many(self, keys: Iterable[bytes], at_ms: int) -> int:
        """Drop ``keys`` for good (their retention passed), in one transaction,
        and remember them as gone: records for them are refused from now on
        (a replica that kept one longer must not bring it back), and
        :meth:`is_gone` says so, while at most ``tombstones_max`` dropped keys
        are remembered. Returns the records dropped."""
        keys = list(dict.fromkeys(keys))
        for key in keys:
            _check_key(key)
        if not keys:
            return 0
        count = sum(len(self._index.record_ids(key)) for key in keys)
        self._commits.flush()  # in order: what was merged before is on disk before it is deleted
        for key in keys:
            self._gone[key] = at_ms
            self._gone.move_to_end(key)
        evicted = self._evict_tombstones()
        with self._database.transaction() as conn:
            conn.executemany("DELETE FROM records WHERE key = ?", [(k,) for k in keys])
            conn.executemany("DELETE FROM decided WHERE key = ?", [(k,) for k in keys])
            conn.executemany("INSERT OR REPLACE INTO gone (key, at_ms) VALUES (?, ?)", [(k, at_ms) for k in keys])
            conn.executemany("DELETE FROM gone WHERE key = ?", [(k,) for k in evicted])
        for key in keys:
            if self._index.has(key):
                self._drop_memory(key)
        self._stats["forgotten"] += len(keys)
        self._stats["records_forgotten"] += count
        return count

    def _evict_tombstones(self) -> list[bytes]:
        out = []
        while len(self._gone) > self._tombstones_max:
            out.append(self._gone.popitem(last=False)[0])
        return out

    def is_gone(self, key: bytes) -> bool:
        """True while this node remembers dropping ``key`` for good."""
        return key in self._gone

    def mark_decided(self, key: bytes, at_ms: int) -> int:
        """Note (once, durably) that ``key`` was seen decided at wall time
        ``at_ms``; returns the time noted first."""
        first = self._decided.get(key)
        if first is not None:
            return first
        self._decided[key] = at_ms
        self._commits.write(
            [("INSERT OR IGNORE INTO decided (key, at_ms) VALUES (?, ?)", [(key, at_ms)])],
            lambda: self._decided.pop(key, None),
            [],
        )
        return at_ms

    def decided_at(self, key: bytes) -> int | None:
        return self._decided.get(key)

    def _drop_memory(self, key: bytes) -> None:
        self._index.drop(key)
        self._decided.pop(key, None)
        self._derived.pop(key, None)
        self._stats["drops"] += 1

    # ------------------------------------------------------------------ contacts and metadata

    def save_contacts(self, contacts: list[Contact]) -> None:
        """Replace the saved contacts (order kept; at most ``CONTACTS_MAX``, the rest counted)."""
        rows = []
        for node_id, ip, port, public_key in contacts[:CONTACTS_MAX]:
            if not (
                isinstance(node_id, bytes) and len(node_id) == NODE_ID_BYTES
                and isinstance(ip, str) and isinstance(port, int) and 0 <= port <= 65535
                and isinstance(public_key, bytes) and len(public_key) == PUBLIC_KEY_BYTES
            ):
                raise ValueError(f"malformed contact {(node_id, ip, port, public_key)!r}")
            rows.append((len(rows), node_id, ip, port, public_key))
        self._stats["contacts_truncated"] += max(0, len(contacts) - CONTACTS_MAX)
        self._commits.flush()
        with self._database.transaction() as conn:
            conn.execute("DELETE FROM contacts")
            conn.executemany("INSERT INTO contacts (position, node_id, ip, port, public_key) VALUES (?, ?, ?, ?, ?)", rows)

    def load_contacts(self) -> list[Contact]:
        """The saved contacts; any whose node id does not belong to its key is skipped and counted."""
        out: list[Contact] = []
        rows = self._database.read("SELECT node_id, ip, port, public_key FROM contacts ORDER BY position")
        for node_id, ip, port, public_key in rows:
            if isinstance(public_key, bytes) and node_id_of(public_key) == node_id:
                out.append((node_id, ip, port, public_key))
            else:
                self._stats["contacts_rejected"] += 1
        return out

    def get_meta(self, name: str) -> bytes | None:
        rows = self._database.read("SELECT value FROM meta WHERE name = ?", (name,))
        return bytes(rows[0][0]) if rows else None

    def set_meta(self, name: str, value: bytes) -> None:
        if not isinstance(name, str) or not 0 < len(name) <= META_NAME_CHARS_MAX:
            raise ValueError(f"a meta name is 1..{META_NAME_CHARS_MAX} characters")
        if not isinstance(value, bytes) or len(value) > META_VALUE_BYTES_MAX:
            raise ValueError(f"a meta value is at most {META_VALUE_BYTES_MAX} bytes")
        self._commits.flush()
        with self._database.transaction() as conn:
            conn.execute("INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)", (name, value))

    @property
    def limits(self) -> StorageLimits:
        """The budget this store keeps to (bytes, keys, records per key and author)."""
        return self._limits

    def statistics(self) -> dict[str, int]:
        """A snapshot: sizes now, and counters since this object was created."""
        counters = (
            "load_rejected", "rejected_limit", "rejected_malformed", "superseded", "replaced",
            "added", "merges", "writes", "drops", "contacts_truncated", "contacts_rejected",
            "rejected_gone", "rejected_budget", "forgotten", "records_forgotten",
            "commits", "committed_ops", "commit_failures",
        )
        index = self._index
        out = {"keys": len(index), "records": index.record_count, "bytes": index.bytes_total,
               "authors": len(index.author_counts), "decided": len(self._decided), "tombstones": len(self._gone)}
        out.update((name, self._stats[name]) for name in counters)
        out["commit_ms_total"] = round(self._commits.commit_s_total * 1000, 3)
        return out

    # ------------------------------------------------------------------ durability (dht/commit.py)

    def flush(self) -> None:
        """Commit every queued write now, on this thread (see :meth:`GroupCommit.flush`)."""
        self._commits.flush()

    def write_mark(self) -> int:
        """A mark to pass to :meth:`durable`: the writes queued so far."""
        return self._commits.write_mark()

    async def durable(self, since: int | None = None) -> None:
        """Return once every write made so far is committed (fsync returned);
        raise :class:`StorageError` if a write made after ``since`` was not
        (see :meth:`GroupCommit.durable`). An answer that depends on a write awaits this."""
        await self._commits.durable(since)

    def pending_writes(self) -> int:
        """Writes applied in memory whose commit has not returned yet."""
        return self._commits.pending_writes()

    def add_commit_listener(self, listener: Callable[[CommitEvent], None]) -> None:
        """Call ``listener(event)`` after each commit returned (a seam for tests and metrics)."""
        self._commits.add_commit_listener(listener)

    def key_count(self) -> int:
        """Keys held."""
        return len(self._index)

    def fullness(self, floor: float = 0.0) -> float:
        """How full the fullest budget is (0 empty, 1 full): the bytes, the
        keys, or the records of the author that signed the most; exact
        wherever it is at least ``floor``. Cheap: the largest author's count
        is looked for only when the store holds enough records for one author
        to reach above both the other budgets and ``floor``."""
        lim, index = self._limits, self._index
        full = max(index.bytes_total / lim.bytes_total_max, len(index) / lim.keys_max)
        if index.record_count > max(full, floor) * lim.records_per_author_max:
            full = max(full, max(index.author_counts.values(), default=0) / lim.records_per_author_max)
        return full

    def budget(self) -> dict[str, int]:
        """What the store holds against its budgets (for ``/status``)."""
        lim, index = self._limits, self._index
        return {
            "bytes": index.bytes_total, "bytes_max": lim.bytes_total_max,
            "keys": len(index), "keys_max": lim.keys_max,
            "records": index.record_count, "records_per_key_max": lim.records_per_key_max,
            "authors_records_max": max(index.author_counts.values(), default=0),
            "records_per_author_max": lim.records_per_author_max,
        }
