"""The live dashboard every node serves at ``/ui/``: static files, a few JSON
reads made for it, and a Server-Sent Events stream.

- ``GET /`` redirects a browser (an ``Accept`` that prefers ``text/html``) to
  ``/ui/``; other clients get a small JSON index of the node's endpoints.
- ``GET /ui/`` and ``GET /ui/{file}``: the page, shipped in the package
  (``api/ui/``), no build step, no third-party request (the CSP forbids any).
- ``GET /ui/api/node``: this node: identity, load, job counts, flow series,
  p50/p95, store budget, routing table, counters (from ``/status``).
- ``GET /ui/api/nodes``: this node and the peers it knows, with liveness and
  load (peers answer a ``node_info`` query over the DHT: node/insight.py).
- ``GET /ui/api/jobs?q=&status=&limit=&after=``: jobs this node indexes,
  newest first, searched by id, type, worker or submitter.
- ``GET /ui/api/jobs/{id}``: a job with its payload and its signed history,
  re-verified and explained (api/audit.py); works on any node.
- ``GET /ui/events``: the stream (``tick`` every second, ``nodes`` every two,
  ``jobs`` when jobs changed here).

These are the page's own reads, not the versioned REST API: OpenAPI does not
list them (see ``is_ui_route``). All are reads, open like every GET; the page
sends the API token only with the writes it makes (``POST /jobs``).
"""

from __future__ import annotations

import asyncio
import json
from collections import OrderedDict
from importlib import resources
from typing import Any

import structlog
from aiohttp import web
from workmesh.node.errors import BadRequest, RateLimited

from workmesh.api import audit, validation
from workmesh.api.service import STATUSES, JobService

TICK_S = 1.0
NODES_EVERY_TICKS = 2
STREAM_CLIENTS_MAX = 32  # open event streams per node; more are answered 503
CHANGES_PER_TICK_MAX = 200  # job changes a stream sends per tick (the rest counted as dropped)
FLOW_TAIL_S = 5  # seconds of flow each tick repeats (a late tick cannot leave a hole)
SEARCH_SCAN_MAX = 50_000  # index entries one search looks at, at most
PAGE_LIMIT_MAX = 100
RETRY_MS = 2000  # the browser reconnects this long after a stream broke (a node restart)
STATIC_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
UI_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

HUB = web.AppKey("workmesh.dashboard_hub", "EventHub")
STATIC = web.AppKey("workmesh.dashboard_static", dict)
AUTH = web.AppKey("workmesh.dashboard_auth", bool)
_SERVICE = web.AppKey("workmesh.dashboard_service", JobService)


def is_ui_route(path: str) -> bool:
    """Routes of the dashboard (left out of the OpenAPI document)."""
    return path == "/" or path == "/ui" or path.startswith("/ui/")


def prefers_html(accept: str) -> bool:
    """Does an ``Accept`` header rank ``text/html`` above ``application/json``?"""
    best = {"html": 0.0, "json": 0.0}
    for part in accept.split(","):
        media, *params = (p.strip() for p in part.split(";"))
        q = 1.0
        for p in params:
            name, _, value = p.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        media = media.lower()
        if media == "text/html":
            best["html"] = max(best["html"], q)
        if media in ("application/json", "application/*", "*/*"):
            best["json"] = max(best["json"], q)
    return best["html"] > best["json"]


# -- the event hub ------------------------------------------------------------


class _Stream:
    __slots__ = ("changes", "dropped")

    def __init__(self) -> None:
        self.changes: OrderedDict[str, tuple[str, str]] = OrderedDict()
        self.dropped = 0


