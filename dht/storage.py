"""The DHT's persistent record store: per key, a set of signed records.

Theory of operation
-------------------
Reads are served from an in-memory index (key -> record id -> record); SQLite
(WAL, ``synchronous=NORMAL``) is the write-through durable copy. Every call is
synchronous and short, so the node calls it straight from the event loop.

A merge is split in two. :func:`dht.records.plan_merge` is pure: given what a key holds,
the incoming records and the limits, it decides what to add, what each slot
replacement removes and what is refused. The shell then writes that plan in one
SQLite transaction and only after the commit applies it to memory, so a failed
write leaves memory and disk as they were.

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

``synchronous=NORMAL`` in WAL mode: a committed merge survives a crash of the
process; a power loss may lose the last commits, which the replicas repair.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from workmesh.crypto.identity import NODE_ID_BYTES, PUBLIC_KEY_BYTES, node_id_of
from workmesh.dht.records import KEY_BYTES, MergePlan, Record, StorageLimits, Validator, plan_merge

__all__ = ["FactStore", "StorageError", "StorageLimits", "Contact"]

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
    ) -> None:
        self._path = path
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
        conn.execute("PRAGMA synchronous=NORMAL")
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
            with self._transaction() as conn:
                if plan.removed:
                    conn.executemany(
                        "DELETE FROM records WHERE key = ? AND record_id = ?",
                        [(key, r.record_id) for r in plan.removed],
                    )
                conn.executemany(
                    "INSERT OR REPLACE INTO records (key, record_id, slot, version, author, raw) VALUES (?, ?, ?, ?, ?, ?)",
                    [(key, r.record_id, r.slot, r.version, r.author_id, r.raw) for r in plan.added],
                )
            self._apply(key, plan)
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

    def page(self, key: bytes, after: bytes, bytes_max: int) -> tuple[list[Record], bytes]:
        """The records of ``key`` whose ids follow ``after`` (b"": from the first), by
        record id, as many as fit in ``bytes_max`` (at least one); and the cursor to
        ask with next, b"" when this page ends the key.

        Each record costs ``len(raw) + RECORD_OVERHEAD_BYTES``: what msgpack adds.
        A reader that follows the cursors gets every record held throughout its
        read (one added meanwhile below the cursor is left for the next read).
        """
        held = self._records.get(key)
        if not held:
            return [], b""
        ids = sorted(rid for rid in held if rid > after)
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
        with self._transaction() as conn:
            conn.execute("DELETE FROM records WHERE key = ?", (key,))
            conn.execute("DELETE FROM decided WHERE key = ?", (key,))
        self._drop_memory(key)

    def forget(self, key: bytes, at_ms: int) -> int:
        """Drop ``key`` for good (its retention passed) and remember it as gone:
        records for it are refused from now on (a replica that kept it longer
        must not bring it back), and :meth:`is_gone` says so, while at most
        ``tombstones_max`` dropped keys are remembered. Returns records dropped."""
        _check_key(key)
        count = len(self._records.get(key, ()))
        with self._transaction() as conn:
            conn.execute("DELETE FROM records WHERE key = ?", (key,))
            conn.execute("DELETE FROM decided WHERE key = ?", (key,))
            conn.execute("INSERT OR REPLACE INTO gone (key, at_ms) VALUES (?, ?)", (key, at_ms))
            self._gone[key] = at_ms
            self._gone.move_to_end(key)
            conn.executemany("DELETE FROM gone WHERE key = ?", [(k,) for k in self._evict_tombstones()])
        if key in self._records:
            self._drop_memory(key)
        self._stats["forgotten"] += 1
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
        with self._transaction() as conn:
            conn.execute("INSERT OR IGNORE INTO decided (key, at_ms) VALUES (?, ?)", (key, at_ms))
        self._decided[key] = at_ms
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
        with self._transaction() as conn:
            conn.execute("INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)", (name, value))

    def statistics(self) -> dict[str, int]:
        """A snapshot: sizes now, and counters since this object was created."""
        counters = (
            "load_rejected", "rejected_limit", "rejected_malformed", "superseded", "replaced",
            "added", "merges", "writes", "drops", "contacts_truncated", "contacts_rejected",
            "rejected_gone", "rejected_budget", "forgotten", "records_forgotten",
        )
        out = {"keys": len(self._records), "records": self._record_count, "bytes": self._bytes_total,
               "authors": len(self._author_counts), "decided": len(self._decided), "tombstones": len(self._gone)}
        out.update((name, self._stats[name]) for name in counters)
        return out

    # ------------------------------------------------------------------ database plumbing

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
            return self._db().execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise StorageError(f"store read failed: {exc}") from exc
