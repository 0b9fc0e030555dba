"""Retention and storage budgets (issue 13, item 6): node/retention.py and the
store's side of it (``FactStore.forget``, ``merge_all``), on real SQLite."""

from __future__ import annotations

import pytest

from workmesh.crypto.identity import Identity
from workmesh.dht.records import StorageLimits
from workmesh.dht.server import REFUSED_BUDGET, REFUSED_GONE, DHTServer
from workmesh.dht.storage import FactStore
from workmesh.node import facts as F
from workmesh.node import lifecycle
from workmesh.node.leases import LeaseRules
from workmesh.node.replica import JobReplica
from workmesh.node.retention import Retention, expires_in_s, parse_duration

SUBMITTER = Identity.from_seed(b"\x31" * 32)
REPLICA = Identity.from_seed(b"\x32" * 32)
WORKER = Identity.from_seed(b"\x33" * 32)


def validator(key: bytes, raw: bytes) -> F.Fact:
    return F.decode(raw, key=key)


def job(n: int = 0) -> tuple[F.Fact, F.Fact]:
    """A submission placed on REPLICA alone (r = 1, quorum 1)."""
    body = F.Submit("echo", b"{}", 3, 5000, 60000, 1, 1, n.to_bytes(16, "big"), 1000)
    submit = F.sign(SUBMITTER, F.SUBMIT, body)
    place = F.sign(SUBMITTER, F.GRANT, F.Grant(submit.job_id, F.PLACE, 0, REPLICA.node_id, 1000))
    return submit, place


def cancel(submit: F.Fact) -> list[F.Fact]:
    """A cancel and REPLICA's seal of it: the job is decided (cancelled)."""
    c = F.sign(SUBMITTER, F.CANCEL, F.Cancel(submit.job_id, "stop", 2000))
    seal = F.BallotStep(submit.job_id, F.SEAL, 0, 1, SUBMITTER.node_id, c.fact_id, (), 0)
    return [c, F.sign(REPLICA, F.BALLOT, seal)]


def claim(submit: F.Fact) -> F.Fact:
    return F.sign(WORKER, F.CLAIM, F.Claim(submit.job_id, 1, 3000))


@pytest.mark.parametrize(
    "text, seconds", [("90", 90), ("90s", 90), ("30m", 1800), ("12h", 43200), ("7d", 604800), ("1.5h", 5400)]
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "7w", "-1s", "s", "1 d x"])
def test_parse_duration_refuses(text):
    with pytest.raises(ValueError):
        parse_duration(text)


def test_expiry_is_clamped_to_one_retention():
    assert expires_in_s(1000, 1000, 60) == 60
    assert expires_in_s(1000, 31_000, 60) == 30
    assert expires_in_s(1000, 10**9, 60) == 0
    assert expires_in_s(10**9, 1000, 60) == 60  # a wall clock stepped back extends nothing past a retention


class Clock:
    def __init__(self) -> None:
        self.mono = 100.0
        self.wall = 1_700_000_000_000

    def advance(self, s: float) -> None:
        self.mono += s
        self.wall += int(s * 1000)


def retention_over(store: FactStore, clock: Clock, retention_s: float = 60.0, dropped: list | None = None) -> Retention:
    return Retention(
        store,
        retention_s,
        monotonic=lambda: clock.mono,
        wall_ms=lambda: clock.wall,
        state_of=lambda key: lifecycle.derive(store.get(key)),
        on_dropped=(dropped.append if dropped is not None else lambda key: None),
    )