class EventHub:
    """Fans job changes out to open streams; polls peers while any is open."""

    def __init__(self, insight: Any, logger: Any) -> None:
        self.insight = insight
        self.log = logger
        self.streams: set[_Stream] = set()
        self.closing = asyncio.Event()
        self._poller: asyncio.Task | None = None
        self._tick_cache: tuple[float, dict] | None = None
        if insight is not None:
            insight.change_listeners.append(self._on_change)

    def _on_change(self, job_id: bytes, status: str, previous: str) -> None:
        key = job_id.hex()
        for s in self.streams:
            if key in s.changes or len(s.changes) < CHANGES_PER_TICK_MAX:
                s.changes[key] = (status, previous)
            else:
                s.dropped += 1

    def open(self) -> _Stream:
        stream = _Stream()
        self.streams.add(stream)
        if self.insight is not None and (self._poller is None or self._poller.done()):
            self._poller = asyncio.get_running_loop().create_task(self._poll_peers(), name="dashboard-peers")
        return stream

    def close(self, stream: _Stream) -> None:
        self.streams.discard(stream)
        if not self.streams and self._poller is not None:
            self._poller.cancel()
            self._poller = None

    async def _poll_peers(self) -> None:
        while self.streams and not self.closing.is_set():
            try:
                await self.insight.refresh_peers()
            except Exception as exc:  # a bug here must not end the page's updates; it is logged
                self.log.exception("dashboard.peer_poll_failed", error=repr(exc))
            await asyncio.sleep(TICK_S)

    async def shutdown(self) -> None:
        self.closing.set()
        if self._poller is not None:
            self._poller.cancel()
            await asyncio.gather(self._poller, return_exceptions=True)
            self._poller = None

    def tick(self, service: JobService) -> dict[str, Any]:
        """The per-second document, computed once per tick for all streams."""
        loop_now = asyncio.get_running_loop().time()
        if self._tick_cache is not None and loop_now - self._tick_cache[0] < TICK_S / 2:
            return self._tick_cache[1]
        doc = node_summary(service, self.insight, flow_seconds=FLOW_TAIL_S)
        self._tick_cache = (loop_now, doc)
        return doc


# -- documents ----------------------------------------------------------------


def node_summary(service: JobService, insight: Any, *, flow_seconds: int | None = None) -> dict[str, Any]:
    """What changes every second: load, counts, flow, latency, store."""
    status = service.status()
    counts = status.get("jobs")
    counts = counts if isinstance(counts, dict) else {}
    doc: dict[str, Any] = {
        "node_id": status.get("node_id"),
        "jobs": counts,
        "queue_depth": counts.get("pending", 0),
        "workers": status.get("workers"),
        "uptime_seconds": status.get("uptime_seconds"),
        "flow": None,
        "latency": None,
        "store": None,
    }
    if insight is not None:
        node = insight.node
        doc["flow"] = insight.flow.series(node.clock.wall_ms() / 1000, flow_seconds)
        doc["latency"] = insight.flow.latency(node.clock.monotonic())
        doc["store"] = insight.store_budget()
    return doc


def _sse(event: str, data: Any) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


# -- handlers -----------------------------------------------------------------


async def root(request: web.Request) -> web.Response:
    if prefers_html(request.headers.get("Accept", "")):
        raise web.HTTPFound("/ui/", headers={"Vary": "Accept"})
    return web.json_response(
        {"name": "workmesh", "ui": "/ui/", "status": "/status", "openapi": "/openapi.json", "metrics": "/metrics"},
        headers={"Vary": "Accept"},
    )


async def ui_redirect(request: web.Request) -> web.Response:
    raise web.HTTPMovedPermanently("/ui/")


async def static_file(request: web.Request) -> web.Response:
    name = request.match_info.get("name") or "index.html"
    found = request.app[STATIC].get(name)
    if found is None:
        raise web.HTTPNotFound()
    body, ctype = found
    return web.Response(body=body, content_type=ctype, charset="utf-8", headers=UI_HEADERS)


def _insight(request: web.Request) -> Any:
    return request.app[HUB].insight


async def node_doc(request: web.Request) -> web.Response:
    service = request.app[_SERVICE]
    insight = _insight(request)
    status = service.status()
    doc = node_summary(service, insight)
    doc.update(
        node=insight.own_info() if insight is not None else {"node_id": status.get("node_id"),
                                                              "version": status.get("version")},
        routing=insight.routing_table() if insight is not None else None,
        counters={k: status.get(k) for k in ("dht", "gossip", "leases", "jobs_api", "derive_cache", "crypto")},
        replication=status.get("replication"),
        job_types=sorted(service.job_types),
        auth=request.app[AUTH],
        tick_s=TICK_S,
    )
    if insight is not None:
        doc["liveness_s"] = insight.liveness_s
    return web.json_response(doc)


async def nodes_doc(request: web.Request) -> web.Response:
    insight = _insight(request)
    if insight is None:
        status = request.app[_SERVICE].status()
        return web.json_response({"nodes": [{"node_id": status.get("node_id"), "liveness": "self"}]})
    await insight.refresh_peers()
    return web.json_response({"nodes": insight.nodes()})


def _search_query(query: Any) -> tuple[str, str | None, int, str | None]:
    q = query.get("q", "").strip().lower()[:64]
    status = query.get("status") or None
    if status is not None and status not in STATUSES:
        raise BadRequest(f"status: must be one of {', '.join(STATUSES)}")
    try:
        limit = int(query.get("limit", "25"))
    except ValueError:
        raise BadRequest(f"limit: must be an integer in 1..{PAGE_LIMIT_MAX}") from None
    if not 1 <= limit <= PAGE_LIMIT_MAX:
        raise BadRequest(f"limit: must be an integer in 1..{PAGE_LIMIT_MAX}")
    after = query.get("after") or None
    if after is not None:
        validation.parse_job_id(after)
    return q, status, limit, after


