"""The job service's contract: defined once, below both the node and the API.

``workmesh.node`` implements :class:`JobService`; ``workmesh.api`` serves it
over HTTP; ``workmesh.client`` speaks to that HTTP. All three take the job
statuses, the job view and the limits from here, so none of them imports
another to learn them (``node/`` never imports ``api/``). This module
imports nothing of workmesh.

Errors cross the seam as ``workmesh.node.errors.WorkmeshError`` subclasses;
``api/errors.py`` maps them to problem+json in one place and
``workmesh.client`` maps each problem type back to one exception type.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

# -- statuses ------------------------------------------------------------------
# The job lifecycle's states as shown to users (docs/protocol.md section 3; the
# moves between them are node/lifecycle.py's TRANSITIONS).
PENDING, RUNNING, DONE, FAILED, CANCELLED = "pending", "running", "done", "failed", "cancelled"
STATUSES: tuple[str, ...] = (PENDING, RUNNING, DONE, FAILED, CANCELLED)
TERMINAL_STATUSES: frozenset[str] = frozenset({DONE, FAILED, CANCELLED})

# -- limits --------------------------------------------------------------------
# What a job may be. The signed submit fact enforces the same bounds
# (node/facts.py imports them from here), so the API never accepts what a
# replica would refuse.
TYPE_CHARS_MAX = 64  # a job type's name
PAYLOAD_BYTES_MAX = 8192  # a payload, as canonical JSON (sorted keys, no spaces)
RESULT_BYTES_MAX = 8192  # a handler's result, as canonical JSON
REASON_CHARS_MAX = 256  # a cancel's reason
ATTEMPTS_MAX = 100  # max_attempts
LEASE_MS_MIN, LEASE_MS_MAX = 500, 3_600_000  # a lease: 0.5 s .. 1 h
TIMEOUT_MS_MAX = 86_400_000  # a handler's timeout: up to a day
# What a request may be.
JSON_DEPTH_MAX = 32  # nesting levels allowed inside a payload
IDEMPOTENCY_KEY_CHARS_MAX = 128  # visible ASCII
CURSOR_CHARS_MAX = 256  # ?after= of GET /jobs
WAIT_S_MAX = 60.0  # ?wait= of one long-poll, seconds
LIST_LIMIT_DEFAULT, LIST_LIMIT_MAX = 100, 500  # ?limit= of GET /jobs
BATCH_JOBS_MAX = 100  # job specs in one POST /jobs array


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
        """Store the submission on a write quorum, then answer. Raises QuorumUnavailable.

        With an ``idempotency_key``, the same key and request give the same
        job on every node (its view, with its real status, if it exists);
        the same key with another request raises IdempotencyKeyReused.
        """
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

    def metrics_registry(self) -> Any:
        """The ``prometheus_client.CollectorRegistry`` that ``/metrics`` exposes."""
        ...
