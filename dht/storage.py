"""The DHT's persistent record store: per key, a set of signed records.

Theory of operation
-------------------
Reads are served from an in-memory index (key -> record id -> record); SQLite
(WAL, ``synchronous=FULL``: a commit returns after its fsync) is the durable
copy. Every call is synchronous and short, so the node calls it straight from
the event loop; commits run in a writer thread (group commit, below).

A merge is split in two. :func:`dht.records.plan_merge` is pure: given what a key holds,
the incoming records and the limits, it decides what to add, what each slot
replacement removes and what is refused. The shell applies that plan to
memory at once and queues its SQL; a commit that fails undoes it in memory.

Group commit: the writes queued during one event-loop turn are committed in
one transaction (one fsync) at the start of the next turn, in the store's
writer thread while the loop goes on; writes arriving meanwhile form the next
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

Retention (``node/retention.py``) drops decided keys for good with
:meth:`FactStore.forget_many` and remembers them as gone (bounded), so a late
republish cannot bring them back. Budgets are checked before a replica
promises anything: :meth:`FactStore.fits` and the all-or-nothing
:meth:`FactStore.merge_all`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import sqlite3
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from workmesh.crypto.identity import NODE_ID_BYTES, PUBLIC_KEY_BYTES, node_id_of
from workmesh.dht.records import KEY_BYTES, MergePlan, Record, StorageLimits, Validator, plan_merge

__all__ = ["CommitEvent", "FactStore", "StorageError", "StorageLimits", "Contact"]

SCHEMA_VERSION = 1
CONTACTS_MAX = 10_000  # saved contacts; a full routing table holds 160 * k
META_NAME_CHARS_MAX = 128
META_VALUE_BYTES_MAX = 2**20
WAL_BYTES_MAX = 64 * 2**20  # the WAL file is truncated to this after a checkpoint
RECORD_OVERHEAD_BYTES = 8  # msgpack's framing of one record in a reply, rounded up

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    key BLOB NOT NULL, record_id BLOB NOT NULL, slot BLOB NULL,
    version INTEGER NOT NULL, author BLOB NOT NULL, raw BLOB NOT NULL,
    PRIMARY KEY (key, record_id));
CREATE TABLE IF NOT EXISTS contacts (
    position INTEGER PRIMARY KEY, node_id BLOB NOT NULL, ip TEXT NOT NULL,
    port INTEGER NOT NULL, public_key BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS decided (key BLOB PRIMARY KEY, at_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS gone (key BLOB PRIMARY KEY, at_ms INTEGER NOT NULL);
"""
TOMBSTONES_MAX = 100_000  # keys remembered as dropped (about 60 bytes each with the SQLite row)

Contact = tuple[bytes, str, int, bytes]  # (node_id, ip, port, public_key)


@dataclass(frozen=True, slots=True)
class CommitEvent:
    """One commit that returned: its fsync is done (``synchronous=FULL``).

    ``ids``: the (key, record id) of every record it made durable; ``ops``:
    writes it carried (merges, decisions noted); ``commit_s``: how long the
    commit (and so its fsync) took."""

    seq: int
    ids: tuple[tuple[bytes, bytes], ...]
    ops: int
    commit_s: float


class StorageError(Exception):
    """The database cannot be opened, read or written (disk full, corrupt file, closed store)."""


def _check_key(key: bytes) -> None:
    if not isinstance(key, bytes) or len(key) != KEY_BYTES:
        raise ValueError(f"a DHT key is {KEY_BYTES} bytes")


