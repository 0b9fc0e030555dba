"""The record store's SQLite side: the database connection and its group commit.

:class:`Database` is the connection (WAL, ``synchronous=FULL``: a commit
returns after its fsync), the schema, and one-at-a-time access to it from
the event loop or the writer thread (:meth:`Database.transaction`,
:meth:`Database.read`, and a transaction split in two: :meth:`Database.begin`
on the loop, :meth:`Database.end` in the writer thread); any SQLite failure
becomes :class:`StorageError`.

:class:`GroupCommit` queues writes already applied to memory, each with the
``undo`` that reverts memory should its commit fail. The writes queued
during one event-loop turn are committed in one transaction (one fsync) at
the start of the next turn: its statements run on the loop (CPU only, no
fsync), its COMMIT (the fsync) in a writer thread while the loop goes on;
writes arriving meanwhile form the next commit. :meth:`GroupCommit.durable`
returns once everything written so far is committed. Commit listeners see
every commit that returned (:class:`CommitEvent`). It knows nothing of
records: ``dht/storage.py`` decides what to write.
"""

from __future__ import annotations

import asyncio
import os
import queue
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

SCHEMA_VERSION = 1
WAL_BYTES_MAX = 64 * 2**20  # the WAL file is truncated to this after a checkpoint

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

# SQL statements with their rows: one write.
Ops = list[tuple[str, list[tuple]]]


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