async def jobs_doc(request: web.Request) -> web.Response:
    q, status, limit, after = _search_query(request.query)
    insight = _insight(request)
    if insight is None:  # a service without an index to search: its own list, filtered
        views, nxt = request.app[_SERVICE].list_jobs(status, limit, after)
        jobs = [v.to_json() for v in views if not q or q in v.id or q in v.type.lower()]
        return web.json_response({"jobs": jobs, "next": nxt, "scanned": len(views)})
    views, nxt, scanned = insight.search_jobs(q, status, limit, after, SEARCH_SCAN_MAX)
    return web.json_response({"jobs": [v.to_json() for v in views], "next": nxt, "scanned": scanned})


async def job_doc(request: web.Request) -> web.Response:
    job_id = validation.parse_job_id(request.match_info["id"])
    view = await request.app[_SERVICE].get(job_id, history=True)
    timeline = audit.annotate(view.history or [], job_id)
    submit = next((f for f in timeline if f.get("kind") == "submit" and f.get("signature_ok")), None)
    doc = view.to_json()
    doc.pop("history", None)
    status = request.app[_SERVICE].status()
    return web.json_response({
        "job": doc,
        "payload": submit.get("payload") if submit else None,
        "spec": submit.get("spec") if submit else None,
        "timeline": timeline,
        "replicas": audit.replica_summary(timeline),
        "read_by": status.get("node_id"),
    })


async def events(request: web.Request) -> web.StreamResponse:
    hub: EventHub = request.app[HUB]
    service = request.app[_SERVICE]
    if len(hub.streams) >= STREAM_CLIENTS_MAX:
        raise RateLimited(f"at most {STREAM_CLIENTS_MAX} dashboard streams at once; try again later", RETRY_MS / 1000)
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                       "X-Accel-Buffering": "no"})
    await resp.prepare(request)
    stream = hub.open()
    try:
        await resp.write(f"retry: {RETRY_MS}\n\n".encode())
        ticks = 0
        while not hub.closing.is_set():
            tick = dict(hub.tick(service))
            if stream.changes or stream.dropped:
                changes = [{"id": k, "status": s, "previous": p or None} for k, (s, p) in stream.changes.items()]
                tick["changes"], tick["changes_dropped"] = changes, stream.dropped
                stream.changes, stream.dropped = OrderedDict(), 0
            await resp.write(_sse("tick", tick))
            if ticks % NODES_EVERY_TICKS == 0 and hub.insight is not None:
                await resp.write(_sse("nodes", {"nodes": hub.insight.nodes()}))
            ticks += 1
            try:
                await asyncio.wait_for(hub.closing.wait(), TICK_S)
            except TimeoutError:
                pass
    except (ConnectionResetError, ConnectionError, asyncio.CancelledError):
        pass
    finally:
        hub.close(stream)
    return resp


def _load_static() -> dict[str, tuple[bytes, str]]:
    files: dict[str, tuple[bytes, str]] = {}
    folder = resources.files("workmesh.api") / "ui"
    for entry in folder.iterdir():
        ext = "." + entry.name.rpartition(".")[2]
        if entry.is_file() and ext in STATIC_TYPES:
            files[entry.name] = (entry.read_bytes(), STATIC_TYPES[ext])
    return files


def setup(app: web.Application, service: JobService, *, auth: bool, logger: Any = None) -> None:
    """Add the dashboard's routes to ``app`` (after the API's)."""
    insight = getattr(service, "insight", None)
    app[_SERVICE] = service
    app[AUTH] = auth
    app[STATIC] = _load_static()
    app[HUB] = hub = EventHub(insight, logger if logger is not None else structlog.get_logger("workmesh.dashboard"))

    async def on_shutdown(_app: web.Application) -> None:
        await hub.shutdown()

    app.on_shutdown.append(on_shutdown)
    app.router.add_get("/", root)
    app.router.add_get("/ui", ui_redirect)
    app.router.add_get("/ui/", static_file)
    app.router.add_get("/ui/events", events)
    app.router.add_get("/ui/api/node", node_doc)
    app.router.add_get("/ui/api/nodes", nodes_doc)
    app.router.add_get("/ui/api/jobs", jobs_doc)
    app.router.add_get("/ui/api/jobs/{id}", job_doc)
    app.router.add_get("/ui/{name}", static_file)
