"""node/derived.py, FactStore.state and FactStore.version: the job states the
store keeps up to date answer what lifecycle.derive answers, see every change
of the store, and are bounded."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from workmesh.dht.storage import FactStore
from workmesh.node import facts as F
from workmesh.node import lifecycle as L
import pytest

from workmesh.dht.storage import StorageError
from workmesh.node.derived import JobDeriver
from workmesh.node.replica import JobReplica
from tests.unit.test_storage import KEY, POOL, W1, claim, validator


def test_version_changes_exactly_when_the_record_set_changes() -> None:
    with FactStore(None, validator) as store:
        assert store.version(KEY) == 0
        store.merge(KEY, POOL[:2])
        v1 = store.version(KEY)
        assert v1 != 0
        store.merge(KEY, POOL[:2])  # nothing new
        assert store.version(KEY) == v1
        store.merge(KEY, [claim(KEY, W1, 99)])
        v2 = store.version(KEY)
        assert v2 not in (0, v1)
        store.drop(KEY)
        assert store.version(KEY) == 0
        store.merge(KEY, POOL[:2])
        assert store.version(KEY) not in (0, v1, v2)  # never repeats after a drop


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, len(POOL) - 1), min_size=1, max_size=12))
def test_state_follows_every_merge(order: list[int]) -> None:
    with FactStore(None, validator, deriver=JobDeriver(jobs_max=2), derived_max=2) as store:
        for i in order:
            store.merge(KEY, [POOL[i]])
            assert store.state(KEY) == L.derive(store.get(KEY))
            assert store.state_of(KEY, reversed(store.get(KEY))) == L.derive(store.get(KEY))
            candidate = [*store.get(KEY), POOL[(i + 1) % len(POOL)]]
            assert store.state_of(KEY, candidate) == L.derive(candidate)


def test_validate_memo_returns_the_decoded_fact_and_refuses_bad_bytes() -> None:
    from workmesh.crypto.identity import Identity

    replica = JobReplica(Identity.from_seed(b"r" * 32), None, lambda: 0.0, lambda: 0, lambda k, n: None, decoded_max=2)
    raw = POOL[0].raw
    first = replica.validate(KEY, raw)
    assert first == POOL[0] and replica.validate(KEY, raw) is first
    bad = raw[:-1] + bytes([raw[-1] ^ 1])
    for _ in range(2):
        try:
            replica.validate(KEY, bad)
        except F.InvalidFact:
            pass
        else:
            raise AssertionError("a corrupted fact was accepted")


def test_a_key_the_store_never_held_keeps_nothing() -> None:
    """Reads of random ids must not crowd real jobs out of what is kept."""
    with FactStore(None, validator, deriver=JobDeriver(), derived_max=4) as store:
        for i in range(100):
            assert store.state(i.to_bytes(20, "big")) is None
        assert store.derived_statistics()["kept"] == 0


def test_derived_states_are_bounded_and_go_with_their_keys() -> None:
    with FactStore(None, validator, deriver=JobDeriver(), derived_max=1) as store:
        store.merge(KEY, POOL[:2])
        assert store.state(KEY) == L.derive(POOL[:2])
        assert store.derived_statistics()["kept"] == 1
        store.forget(KEY, at_ms=1)
        assert store.state(KEY) is None
        assert store.derived_statistics()["kept"] == 0


def test_a_store_without_a_deriver_says_so() -> None:
    with FactStore(None, validator) as store:
        store.merge(KEY, POOL[:2])
        with pytest.raises(StorageError):
            store.state(KEY)