class Database:
    """The SQLite connection (``path`` None: in memory), used by one thread at a time."""

    def __init__(self, path: str | os.PathLike[str] | None, stats: Counter[str]) -> None:
        self.path = path
        self.conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()  # one user of the connection at a time (loop or writer thread)
        self._stats = stats

    def connect(self) -> None:
        """Open the database and create or check its schema (sqlite3.Error passes)."""
        target = ":memory:"
        if self.path is not None:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            target = os.fspath(self.path)
        # One thread at a time, but not necessarily the opening one: a large
        # store takes seconds to re-verify, so open() may run in a worker.
        conn = sqlite3.connect(target, isolation_level=None, check_same_thread=False)
        try:
            self._prepare(conn)
        except BaseException:
            conn.close()
            raise
        self.conn = conn

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

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

    def db(self) -> sqlite3.Connection:
        if self.conn is None:
            raise StorageError("store is not open")
        return self.conn

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; any SQLite failure becomes :class:`StorageError`."""
        conn = self.db()
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

    def begin(self, statements: Iterator[tuple[str, list[tuple]]]) -> None:
        """Open a write transaction and run ``statements`` in it, keeping the
        connection until :meth:`end` (which any thread may call) commits it.
        On failure it is rolled back, the connection given back and
        :class:`StorageError` raised (for a SQLite failure)."""
        conn = self.db()
        self._lock.acquire()
        try:
            conn.execute("BEGIN")
            for sql, rows in statements:
                conn.executemany(sql, rows)
        except BaseException as exc:
            try:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            finally:
                self._lock.release()
            if isinstance(exc, sqlite3.Error):
                raise StorageError(f"store write failed: {exc}") from exc
            raise

    def end(self) -> None:
        """COMMIT what :meth:`begin` opened (it returns after the fsync) and
        give the connection back; on failure roll back and raise :class:`StorageError`."""
        conn = self.conn
        try:
            if conn is None:
                raise sqlite3.ProgrammingError("store is not open")
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            try:
                if conn is not None and conn.in_transaction:
                    conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            raise StorageError(f"store write failed: {exc}") from exc
        finally:
            self._lock.release()

    def read(self, sql: str, params: tuple = ()) -> list[tuple]:
        try:
            with self._lock:
                return self.db().execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise StorageError(f"store read failed: {exc}") from exc


class GroupCommit:
    """Writes queued in one event-loop turn, committed together (the COMMIT in a writer thread).

    ``group`` False: every write commits (and fsyncs) on its own. A database
    in memory (simulator, tests) has no disk to wait for: its commits run on
    the loop's thread."""

    def __init__(self, database: Database, stats: Counter[str], *, group: bool = True) -> None:
        self._database = database
        self._stats = stats
        self._group = group
        self._batch: list[tuple[Ops, Callable[[], None], list[tuple[bytes, bytes]], int]] = []
        self._flush_scheduled = False
        self._durable_waiters: list[asyncio.Future] = []
        self._commit_listeners: list[Callable[[CommitEvent], None]] = []
        self._commit_seq = 0
        self.commit_s_total = 0.0
        self._inflight: tuple[list, list[asyncio.Future]] | None = None  # the commit the writer thread runs
        # The writer thread and its inbox: (loop, commit start) per commit, None to stop.
        self._writer: threading.Thread | None = None
        self._writer_inbox: queue.SimpleQueue[tuple[asyncio.AbstractEventLoop, float] | None] = queue.SimpleQueue()
        self._write_seq = 0  # writes queued so far
        self._lost_seq = 0  # the newest write a failed commit undid

    def write(self, ops: Ops, undo: Callable[[], None], ids: list[tuple[bytes, bytes]]) -> None:
        """Queue writes already applied to memory; ``undo`` reverts memory if their commit fails.

        Without group commit (or outside an event loop) they commit now, and a
        failure raises :class:`StorageError` with memory as it was. With it,
        they go to disk with the rest of this loop turn's writes in one
        transaction, committed in the store's writer thread while the loop
        goes on; :meth:`durable` waits for that commit."""
        self._write_seq += 1
        self._batch.append((ops, undo, ids, self._write_seq))
        if not self._group:
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
        if self._database.path is None:  # in memory (simulator, tests): no disk to wait for
            try:
                self.flush()
            except StorageError:
                pass  # counted, and every waiter got the error
            return
        batch, waiters = self._take()
        started = time.perf_counter()
        try:
            self._begin(batch)
        except StorageError as exc:
            self._failed(batch, waiters, exc)
            return
        self._inflight = (batch, waiters)
        if self._writer is None:
            self._writer = threading.Thread(target=self._writer_loop, name="store-commit", daemon=True)
            self._writer.start()
        self._writer_inbox.put((asyncio.get_running_loop(), started))

    def _writer_loop(self) -> None:
        """The writer thread: one COMMIT per message, its outcome handed to the
        loop (a plain queue and one call back, not an executor's futures: this
        runs once per commit, a few times per job)."""
        while True:
            item = self._writer_inbox.get()
            if item is None:
                return
            loop, started = item
            try:
                outcome: float | BaseException = self._end(started)
            except BaseException as exc:  # handed to the loop: every waiter gets it
                outcome = exc
            try:
                loop.call_soon_threadsafe(self._committed, outcome)
            except RuntimeError:  # the loop is closed: nobody waits for this commit any more
                self._inflight = None

    def _committed(self, outcome: float | BaseException) -> None:
        assert self._inflight is not None
        batch, waiters = self._inflight
        self._inflight = None
        if isinstance(outcome, BaseException):
            self._failed(batch, waiters, outcome if isinstance(outcome, StorageError) else StorageError(str(outcome)))
        else:
            self._stats["writes"] += 1
            self._succeeded(batch, waiters, outcome)
        if self._batch:
            self._schedule_flush()

    def _take(self) -> tuple[list, list[asyncio.Future]]:
        batch, self._batch = self._batch, []
        waiters, self._durable_waiters = self._durable_waiters, []
        return batch, waiters

    def _begin(self, batch: list) -> None:
        """On the loop: open the transaction of ``batch`` and run its statements,
        keeping the connection; :meth:`_end` commits it in the writer thread.

        The statements cost CPU but no fsync (that is the COMMIT's), so they run
        here: in the writer thread each of them released and took back the GIL
        against a busy loop, which cost both threads more than the work. The
        thread then only waits for the COMMIT, one GIL release for its fsync."""
        self._database.begin(statement for ops, *_rest in batch for statement in ops)

    def _end(self, started: float) -> float:
        """In the writer thread: COMMIT what :meth:`_begin` opened (it returns
        after the fsync) and give the connection back; the commit's duration."""
        self._database.end()
        return time.perf_counter() - started

    def _commit(self, batch: list) -> float:
        """Write ``batch`` in one transaction; its COMMIT returns after the fsync. Any thread."""
        started = time.perf_counter()
        with self._database.transaction() as conn:
            for ops, *_rest in batch:
                for sql, rows in ops:
                    conn.executemany(sql, rows)
        return time.perf_counter() - started

    def _succeeded(self, batch: list, waiters: list[asyncio.Future], took: float) -> None:
        self._commit_seq += 1
        self.commit_s_total += took
        self._stats["commits"] += 1
        self._stats["committed_ops"] += len(batch)
        if self._commit_listeners:  # none in production: the event is not built
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

    def close(self) -> None:
        """Commit what is queued (what fails was never promised) and stop the writer thread."""
        try:
            self.flush()
        except StorageError:
            pass  # what was not written was never promised (no waiter got its answer)
        if self._writer is not None:
            self._writer_inbox.put(None)
            self._writer.join()  # a commit in flight ends first
            self._writer = None

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

    def has_pending(self) -> bool:
        """Are writes queued or being committed?"""
        return bool(self._batch) or self._inflight is not None

    def pending_writes(self) -> int:
        """Writes applied in memory whose commit has not returned yet."""
        return len(self._batch) + (len(self._inflight[0]) if self._inflight is not None else 0)

    def uncommitted_ids(self, key: bytes) -> set[bytes]:
        """The record ids of ``key`` whose commit has not returned yet."""
        batches = [self._batch] + ([self._inflight[0]] if self._inflight is not None else [])
        return {rid for b in batches for _o, _u, ids, _s in b for k, rid in ids if k == key}

    def add_commit_listener(self, listener: Callable[[CommitEvent], None]) -> None:
        """Call ``listener(event)`` after each commit returned (a seam for tests and metrics)."""
        self._commit_listeners.append(listener)
