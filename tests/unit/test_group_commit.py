"""Group commit (issue 13, item 7): the writes of one event-loop turn go to disk
in one transaction and one fsync (SQLite ``synchronous=FULL``), and
``durable()`` returns only once that commit returned; real SQLite files."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest

from workmesh.crypto.identity import Identity
from workmesh.dht.storage import CommitEvent, FactStore, StorageError
from workmesh.node import facts as F

AUTHOR = Identity.from_seed(b"\x41" * 32)


def validator(key: bytes, raw: bytes) -> F.Fact:
    return F.decode(raw, key=key)


def submit(n: int, payload: bytes = b"{}") -> F.Fact:
    return F.sign(AUTHOR, F.SUBMIT, F.Submit("echo", payload, 3, 5000, 60000, 3, 2, n.to_bytes(16, "big"), 1000))


def test_the_store_runs_with_synchronous_full(tmp_path):
    with FactStore(tmp_path / "s.sqlite", validator) as store:
        assert store._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


async def test_one_turn_of_writes_is_one_commit_and_durable_waits_for_it(tmp_path):
    events: list[CommitEvent] = []
    with FactStore(tmp_path / "s.sqlite", validator) as store:
        store.add_commit_listener(events.append)
        jobs = [submit(n) for n in range(20)]
        for job in jobs:  # one turn: no await between them
            assert store.merge(job.job_id, [job]) == [job]
        assert store.pending_writes() == 20 and events == []
        assert all(store.has(j.job_id) for j in jobs)  # memory has them already
        await store.durable()
        assert len(events) == 1 and events[0].ops == 20
        assert {rid for _key, rid in events[0].ids} == {j.fact_id for j in jobs}
        assert store.pending_writes() == 0
        await store.durable()  # nothing queued: immediate, no commit
        assert len(events) == 1
        stats = store.statistics()
        assert (stats["commits"], stats["committed_ops"]) == (1, 20)
    with FactStore(tmp_path / "s.sqlite", validator) as again:
        assert all(again.has(j.job_id) for j in jobs)


async def test_without_group_commit_every_write_commits_on_its_own(tmp_path):
    events: list[CommitEvent] = []
    with FactStore(tmp_path / "s.sqlite", validator, group_commit=False) as store:
        store.add_commit_listener(events.append)
        for n in range(5):
            job = submit(n)
            store.merge(job.job_id, [job])
            assert len(events) == n + 1 and store.pending_writes() == 0


async def test_a_failed_commit_undoes_memory_and_fails_every_waiter(tmp_path):
    with FactStore(tmp_path / "s.sqlite", validator) as store:
        kept = submit(1)
        store.merge(kept.job_id, [kept])
        await store.durable()
        pages = store._conn.execute("PRAGMA page_count").fetchone()[0]
        store._conn.execute(f"PRAGMA max_page_count={pages}")  # the disk is now full
        big = [submit(10 + n, b'"' + b"x" * 8000 + b'"') for n in range(3)]
        mark = store.write_mark()
        for job in big:
            store.merge(job.job_id, [job])
        waiters = [asyncio.ensure_future(store.durable(mark)) for _ in range(2)]
        for w in waiters:
            with pytest.raises(StorageError):
                await w
        assert not any(store.has(j.job_id) for j in big)
        assert store.statistics()["records"] == 1 and store.statistics()["commit_failures"] == 1
        assert store.pending_writes() == 0
        await store.durable()  # a caller without a write since has nothing to lose


async def test_a_waiter_registered_before_the_failed_commit_gets_its_error(tmp_path):
    with FactStore(tmp_path / "s.sqlite", validator) as store:
        store.merge(submit(1).job_id, [submit(1)])
        await store.durable()
        pages = store._conn.execute("PRAGMA page_count").fetchone()[0]
        store._conn.execute(f"PRAGMA max_page_count={pages}")
        job = submit(2, b'"' + b"x" * 8000 + b'"')
        store.merge(job.job_id, [job])
        with pytest.raises(StorageError):
            await store.durable()  # called in the turn of the write, as a replica's answer does
        assert not store.has(job.job_id)


class _CommitFails:
    """The store's connection, except that its next COMMIT fails (as a full or failing disk's fsync would)."""

    def __init__(self, conn) -> None:
        self._conn = conn
        self.failed = 0

    def execute(self, sql, *args):
        if sql == "COMMIT" and not self.failed:
            self.failed += 1
            raise sqlite3.OperationalError("disk I/O error")
        return self._conn.execute(sql, *args)

    def __getattr__(self, name):
        return getattr(self._conn, name)


async def test_a_commit_that_fails_in_the_writer_thread_fails_its_waiters_and_the_store_goes_on(tmp_path):
    # The statements run on the loop, the COMMIT (its fsync) in the writer thread: a failure
    # there must still undo memory, fail every waiter, and leave the connection usable.
    with FactStore(tmp_path / "s.sqlite", validator) as store:
        kept = submit(1)
        store.merge(kept.job_id, [kept])
        await store.durable()
        failing = store._database.conn = _CommitFails(store._database.conn)
        lost = submit(2)
        mark = store.write_mark()
        store.merge(lost.job_id, [lost])
        with pytest.raises(StorageError):
            await store.durable(mark)
        assert failing.failed == 1 and not store.has(lost.job_id) and store.pending_writes() == 0
        assert not store._conn.in_transaction
        again = submit(3)
        store.merge(again.job_id, [again])
        await store.durable()
        assert store.statistics()["commit_failures"] == 1
    with FactStore(tmp_path / "s.sqlite", validator) as reopened:
        assert reopened.has(kept.job_id) and reopened.has(again.job_id) and not reopened.has(lost.job_id)
