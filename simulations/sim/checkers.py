"""What must hold in every run, checked while the mesh runs, and the run's trace.

The checker sees every job state any node derives (the node calls its job
index with each one) and keeps, across the whole mesh:

* **one lease holder per attempt**: every lease grant any node has stored, by
  (job, attempt) and replica. A replica that grants one attempt to two workers,
  or two workers that each gather a quorum for the same attempt, is a
  violation: quorums intersect, so honest replicas cannot do it, whatever the
  network did;
* **terminal is forever**: per node and job, once the derived status is done,
  failed or cancelled, it and the decided fact never change;
* **one decision per job**: every node that decides a job decides on the same
  result (or cancel);
* **every stored fact verifies**: checked on demand (:func:`verify_stores`)
  by decoding every stored record again with ``node.facts.decode``.

The trace is the sequence of ``(virtual time, event)`` lines of a run:
submissions and their answers, per-node status changes (with the lease
attempt and holder), handler starts and ends, first decisions, crashes and
joins. Its SHA-256 identifies a run: the same seed must give the same hash.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import Counter
from typing import Any, TextIO

from node import facts as F
from node import lifecycle

VIOLATIONS_KEPT_MAX = 100


class TraceLog:
    """A running hash of trace lines; optionally every line to a file."""

    def __init__(self, loop: asyncio.AbstractEventLoop, out: TextIO | None = None) -> None:
        self._loop = loop
        self._hash = hashlib.sha256()
        self._out = out
        self.lines = 0

    def event(self, text: str) -> None:
        line = f"{self._loop.time():.6f} {text}\n"
        self._hash.update(line.encode())
        self.lines += 1
        if self._out is not None:
            self._out.write(line)

    @property
    def digest(self) -> str:
        return self._hash.hexdigest()


class Invariants:
    def __init__(self, loop: asyncio.AbstractEventLoop, trace: TraceLog) -> None:
        self._loop = loop
        self._trace = trace
        self.violations: list[str] = []
        self.violation_counts: Counter[str] = Counter()
        # (node name, job id) -> (status, decided fact id, lease attempt)
        self._seen: dict[tuple[str, bytes], tuple[str, bytes | None, int]] = {}
        # job id -> decided fact id, and when it was first decided
        self.decided: dict[bytes, bytes] = {}
        self.decided_status: dict[bytes, str] = {}
        self.decided_at: dict[bytes, float] = {}
        # (job id, attempt) -> replica id -> worker id it granted the attempt to
        self._grants: dict[tuple[bytes, int], dict[bytes, bytes]] = {}
        self._grant_ids: set[bytes] = set()
        self._split_leases: set[tuple[bytes, int]] = set()
        self._split_decisions: set[tuple[bytes, bytes]] = set()
        self.states_seen = 0

    def violate(self, kind: str, detail: str) -> None:
        self.violation_counts[kind] += 1
        if len(self.violations) < VIOLATIONS_KEPT_MAX:
            self.violations.append(f"t={self._loop.time():.3f} {kind}: {detail}")
        self._trace.event(f"VIOLATION {kind} {detail}")

    def on_state(self, node: str, state: lifecycle.JobState) -> None:
        """A node derived ``state`` for a job (its facts changed)."""
        self.states_seen += 1
        job = state.job_id
        decided = state.decided.fact_id if state.decided is not None else None
        now = (state.status, decided, state.lease_attempt)
        before = self._seen.get((node, job))
        if before != now:
            self._seen[(node, job)] = now
            worker = state.lease_worker.hex()[:8] if state.lease_worker else "-"
            self._trace.event(f"state {node} {job.hex()[:16]} {state.status} {state.lease_attempt} {worker}")
        if before is not None and before[0] in lifecycle.TERMINAL and before[:2] != now[:2]:
            self.violate("terminal_changed", f"{node} job {job.hex()[:16]}: {before[0]} -> {state.status}")
        if decided is not None:
            first = self.decided.setdefault(job, decided)
            if first == decided and job not in self.decided_at:
                self.decided_at[job] = self._loop.time()
                self.decided_status[job] = state.status
                self._trace.event(f"decided {job.hex()[:16]} {state.status} {decided.hex()[:16]}")
            elif first != decided and (job, decided) not in self._split_decisions:
                self._split_decisions.add((job, decided))
                self.violate("two_decisions", f"job {job.hex()[:16]}: {first.hex()[:16]} and {decided.hex()[:16]} ({node})")
        self._check_grants(state)

    def _check_grants(self, state: lifecycle.JobState) -> None:
        quorum = state.submit.body.quorum
        for f in state.facts:
            if f.kind != F.GRANT or f.body.action != F.LEASE or f.fact_id in self._grant_ids:
                continue
            self._grant_ids.add(f.fact_id)
            key = (state.job_id, f.attempt)
            by_replica = self._grants.setdefault(key, {})
            previous = by_replica.setdefault(f.author_id, f.body.subject)
            if previous != f.body.subject:
                self.violate(
                    "replica_double_grant",
                    f"replica {f.author_id.hex()[:8]} granted job {state.job_id.hex()[:16]} attempt {f.attempt} "
                    f"to {previous.hex()[:8]} and {f.body.subject.hex()[:8]}",
                )
            holders = Counter(by_replica.values())
            if key not in self._split_leases and sum(1 for n in holders.values() if n >= quorum) > 1:
                self._split_leases.add(key)
                who = ", ".join(f"{w.hex()[:8]} by {n}" for w, n in sorted(holders.items()))
                self.violate("two_lease_holders", f"job {state.job_id.hex()[:16]} attempt {f.attempt}: {who} replicas")


def verify_stores(nodes: list[Any], invariants: Invariants) -> int:
    """Decode every record every live node stores; each must verify and match its id. Returns records checked."""
    checked = 0
    for sim in nodes:
        store = sim.node.store
        for key in store.keys():
            for record in store.get(key):
                checked += 1
                try:
                    fact = F.decode(record.raw, key=key)
                except Exception as exc:
                    invariants.violate("stored_fact_invalid", f"{sim.name} key {key.hex()[:16]}: {exc}")
                    continue
                if fact.fact_id != record.record_id:
                    invariants.violate("stored_fact_id_mismatch", f"{sim.name} key {key.hex()[:16]}")
    return checked


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile; 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, min(len(ordered), -(-len(ordered) * p // 100)))
    return ordered[int(rank) - 1]


class LookupStats:
    """Each DHT lookup's hops, and whether it found the true closest live node."""

    def __init__(self) -> None:
        self.enabled = False
        self.count = 0
        self.exact = 0
        self.empty = 0
        self.hops: list[int] = []
        self.queries = 0
        self.failures = 0

    def record(self, found_closest: bool, result: Any) -> None:
        self.count += 1
        self.exact += found_closest
        self.empty += not result.contacts
        self.hops.append(result.hops)
        self.queries += result.queries
        self.failures += result.failures

    def figures(self) -> dict[str, float]:
        n = max(1, self.count)
        return {
            "lookups": self.count,
            # None without lookups: meshes of at most k+1 nodes answer from their tables
            "lookup_success_rate": round(self.exact / n, 4) if self.count else None,
            "lookup_empty_rate": round(self.empty / n, 4) if self.count else None,
            "hops_mean": round(sum(self.hops) / n, 3),
            "hops_p95": percentile(self.hops, 95),
            "queries_mean": round(self.queries / n, 3),
            "query_failure_rate": round(self.failures / max(1, self.queries), 4),
        }
