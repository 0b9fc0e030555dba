"""A job's state as the fact store keeps it: ``lifecycle.derive_with`` as the
store's :class:`dht.contract.Deriver`.

A job's state is derived again on every store, read, wait and judgement (33
times per job in the profile of docs/performance.md); most of those see a set
of facts already derived, or one derived before plus a fact or two. So:

* the store (``dht/storage.py``) keeps each held job's
  ``lifecycle.Derivation`` and brings it up to date as facts merge, from the
  one it kept before (:func:`lifecycle.derive_with` admits only the facts it
  has not seen, or derives afresh when it cannot; the answer is the same).
  Callers ask ``store.state(job_id)``.
* a candidate set of a job's facts (a read's merge; ``JobReplica`` judging a
  fact against the store plus that fact, then plus its own vote) is derived
  with ``store.state_of(job_id, facts)``, from the store's derivation of the
  job. :class:`JobDeriver` remembers the last few derivations by their set of
  fact ids (a fact id is the hash of the signed bytes: equal ids, equal
  facts): once the judged fact is stored, the store's set is the one judged,
  and its derivation is not made twice.

``JobState`` and ``Derivation`` are never mutated, so a kept one can be
shared by every caller.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from operator import attrgetter

from workmesh.node import lifecycle
from workmesh.node.facts import Fact

_fact_id = attrgetter("fact_id")

RECENT_MAX = 256  # derivations remembered by their set of fact ids


class JobDeriver:
    """The node's :class:`dht.contract.Deriver`: facts in, a ``Derivation`` out."""

    def __init__(self, recent_max: int = RECENT_MAX) -> None:
        self._recent: OrderedDict[frozenset[bytes], lifecycle.Derivation] = OrderedDict()
        self._recent_max = recent_max
        self.counters = {"hits": 0, "misses": 0, "incremental": 0}

    def derive(
        self, key: bytes, records: Iterable[Fact], previous: lifecycle.Derivation | None
    ) -> lifecycle.Derivation:
        """The derivation of ``records`` (every fact of job ``key`` in some set),
        from ``previous`` (what was derived for the job before) when it can be."""
        facts = records if isinstance(records, list) else list(records)
        ids = frozenset(map(_fact_id, facts))
        if previous is not None and previous.seen == ids:
            self.counters["hits"] += 1
            return previous
        recent = self._recent.get(ids)
        if recent is not None:
            self._recent.move_to_end(ids)
            self.counters["hits"] += 1
            return recent
        self.counters["misses"] += 1
        d = lifecycle.derive_with(previous, facts, ids=ids)
        if not d.fresh:
            self.counters["incremental"] += 1
        self._recent[ids] = d
        if len(self._recent) > self._recent_max:
            self._recent.popitem(last=False)
        return d

    def statistics(self) -> dict[str, int]:
        return {**self.counters, "recent": len(self._recent)}
