"""The Python client: ``from workmesh import Client, AsyncClient`` (docs/client.md).

    client = Client(["http://a:8000", "http://b:8000"], token=None, timeout=10)
    job = client.submit("sha256", {"data": "x", "rounds": 10})
    job = client.wait(job.id, timeout=30)
    print(job.status, job.result)

Failover: a request that meets a refused connection, a timeout, a dropped
connection or a ``502``/``503``/``504`` goes to the next node given, and the
client stays with the node that answered. Every submission carries an
``Idempotency-Key`` (one the client makes, a UUID, when the caller gives
none), so a submission resent to another node is the same job there
(docs/api.md, "Idempotency"). A long-poll (``wait``) whose node dies carries
on at the next one until its own deadline.

Errors: each problem type a node answers with (``urn:workmesh:problem:<name>``)
is one exception class here, named like the node's error (``JobNotFound``,
``IdempotencyKeyReused``, ...); all derive from :class:`ProblemError` and
carry ``status``, ``type``, ``title``, ``detail`` and the ``node`` that
answered. :class:`ConnectionFailed` means no node answered;
:class:`WaitTimeout` (also a ``TimeoutError``) that a wait ran out.

The two classes share everything but their I/O: :class:`_Plan` holds the
requests, the failover order and the reading of answers; :class:`Client`
and :class:`AsyncClient` send what it says with httpx, blocking or not.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from workmesh import blobs_client
from workmesh.contract import BATCH_JOBS_MAX, LIST_LIMIT_MAX, TERMINAL_STATUSES, WAIT_S_MAX

PROBLEM_PREFIX = "urn:workmesh:problem:"
FAILOVER_STATUSES = frozenset({502, 503, 504})
DEFAULT_TIMEOUT_S = 10.0
DEFAULT_ROUNDS = 3  # passes over all nodes before a request gives up
ROUND_PAUSE_S = 0.25  # before the second pass; doubles for each further one
BATCH_BYTES_MAX = 48_000  # a submit_many request's body at most (a node takes 64 KiB by default)


# -- jobs ------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Job:
    """A job as a node showed it (the API's job view)."""

    id: str
    type: str
    status: str
    attempts: int
    result: Any = None
    error: str | None = None
    worker: str | None = None
    max_attempts: int | None = None
    submitted_by: str | None = None
    created_ms: int | None = None
    last_error: str | None = None
    history: list | None = None

    @property
    def terminal(self) -> bool:
        """done, failed or cancelled: the job will not change any more."""
        return self.status in TERMINAL_STATUSES

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Job:
        return cls(
            id=doc["id"], type=doc["type"], status=doc["status"], attempts=doc.get("attempts", 0),
            result=doc.get("result"), error=doc.get("error"), worker=doc.get("worker"),
            max_attempts=doc.get("max_attempts"), submitted_by=doc.get("submitted_by"),
            created_ms=doc.get("created_ms"), last_error=doc.get("last_error"), history=doc.get("history"),
        )


class Page(list):
    """One page of ``list()``: a list of :class:`Job`, and the cursor of the next page."""

    def __init__(self, jobs: Iterable[Job], next_cursor: str | None, node: str) -> None:
        super().__init__(jobs)
        self.next_cursor = next_cursor
        self.node = node


# -- errors ----------------------------------------------------------------------
class WorkmeshError(Exception):
    """Base of every error the client raises."""


class ConnectionFailed(WorkmeshError):
    """No node given to the client answered (refused, timed out, dropped, or 502/503/504 from all)."""

    def __init__(self, message: str, failures: list[str]) -> None:
        super().__init__(message)
        self.failures = failures


class WaitTimeout(WorkmeshError, TimeoutError):
    """``wait`` ran out before the job turned terminal; ``job`` is its last view."""

    def __init__(self, message: str, job: Job | None) -> None:
        super().__init__(message)
        self.job = job


class ProblemError(WorkmeshError):
    """A node answered with a problem document (RFC 9457); one subclass per problem type."""

    status: int = 0

    def __init__(self, problem: Mapping[str, Any], node: str) -> None:
        self.problem = dict(problem)
        self.status = int(problem.get("status") or type(self).status)
        self.type = str(problem.get("type", "about:blank"))
        self.title = str(problem.get("title", ""))
        self.detail = str(problem.get("detail", ""))
        self.node = node
        super().__init__(f"{self.status} {self.title}: {self.detail} ({node})")


class BadRequest(ProblemError):
    status = 400


class Unauthorized(ProblemError):
    status = 401


class JobNotFound(ProblemError):
    status = 404


class NotFound(ProblemError):
    """404 for a path that is no resource (not a job id)."""

    status = 404


class MethodNotAllowed(ProblemError):
    status = 405


class RequestTimeout(ProblemError):
    status = 408


class Conflict(ProblemError):
    status = 409


class PayloadTooLarge(ProblemError):
    status = 413


class UnsupportedMediaType(ProblemError):
    status = 415


class ValidationFailed(ProblemError):
    status = 422


class UnknownJobType(ValidationFailed):
    pass


class IdempotencyKeyReused(ValidationFailed):
    """The same Idempotency-Key was used before with another request body."""


class InvalidFact(ValidationFailed):
    pass


class RateLimited(ProblemError):
    status = 429

    @property
    def retry_after_s(self) -> float | None:
        value = self.problem.get("retry_after_s")
        return float(value) if value is not None else None


class ServerError(ProblemError):
    status = 500


class QuorumUnavailable(ProblemError):
    status = 503


class NotReady(ProblemError):
    status = 503


class BlobNotFound(ProblemError):
    status = 404


class JobGone(JobNotFound):
    """410: the job was decided and dropped once its retention passed."""

    status = 410


class HostNotAllowed(ProblemError):
    """403: the node does not answer to the Host the request named."""

    status = 403


class Overloaded(ProblemError):
    """503: the node holds as many connections or long polls as it serves."""

    status = 503


class InsufficientStorage(ProblemError):
    """507: the node's blob store is full."""

    status = 507


# The node's problem types (api/errors.py: urn:workmesh:problem:<slug of the
# node's error class>) and the generic ones (about:blank) by status.
PROBLEM_TYPES: dict[str, type[ProblemError]] = {
    PROBLEM_PREFIX + slug: cls
    for slug, cls in {
        "bad-request": BadRequest,
        "unauthorized": Unauthorized,
        "job-not-found": JobNotFound,
        "conflict": Conflict,
        "payload-too-large": PayloadTooLarge,
        "validation-failed": ValidationFailed,
        "unknown-job-type": UnknownJobType,
        "idempotency-key-reused": IdempotencyKeyReused,
        "invalid-fact": InvalidFact,
        "rate-limited": RateLimited,
        "quorum-unavailable": QuorumUnavailable,
        "not-ready": NotReady,
        "blob-not-found": BlobNotFound,
        "insufficient-storage": InsufficientStorage,
        "job-gone": JobGone,
        "host-not-allowed": HostNotAllowed,
        "overloaded": Overloaded,
        "workmesh-error": ServerError,
    }.items()
}
BY_STATUS: dict[int, type[ProblemError]] = {
    400: BadRequest, 401: Unauthorized, 403: HostNotAllowed, 404: NotFound, 405: MethodNotAllowed, 410: JobGone, 408: RequestTimeout,
    409: Conflict, 413: PayloadTooLarge, 415: UnsupportedMediaType, 422: ValidationFailed, 429: RateLimited,
    500: ServerError, 503: QuorumUnavailable,
}


def problem_error(problem: Mapping[str, Any], status: int, node: str) -> ProblemError:
    """The exception for a problem document (or a bare error answer) from ``node``."""
    doc = dict(problem)
    doc.setdefault("status", status)
    cls = PROBLEM_TYPES.get(str(doc.get("type", ""))) or BY_STATUS.get(status, ProblemError)
    return cls(doc, node)


# -- the plan: requests, order and answers, no I/O ---------------------------------
@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str
    body: Any = None
    headers: Mapping[str, str] | None = None
    read_timeout_s: float | None = None  # beyond the client's timeout (long-polls)


def _submit_body(job_type: str, payload: Any, max_attempts: int | None, timeout_seconds: float | None,
                 lease_seconds: float | None) -> dict:
    body: dict[str, Any] = {"type": job_type, "payload": payload}
    for name, value in (("max_attempts", max_attempts), ("timeout_seconds", timeout_seconds),
                        ("lease_seconds", lease_seconds)):
        if value is not None:
            body[name] = value
    return body


def _spec_body(spec: Any) -> dict:
    """One item of ``submit_many``: a mapping like a submit's arguments, or ``(type, payload)``."""
    if isinstance(spec, Mapping):
        known = {"type", "payload", "max_attempts", "timeout_seconds", "lease_seconds", "idempotency_key"}
        unknown = set(spec) - known
        if unknown or "type" not in spec:
            raise ValueError(f"a job spec has 'type', 'payload' and optional {sorted(known - {'type', 'payload'})}")
        body = _submit_body(spec["type"], spec.get("payload"), spec.get("max_attempts"),
                            spec.get("timeout_seconds"), spec.get("lease_seconds"))
        body["idempotency_key"] = spec.get("idempotency_key") or str(uuid.uuid4())
        return body
    job_type, payload = spec
    return {"type": job_type, "payload": payload, "idempotency_key": str(uuid.uuid4())}


def _batches(bodies: list[dict]) -> list[list[dict]]:
    """Split job specs into requests within the node's count and size limits."""
    out: list[list[dict]] = []
    current: list[dict] = []
    size = 2
    for body in bodies:
        n = len(json.dumps(body, separators=(",", ":"))) + 1
        if current and (len(current) >= BATCH_JOBS_MAX or size + n > BATCH_BYTES_MAX):
            out.append(current)
            current, size = [], 2
        current.append(body)
        size += n
    if current:
        out.append(current)
    return out


class _Plan:
    """The nodes in failover order, and how requests and answers look."""

    def __init__(self, nodes: str | Iterable[str], token: str | None, timeout: float, rounds: int) -> None:
        urls = [nodes] if isinstance(nodes, str) else list(nodes)
        if not urls:
            raise ValueError("a client needs at least one node URL")
        self.nodes = [u.rstrip("/") for u in urls]
        self.current = 0  # the node that answered last: tried first
        self.timeout = float(timeout)
        self.rounds = max(1, rounds)
        self.token = token
        self.headers = {"Accept": "application/json"}
        if token:
            self.headers["Authorization"] = f"Bearer {token}"

    def attempts(self) -> Iterator[tuple[int, float]]:
        """(node index, pause before trying it): every node from the current
        one on, then again after a pause, ``rounds`` times in all (a mesh that
        just lost a node may answer 503 for a moment)."""
        n = len(self.nodes)
        for round_ in range(self.rounds):
            start = self.current
            for i in range(n):
                yield (start + i) % n, (ROUND_PAUSE_S * 2 ** (round_ - 1) if round_ and i == 0 else 0.0)

    def settle(self, response: httpx.Response, node: str, index: int, failures: list[str],
               problems: list[ProblemError]) -> tuple[Any, str] | None:
        """(answer, node) of a response, or None when its status sends the
        request on to the next node (noted in ``failures`` and ``problems``)."""
        if response.status_code in FAILOVER_STATUSES:
            try:
                self.answer(response, node)
            except ProblemError as exc:
                problems.append(exc)
            failures.append(f"{node}: {response.status_code}")
            return None
        self.current = index
        return self.answer(response, node), node

    @staticmethod
    def give_up(failures: list[str], problems: list[ProblemError]) -> WorkmeshError:
        """What to raise when no node gave an answer: the last node's problem, if any."""
        if problems:
            return problems[-1]
        return ConnectionFailed("no node answered: " + "; ".join(failures), failures)

    def timeout_for(self, request: Request) -> httpx.Timeout:
        read = self.timeout + (request.read_timeout_s or 0.0)
        return httpx.Timeout(self.timeout, read=read)

    def answer(self, response: httpx.Response, node: str) -> Any:
        """The JSON of a 2xx answer; raise the problem's exception otherwise."""
        if response.status_code < 400:
            return response.json() if response.content else None
        try:
            doc = response.json()
        except ValueError:
            doc = {}
        if not isinstance(doc, dict):
            doc = {}
        doc.setdefault("detail", response.reason_phrase)
        if response.status_code == 429 and "Retry-After" in response.headers:
            doc.setdefault("retry_after_s", response.headers["Retry-After"])
        raise problem_error(doc, response.status_code, node)

    @staticmethod
    def wait_request(job_id: str, remaining_s: float) -> Request:
        wait_s = max(0.0, min(WAIT_S_MAX, remaining_s))
        return Request("GET", f"/jobs/{job_id}?wait={wait_s:.3f}", read_timeout_s=wait_s)

    @staticmethod
    def list_request(status: str | None, after: str | None, limit: int) -> Request:
        params = {"limit": str(limit)}
        if status is not None:
            params["status"] = status
        if after is not None:
            params["after"] = after
        return Request("GET", "/jobs?" + httpx.QueryParams(params).__str__())

    @staticmethod
    def batch_answer(doc: Any, node: str) -> list[Job | ProblemError]:
        return [Job.from_json(e) if "id" in e else problem_error(e, int(e.get("status", 0)), node) for e in doc]


def _submit_request(job_type: str, payload: Any, max_attempts: int | None, timeout_seconds: float | None,
                    lease_seconds: float | None, idempotency_key: str | None) -> Request:
    key = idempotency_key or str(uuid.uuid4())
    body = _submit_body(job_type, payload, max_attempts, timeout_seconds, lease_seconds)
    return Request("POST", "/jobs", body, {"Idempotency-Key": key, "Content-Type": "application/json"})


def _cancel_request(job_id: str, reason: str | None) -> Request:
    return Request("POST", f"/jobs/{job_id}/cancel", {"reason": reason} if reason else None,
                   {"Content-Type": "application/json"})


def _upload_plan(plan: _Plan, source: Any) -> _Plan:
    """A path or bytes can be sent again to another node; a file object is read once."""
    if isinstance(source, (str, bytes, bytearray)) or hasattr(source, "__fspath__"):
        return plan
    return _Plan([plan.nodes[plan.current]], plan.token, plan.timeout, 1)


def _blob_call(plan: _Plan, call: Any) -> Any:
    """Run a streamed blob transfer ``call(base_url)`` at the current node,
    and at the next ones while a node cannot be reached (refused, reset,
    timed out). A node's own answer (404, 413, 507) is final."""
    failures: list[str] = []
    n = len(plan.nodes)
    for i in range(n):
        index = (plan.current + i) % n
        node = plan.nodes[index]
        try:
            out = call(node)
        except blobs_client.BlobError as exc:
            raise problem_error(exc.problem, exc.status, node) from None
        except OSError as exc:
            failures.append(f"{node}: {exc}")
            continue
        plan.current = index
        return out
    raise ConnectionFailed("no node could be reached for the blob transfer", failures)


# -- the blocking client ---------------------------------------------------------
class Client:
    """A blocking client of a workmesh mesh, failing over between the nodes given."""

    def __init__(self, nodes: str | Iterable[str], token: str | None = None, timeout: float = DEFAULT_TIMEOUT_S,
                 *, rounds: int = DEFAULT_ROUNDS, transport: httpx.BaseTransport | None = None) -> None:
        self._plan = _Plan(nodes, token, timeout, rounds)
        self._http = httpx.Client(headers=self._plan.headers, transport=transport)

    @property
    def nodes(self) -> list[str]:
        return list(self._plan.nodes)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _send(self, request: Request) -> tuple[Any, str]:
        failures: list[str] = []
        problems: list[ProblemError] = []
        for index, pause_s in self._plan.attempts():
            if pause_s:
                time.sleep(pause_s)
            node = self._plan.nodes[index]
            try:
                response = self._http.request(
                    request.method, node + request.path, json=request.body, headers=request.headers,
                    timeout=self._plan.timeout_for(request),
                )
            except httpx.TransportError as exc:
                failures.append(f"{node}: {type(exc).__name__}: {exc}")
                continue
            settled = self._plan.settle(response, node, index, failures, problems)
            if settled is not None:
                return settled
        raise self._plan.give_up(failures, problems)

    def submit(self, type: str, payload: Any, *, max_attempts: int | None = None,
               timeout_seconds: float | None = None, lease_seconds: float | None = None,
               idempotency_key: str | None = None) -> Job:
        """Submit a job; answered once a quorum of its replicas stored it."""
        doc, _ = self._send(_submit_request(type, payload, max_attempts, timeout_seconds, lease_seconds,
                                            idempotency_key))
        return Job.from_json(doc)

    def submit_many(self, specs: Iterable[Any]) -> list[Job | ProblemError]:
        """Submit several jobs in batch requests (``POST /jobs`` with an array).

        ``specs``: mappings with ``type``, ``payload`` and optional
        ``max_attempts``, ``timeout_seconds``, ``lease_seconds``,
        ``idempotency_key``; or ``(type, payload)`` pairs. Returns one entry
        per spec, in order: the :class:`Job`, or the :class:`ProblemError`
        that refused it (not raised: one bad spec does not sink the others).
        """
        out: list[Job | ProblemError] = []
        for batch in _batches([_spec_body(s) for s in specs]):
            doc, node = self._send(Request("POST", "/jobs", batch, {"Content-Type": "application/json"}))
            out.extend(self._plan.batch_answer(doc, node))
        return out

    def get(self, id: str, *, history: bool = False) -> Job:
        """The job; ``history=True`` adds its signed facts (``Job.history``)."""
        doc, _ = self._send(Request("GET", f"/jobs/{id}" + ("?history=1" if history else "")))
        return Job.from_json(doc)

    def wait(self, id: str, timeout: float | None) -> Job:
        """Long-poll until the job is terminal; raise :class:`WaitTimeout` after
        ``timeout`` seconds (``None``: no limit)."""
        deadline = time.monotonic() + (math.inf if timeout is None else timeout)
        while True:
            remaining = deadline - time.monotonic()
            doc, _ = self._send(self._plan.wait_request(id, remaining))
            job = Job.from_json(doc)
            if job.terminal:
                return job
            if deadline - time.monotonic() <= 0:
                raise WaitTimeout(f"job {id} is still {job.status} after {timeout} s", job)

    def cancel(self, id: str, reason: str | None = None) -> Job:
        """Cancel a job that is not terminal (Conflict if it is, unless it is cancelled already)."""
        try:
            doc, _ = self._send(_cancel_request(id, reason))
        except Conflict:
            job = self.get(id)  # a cancel resent after a failover finds its own work done
            if job.status == "cancelled":
                return job
            raise
        return Job.from_json(doc)

    def list(self, status: str | None = None, *, page_size: int = LIST_LIMIT_MAX) -> Iterator[Page]:
        """The jobs a node knows, one :class:`Page` (a list of jobs) at a time."""
        after = None
        while True:
            doc, node = self._send(self._plan.list_request(status, after, page_size))
            yield Page((Job.from_json(j) for j in doc["jobs"]), doc.get("next"), node)
            after = doc.get("next")
            if not after:
                return

    def put_blob(self, source: Any, *, progress: Any = None) -> dict:
        """Upload a path, bytes or binary file object, streamed: ``{"hash", "size"}``.
        A file object is read once, so it is not resent to another node."""
        return _blob_call(_upload_plan(self._plan, source), lambda node: blobs_client.put_blob(node, source, token=self._plan.token, progress=progress))

    def get_blob(self, hash: str, dest: Any = None, *, byte_range: tuple[int, int] | None = None,
                 progress: Any = None) -> int | bytes:
        """Download a blob, streamed, into ``dest`` (a path or binary file
        object: the byte count) or, without ``dest``, as bytes."""
        return _blob_call(self._plan, lambda node: blobs_client.get_blob(
            node, hash, dest, byte_range=byte_range, progress=progress))

    def status(self) -> dict:
        """The status document of the node the client talks to."""
        doc, _ = self._send(Request("GET", "/status"))
        return doc


# -- the asyncio client ----------------------------------------------------------
class AsyncClient:
    """:class:`Client` with ``async`` methods (``list`` is an async iterator of pages)."""

    def __init__(self, nodes: str | Iterable[str], token: str | None = None, timeout: float = DEFAULT_TIMEOUT_S,
                 *, rounds: int = DEFAULT_ROUNDS, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._plan = _Plan(nodes, token, timeout, rounds)
        self._http = httpx.AsyncClient(headers=self._plan.headers, transport=transport)

    @property
    def nodes(self) -> list[str]:
        return list(self._plan.nodes)

    async def put_blob(self, source: Any, *, progress: Any = None) -> dict:
        """:meth:`Client.put_blob`, streamed in a worker thread."""
        return await asyncio.to_thread(
            _blob_call, _upload_plan(self._plan, source), lambda node: blobs_client.put_blob(node, source, token=self._plan.token, progress=progress))

    async def get_blob(self, hash: str, dest: Any = None, *, byte_range: tuple[int, int] | None = None,
                       progress: Any = None) -> int | bytes:
        """:meth:`Client.get_blob`, streamed in a worker thread."""
        return await asyncio.to_thread(_blob_call, self._plan, lambda node: blobs_client.get_blob(
            node, hash, dest, byte_range=byte_range, progress=progress))

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _send(self, request: Request) -> tuple[Any, str]:
        failures: list[str] = []
        problems: list[ProblemError] = []
        for index, pause_s in self._plan.attempts():
            if pause_s:
                await asyncio.sleep(pause_s)
            node = self._plan.nodes[index]
            try:
                response = await self._http.request(
                    request.method, node + request.path, json=request.body, headers=request.headers,
                    timeout=self._plan.timeout_for(request),
                )
            except httpx.TransportError as exc:
                failures.append(f"{node}: {type(exc).__name__}: {exc}")
                continue
            settled = self._plan.settle(response, node, index, failures, problems)
            if settled is not None:
                return settled
        raise self._plan.give_up(failures, problems)

    async def submit(self, type: str, payload: Any, *, max_attempts: int | None = None,
                     timeout_seconds: float | None = None, lease_seconds: float | None = None,
                     idempotency_key: str | None = None) -> Job:
        doc, _ = await self._send(_submit_request(type, payload, max_attempts, timeout_seconds, lease_seconds,
                                                  idempotency_key))
        return Job.from_json(doc)

    async def submit_many(self, specs: Iterable[Any]) -> list[Job | ProblemError]:
        out: list[Job | ProblemError] = []
        for batch in _batches([_spec_body(s) for s in specs]):
            doc, node = await self._send(Request("POST", "/jobs", batch, {"Content-Type": "application/json"}))
            out.extend(self._plan.batch_answer(doc, node))
        return out

    async def get(self, id: str, *, history: bool = False) -> Job:
        doc, _ = await self._send(Request("GET", f"/jobs/{id}" + ("?history=1" if history else "")))
        return Job.from_json(doc)

    async def wait(self, id: str, timeout: float | None) -> Job:
        deadline = time.monotonic() + (math.inf if timeout is None else timeout)
        while True:
            remaining = deadline - time.monotonic()
            doc, _ = await self._send(self._plan.wait_request(id, remaining))
            job = Job.from_json(doc)
            if job.terminal:
                return job
            if deadline - time.monotonic() <= 0:
                raise WaitTimeout(f"job {id} is still {job.status} after {timeout} s", job)

    async def cancel(self, id: str, reason: str | None = None) -> Job:
        try:
            doc, _ = await self._send(_cancel_request(id, reason))
        except Conflict:
            job = await self.get(id)
            if job.status == "cancelled":
                return job
            raise
        return Job.from_json(doc)

    async def list(self, status: str | None = None, *, page_size: int = LIST_LIMIT_MAX) -> AsyncIterator[Page]:
        after = None
        while True:
            doc, node = await self._send(self._plan.list_request(status, after, page_size))
            yield Page((Job.from_json(j) for j in doc["jobs"]), doc.get("next"), node)
            after = doc.get("next")
            if not after:
                return

    async def status(self) -> dict:
        doc, _ = await self._send(Request("GET", "/status"))
        return doc


__all__ = [
    "Client", "AsyncClient", "Job", "Page", "WorkmeshError", "ProblemError", "ConnectionFailed", "WaitTimeout",
    "BadRequest", "Unauthorized", "JobNotFound", "NotFound", "MethodNotAllowed", "RequestTimeout", "Conflict",
    "PayloadTooLarge", "UnsupportedMediaType", "ValidationFailed", "UnknownJobType", "IdempotencyKeyReused",
    "InvalidFact", "RateLimited", "ServerError", "QuorumUnavailable", "NotReady", "BlobNotFound",
    "InsufficientStorage",
]
