"""dht/storage.py: the persistent per-key record store.

Real signed facts (node/facts.py) on real SQLite files; the pure merge planner
is also exercised with light fake records, where ties in a slot can be built.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workmesh.crypto.identity import Identity
from workmesh.dht.records import Record, plan_merge, supersedes
from workmesh.dht.storage import FactStore, StorageError, StorageLimits
from workmesh.node import facts


def validator(key: bytes, raw: bytes) -> facts.Fact:
    return facts.decode(raw, key=key)


def ident(n: int) -> Identity:
    return Identity.from_seed(bytes([n]) * 32)


SUBMITTER, W1, W2 = ident(1), ident(2), ident(3)


def submit(nonce: int = 0, by: Identity = SUBMITTER) -> facts.Fact:
    body = facts.Submit("echo", b"{}", 3, 5000, 60000, 5, 3, nonce.to_bytes(16, "big"), 1000)
    return facts.sign(by, facts.SUBMIT, body)


def claim(job: bytes, worker: Identity, ts: int, attempt: int = 1) -> facts.Fact:
    return facts.sign(worker, facts.CLAIM, facts.Claim(job, attempt, ts))


def renew(job: bytes, worker: Identity, ts: int, attempt: int = 1) -> facts.Fact:
    return facts.sign(worker, facts.RENEW, facts.Renew(job, attempt, ts))


JOB = submit()
KEY = JOB.job_id
# A pool for one job: plain members and two renew slots (w1/attempt 1, w2/attempt 1).
POOL = [JOB, claim(KEY, W1, 10), claim(KEY, W2, 11), claim(KEY, W1, 12, attempt=2)] + [
    renew(KEY, w, ts) for w in (W1, W2) for ts in (20, 30, 40)
]


def expected_union(records: list[Record]) -> set[bytes]:
    """The model: every plain record, and per slot the highest (version, record_id)."""
    plain = {r.record_id for r in records if r.slot is None}
    best: dict[bytes, Record] = {}
    for r in records:
        if r.slot is not None and (r.slot not in best or supersedes(r, best[r.slot])):
            best[r.slot] = r
    return plain | {r.record_id for r in best.values()}


def ids(records: list[Record]) -> list[bytes]:
    return [r.record_id for r in records]


@pytest.fixture
def db(tmp_path):
    return tmp_path / "data" / "store.sqlite"


@pytest.fixture
def store(db):
    s = FactStore(db, validator)
    s.open()
    yield s
    s.close()


def reopen(db, limits: StorageLimits = StorageLimits()) -> FactStore:
    s = FactStore(db, validator, limits)
    s.open()
    return s


# ---------------------------------------------------------------- merge


def test_merge_is_union_and_idempotent(store):
    first = store.merge(KEY, POOL[:3])
    assert sorted(ids(first)) == sorted(ids(POOL[:3]))
    assert store.merge(KEY, POOL[:3]) == []
    added = store.merge(KEY, POOL[1:4])
    assert ids(added) == [POOL[3].record_id]
    assert store.record_ids(KEY) == set(ids(POOL[:4]))
    assert ids(store.get(KEY)) == sorted(ids(POOL[:4]))
    assert store.has(KEY) and len(store) == 1 and store.keys() == [KEY]
    stats = store.statistics()
    assert (stats["keys"], stats["records"], stats["merges"]) == (1, 4, 3)
    assert stats["bytes"] == sum(len(r.raw) for r in POOL[:4])


def test_unknown_key_reads_empty(store):
    other = bytes(20)
    assert store.get(other) == [] and store.record_ids(other) == set() and store.missing(other, []) == []
    assert not store.has(other) and len(store) == 0
    store.merge(other, [])
    assert not store.has(other)


def test_slot_keeps_highest_version_in_either_order(store):
    low, mid, high = (renew(KEY, W1, ts) for ts in (20, 30, 40))
    assert ids(store.merge(KEY, [mid])) == [mid.record_id]
    assert store.merge(KEY, [low]) == []  # lower: ignored, not returned
    assert ids(store.merge(KEY, [high])) == [high.record_id]
    assert store.record_ids(KEY) == {high.record_id}
    # Within one call only the final winner is reported.
    other = FactStore(None, validator)
    other.open()
    assert ids(other.merge(KEY, [low, high, mid])) == [high.record_id]
    assert other.record_ids(KEY) == {high.record_id}
    stats = store.statistics()
    assert (stats["records"], stats["replaced"], stats["superseded"]) == (1, 1, 1)
    assert stats["bytes"] == len(high.raw)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(POOL), max_size=20), st.randoms(use_true_random=False), st.data())
def test_merge_result_does_not_depend_on_order_or_batching(chosen, rnd, data):
    shuffled = list(chosen)
    rnd.shuffle(shuffled)
    cut = sorted(data.draw(st.lists(st.integers(0, len(shuffled)), max_size=4)))
    batches = [shuffled[a:b] for a, b in zip([0, *cut], [*cut, len(shuffled)])]
    one, many = FactStore(None, validator), FactStore(None, validator)
    one.open(), many.open()
    one.merge(KEY, chosen)
    returned = [r for batch in batches for r in many.merge(KEY, batch)]
    assert one.record_ids(KEY) == many.record_ids(KEY) == expected_union(chosen)
    # Everything stored was reported as added exactly once, when it was added.
    assert len(set(ids(returned))) == len(returned)
    assert many.record_ids(KEY) <= set(ids(returned))
    assert ids(one.get(KEY)) == ids(many.get(KEY))


@dataclass(frozen=True)
class Fake:
    raw: bytes
    record_id: bytes
    author_id: bytes
    slot: bytes | None
    version: int


def fake(n: int, slot: int | None, version: int) -> Fake:
    raw = b"r%d" % n
    return Fake(raw, hashlib.blake2b(raw, digest_size=32).digest(), bytes(20), None if slot is None else b"s%d" % slot, version)


FAKES = [fake(n, slot, version) for n, (slot, version) in enumerate(
    [(None, 0), (None, 0), (0, 1), (0, 1), (0, 2), (1, 5), (1, 5), (1, 5), (2, 0)]
)]


@settings(max_examples=200, deadline=None)
@given(st.permutations(FAKES), st.permutations(FAKES))
def test_planner_breaks_slot_ties_by_record_id_whatever_the_order(a, b):
    plan = dict(author_counts={}, bytes_total=0, key_allowed=True, limits=StorageLimits())
    assert set(ids(plan_merge({}, {}, a, **plan).added)) == set(ids(plan_merge({}, {}, b, **plan).added)) == expected_union(FAKES)


def test_missing_returns_exactly_what_the_other_side_lacks(db, tmp_path):
    mine, theirs = FactStore(db, validator), FactStore(tmp_path / "b.sqlite", validator)
    mine.open(), theirs.open()
    mine.merge(KEY, POOL[:6])
    theirs.merge(KEY, POOL[3:])
    lack = mine.missing(KEY, theirs.record_ids(KEY))
    # Mine: submit, three claims, renew(w1, 30). Theirs: claim 3, renews w1/40 and w2/40.
    # Missing goes by ids only: my older renew is listed; merging it there is a no-op.
    assert ids(lack) == sorted(ids([JOB, POOL[1], POOL[2], POOL[5]]))
    assert ids(theirs.merge(KEY, lack)) == sorted(ids([JOB, POOL[1], POOL[2]]))
    mine.merge(KEY, theirs.missing(KEY, mine.record_ids(KEY)))
    # After one exchange each way both hold the same set, and nothing is missing either way.
    assert mine.record_ids(KEY) == theirs.record_ids(KEY) == expected_union(POOL)
    assert mine.missing(KEY, theirs.record_ids(KEY)) == theirs.missing(KEY, mine.record_ids(KEY)) == []


# ---------------------------------------------------------------- limits


def test_records_per_key_limit_refuses_and_counts_but_allows_slot_replacement(tmp_path):
    s = FactStore(tmp_path / "s.sqlite", validator, StorageLimits(records_per_key_max=3))
    s.open()
    old, new = renew(KEY, W1, 20), renew(KEY, W1, 30)
    s.merge(KEY, [JOB, claim(KEY, W1, 10), old])
    assert s.merge(KEY, [claim(KEY, W2, 11)]) == []
    assert ids(s.merge(KEY, [new])) == [new.record_id]  # replaces: the count stays 3
    assert s.record_ids(KEY) == {JOB.record_id, POOL[1].record_id, new.record_id}
    assert s.statistics()["rejected_limit"] == 1


def test_records_per_author_limit_spans_keys(tmp_path):
    s = FactStore(tmp_path / "s.sqlite", validator, StorageLimits(records_per_author_max=2))
    s.open()
    jobs = [submit(n) for n in range(3)]  # one author, three keys
    for j in jobs[:2]:
        assert s.merge(j.job_id, [j]) == [j]
    assert s.merge(jobs[2].job_id, [jobs[2]]) == []
    assert not s.has(jobs[2].job_id)
    other = submit(9, by=W2)
    assert s.merge(other.job_id, [other]) == [other]  # another author is unaffected
    assert s.statistics()["rejected_limit"] == 1


def test_bytes_total_limit(tmp_path):
    a, b = POOL[1], POOL[2]
    s = FactStore(tmp_path / "s.sqlite", validator, StorageLimits(bytes_total_max=len(a.raw) + len(b.raw)))
    s.open()
    assert len(s.merge(KEY, [a, b, POOL[3]])) == 2
    stats = s.statistics()
    assert (stats["bytes"], stats["rejected_limit"]) == (len(a.raw) + len(b.raw), 1)
    s.drop(KEY)
    assert s.statistics()["bytes"] == 0 and len(s.merge(KEY, [POOL[3]])) == 1  # space is given back


def test_keys_limit(tmp_path):
    s = FactStore(tmp_path / "s.sqlite", validator, StorageLimits(keys_max=2))
    s.open()
    jobs = [submit(n) for n in range(3)]
    for j in jobs:
        s.merge(j.job_id, [j])
    assert len(s) == 2 and not s.has(jobs[2].job_id)
    assert s.merge(jobs[0].job_id, [claim(jobs[0].job_id, W1, 1)]) != []  # existing keys still grow
    assert s.statistics()["rejected_limit"] == 1


@settings(max_examples=60, deadline=None)
@given(
    held=st.lists(st.sampled_from(range(len(POOL))), max_size=6),
    incoming=st.lists(st.sampled_from(range(len(POOL))), min_size=1, max_size=6),
    per_key=st.integers(1, 8),
    per_author=st.integers(1, 8),
    spare_bytes=st.integers(-200, 2000),
    keys=st.integers(1, 2),
)
def test_fits_says_what_planning_the_merge_says(tmp_path_factory, held, incoming, per_key, per_author, spare_bytes, keys):
    # fits() answers from the limits' headroom when it can; the answer must be the plan's.
    first = [POOL[i] for i in dict.fromkeys(held)]
    limits = StorageLimits(
        records_per_key_max=per_key, records_per_author_max=per_author, keys_max=keys,
        bytes_total_max=max(0, sum(len(r.raw) for r in first) + spare_bytes),
    )
    s = FactStore(None, validator, limits)
    s.open()
    try:
        other = submit(7)
        s.merge(other.job_id, [other])
        s.merge(KEY, first)
        batch = [POOL[i] for i in incoming]
        assert s.fits(KEY, batch) == (s._index.plan(KEY, batch, s.limits).rejected_limit == 0)
        assert s.fits(KEY, iter(batch)) == s.fits(KEY, batch)
    finally:
        s.close()


def test_reopen_with_smaller_limits_drops_the_excess_from_disk(db, store):
    store.merge(KEY, POOL[:4])
    store.close()
    small = reopen(db, StorageLimits(records_per_key_max=2))
    assert len(small.get(KEY)) == 2 and small.statistics()["rejected_limit"] == 2
    small.close()
    assert len(reopen(db).get(KEY)) == 2


# ---------------------------------------------------------------- persistence


def test_reopen_gives_identical_records_contacts_and_meta(db, store):
    other = submit(5, by=W2)
    store.merge(KEY, POOL)
    store.merge(other.job_id, [other])
    contacts = [(i.node_id, f"127.0.0.{n}", 4000 + n, i.public_key) for n, i in enumerate((W2, W1, SUBMITTER))]
    store.save_contacts(contacts[:1])
    store.save_contacts(contacts)  # replaces the saved set
    store.set_meta("routing", b"\x01\x02")
    before = {k: [r.raw for r in store.get(k)] for k in store.keys()}
    sizes = {k: store.statistics()[k] for k in ("keys", "records", "bytes")}
    store.close()
    again = reopen(db)
    assert {k: [r.raw for r in again.get(k)] for k in again.keys()} == before
    assert {k: again.statistics()[k] for k in ("keys", "records", "bytes")} == sizes
    assert again.load_contacts() == contacts
    assert again.get_meta("routing") == b"\x01\x02" and again.get_meta("absent") is None
    assert again.statistics()["load_rejected"] == 0
    # Slots survive too: a lower renew is still refused after the restart.
    assert again.merge(KEY, [renew(KEY, W1, 20)]) == []


def tamper(db, sql: str, params: tuple) -> None:
    conn = sqlite3.connect(db)
    with conn:
        conn.execute(sql, params)
    conn.close()


def test_record_corrupted_on_disk_is_dropped_at_load(db, store):
    store.merge(KEY, POOL[:4])
    store.close()
    victim = POOL[2]
    flipped = victim.raw[:-1] + bytes([victim.raw[-1] ^ 0x01])
    tamper(db, "UPDATE records SET raw = ? WHERE record_id = ?", (flipped, victim.record_id))
    s = reopen(db)
    assert s.record_ids(KEY) == set(ids(POOL[:4])) - {victim.record_id}
    assert s.statistics()["load_rejected"] == 1
    s.close()
    s = reopen(db)  # the bad row was deleted, not just skipped
    assert s.statistics()["load_rejected"] == 0 and len(s.get(KEY)) == 3


def test_record_filed_under_the_wrong_key_is_rejected_at_load(db, store):
    other = submit(7)
    store.merge(KEY, [JOB])
    store.merge(other.job_id, [other])
    store.close()
    stray = claim(KEY, W1, 99)
    tamper(db, "INSERT INTO records VALUES (?, ?, NULL, 0, ?, ?)", (other.job_id, stray.record_id, stray.author_id, stray.raw))
    s = reopen(db)
    assert s.record_ids(other.job_id) == {other.record_id} and s.record_ids(KEY) == {JOB.record_id}
    assert s.statistics()["load_rejected"] == 1


def test_stored_id_that_does_not_match_the_bytes_is_rejected(db, store):
    store.merge(KEY, POOL[:2])
    store.close()
    tamper(db, "UPDATE records SET record_id = ? WHERE record_id = ?", (bytes(32), POOL[1].record_id))
    s = reopen(db)
    assert s.record_ids(KEY) == {JOB.record_id} and s.statistics()["load_rejected"] == 1


def test_forged_contact_is_skipped(db, store):
    store.save_contacts([(W1.node_id, "127.0.0.1", 1, W2.public_key), (W2.node_id, "127.0.0.1", 2, W2.public_key)])
    assert store.load_contacts() == [(W2.node_id, "127.0.0.1", 2, W2.public_key)]
    assert store.statistics()["contacts_rejected"] == 1


def test_drop_forgets_a_key_durably(db, store):
    other = submit(3)
    store.merge(KEY, POOL[:3])
    store.merge(other.job_id, [other])
    store.drop(KEY)
    store.drop(KEY)  # unknown: no-op
    assert not store.has(KEY) and store.statistics()["records"] == 1
    store.close()
    assert reopen(db).keys() == [other.job_id]


def test_failed_write_leaves_memory_unchanged(store):
    store.merge(KEY, [JOB])
    pages = store._conn.execute("PRAGMA page_count").fetchone()[0]
    store._conn.execute(f"PRAGMA max_page_count={pages}")  # the disk is now full
    big = facts.sign(W1, facts.SUBMIT, facts.Submit("echo", b'"' + b"x" * 8000 + b'"', 3, 5000, 60000, 5, 3, bytes(16), 1))
    with pytest.raises(StorageError):
        store.merge(big.job_id, [big])
    assert not store.has(big.job_id) and store.statistics()["records"] == 1


def test_touched_since_follows_changes():
    now = [100.0]
    s = FactStore(None, validator, clock=lambda: now[0])
    s.open()
    a, b = submit(1), submit(2)
    s.merge(a.job_id, [a])
    now[0] = 200.0
    s.merge(b.job_id, [b])
    s.merge(a.job_id, [a])  # no change: not touched again
    assert s.touched_since(150.0) == [b.job_id]
    now[0] = 300.0
    s.merge(a.job_id, [claim(a.job_id, W1, 5)])
    assert s.touched_since(150.0) == [a.job_id, b.job_id]
    assert s.touched_since(0.0) == [a.job_id, b.job_id]
    assert s.touched_since(301.0) == []


def test_loaded_keys_count_as_touched_at_open(db, store):
    store.merge(KEY, [JOB])
    store.close()
    s = FactStore(db, validator, clock=lambda: 42.0)
    s.open()
    assert s.touched_since(42.0) == [KEY]


def test_calls_on_a_closed_store_raise_a_typed_error(db):
    s = FactStore(db, validator)
    with pytest.raises(StorageError):
        s.merge(KEY, [JOB])
    with s:
        s.merge(KEY, [JOB])
    with pytest.raises(StorageError):
        s.get_meta("x")


def test_bad_arguments_are_programming_errors(store):
    with pytest.raises(ValueError):
        store.merge(b"short", [JOB])
    with pytest.raises(ValueError):
        store.save_contacts([(b"x", "127.0.0.1", 1, W1.public_key)])
    with pytest.raises(ValueError):
        store.set_meta("", b"")


def test_fact_satisfies_the_record_protocol():
    assert isinstance(JOB, Record)


def test_a_store_opened_in_a_worker_thread_serves_the_caller(db, store):
    store.merge(KEY, POOL[:2])
    store.close()
    s = FactStore(db, validator)
    opener = threading.Thread(target=s.open)
    opener.start()
    opener.join(timeout=10)
    assert s.record_ids(KEY) == set(ids(POOL[:2]))
    assert s.merge(KEY, [POOL[2]]) == [POOL[2]]
