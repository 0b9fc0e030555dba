"""Bounded memos of ``lifecycle.derive``, a pure function of a set of facts.

A job's state is derived again on every store, read, wait and judgement (33
times per job in the profile of docs/performance.md); most of those see a set
of facts already derived, or one derived before plus a fact or two. Three
memos, all bounded LRUs:

* ``local(key)``: the state of what this node's store holds for ``key``,
  cached against the store's per-key change counter (``FactStore.version``);
  a hit costs two dict look-ups and no copy of the records.
* ``of(facts)``: the state of any collection of facts, cached against the set
  of their fact ids (a fact id is the hash of the signed bytes, so equal ids
  mean equal facts). ``local`` looks here too on a miss: ``JobReplica`` judges
  a fact against the store plus that fact, which is the store once it is in.
* the two newest ``lifecycle.Derivation`` of each job (by its submission's
  fact id): a miss of either memo derives from one with
  ``lifecycle.derive_with``, which admits only the facts it has not seen (or
  derives afresh when it cannot; the answer is the same).

``JobState`` and ``Derivation`` are never mutated, so a cached one can be
shared by every caller.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from operator import attrgetter

from workmesh.dht.storage import FactStore
from workmesh.node import facts as F
from workmesh.node import lifecycle
from workmesh.node.facts import Fact

_MISSING = object()
_fact_id = attrgetter("fact_id")


class DerivedStates:
    def __init__(self, store: FactStore, size_max: int = 4096, jobs_max: int = 256) -> None:
        self._store = store
        self._size_max = size_max
        # Jobs whose derivations are kept to derive their next state from
        # (about 6 KB each for r = 5, two per job): the jobs that are changing.
        self._jobs_max = jobs_max
        self._by_version: OrderedDict[bytes, tuple[int, lifecycle.JobState | None]] = OrderedDict()
        self._by_set: OrderedDict[frozenset[bytes], lifecycle.JobState | None] = OrderedDict()
        # submission fact id -> the job's newest derivations, newest first
        self._latest: OrderedDict[bytes, tuple[lifecycle.Derivation, ...]] = OrderedDict()
        self._per_job = 2
        self.counters = {"hits": 0, "misses": 0, "incremental": 0}

    def local(self, key: bytes) -> lifecycle.JobState | None:
        """``lifecycle.derive(store.get(key))``, memoised per (key, version)."""
        version = self._store.version(key)
        if version == 0:
            # A key this store never held: nothing to derive, nothing to keep
            # (reads of random ids must not crowd real jobs out of the memo).
            return None
        cached = self._by_version.get(key)
        if cached is not None and cached[0] == version:
            self._by_version.move_to_end(key)
            self.counters["hits"] += 1
            return cached[1]
        state = self.of(self._store.get(key))
        self._by_version[key] = (version, state)
        self._by_version.move_to_end(key)
        while len(self._by_version) > self._size_max:
            self._by_version.popitem(last=False)
        return state

    def of(self, facts: Iterable[Fact]) -> lifecycle.JobState | None:
        """``lifecycle.derive(facts)``, memoised per set of fact ids."""
        facts = list(facts)
        ids = frozenset(map(_fact_id, facts))
        cached = self._by_set.get(ids, _MISSING)
        if cached is not _MISSING:
            self._by_set.move_to_end(ids)
            self.counters["hits"] += 1
            return cached  # type: ignore[return-value]
        self.counters["misses"] += 1
        state = self._derive(facts, ids)
        self._by_set[ids] = state
        while len(self._by_set) > self._size_max:
            self._by_set.popitem(last=False)
        return state

    def _derive(self, facts: list[Fact], ids: frozenset[bytes]) -> lifecycle.JobState | None:
        recent: tuple[lifecycle.Derivation, ...] = ()
        for f in facts:
            if f.kind == F.SUBMIT:
                recent = self._latest.get(f.fact_id, ())
                if recent:
                    break
        # Prefer one that saw nothing missing here: a read merges the
        # replicas' facts, which the local store may not all hold.
        previous = next((d for d in recent if d.seen <= ids), recent[0] if recent else None)
        d = lifecycle.derive_with(previous, facts, ids=ids)
        if d.submit is None:
            return None
        if not d.fresh:
            self.counters["incremental"] += 1
        key = d.submit.fact_id
        self._latest[key] = (d, *(r for r in self._latest.get(key, ()) if r is not d))[: self._per_job]
        self._latest.move_to_end(key)
        while len(self._latest) > self._jobs_max:
            self._latest.popitem(last=False)
        return d.state

    def statistics(self) -> dict[str, int]:
        return {**self.counters, "cached": len(self._by_version) + len(self._by_set), "derived_jobs": len(self._latest)}


def state_of(memo: DerivedStates | None, facts: Iterable[Fact]) -> lifecycle.JobState | None:
    """The state ``facts`` decide: through ``memo`` when a node plugged one
    in, else derived afresh (the answer is the same)."""
    return memo.of(facts) if memo is not None else lifecycle.derive(facts)


def local_state(memo: DerivedStates | None, store: FactStore, key: bytes) -> lifecycle.JobState | None:
    """The state of what ``store`` holds for ``key`` (through ``memo`` when there is one)."""
    return memo.local(key) if memo is not None else lifecycle.derive(store.get(key))
