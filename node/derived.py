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
  job, or from the newest one :class:`JobDeriver` made for the job when that
  saw more of the set (the candidate judged a moment ago: once the judged
  fact and the vote are stored, the store's set is the one judged, and it is
  not derived twice).

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

JOBS_MAX = 256  # jobs whose newest derivation is remembered: the jobs that are changing


class JobDeriver:
    """The node's :class:`dht.contract.Deriver`: facts in, a ``Derivation`` out."""

    def __init__(self, jobs_max: int = JOBS_MAX) -> None:
        # job id -> the newest derivation made for it, least recently used first
        self._latest: OrderedDict[bytes, lifecycle.Derivation] = OrderedDict()
        self._jobs_max = jobs_max
        self.counters = {"hits": 0, "misses": 0, "incremental": 0}

    def derive(
        self, key: bytes, records: Iterable[Fact], previous: lifecycle.Derivation | None
    ) -> lifecycle.Derivation:
        """The derivation of ``records`` (facts of job ``key``), from ``previous``
        (the store's, for the job) or from the newest one made for the job,
        whichever saw more of ``records`` and nothing else (the answer is the same)."""
        facts = records if isinstance(records, list) else list(records)
        ids = frozenset(map(_fact_id, facts))
        start = previous
        latest = self._latest.get(key)
        if latest is not None and latest is not previous:
            seen = latest.seen
            if seen <= ids and (previous is None or len(seen) > len(previous.seen) or not previous.seen <= ids):
                start = latest
        if start is not None and start.seen == ids:
            self.counters["hits"] += 1
            return start
        self.counters["misses"] += 1
        d = lifecycle.derive_with(start, facts, ids=ids)
        if not d.fresh:
            self.counters["incremental"] += 1
        if d.submit is not None:
            self._latest[key] = d
            self._latest.move_to_end(key)
            if len(self._latest) > self._jobs_max:
                self._latest.popitem(last=False)
        return d

    def statistics(self) -> dict[str, int]:
        return {**self.counters, "jobs": len(self._latest)}