def test_a_decided_job_is_dropped_after_its_retention_and_an_undecided_one_never(tmp_path):
    clock = Clock()
    with FactStore(tmp_path / "s.sqlite", validator) as store:
        dropped: list[bytes] = []
        ret = retention_over(store, clock, 60.0, dropped)
        decided, waiting = job(1), job(2)
        for facts in ([*decided, *cancel(decided[0])], [*waiting]):
            key = facts[0].job_id
            store.merge(key, facts)
            ret.observe(key, lifecycle.derive(store.get(key)))
        assert lifecycle.derive(store.get(decided[0].job_id)).status == lifecycle.CANCELLED
        clock.advance(59.0)
        assert ret.sweep(clock.mono) == 0
        clock.advance(1.0)
        assert ret.sweep(clock.mono) == 1
        assert dropped == [decided[0].job_id]
        assert not store.has(decided[0].job_id) and store.is_gone(decided[0].job_id)
        assert ret.counters == {"jobs_dropped": 1, "facts_dropped": 4, "kept_undecided": 0, "jobs_dropped_early": 0}
        clock.advance(10 * 86_400)
        assert ret.sweep(clock.mono) == 0
        assert store.has(waiting[0].job_id)  # never decided, never dropped
        # A dropped key is refused from now on: a late republish cannot bring it back.
        assert store.merge(decided[0].job_id, [*decided]) == []
        assert store.merge_all(decided[0].job_id, [*decided]) is None
        assert store.statistics()["rejected_gone"] == 2
    # The tombstone survives a restart; so does the time a decision was seen.
    with FactStore(tmp_path / "s.sqlite", validator) as store:
        assert store.is_gone(decided[0].job_id)
        key = waiting[0].job_id
        store.merge(key, cancel(waiting[0]))
        assert store.mark_decided(key, 5) == 5
    with FactStore(tmp_path / "s.sqlite", validator) as store:
        assert store.decided_at(key) == 5
        clock2 = Clock()
        clock2.wall = 5 + 20_000  # seen decided 20 s ago, before a restart
        ret = retention_over(store, clock2, 60.0)
        ret.observe(key, lifecycle.derive(store.get(key)))
        assert ret.next_due_in(clock2.mono) == pytest.approx(40.0)


def test_a_store_under_pressure_drops_decided_jobs_early_oldest_decision_first_and_never_an_undecided_one(tmp_path):
    # The submitter signs three records of each decided job (submit, place,
    # cancel), and its budget is 40: one undecided job (2 records) and twelve
    # decided ones (36) fill it to 0.95, above PRESSURE_HIGH. Without early
    # drops, the next job's records would be refused until the retention
    # (a week) passed: the stall of a 3-node mesh after ~23,000 jobs.
    clock = Clock()
    limits = StorageLimits(records_per_author_max=40)
    with FactStore(tmp_path / "s.sqlite", validator, limits) as store:
        dropped: list[bytes] = []
        ret = Retention(store, 7 * 86_400.0, monotonic=lambda: clock.mono, wall_ms=lambda: clock.wall,
                        state_of=lambda key: lifecycle.derive(store.get(key)), on_dropped=dropped.append,
                        pressure_batch=1)
        waiting = job(100)
        store.merge(waiting[0].job_id, [*waiting])
        ret.observe(waiting[0].job_id, lifecycle.derive(store.get(waiting[0].job_id)))
        decided_order = []
        for n in range(12):
            submit, place = job(n)
            store.merge(submit.job_id, [submit, place, *cancel(submit)])
            ret.observe(submit.job_id, lifecycle.derive(store.get(submit.job_id)))
            decided_order.append(submit.job_id)
            clock.advance(1.0)
        assert store.fullness() == pytest.approx(38 / 40)
        late = job(200)
        assert store.merge_all(late[0].job_id, [*late, *cancel(late[0])]) is None  # 41 > 40: refused
        sweeps = 0
        while ret.sweep(clock.mono):
            sweeps += 1
        # Dropped one per sweep (pressure_batch=1) until below PRESSURE_LOW
        # (32 of 40): three jobs, the first decided first.
        assert dropped == decided_order[:3] and sweeps == 3
        assert store.fullness() == pytest.approx(29 / 40) and not ret.pressed
        assert ret.counters["jobs_dropped_early"] == 3 and ret.counters["jobs_dropped"] == 0
        assert store.has(waiting[0].job_id)
        assert all(store.has(k) for k in decided_order[3:])
        assert store.merge_all(late[0].job_id, [*late, *cancel(late[0])]) is not None  # room again


def test_tombstones_are_bounded(tmp_path):
    with FactStore(tmp_path / "s.sqlite", validator, tombstones_max=3) as store:
        keys = []
        for n in range(5):
            submit, place = job(n)
            store.merge(submit.job_id, [submit, place])
            store.forget(submit.job_id, n)
            keys.append(submit.job_id)
        assert [store.is_gone(k) for k in keys] == [False, False, True, True, True]
        assert store.statistics()["tombstones"] == 3
    with FactStore(tmp_path / "s.sqlite", validator, tombstones_max=3) as store:
        assert [store.is_gone(k) for k in keys] == [False, False, True, True, True]