class FactStore:
    """Per-key sets of signed records in memory, written through to SQLite.

    ``path`` None keeps the database in memory (simulator, tests): the same
    code runs, nothing survives :meth:`close`. ``clock`` (monotonic seconds)
    stamps changes for :meth:`touched_since`; inject the simulator's clock.
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
    ) -> None:
        self._path = path
        # Group commit: the writes of one event-loop turn go to disk in one
        # transaction (one fsync), flushed at the start of the next turn;
        # without it every write commits (and fsyncs) on its own.
        self._group_commit = group_commit
        self._batch: list[tuple[list[tuple[str, list[tuple]]], Callable[[], None], list[tuple[bytes, bytes]], int]] = []
        self._flush_scheduled = False
        self._durable_waiters: list[asyncio.Future] = []
        self._commit_listeners: list[Callable[[CommitEvent], None]] = []
        self._commit_seq = 0
        self._commit_s_total = 0.0
        self._inflight: tuple[list, list[asyncio.Future]] | None = None  # the commit the writer thread runs
        self._writer: concurrent.futures.ThreadPoolExecutor | None = None
        self._lock = threading.Lock()  # one user of the connection at a time (loop or writer thread)
        self._write_seq = 0  # writes queued so far
        self._lost_seq = 0  # the newest write a failed commit undid
        self._tombstones_max = tombstones_max
        self._validator = validator
        self._version_next = 1  # survives a re-open: versions never repeat
        self._limits = limits
        self._clock = clock
        self._conn: sqlite3.Connection | None = None
        self._reset_memory()
        self._stats: Counter[str] = Counter()

    def _reset_memory(self) -> None:
        self._records: dict[bytes, dict[bytes, Record]] = {}
        self._slots: dict[bytes, dict[bytes, bytes]] = {}
        self._author_counts: dict[bytes, int] = {}
        self._bytes_total = 0
        self._record_count = 0
        self._touched: OrderedDict[bytes, float] = OrderedDict()  # oldest change first
        # Per-key change counter: bumped whenever a key's record set changes,
        # so callers can cache what they derive from it against (key, version).
        self._versions: dict[bytes, int] = {}
        # Retention: when this node saw each held key decided (wall ms), and the
        # keys it dropped (wall ms of the drop), oldest first, bounded.
        self._decided: dict[bytes, int] = {}
        self._gone: OrderedDict[bytes, int] = OrderedDict()

    # ------------------------------------------------------------------ lifecycle

    def open(self) -> None:
        """Create the schema, or load the database and re-verify every record in it.

        Costs one signature check per stored record (about 85 us each), so
        100k records take seconds: run it before serving, or in a worker thread.
        """
        if self._conn is not None:
            raise StorageError("store is already open")
        try:
            target = ":memory:"
            if self._path is not None:
                Path(self._path).parent.mkdir(parents=True, exist_ok=True)
                target = os.fspath(self._path)
            # One thread at a time, but not necessarily the opening one: a large
            # store takes seconds to re-verify, so open() may run in a worker.
            conn = sqlite3.connect(target, isolation_level=None, check_same_thread=False)
            try:
                self._prepare(conn)
                self._conn = conn
                self._reset_memory()
                self._load()
            except BaseException:
                self._conn = None
                conn.close()
                raise
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open store {self._path!s}: {exc}") from exc

    def close(self) -> None:
        if self._conn is not None:
            try:
                self.flush()
            except StorageError:
                pass  # what was not written was never promised (no waiter got its answer)
            if self._writer is not None:
                self._writer.shutdown(wait=True)  # a commit in flight ends first
                self._writer = None
            self._conn.close()
            self._conn = None

    def __enter__(self) -> FactStore:
        self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @staticmethod
    def _prepare(conn: sqlite3.Connection) -> None:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StorageError(f"store schema {version} is newer than this code ({SCHEMA_VERSION})")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")  # a commit returns after its fsync
        conn.execute(f"PRAGMA journal_size_limit={WAL_BYTES_MAX}")
        conn.executescript(_SCHEMA)
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def _load(self) -> None:
        """Re-verify every stored record; delete what fails or no longer fits the limits."""
        conn = self._db()
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
            plan = self._plan(key, records)
            self._count(plan)
            self._apply(key, plan)
            kept = {r.record_id for r in plan.added}
            dropped.extend((key, r.record_id) for r in records if r.record_id not in kept)
        if bad_rows or dropped:
            with self._transaction() as conn:
                conn.executemany("DELETE FROM records WHERE rowid = ?", bad_rows)
                conn.executemany("DELETE FROM records WHERE key = ? AND record_id = ?", dropped)
        for key, at_ms in conn.execute("SELECT key, at_ms FROM decided"):
            if key in self._records:
                self._decided[key] = at_ms
        for key, at_ms in conn.execute("SELECT key, at_ms FROM gone ORDER BY at_ms"):
            if key not in self._records:
                self._gone[key] = at_ms
        stale = [(k,) for k in self._evict_tombstones()]
        if stale:
            with self._transaction() as conn:
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
        return key not in self._gone and self._plan(key, records).rejected_limit == 0

    def _merge(self, key: bytes, records: Iterable[Record], *, all_or_nothing: bool) -> list[Record] | None:
        _check_key(key)
        self._db()
        self._stats["merges"] += 1
        if key in self._gone:
            self._stats["rejected_gone"] += 1
            return None
        plan = self._plan(key, records)
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
            self._apply(key, plan)
            self._write(ops, lambda: self._unapply(key, plan), [(key, r.record_id) for r in plan.added])
        return plan.added

    def _plan(self, key: bytes, records: Iterable[Record]) -> MergePlan:
        current = self._records.get(key)
        return plan_merge(
            current or {},
            self._slots.get(key, {}),
            records,
            author_counts=self._author_counts,
            bytes_total=self._bytes_total,
            key_allowed=current is not None or len(self._records) < self._limits.keys_max,
            limits=self._limits,
        )

    def _count(self, plan: MergePlan) -> None:
        s = self._stats
        s["rejected_limit"] += plan.rejected_limit
        s["rejected_malformed"] += plan.rejected_malformed
        s["superseded"] += plan.superseded
        s["replaced"] += len(plan.removed)
        s["added"] += len(plan.added)

    def _apply(self, key: bytes, plan: MergePlan) -> None:
        """Apply a committed plan to the in-memory index."""
        if not plan.added:
            return
        held = self._records.setdefault(key, {})
        counts = self._author_counts
        for r in plan.removed:
            del held[r.record_id]
            self._uncount_author(r.author_id)
        for r in plan.added:
            held[r.record_id] = r
            counts[r.author_id] = counts.get(r.author_id, 0) + 1
            if r.slot is not None:
                self._slots.setdefault(key, {})[r.slot] = r.record_id
        self._record_count += len(plan.added) - len(plan.removed)
        self._bytes_total += plan.bytes_delta
        self._touched[key] = self._clock()
        self._touched.move_to_end(key)
        self._bump(key)

    def _unapply(self, key: bytes, plan: MergePlan) -> None:
        """Undo :meth:`_apply` of a plan whose commit failed (newest first)."""
        held = self._records.get(key, {})
        slots = self._slots.get(key, {})
        for r in plan.added:
            if held.pop(r.record_id, None) is not None:
                self._uncount_author(r.author_id)
                if r.slot is not None and slots.get(r.slot) == r.record_id:
                    del slots[r.slot]
        for r in plan.removed:
            held[r.record_id] = r
            self._author_counts[r.author_id] = self._author_counts.get(r.author_id, 0) + 1
            if r.slot is not None:
                slots[r.slot] = r.record_id
        self._record_count -= len(plan.added) - len(plan.removed)
        self._bytes_total -= plan.bytes_delta
        if not held:
            self._records.pop(key, None)
            self._slots.pop(key, None)
            self._touched.pop(key, None)
            self._versions.pop(key, None)
        else:
            self._bump(key)

    def _bump(self, key: bytes) -> None:
        # Drawn from one process-wide sequence: a key dropped and stored
        # again never repeats a version it had before.
        self._versions[key] = self._version_next
        self._version_next += 1

    def version(self, key: bytes) -> int:
        """A number that changes whenever the record set of ``key`` changes (0: unknown key)."""
        return self._versions.get(key, 0)

    def _uncount_author(self, author: bytes) -> None:
        n = self._author_counts[author] - 1
        if n:
            self._author_counts[author] = n
        else:
            del self._author_counts[author]

    def get(self, key: bytes) -> list[Record]:
        """The records of ``key`` ordered by record id; [] if unknown."""
        held = self._records.get(key)
        if not held:
            return []
        return [held[rid] for rid in sorted(held)]

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
        held = self._records.get(key)
        if not held:
            return [], b""
        ids = sorted(rid for rid in held if rid > after)
        if committed_only and (self._batch or self._inflight is not None):
            pending = self._uncommitted_ids(key)
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

    def touched_since(self, t: float) -> list[bytes]:
        """Keys whose record set changed at clock time >= ``t``, most recent first.

        Loading counts as a change, so a restarted node republishes what it holds.
        """
        out = []
        for key in reversed(self._touched):
            if self._touched[key] < t:
                break
            out.append(key)
        return out

    def drop(self, key: bytes) -> None:
        """Forget ``key`` (the node stopped being one of its replicas long ago)."""
        if key not in self._records:
            return
        self.flush()
        with self._transaction() as conn:
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
        count = sum(len(self._records.get(key, ())) for key in keys)
        self.flush()  # in order: what was merged before is on disk before it is deleted
        for key in keys:
            self._gone[key] = at_ms
            self._gone.move_to_end(key)
        evicted = self._evict_tombstones()
        with self._transaction() as conn:
            conn.executemany("DELETE FROM records WHERE key = ?", [(k,) for k in keys])
            conn.executemany("DELETE FROM decided WHERE key = ?", [(k,) for k in keys])
            conn.executemany("INSERT OR REPLACE INTO gone (key, at_ms) VALUES (?, ?)", [(k, at_ms) for k in keys])
            conn.executemany("DELETE FROM gone WHERE key = ?", [(k,) for k in evicted])
        for key in keys:
            if key in self._records:
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
        self._write(
            [("INSERT OR IGNORE INTO decided (key, at_ms) VALUES (?, ?)", [(key, at_ms)])],
            lambda: self._decided.pop(key, None),
            [],
        )
        return at_ms

    def decided_at(self, key: bytes) -> int | None:
        return self._decided.get(key)

    def _drop_memory(self, key: bytes) -> None:
        held = self._records.pop(key)
        self._slots.pop(key, None)
        self._touched.pop(key, None)
        self._versions.pop(key, None)
        self._decided.pop(key, None)
        for r in held.values():
            self._uncount_author(r.author_id)
            self._bytes_total -= len(r.raw)
        self._record_count -= len(held)
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
        self.flush()
        with self._transaction() as conn:
            conn.execute("DELETE FROM contacts")
            conn.executemany("INSERT INTO contacts (position, node_id, ip, port, public_key) VALUES (?, ?, ?, ?, ?)", rows)

    def load_contacts(self) -> list[Contact]:
        """The saved contacts; any whose node id does not belong to its key is skipped and counted."""
        out: list[Contact] = []
        rows = self._read("SELECT node_id, ip, port, public_key FROM contacts ORDER BY position")
        for node_id, ip, port, public_key in rows:
            if isinstance(public_key, bytes) and node_id_of(public_key) == node_id:
                out.append((node_id, ip, port, public_key))
            else:
                self._stats["contacts_rejected"] += 1
        return out

    def get_meta(self, name: str) -> bytes | None:
        rows = self._read("SELECT value FROM meta WHERE name = ?", (name,))
        return bytes(rows[0][0]) if rows else None

    def set_meta(self, name: str, value: bytes) -> None:
        if not isinstance(name, str) or not 0 < len(name) <= META_NAME_CHARS_MAX:
            raise ValueError(f"a meta name is 1..{META_NAME_CHARS_MAX} characters")
        if not isinstance(value, bytes) or len(value) > META_VALUE_BYTES_MAX:
            raise ValueError(f"a meta value is at most {META_VALUE_BYTES_MAX} bytes")
        self.flush()
        with self._transaction() as conn:
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
        out = {"keys": len(self._records), "records": self._record_count, "bytes": self._bytes_total,
               "authors": len(self._author_counts), "decided": len(self._decided), "tombstones": len(self._gone)}
        out.update((name, self._stats[name]) for name in counters)
        out["commit_ms_total"] = round(self._commit_s_total * 1000, 3)
        return out

    # ------------------------------------------------------------------ database plumbing

    # ------------------------------------------------------------------ durability (group commit)

    def _write(self, ops: list[tuple[str, list[tuple]]], undo: Callable[[], None], ids: list[tuple[bytes, bytes]]) -> None:
        """Queue writes already applied to memory; ``undo`` reverts memory if their commit fails.

        Without group commit (or outside an event loop) they commit now, and a
        failure raises :class:`StorageError` with memory as it was. With it,
        they go to disk with the rest of this loop turn's writes in one
        transaction, committed in the store's writer thread while the loop
        goes on; :meth:`durable` waits for that commit."""
        self._write_seq += 1
        self._batch.append((ops, undo, ids, self._write_seq))
        if not self._group_commit:
            self.flush()
            return
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        if self._flush_scheduled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        self._flush_scheduled = True
        loop.call_soon(self._flush_soon)

    def _flush_soon(self) -> None:
        """Start the commit of what is queued, unless one is running (its end starts the next)."""
        self._flush_scheduled = False
        if self._inflight is not None or not self._batch:
            return
        if self._path is None:  # in memory (simulator, tests): no disk to wait for
            try:
                self.flush()
            except StorageError:
                pass  # counted, and every waiter got the error
            return
        batch, waiters = self._take()
        self._inflight = (batch, waiters)
        if self._writer is None:
            self._writer = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-commit")
        done = asyncio.get_running_loop().run_in_executor(self._writer, self._commit, batch)
        done.add_done_callback(self._committed)

    def _committed(self, done: asyncio.Future) -> None:
        assert self._inflight is not None
        batch, waiters = self._inflight
        self._inflight = None
        exc = done.exception()
        if exc is not None:
            self._failed(batch, waiters, exc if isinstance(exc, StorageError) else StorageError(str(exc)))
        else:
            self._succeeded(batch, waiters, done.result())
        if self._batch:
            self._schedule_flush()

    def _take(self) -> tuple[list, list[asyncio.Future]]:
        batch, self._batch = self._batch, []
        waiters, self._durable_waiters = self._durable_waiters, []
        return batch, waiters

    def _commit(self, batch: list) -> float:
        """Write ``batch`` in one transaction; its COMMIT returns after the fsync. Any thread."""
        started = time.perf_counter()
        with self._transaction() as conn:
            for ops, *_rest in batch:
                for sql, rows in ops:
                    conn.executemany(sql, rows)
        return time.perf_counter() - started

    def _succeeded(self, batch: list, waiters: list[asyncio.Future], took: float) -> None:
        self._commit_seq += 1
        self._commit_s_total += took
        self._stats["commits"] += 1
        self._stats["committed_ops"] += len(batch)
        event = CommitEvent(self._commit_seq, tuple(i for _o, _u, ids, _s in batch for i in ids), len(batch), took)
        for listener in self._commit_listeners:
            listener(event)
        for w in waiters:
            if not w.done():
                w.set_result(None)

    def _failed(self, batch: list, waiters: list[asyncio.Future], exc: StorageError) -> None:
        """A commit failed: undo it and everything queued after it (newest
        first), and fail every waiter. Nothing of it was promised."""
        pending, pending_waiters = self._take()
        undone = batch + pending
        self._stats["commit_failures"] += 1
        self._lost_seq = max(self._lost_seq, undone[-1][3])
        for _ops, undo, *_rest in reversed(undone):
            undo()
        for w in waiters + pending_waiters:
            if not w.done():
                w.set_exception(exc)

    def flush(self) -> None:
        """Commit every queued write now, in one transaction (one fsync), on
        this thread (after a commit the writer thread is running, if any).
        On failure the queued writes are undone in memory, the waiters get
        the error and :class:`StorageError` is raised."""
        self._flush_scheduled = False
        if not self._batch:
            return
        batch, waiters = self._take()
        try:
            took = self._commit(batch)
        except StorageError as exc:
            self._failed(batch, waiters, exc)
            raise
        self._succeeded(batch, waiters, took)

    def write_mark(self) -> int:
        """A mark to pass to :meth:`durable`: the writes queued so far."""
        return self._write_seq

    async def durable(self, since: int | None = None) -> None:
        """Return once every write made so far is committed (fsync returned);
        raise :class:`StorageError` if its commit failed, or (with ``since``,
        a :meth:`write_mark` taken before the caller's writes) if a commit
        that failed already undid a write made after the mark. Immediate
        when nothing is queued. An answer that depends on a write awaits this."""
        if since is not None and self._lost_seq > since:
            raise StorageError("a write this answer depends on was not committed")
        if not self._batch and self._inflight is None:
            return
        waiter = asyncio.get_running_loop().create_future()
        if self._batch:
            self._durable_waiters.append(waiter)
            self._schedule_flush()
        else:
            self._inflight[1].append(waiter)
        await waiter

    def pending_writes(self) -> int:
        """Writes applied in memory whose commit has not returned yet."""
        return len(self._batch) + (len(self._inflight[0]) if self._inflight is not None else 0)

    def _uncommitted_ids(self, key: bytes) -> set[bytes]:
        batches = [self._batch] + ([self._inflight[0]] if self._inflight is not None else [])
        return {rid for b in batches for _o, _u, ids, _s in b for k, rid in ids if k == key}

    def add_commit_listener(self, listener: Callable[[CommitEvent], None]) -> None:
        """Call ``listener(event)`` after each commit returned (a seam for tests and metrics)."""
        self._commit_listeners.append(listener)

    @property
    def limits(self) -> StorageLimits:
        return self._limits

    def budget(self) -> dict[str, int]:
        """What the store holds against its budgets (for ``/status``)."""
        lim = self._limits
        return {
            "bytes": self._bytes_total, "bytes_max": lim.bytes_total_max,
            "keys": len(self._records), "keys_max": lim.keys_max,
            "records": self._record_count, "records_per_key_max": lim.records_per_key_max,
            "authors_records_max": max(self._author_counts.values(), default=0),
            "records_per_author_max": lim.records_per_author_max,
        }

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StorageError("store is not open")
        return self._conn

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; any SQLite failure becomes :class:`StorageError`."""
        conn = self._db()
        with self._lock:
            try:
                conn.execute("BEGIN")
                yield conn
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise StorageError(f"store write failed: {exc}") from exc
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        self._stats["writes"] += 1

    def _read(self, sql: str, params: tuple = ()) -> list[tuple]:
        try:
            with self._lock:
                return self._db().execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise StorageError(f"store read failed: {exc}") from exc
