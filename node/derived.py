"""Bounded memos of ``lifecycle.derive``, a pure function of a set of facts.

A job's state is derived again on every store, read, wait and judgement (33
times per job in the profile of docs/performance.md); most of those see a set
of facts already derived. Two memos, both bounded LRUs:

* ``local(key)``: the state of what this node's store holds for ``key``,
  cached against the store's per-key change counter (``FactStore.version``);
  a hit costs two dict look-ups and no copy of the records.
* ``of(facts)``: the state of any collection of facts, cached against the set
  of their fact ids (a fact id is the hash of the signed bytes, so equal ids
  mean equal facts).

``JobState`` is frozen, so a cached state can be shared by every caller.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

from dht.storage import FactStore
from node import lifecycle
from node.facts import Fact

_MISSING = object()


class DerivedStates:
    def __init__(self, store: FactStore, size_max: int = 4096) -> None:
        self._store = store
        self._size_max = size_max
        self._by_version: OrderedDict[bytes, tuple[int, lifecycle.JobState | None]] = OrderedDict()
        self._by_set: OrderedDict[frozenset[bytes], lifecycle.JobState | None] = OrderedDict()
        self.counters = {"hits": 0, "misses": 0}

    def local(self, key: bytes) -> lifecycle.JobState | None:
        """``lifecycle.derive(store.get(key))``, memoised per (key, version)."""
        version = self._store.version(key)
        cached = self._by_version.get(key)
        if cached is not None and cached[0] == version:
            self._by_version.move_to_end(key)
            self.counters["hits"] += 1
            return cached[1]
        self.counters["misses"] += 1
        state = lifecycle.derive(self._store.get(key))
        self._by_version[key] = (version, state)
        self._by_version.move_to_end(key)
        while len(self._by_version) > self._size_max:
            self._by_version.popitem(last=False)
        return state

    def of(self, facts: Iterable[Fact]) -> lifecycle.JobState | None:
        """``lifecycle.derive(facts)``, memoised per set of fact ids."""
        facts = list(facts)
        ids = frozenset(f.fact_id for f in facts)
        cached = self._by_set.get(ids, _MISSING)
        if cached is not _MISSING:
            self._by_set.move_to_end(ids)
            self.counters["hits"] += 1
            return cached  # type: ignore[return-value]
        self.counters["misses"] += 1
        state = lifecycle.derive(facts)
        self._by_set[ids] = state
        while len(self._by_set) > self._size_max:
            self._by_set.popitem(last=False)
        return state

    def statistics(self) -> dict[str, int]:
        return {**self.counters, "cached": len(self._by_version) + len(self._by_set)}
