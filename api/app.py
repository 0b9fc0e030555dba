"""The aiohttp application every workmesh node serves: a thin shell.

Handlers read the request, hand its bytes and strings to the pure parsers in
``api/validation.py``, call the node through ``JobService`` and write JSON.
They never build an error response themselves: they raise, and
``api/errors.py`` answers. Middleware order (outermost first): errors, then
the limits of ``api/limits.py`` (Host check, rate limit, long-poll caps), so a
403, 429 or 503 is a problem document like any other.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from typing import Any

import prometheus_client
import structlog
from aiohttp import web
from workmesh.node.errors import BadRequest, JobNotFound, QuorumUnavailable, Unauthorized, WorkmeshError

from workmesh.api import dashboard, validation
from workmesh.api.errors import error_middleware, problem_document
from workmesh.api.httpmetrics import metrics_middleware
from workmesh.api.openapi import build_spec, render_yaml
from workmesh.api.limits import CappedTCPSite, RequestLimits, RestLimits, limits_middleware
from workmesh.contract import TERMINAL_STATUSES, JobService

SERVICE = web.AppKey("workmesh.service", JobService)
API_TOKEN = web.AppKey("workmesh.api_token", bytes)  # BLAKE2b-256 of the token, see _check_token
BODY_TIMEOUT_S = web.AppKey("workmesh.body_timeout_s", float)
REQUEST_LIMITS = web.AppKey("workmesh.request_limits", RequestLimits)
_SPEC_CACHE = web.AppKey("workmesh.spec_cache", dict)

# Connection limits (see run_api): a client that has not sent a complete
# request head this long after connecting (or after its previous response) is
# disconnected; a body must arrive within BODY_READ_TIMEOUT_S; a request line
# or one header at most HEADER_LINE_BYTES_MAX bytes, at most HEADERS_MAX headers.
IDLE_TIMEOUT_S = 15.0
BODY_READ_TIMEOUT_S = 10.0
HEADER_LINE_BYTES_MAX = 8190
HEADERS_MAX = 64
# Seconds to drain an unread body before closing after an error answer.
LINGER_S = 2.0

# Prometheus text format 0.0.4: what ``generate_latest`` writes.
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_JSON_TYPES = ("application/json",)


def _token_digest(token: bytes) -> bytes:
    return hashlib.blake2b(token, digest_size=32, person=b"workmesh-api").digest()


def _check_token(request: web.Request) -> None:
    """Writes need ``Authorization: Bearer <token>`` when the node has a token."""
    token = request.app.get(API_TOKEN)
    if token is None:
        return
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    given_b = given.strip().encode("utf-8", "surrogateescape")
    # Compare fixed-length digests in constant time, even on a wrong scheme:
    # the answer's timing says nothing about the token, not even its length.
    if not (hmac.compare_digest(_token_digest(given_b), token) and scheme.lower() == "bearer"):
        raise Unauthorized("Authorization: a valid 'Bearer <token>' is required for writes")


async def _read_json_body(request: web.Request) -> bytes:
    """The raw body; a non-empty one must claim to be JSON (or claim nothing).

    An empty body's Content-Type is ignored: clients send all sorts with a
    bare ``POST .../cancel``.
    """
    try:
        async with asyncio.timeout(request.app[BODY_TIMEOUT_S]):
            raw = await request.read()  # raises 413 past client_max_size
    except TimeoutError:
        raise web.HTTPRequestTimeout(reason="the request body did not arrive in time") from None
    if raw and request.headers.get("Content-Type"):
        ctype = request.content_type
        if ctype not in _JSON_TYPES and not ctype.endswith("+json"):
            raise web.HTTPUnsupportedMediaType(reason="Content-Type must be application/json")
    return raw


async def submit_job(request: web.Request) -> web.Response:
    _check_token(request)
    service = request.app[SERVICE]
    key = validation.parse_idempotency_key(request.headers.get("Idempotency-Key"))
    wait_s = validation.parse_wait(request.query)
    raw = await _read_json_body(request)
    doc = validation.parse_json_body(raw)
    if isinstance(doc, list):
        return await _submit_batch(service, doc, key, wait_s)
    req = validation.parse_submit(doc, service.job_types)
    view = await _submit_one(service, req, key)
    if wait_s > 0 and view.status not in TERMINAL_STATUSES:
        # Submit and wait in one request. The job is accepted whatever the
        # wait brings: a read that fails now still answers 202 with the view.
        try:
            view = await service.get(bytes.fromhex(view.id), wait_s=wait_s)
        except (JobNotFound, QuorumUnavailable):
            pass
    status = 200 if view.status in TERMINAL_STATUSES else 202
    return web.json_response(view.to_json(), status=status, headers={"Location": f"/jobs/{view.id}"})


async def _submit_one(service: JobService, req: Any, key: str | None) -> Any:
    """Submit one parsed job spec (a single submit, or one item of a batch)."""
    return await service.submit(
        req.job_type,
        req.payload,
        max_attempts=req.max_attempts,
        lease_seconds=req.lease_seconds,
        timeout_seconds=req.timeout_seconds,
        idempotency_key=key,
    )


async def _submit_batch(service: JobService, doc: list, key: str | None, wait_s: float) -> web.Response:
    """``POST /jobs`` with an array: 202 and one entry per job spec, in order,
    each the job (as a single submit answers) or a problem document (docs/api.md)."""
    if wait_s > 0:
        raise BadRequest("wait: not with a batch; wait on each job with GET /jobs/{id}?wait=")
    items = validation.parse_batch(doc, service.job_types, key)

    async def one(item: validation.BatchItem) -> dict:
        if item.error is not None:
            return problem_document(item.error)
        req = item.request
        try:
            view = await _submit_one(service, req, item.idempotency_key)
        except WorkmeshError as exc:
            return problem_document(exc)
        return view.to_json()

    return web.json_response(list(await asyncio.gather(*(one(item) for item in items))), status=202)


async def get_job(request: web.Request) -> web.Response:
    job_id = validation.parse_job_id(request.match_info["id"])
    wait_s, history = validation.parse_get_query(request.query)
    view = await request.app[SERVICE].get(job_id, wait_s=wait_s, history=history)
    return web.json_response(view.to_json())


async def cancel_job(request: web.Request) -> web.Response:
    _check_token(request)
    job_id = validation.parse_job_id(request.match_info["id"])
    reason = validation.parse_cancel(await _read_json_body(request))
    view = await request.app[SERVICE].cancel(job_id, reason)
    return web.json_response(view.to_json())


async def list_jobs(request: web.Request) -> web.Response:
    status, limit, after = validation.parse_list_query(request.query)
    service = request.app[SERVICE]
    if validation.parse_scope(request.query) == "mesh":
        if after is not None:
            raise BadRequest("after: a mesh-wide list is one page; ask with a larger limit")
        return web.json_response(await service.list_mesh_jobs(status, limit))
    await _refresh_own(service)
    try:
        views, cursor = request.app[SERVICE].list_jobs(status, limit, after)
    except ValueError:
        # The cursor is opaque to us; a service that cannot decode one it never
        # issued must not turn a client's typo into a 500.
        if after is None:
            raise
        raise BadRequest("after: not a cursor issued by this node") from None
    return web.json_response({"jobs": [v.to_json() for v in views], "next": cursor})


async def _refresh_own(service: JobService) -> None:
    """Jobs this node accepted or ran but holds no current copy of are read
    again first (a service without them has no ``refresh_own``)."""
    refresh = getattr(service, "refresh_own", None)
    if refresh is not None:
        await refresh()


async def node_status(request: web.Request) -> web.Response:
    await _refresh_own(request.app[SERVICE])
    return web.json_response({**request.app[SERVICE].status(), "rest": request.app[REQUEST_LIMITS].statistics()})


async def metrics(request: web.Request) -> web.Response:
    body = prometheus_client.generate_latest(request.app[SERVICE].metrics_registry())
    return web.Response(body=body, headers={"Content-Type": METRICS_CONTENT_TYPE})


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


def current_spec(app: web.Application) -> dict:
    """The OpenAPI document for this app now (job types may change as the mesh does)."""
    job_types = frozenset(app[SERVICE].job_types)
    cache = app[_SPEC_CACHE]
    if cache.get("job_types") != job_types:
        spec = build_spec(auth=API_TOKEN in app, job_types=job_types)
        cache.update(job_types=job_types, spec=spec, yaml=render_yaml(spec))
    return cache


async def openapi_json(request: web.Request) -> web.Response:
    return web.json_response(current_spec(request.app)["spec"])


async def openapi_yaml(request: web.Request) -> web.Response:
    return web.Response(text=current_spec(request.app)["yaml"], content_type="application/yaml")


def create_app(
    service: JobService,
    *,
    api_token: str | None,
    max_body_bytes: int = 65536,
    rate_limit_per_s: float | None = None,
    rate_burst: int = 100,
    body_timeout_s: float = BODY_READ_TIMEOUT_S,
    logger: Any = None,
    limits: RestLimits | None = None,
) -> web.Application:
    """Build the node's REST application around ``service``.

    ``api_token`` set (non-empty): POST endpoints need it as a bearer token
    (reads stay open). ``limits`` (api/limits.py; default: its defaults with
    ``rate_limit_per_s`` and ``rate_burst``): Host check, per-client rate
    limit, long-poll caps. A body that takes longer than ``body_timeout_s`` to
    arrive is answered 408.
    """
    if max_body_bytes < 1 or not body_timeout_s > 0:
        raise ValueError("max_body_bytes and body_timeout_s must be positive")
    logger = logger if logger is not None else structlog.get_logger("workmesh.api")
    limited = RequestLimits(limits or RestLimits(rate_per_s=rate_limit_per_s, rate_burst=rate_burst))
    middlewares = [error_middleware(logger), limits_middleware(limited)]
    observe = getattr(getattr(service, "metrics", None), "observe_http", None)
    if observe is not None:  # outermost: it sees the code the client got
        middlewares.insert(0, metrics_middleware(observe))
    app = web.Application(client_max_size=max_body_bytes, middlewares=middlewares)
    app[REQUEST_LIMITS] = limited
    app[SERVICE] = service
    app[_SPEC_CACHE] = {}
    app[BODY_TIMEOUT_S] = float(body_timeout_s)
    if api_token:  # "" counts as unset, as the CLI reads an empty WORKMESH_API_TOKEN
        app[API_TOKEN] = _token_digest(api_token.encode("utf-8"))
    app.router.add_post("/jobs", submit_job)
    app.router.add_get("/jobs", list_jobs)
    app.router.add_get("/jobs/{id}", get_job)
    app.router.add_post("/jobs/{id}/cancel", cancel_job)
    app.router.add_get("/status", node_status)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/openapi.json", openapi_json)
    app.router.add_get("/openapi.yaml", openapi_yaml)
    dashboard.setup(app, service, auth=API_TOKEN in app, logger=logger)  # /ui/ and / (docs/operations.md, "Dashboard")
    from workmesh.api import blobs as blobs_api  # POST /blobs, GET /blobs/{hash}

    blobs_api.register(app)
    return app


async def run_api(
    app: web.Application,
    host: str,
    port: int,
    *,
    idle_timeout_s: float = IDLE_TIMEOUT_S,
    header_line_bytes_max: int = HEADER_LINE_BYTES_MAX,
    headers_max: int = HEADERS_MAX,
    connections_max: int | None = None,
) -> web.AppRunner:
    """Start serving ``app`` on ``host:port`` (port 0 picks one: see ``runner.addresses``).

    Slow and idle connections: aiohttp arms its keep-alive timer when a
    connection opens and after each response, and closes the connection if no
    complete request head arrived by then; so ``idle_timeout_s`` bounds both an
    idle connection and one that dribbles its headers (slowloris). Oversized
    request lines or headers are answered 400 by the parser, before any handler.
    Past ``connections_max`` open connections (default: the app's limits), a
    new one is answered 503 and closed (api/limits.py).

    The caller owns the runner and must ``await runner.cleanup()``.
    """
    if not idle_timeout_s > 0:
        raise ValueError("idle_timeout_s must be positive")
    runner = web.AppRunner(
        app,
        keepalive_timeout=idle_timeout_s,
        max_line_size=header_line_bytes_max,
        max_field_size=header_line_bytes_max,
        max_headers=headers_max,
        lingering_time=LINGER_S,
    )
    await runner.setup()
    try:
        limited = app[REQUEST_LIMITS]
        site = CappedTCPSite(runner, host, port, connections_max=connections_max or limited.limits.connections_max)
        await site.start()
        limited.connection_cap = site.cap
    except BaseException:
        await runner.cleanup()
        raise
    return runner


__all__ = ["create_app", "run_api", "current_spec", "METRICS_CONTENT_TYPE", "SERVICE"]
