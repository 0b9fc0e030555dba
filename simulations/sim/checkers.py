"""What must hold in every run, checked while the mesh runs, and the run's trace.

The checker sees every job state any node derives (the node calls its job
index with each one) and keeps, across the whole mesh:

* **one worker per attempt**: an attempt number is a fencing token, so two
  nodes that each start the handler for the same (job, attempt) is a
  violation (:meth:`Invariants.on_execution`). Replicas may grant an attempt
  that never ran to a second worker once the first grant is stale (the
  first worker never showed its quorum to the replicas), so grants alone
  prove nothing: the handlers that actually ran are what is checked;
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

from workmesh.node import facts as F
from workmesh.node import lifecycle

from simulations.lib.stats import percentile

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
        # jobs whose decided fact is the closing attempt's result (max_attempts + 1)
        self.closed: set[bytes] = set()
        # (job id, attempt) -> replica id -> worker id it granted the attempt to
        self._split_leases: set[tuple[Any, int]] = set()
        self._runs: dict[tuple[str, int], str] = {}
        self._split_decisions: set[tuple[bytes, bytes]] = set()
        self.states_seen = 0
        # job id -> the status a client was answered as final (a cancel answered "cancelled")
        self._answered: dict[bytes, str] = {}

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
                answered = self._answered.get(job)
                if answered is not None and answered != state.status:
                    self.violate("answer_not_held", f"job {job.hex()[:16]}: answered {answered}, decided {state.status}")
                if state.decided.attempt > state.spec.max_attempts:
                    self.closed.add(job)
                self._trace.event(f"decided {job.hex()[:16]} {state.status} {decided.hex()[:16]}")
            elif first != decided and (job, decided) not in self._split_decisions:
                self._split_decisions.add((job, decided))
                self.violate("two_decisions", f"job {job.hex()[:16]}: {first.hex()[:16]} and {decided.hex()[:16]} ({node})")

    def expect(self, job_id: bytes, status: str) -> None:
        """A client was answered ``status`` as the job's outcome: the decision must agree."""
        self._answered[job_id] = status
        decided = self.decided_status.get(job_id)
        if decided is not None and decided != status:
            self.violate("answer_not_held", f"job {job_id.hex()[:16]}: answered {status}, decided {decided}")

    def on_execution(self, node: str, job_hex: str, attempt: int) -> None:
        """A handler started: no other node may ever run the same attempt."""
        first = self._runs.setdefault((job_hex, attempt), node)
        if first != node and (job_hex, attempt) not in self._split_leases:
            self._split_leases.add((job_hex, attempt))
            self.violate("attempt_run_twice", f"job {job_hex[:16]} attempt {attempt}: {first} and {node}")



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
            "hops_p95": percentile(self.hops, 95, 0.0),
            "queries_mean": round(self.queries / n, 3),
            "query_failure_rate": round(self.failures / max(1, self.queries), 4),
        }
