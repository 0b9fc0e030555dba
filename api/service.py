"""The one interface between the REST layer and the node.

The API depends only on :class:`JobService` (a structural ``Protocol``), so it
can be served and tested against an in-memory fake, and the node can change
its internals without touching HTTP code. Errors cross this seam as
``node.errors.WorkmeshError`` subclasses; ``api/errors.py`` maps them to HTTP.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import prometheus_client

# The job lifecycle's states, as shown to users (docs/protocol.md section 3).
STATUSES: tuple[str, ...] = ("pending", "running", "done", "failed", "cancelled")
TERMINAL_STATUSES: frozenset[str] = frozenset({"done", "failed", "cancelled"})


@dataclass(frozen=True, slots=True)
class JobView:
    """What a client sees of a job: a snapshot derived from its facts.

    ``id``, ``worker`` and ``submitted_by`` are lowercase hex strings;
    ``history``, when requested, is the job's signed facts for audit
    (``[{"kind", "author", "attempt", "ts_ms", "fact_id", "raw_b64", ...}]``).
    """

    id: str
    type: str
    status: str
    attempts: int
    max_attempts: int
    result: Any | None
    error: str | None
    worker: str | None
    submitted_by: str
    created_ms: int
    last_error: str | None
    history: list[dict] | None = None

    def to_json(self) -> dict:
        """The JSON document the API answers with; ``history`` only when present."""
        doc = {
            "id": self.id,
            "type": self.type,
            "status": self.status,
            "attempts": self.attempts,
            "max_attempts": self.max_attempts,
            "result": self.result,
            "error": self.error,
            "worker": self.worker,
            "submitted_by": self.submitted_by,
            "created_ms": self.created_ms,
            "last_error": self.last_error,
        }
        if self.history is not None:
            doc["history"] = list(self.history)
        return doc


@runtime_checkable
class JobService(Protocol):
    """What the node offers the API. Methods raise ``node.errors`` types only."""

    job_types: frozenset[str]
    """Types any node of the mesh can run (registered handlers); others are refused with 422."""

    async def submit(
        self,
        job_type: str,
        payload: Any,
        *,
        max_attempts: int | None,
        lease_seconds: float | None,
        timeout_seconds: float | None,
        idempotency_key: str | None,
    ) -> JobView:
        """Store the submission on a write quorum, then answer. Raises QuorumUnavailable."""
        ...

    async def get(self, job_id: bytes, *, wait_s: float = 0.0, history: bool = False) -> JobView:
        """The job's view; with ``wait_s`` > 0, wait up to that long for it to turn terminal.

        Raises JobNotFound.
        """
        ...

    async def cancel(self, job_id: bytes, reason: str) -> JobView:
        """Cancel a job that is not terminal. Raises JobNotFound, Conflict (already terminal)."""
        ...

    def list_jobs(self, status: str | None, limit: int, after: str | None) -> tuple[list[JobView], str | None]:
        """One page of jobs known to this node and the cursor of the next page (None at the end).

        The jobs this node holds as a replica, and those it accepted or ran.
        A service may also offer ``async refresh_own()``, awaited before this
        and ``status()``, to bring its own jobs held elsewhere up to date.
        """
        ...

    async def list_mesh_jobs(self, status: str | None, limit: int) -> dict:
        """``{"jobs": [...], "next": None, "nodes_asked", "nodes_failed"}``: this
        node's jobs and its peers', one entry per job (``GET /jobs?scope=mesh``)."""
        ...

    def status(self) -> dict:
        """The node's status document (JSON-serialisable), passed through as is."""
        ...

    def metrics_registry(self) -> prometheus_client.CollectorRegistry:
        """The registry ``/metrics`` exposes."""
        ...