def replica_server(limits: StorageLimits) -> DHTServer:
    store = FactStore(None, lambda key, raw: F.decode(raw, key=key), limits)
    store.open()
    replica = JobReplica(REPLICA, LeaseRules(), lambda: 50.0, lambda: 1_700_000_000_000, lambda key, new: None)
    return DHTServer(REPLICA, store, replica)


def test_a_full_store_grants_nothing_it_could_not_store():
    submit, place = job(7)
    key = submit.job_id
    wanted = claim(submit)
    # Room for the job and the claim, not for the grant the claim calls for.
    room = len(submit.raw) + len(place.raw) + len(wanted.raw) + 10
    server = replica_server(StorageLimits(bytes_total_max=room))
    assert server.ingest(key, [submit, place], SUBMITTER.node_id)[0] is True
    ok, refused, produced = server.ingest(key, [wanted], WORKER.node_id)
    assert (ok, produced) == (False, [])
    assert refused == [(0, REFUSED_BUDGET)]
    assert server.records.record_ids(key) == {submit.fact_id, place.fact_id}  # nothing half-stored
    assert server.stats["budget_refusals"] == 1

    # With room for both, the same claim gets its grant, stored before it is handed out.
    server = replica_server(StorageLimits(bytes_total_max=room + 1000))
    server.ingest(key, [submit, place], SUBMITTER.node_id)
    ok, refused, produced = server.ingest(key, [wanted], WORKER.node_id)
    assert ok is True and refused == [] and len(produced) == 1 and produced[0].kind == F.GRANT
    assert produced[0].fact_id in server.records.record_ids(key)


def test_a_budget_is_checked_before_the_policy_promises_anything():
    submit, place = job(8)
    key = submit.job_id
    server = replica_server(StorageLimits(bytes_total_max=len(submit.raw) + len(place.raw)))
    server.ingest(key, [submit, place], SUBMITTER.node_id)
    ok, refused, produced = server.ingest(key, [claim(submit)], WORKER.node_id)
    assert (ok, refused, produced) == (False, [(0, REFUSED_BUDGET)], [])
    assert server.policy.counters["grants_issued"] == 0  # the replica never judged it
    server.records.forget(key, 1)
    ok, refused, _ = server.ingest(key, [submit, place], SUBMITTER.node_id)
    assert (ok, refused) == (False, [(0, REFUSED_GONE), (1, REFUSED_GONE)])


def test_the_cli_bounds_the_jobs_a_store_holds_and_a_store_near_that_bound_is_under_pressure(tmp_path):
    from workmesh.node.cli import build_parser, config_from_args

    def limits(*extra: str) -> StorageLimits:
        return config_from_args(build_parser().parse_args(["start", "--data-dir", "d", *extra])).store_limits

    assert limits() == StorageLimits()
    assert limits("--store-jobs-max", "10") == StorageLimits(keys_max=10)
    for bad in ("0", "-3", "many"):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["start", "--data-dir", "d", "--store-jobs-max", bad])
    clock = Clock()
    with FactStore(tmp_path / "s.sqlite", validator, limits("--store-jobs-max", "10")) as store:
        ret = retention_over(store, clock, 7 * 86_400.0)
        for n in range(10):
            submit, place = job(n)
            store.merge(submit.job_id, [submit, place, *cancel(submit)])
            ret.observe(submit.job_id, lifecycle.derive(store.get(submit.job_id)))
        assert store.fullness() == 1.0
        assert not store.merge(job(10)[0].job_id, [*job(10)])  # an eleventh job is refused
        while ret.sweep(clock.mono):
            pass
        assert len(store.keys()) == 7  # under 80% of 10 again, the first decided gone first
        assert store.merge(job(10)[0].job_id, [*job(10)])


def test_the_cli_takes_a_retention_with_a_unit_and_defaults_to_seven_days():
    from workmesh.node.cli import build_parser, config_from_args

    def retention(*extra: str) -> float:
        return config_from_args(build_parser().parse_args(["start", "--data-dir", "d", *extra])).retention_s

    assert retention() == 7 * 86_400
    assert retention("--retention", "12h") == 43_200
    assert retention("--retention", "90") == 90
    with pytest.raises(SystemExit):
        build_parser().parse_args(["start", "--data-dir", "d", "--retention", "soon"])
