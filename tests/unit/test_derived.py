"""node/derived.py and FactStore.version: the memo of derived job states
answers what lifecycle.derive answers, and sees every change of the store."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from dht.storage import FactStore
from node import lifecycle as L
from node.derived import DerivedStates
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
def test_local_state_follows_every_merge(order: list[int]) -> None:
    with FactStore(None, validator) as store:
        memo = DerivedStates(store, size_max=2)
        for i in order:
            store.merge(KEY, [POOL[i]])
            assert memo.local(KEY) == L.derive(store.get(KEY))
            assert memo.of(reversed(store.get(KEY))) == L.derive(store.get(KEY))

