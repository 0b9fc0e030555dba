"""api/: the REST layer, served for real (aiohttp TestServer on 127.0.0.1) over a dict-backed fake node.

Every response that goes through :func:`call` is also checked against the
OpenAPI document the app serves: the status must be documented for the
operation, the content type must match, declared headers must be present and
the JSON body must validate against the schema (a small validator for the
subset of JSON Schema the document uses).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import prometheus_client
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from workmesh.api import validation
from workmesh.api.app import METRICS_CONTENT_TYPE, create_app
from workmesh.api.dashboard import is_ui_route
from workmesh.api.openapi import REFERENCE_HEADER, build_spec, render_yaml
from workmesh.api.ratelimit import TokenBuckets
from workmesh.api.service import TERMINAL_STATUSES, JobService, JobView
from workmesh.node.errors import BadRequest, Conflict, JobNotFound, QuorumUnavailable, WorkmeshError

TOKEN = "s3cret-token"
UNKNOWN_ID = "ab" * 20


# --------------------------------------------------------------------------
# A fake node


class FakeService:
    """Dict-backed JobService that records what the API passed it."""

    job_types = frozenset({"echo", "sleep"})

    def __init__(self) -> None:
        self.jobs: dict[bytes, JobView] = {}
        self.calls: list[tuple] = []
        self.by_key: dict[str, bytes] = {}
        self.raise_next: BaseException | None = None
        self.registry = prometheus_client.CollectorRegistry()
        self.submitted = prometheus_client.Counter("workmesh_jobs_submitted", "Jobs accepted", registry=self.registry)

    def _maybe_raise(self) -> None:
        if self.raise_next is not None:
            exc, self.raise_next = self.raise_next, None
            raise exc

    async def submit(self, job_type, payload, *, max_attempts, lease_seconds, timeout_seconds, idempotency_key):
        self.calls.append(("submit", job_type, payload, max_attempts, lease_seconds, timeout_seconds, idempotency_key))
        self._maybe_raise()
        if idempotency_key in self.by_key:
            return self.jobs[self.by_key[idempotency_key]]
        job_id = hashlib.blake2b(f"{len(self.jobs)}:{job_type}".encode(), digest_size=20).digest()
        view = JobView(
            id=job_id.hex(), type=job_type, status="pending", attempts=0, max_attempts=max_attempts or 3,
            result=None, error=None, worker=None, submitted_by="cd" * 32, created_ms=1_700_000_000_000,
            last_error=None,
        )
        self.jobs[job_id] = view
        if idempotency_key:
            self.by_key[idempotency_key] = job_id
        self.submitted.inc()
        return view

    async def get(self, job_id, *, wait_s=0.0, history=False):
        self.calls.append(("get", job_id, wait_s, history))
        self._maybe_raise()
        if job_id not in self.jobs:
            raise JobNotFound(f"no job {job_id.hex()}")
        view = self.jobs[job_id]
        if history:
            fact = {"kind": "submit", "author": view.submitted_by, "attempt": 0, "ts_ms": view.created_ms,
                    "fact_id": "ef" * 32, "raw_b64": "AAEC"}
            view = replace(view, history=[fact])
        return view

    async def cancel(self, job_id, reason):
        self.calls.append(("cancel", job_id, reason))
        self._maybe_raise()
        if job_id not in self.jobs:
            raise JobNotFound(f"no job {job_id.hex()}")
        if self.jobs[job_id].status in TERMINAL_STATUSES:
            raise Conflict(f"job is already {self.jobs[job_id].status}")
        self.jobs[job_id] = replace(self.jobs[job_id], status="cancelled", error=reason or "cancelled")
        return self.jobs[job_id]

    def list_jobs(self, status, limit, after):
        self.calls.append(("list", status, limit, after))
        self._maybe_raise()
        if after is not None and not re.fullmatch(r"[0-9a-f]{40}", after):
            raise BadRequest("after: not a cursor of this node")
        views = sorted((v for v in self.jobs.values() if status in (None, v.status)), key=lambda v: v.id)
        views = [v for v in views if after is None or v.id > after]
        page = views[:limit]
        return page, (page[-1].id if len(views) > limit else None)

    def status(self):
        self._maybe_raise()
        return {"node_id": "12" * 20, "peers": 4, "jobs": len(self.jobs)}

    def metrics_registry(self):
        return self.registry


class RecordingLogger:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict]] = []

    def exception(self, event: str, **kw: Any) -> None:
        self.events.append((event, kw))


# --------------------------------------------------------------------------
# A small JSON Schema validator for the subset the OpenAPI document uses


def deref(spec: dict, node: dict) -> dict:
    while "$ref" in node:
        target: Any = spec
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


_JSON_TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}


def schema_errors(spec: dict, schema: dict, value: Any, where: str = "$") -> list[str]:
    schema = deref(spec, schema)
    errs: list[str] = []
    types = schema.get("type")
    if types is not None:
        types = [types] if isinstance(types, str) else types
        if not any(_JSON_TYPES[t](value) for t in types):
            return [f"{where}: {value!r} is not {types}"]
    if "enum" in schema and value not in schema["enum"]:
        errs.append(f"{where}: {value!r} not in {schema['enum']}")
    if "const" in schema and value != schema["const"]:
        errs.append(f"{where}: {value!r} != {schema['const']!r}")
    if isinstance(value, str):
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errs.append(f"{where}: {value!r} does not match {schema['pattern']}")
        if len(value) > schema.get("maxLength", len(value)) or len(value) < schema.get("minLength", 0):
            errs.append(f"{where}: length of {value!r} out of bounds")
    if _JSON_TYPES["number"](value):
        if value < schema.get("minimum", value) or value > schema.get("maximum", value):
            errs.append(f"{where}: {value!r} out of range")
    if isinstance(value, dict):
        for name in schema.get("required", []):
            if name not in value:
                errs.append(f"{where}: missing {name}")
        props = schema.get("properties", {})
        for name, item in value.items():
            if name in props:
                errs += schema_errors(spec, props[name], item, f"{where}.{name}")
            elif schema.get("additionalProperties", True) is False:
                errs.append(f"{where}: unexpected property {name}")
    if "oneOf" in schema:
        matching = [alt for alt in schema["oneOf"] if not schema_errors(spec, alt, value, where)]
        if len(matching) != 1:
            errs.append(f"{where}: matches {len(matching)} of the oneOf alternatives, not exactly one")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            errs += schema_errors(spec, schema["items"], item, f"{where}[{i}]")
    return errs


def check_conformance(spec: dict, method: str, template: str | None, status: int, headers: Any, body: bytes) -> None:
    """Assert one response is what the document says ``method template`` can answer."""
    ctype = headers.get("Content-Type", "").split(";")[0].strip()
    if template is None:  # no operation: unknown route or method; must still be a problem document
        assert status in (404, 405), status
        response = deref(spec, {"$ref": f"#/components/responses/Problem{status}"})
    else:
        op = spec["paths"][template][method.lower()]
        assert str(status) in op["responses"], f"{method} {template}: {status} is not documented"
        response = deref(spec, op["responses"][str(status)])
    assert ctype in response["content"], f"{ctype} not in {list(response['content'])}"
    for name, header in response.get("headers", {}).items():
        # OpenAPI: a header is required only when it says so.
        if deref(spec, header).get("required", False):
            assert name in headers, f"header {name} missing from {status} response"
    schema = response["content"][ctype]["schema"]
    if ctype.endswith("json"):
        errs = schema_errors(spec, schema, json.loads(body))
        assert not errs, errs
    if ctype == "application/problem+json":
        assert json.loads(body)["status"] == status


# --------------------------------------------------------------------------
# Fixtures and helpers


@pytest.fixture
async def make_client():
    clients: list[TestClient] = []

    async def make(service: JobService | None = None, **kwargs: Any) -> TestClient:
        kwargs.setdefault("api_token", None)
        app = create_app(service or FakeService(), **kwargs)
        client = TestClient(TestServer(app, host="127.0.0.1"))
        await client.start_server()
        clients.append(client)
        client.spec = build_spec(auth=bool(kwargs["api_token"]), job_types=app_service(app).job_types)
        return client

    yield make
    for client in clients:
        await client.close()


def app_service(app: web.Application) -> Any:
    from workmesh.api.app import SERVICE

    return app[SERVICE]


def template_of(method: str, path: str) -> str | None:
    path = path.split("?")[0]
    if re.fullmatch(r"/jobs/[^/]+/cancel", path):
        return "/jobs/{id}/cancel" if method == "POST" else None
    if re.fullmatch(r"/jobs/[^/]+", path):
        return "/jobs/{id}" if method == "GET" else None
    known = {"/jobs": ("GET", "POST")}
    for p in ("/status", "/metrics", "/healthz", "/openapi.json", "/openapi.yaml"):
        known[p] = ("GET",)
    return path if method in known.get(path, ()) else None


async def call(client: TestClient, method: str, path: str, **kwargs: Any) -> tuple[Any, Any]:
    """Make a request, check it against the OpenAPI document, return (response, parsed body)."""
    resp = await client.request(method, path, **kwargs)
    raw = await resp.read()
    check_conformance(client.spec, method, template_of(method, path), resp.status, resp.headers, raw)
    ctype = resp.headers.get("Content-Type", "")
    return resp, (json.loads(raw) if "json" in ctype else raw.decode())


async def submit(client: TestClient, body: dict | None = None, **kwargs: Any) -> tuple[Any, Any]:
    return await call(client, "POST", "/jobs", json=body or {"type": "echo", "payload": {"n": 1}}, **kwargs)


# --------------------------------------------------------------------------
# Endpoints


async def test_healthz(make_client):
    client = await make_client()
    resp, body = await call(client, "GET", "/healthz")
    assert resp.status == 200 and body == {"ok": True}


async def test_submit_answers_202_with_location_and_passes_every_field(make_client):
    service = FakeService()
    client = await make_client(service)
    body = {"type": "echo", "payload": [1, "x", None], "max_attempts": 5, "lease_seconds": 2.5, "timeout_seconds": 30}
    resp, view = await submit(client, body, headers={"Idempotency-Key": "order-42"})
    assert resp.status == 202
    assert resp.headers["Location"] == f"/jobs/{view['id']}"
    assert view["status"] == "pending" and re.fullmatch(r"[0-9a-f]{40}", view["id"])
    assert service.calls[-1] == ("submit", "echo", [1, "x", None], 5, 2.5, 30.0, "order-42")
    again, view2 = await submit(client, body, headers={"Idempotency-Key": "order-42"})
    assert again.status == 202 and view2["id"] == view["id"]


async def test_submit_defaults_are_left_to_the_node(make_client):
    service = FakeService()
    client = await make_client(service)
    resp, _ = await submit(client, {"type": "sleep", "payload": None})
    assert resp.status == 202
    assert service.calls[-1] == ("submit", "sleep", None, None, None, None, None)


async def test_get_job_passes_wait_and_history(make_client):
    service = FakeService()
    client = await make_client(service)
    _, view = await submit(client)
    resp, got = await call(client, "GET", f"/jobs/{view['id']}")
    assert resp.status == 200 and got == view and "history" not in got
    resp, got = await call(client, "GET", f"/jobs/{view['id']}?wait=2.5&history=1")
    assert resp.status == 200 and got["history"][0]["kind"] == "submit"
    assert service.calls[-1] == ("get", bytes.fromhex(view["id"]), 2.5, True)


class FinishingService(FakeService):
    """A service whose jobs are done by the time anyone waits for them."""

    async def get(self, job_id, *, wait_s=0.0, history=False):
        view = await super().get(job_id, wait_s=wait_s, history=history)
        if wait_s > 0:
            view = self.jobs[job_id] = replace(view, status="done", attempts=1, result={"n": 1})
        return view


async def test_submit_with_wait_answers_200_with_the_terminal_job(make_client):
    service = FinishingService()
    client = await make_client(service)
    resp, view = await call(client, "POST", "/jobs?wait=5", json={"type": "echo", "payload": {"n": 1}})
    assert resp.status == 200 and view["status"] == "done" and view["result"] == {"n": 1}
    assert resp.headers["Location"] == f"/jobs/{view['id']}"
    assert service.calls[-1] == ("get", bytes.fromhex(view["id"]), 5.0, False)


async def test_submit_with_wait_answers_202_while_the_job_is_not_terminal(make_client):
    service = FakeService()  # its jobs stay pending
    client = await make_client(service)
    resp, view = await call(client, "POST", "/jobs?wait=0.5", json={"type": "echo", "payload": {"n": 1}})
    assert resp.status == 202 and view["status"] == "pending"
    assert service.calls[-1][0] == "get"


async def test_submit_with_wait_keeps_the_acceptance_when_the_wait_cannot_read(make_client):
    service = FakeService()
    client = await make_client(service)
    real_get = service.get

    async def unreadable(job_id, **kw):
        service.raise_next = QuorumUnavailable("no replica answered")
        return await real_get(job_id, **kw)

    service.get = unreadable
    resp, view = await call(client, "POST", "/jobs?wait=1", json={"type": "echo", "payload": {"n": 1}})
    assert resp.status == 202 and view["status"] == "pending"
    assert bytes.fromhex(view["id"]) in service.jobs  # accepted all the same


@pytest.mark.parametrize("query", ["wait=61", "wait=-1", "wait=abc", "wait=1&wait=2"])
async def test_submit_with_a_bad_wait_is_400_and_submits_nothing(make_client, query):
    service = FakeService()
    client = await make_client(service)
    resp, problem = await call(client, "POST", f"/jobs?{query}", json={"type": "echo", "payload": {"n": 1}})
    assert resp.status == 400 and problem["detail"].startswith("wait:")
    assert not service.calls


@pytest.mark.parametrize("job_id", ["AB" * 20, "ab" * 19, "ab" * 21, "zz" * 20, "x"])
async def test_get_job_with_a_malformed_id_is_400(make_client, job_id):
    client = await make_client()
    resp, problem = await call(client, "GET", f"/jobs/{job_id}")
    assert resp.status == 400 and problem["detail"].startswith("id:")


async def test_get_unknown_job_is_404_problem(make_client):
    client = await make_client()
    resp, problem = await call(client, "GET", f"/jobs/{UNKNOWN_ID}")
    assert resp.status == 404
    assert resp.headers["Content-Type"].startswith("application/problem+json")
    assert problem["title"] == "Job not found" and problem["type"] == "urn:workmesh:problem:job-not-found"


@pytest.mark.parametrize(
    "query",
    ["wait=61", "wait=-1", "wait=abc", "wait=nan", "wait=inf", "wait=1_0", "wait=", "history=yes", "wait=1&wait=2"],
)
async def test_get_job_with_bad_query_is_400_naming_the_parameter(make_client, query):
    client = await make_client()
    resp, problem = await call(client, "GET", f"/jobs/{UNKNOWN_ID}?{query}")
    assert resp.status == 400 and problem["detail"].split(":")[0] in query


async def test_cancel_then_cancel_again_is_409(make_client):
    service = FakeService()
    client = await make_client(service)
    _, view = await submit(client)
    resp, got = await call(client, "POST", f"/jobs/{view['id']}/cancel", json={"reason": "changed my mind"})
    assert resp.status == 200 and got["status"] == "cancelled"
    assert service.calls[-1] == ("cancel", bytes.fromhex(view["id"]), "changed my mind")
    resp, problem = await call(client, "POST", f"/jobs/{view['id']}/cancel")
    assert resp.status == 409 and problem["title"] == "Conflict"


async def test_cancel_without_body_and_unknown_job(make_client):
    service = FakeService()
    client = await make_client(service)
    _, view = await submit(client)
    resp, _ = await call(client, "POST", f"/jobs/{view['id']}/cancel")
    assert resp.status == 200 and service.calls[-1][2] == ""
    resp, _ = await call(client, "POST", f"/jobs/{UNKNOWN_ID}/cancel")
    assert resp.status == 404
    resp, problem = await call(client, "POST", "/jobs/nothex/cancel")
    assert resp.status == 400


@pytest.mark.parametrize("body", [{"reason": 5}, {"reason": "x" * 257}, {"why": "x"}, ["reason"]])
async def test_cancel_with_bad_body_is_422(make_client, body):
    client = await make_client()
    resp, problem = await call(client, "POST", f"/jobs/{UNKNOWN_ID}/cancel", json=body)
    assert resp.status == 422


async def test_list_jobs_pages_with_cursor_and_filters_by_status(make_client):
    service = FakeService()
    client = await make_client(service)
    ids = [(await submit(client))[1]["id"] for _ in range(5)]
    await call(client, "POST", f"/jobs/{ids[0]}/cancel")
    seen, after = [], None
    while True:
        resp, page = await call(client, "GET", "/jobs?limit=2" + (f"&after={after}" if after else ""))
        assert resp.status == 200 and len(page["jobs"]) <= 2
        seen += [j["id"] for j in page["jobs"]]
        if page["next"] is None:
            break
        after = page["next"]
    assert sorted(seen) == sorted(ids)
    resp, page = await call(client, "GET", "/jobs?status=cancelled")
    assert [j["id"] for j in page["jobs"]] == [ids[0]]
    assert service.calls[-1] == ("list", "cancelled", 100, None)


@pytest.mark.parametrize(
    "query", ["status=lost", "limit=0", "limit=501", "limit=ten", "limit=\u0663", "after=", "after=zz"]
)
async def test_list_jobs_with_bad_query_is_400(make_client, query):
    client = await make_client()
    resp, problem = await call(client, "GET", f"/jobs?{query}")
    assert resp.status == 400


async def test_status_is_passed_through(make_client):
    client = await make_client()
    resp, body = await call(client, "GET", "/status")
    assert resp.status == 200 and body == {"node_id": "12" * 20, "peers": 4, "jobs": 0}


async def test_metrics_are_prometheus_text(make_client):
    client = await make_client()
    await submit(client)
    resp, text = await call(client, "GET", "/metrics")
    assert resp.status == 200 and resp.headers["Content-Type"] == METRICS_CONTENT_TYPE
    assert "workmesh_jobs_submitted_total 1.0" in text


async def test_openapi_documents_exactly_the_routes_served(make_client):
    client = await make_client()
    resp, spec = await call(client, "GET", "/openapi.json")
    assert resp.status == 200 and spec["openapi"].startswith("3.1")
    assert spec == json.loads(json.dumps(client.spec))
    served = {
        (r.method.lower(), r.resource.canonical)
        for r in client.server.app.router.routes()
        if r.method != "HEAD" and not is_ui_route(r.resource.canonical)  # the dashboard's own, see api/dashboard.py
    }
    documented = {(m, p) for p, ops in spec["paths"].items() for m in ops}
    assert served == documented
    assert spec["components"]["schemas"]["SubmitRequest"]["properties"]["type"]["enum"] == ["echo", "sleep"]
    resp, text = await call(client, "GET", "/openapi.yaml")
    assert resp.status == 200 and text == render_yaml(spec)


def test_openapi_yaml_loads_as_the_same_document():
    yaml = pytest.importorskip("yaml")
    for auth in (True, False):
        spec = build_spec(auth=auth, job_types=frozenset({"echo", "no", "on", "123"}))
        assert yaml.safe_load(render_yaml(spec)) == spec


def test_reference_openapi_yaml_is_up_to_date():
    path = Path(__file__).resolve().parents[2] / "api" / "openapi.yaml"
    assert path.read_text() == REFERENCE_HEADER + render_yaml(build_spec(auth=True)), (
        "regenerate with: python -m api.openapi > api/openapi.yaml"
    )


# --------------------------------------------------------------------------
# Errors


async def test_malformed_json_is_400(make_client):
    client = await make_client()
    for raw in (b"{", b'{"type": "echo",}', b"", b"NaN", b'{"type":"echo","payload":Infinity}', b"\xff\xfe{}"):
        resp, problem = await call(client, "POST", "/jobs", data=raw, headers={"Content-Type": "application/json"})
        assert resp.status == 400, raw
        assert problem["detail"].startswith("body:")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"payload": 1}, "type"),
        ({"type": 7, "payload": 1}, "type"),
        ({"type": "", "payload": 1}, "type"),
        ({"type": "echo"}, "payload"),
        ({"type": "echo", "payload": 1, "max_attempts": 0}, "max_attempts"),
        ({"type": "echo", "payload": 1, "max_attempts": 101}, "max_attempts"),
        ({"type": "echo", "payload": 1, "max_attempts": 2.0}, "max_attempts"),
        ({"type": "echo", "payload": 1, "max_attempts": True}, "max_attempts"),
        ({"type": "echo", "payload": 1, "lease_seconds": 0.4}, "lease_seconds"),
        ({"type": "echo", "payload": 1, "lease_seconds": 3601}, "lease_seconds"),
        ({"type": "echo", "payload": 1, "lease_seconds": "5"}, "lease_seconds"),
        ({"type": "echo", "payload": 1, "timeout_seconds": 0}, "timeout_seconds"),
        ({"type": "echo", "payload": 1, "timeout_seconds": None}, "timeout_seconds"),
        ({"type": "echo", "payload": 1, "priority": 3}, "priority"),
        ({"type": "echo", "payload": "x" * 9000}, "payload"),
        ({"type": "echo", "payload": 10**30}, "payload"),
        ("a string", "body"),
    ],
)
async def test_wrong_field_types_and_ranges_are_422_naming_the_field(make_client, body, field):
    service = FakeService()
    client = await make_client(service)
    resp, problem = await call(client, "POST", "/jobs", json=body)
    assert resp.status == 422 and problem["detail"].startswith(field + ":"), problem
    assert service.calls == []


async def test_unknown_job_type_is_422(make_client):
    client = await make_client()
    resp, problem = await submit(client, {"type": "mine-bitcoin", "payload": 1})
    assert resp.status == 422 and problem["title"] == "Unknown job type"
    assert "echo" in problem["detail"]


async def test_body_over_the_limit_is_413(make_client):
    client = await make_client(max_body_bytes=1024)
    body = json.dumps({"type": "echo", "payload": "x" * 2000}).encode()
    resp, problem = await call(client, "POST", "/jobs", data=body, headers={"Content-Type": "application/json"})
    assert resp.status == 413 and problem["detail"].startswith("body:")


async def test_wrong_content_type_is_415(make_client):
    client = await make_client()
    for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
        body = b'{"type":"echo","payload":1}'
        resp, _ = await call(client, "POST", "/jobs", data=body, headers={"Content-Type": ctype})
        assert resp.status == 415, ctype


async def test_unknown_route_is_404_and_wrong_method_is_405(make_client):
    client = await make_client()
    resp, problem = await call(client, "GET", "/nope")
    assert resp.status == 404 and problem["type"] == "about:blank" and problem["title"] == "Not Found"
    resp, problem = await call(client, "DELETE", "/jobs")
    assert resp.status == 405 and "POST" in resp.headers["Allow"]
    resp, _ = await call(client, "PUT", "/healthz")
    assert resp.status == 405


async def test_quorum_unavailable_is_503(make_client):
    service = FakeService()
    client = await make_client(service)
    service.raise_next = QuorumUnavailable("2 of 5 replicas answered, quorum is 3")
    resp, problem = await submit(client)
    assert resp.status == 503 and "quorum is 3" in problem["detail"]


async def test_unexpected_errors_are_500_logged_and_not_leaked(make_client):
    service, logger = FakeService(), RecordingLogger()
    client = await make_client(service, logger=logger)
    service.raise_next = KeyError("secret-internal-state")
    resp, problem = await call(client, "GET", "/status")
    assert resp.status == 500 and "secret" not in json.dumps(problem)
    assert logger.events and logger.events[0][0] == "api.unhandled_error"
    service.raise_next = WorkmeshError("sqlite said no at /var/lib/x")
    resp, problem = await call(client, "GET", "/status")
    assert resp.status == 500 and "sqlite" not in json.dumps(problem) and len(logger.events) == 2


# --------------------------------------------------------------------------
# Auth and rate limiting


async def test_token_guards_writes_only(make_client):
    service = FakeService()
    client = await make_client(service, api_token=TOKEN)
    assert client.spec["paths"]["/jobs"]["post"]["security"] == [{"bearerAuth": []}]
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"},
                    {"Authorization": TOKEN}):
        resp, problem = await submit(client, headers=headers)
        assert resp.status == 401 and resp.headers["WWW-Authenticate"].startswith("Bearer")
        resp, _ = await call(client, "POST", f"/jobs/{UNKNOWN_ID}/cancel", headers=headers)
        assert resp.status == 401
    assert service.calls == []
    resp, view = await submit(client, headers={"Authorization": f"Bearer {TOKEN}"})
    assert resp.status == 202
    for path in (f"/jobs/{view['id']}", "/jobs", "/status", "/metrics", "/openapi.json"):
        resp, _ = await call(client, "GET", path)
        assert resp.status == 200, path


async def test_without_token_writes_are_open_and_the_doc_says_so(make_client):
    client = await make_client()
    resp, _ = await submit(client)
    assert resp.status == 202
    assert "security" not in client.spec["paths"]["/jobs"]["post"]
    assert "401" not in client.spec["paths"]["/jobs"]["post"]["responses"]


async def test_empty_token_means_no_auth(make_client):
    client = await make_client(api_token="")
    resp, _ = await submit(client)
    assert resp.status == 202


async def test_a_cursor_the_service_cannot_decode_is_400(make_client):
    service = FakeService()
    client = await make_client(service)

    def list_jobs(status, limit, after):
        return [], None if after is None else bytes.fromhex(after)

    service.list_jobs = list_jobs
    resp, problem = await call(client, "GET", "/jobs?after=zz")
    assert resp.status == 400 and problem["detail"].startswith("after:")


async def test_rate_limit_answers_429_with_retry_after(make_client):
    client = await make_client(rate_limit_per_s=0.5, rate_burst=3)
    statuses = [(await call(client, "GET", "/status"))[0].status for _ in range(3)]
    assert statuses == [200, 200, 200]
    resp, problem = await call(client, "GET", "/status")
    assert resp.status == 429 and int(resp.headers["Retry-After"]) >= 1
    resp, _ = await submit(client)
    assert resp.status == 429
    resp, _ = await call(client, "GET", "/healthz")
    assert resp.status == 200


def test_token_buckets_refill_and_stay_bounded():
    buckets = TokenBuckets(rate_per_s=2.0, burst=2, clients_max=3)
    assert [buckets.take("a", 0.0) for _ in range(3)] == [0.0, 0.0, 0.5]
    assert buckets.take("a", 0.5) == 0.0  # one token back after 0.5 s
    assert buckets.take("a", 0.5) == pytest.approx(0.5)
    assert buckets.take("b", 0.5) == 0.0  # clients are independent
    for i in range(100):
        buckets.take(f"flood-{i}", 1.0)
    assert len(buckets) == 3 and buckets.statistics()["evicted"] == 99
    assert buckets.take("a", 1.0) == 0.0  # forgotten, so starts with a full bucket


# --------------------------------------------------------------------------
# Garbage never gives 500


async def test_garbage_bodies_never_give_500(make_client):
    rng = random.Random(20240601)
    client = await make_client()
    bodies = [
        b"[" * 60_000,
        b'{"type":"echo","payload":' + b"[" * 40 + b"]" * 40 + b"}",
        b'{"type":"echo","payload":' + b'{"a":' * 33 + b"1" + b"}" * 33 + b"}",
        b'{"type":"echo","payload":1e400}',
        b'{"type":"echo","payload":-1e400}',
        b'{"type":"echo","payload":' + b"9" * 5000 + b"}",
        b'{"type":"echo","payload":"\\ud800"}',
        b'{"type":"\\udfff","payload":1}',
        b'"just a string"',
        b"null",
        b'{"type":"echo","payload":1,"type":{"a":[]}}',
        b"\x00" * 100,
    ]
    bodies += [rng.randbytes(rng.randrange(1, 300)) for _ in range(60)]
    tokens = [b"{", b"}", b"[", b"]", b'"type"', b'"echo"', b'"payload"', b":", b",", b"1e999", b"-", b"null", b'"\\u']
    bodies += [b"".join(rng.choice(tokens) for _ in range(rng.randrange(1, 40))) for _ in range(60)]
    for i, raw in enumerate(bodies):
        for path in ("/jobs", f"/jobs/{UNKNOWN_ID}/cancel"):
            ctype = rng.choice(["application/json", "application/problem+json", None])
            headers = {"Content-Type": ctype} if ctype else {"Content-Type": ""}
            resp, problem = await call(client, "POST", path, data=raw, headers=headers)
            assert 400 <= resp.status < 500, (i, raw[:80], resp.status, problem)


async def test_deep_and_huge_payloads_are_422(make_client):
    client = await make_client()
    deep = b'{"type":"echo","payload":' + b"[" * 33 + b"]" * 33 + b"}"
    ok = b'{"type":"echo","payload":' + b"[" * 32 + b"]" * 32 + b"}"
    for raw, status in ((deep, 422), (ok, 202), (b'{"type":"echo","payload":1e400}', 422),
                        (b'{"type":"echo","payload":' + b"9" * 5000 + b"}", 422),
                        (b'{"type":"echo","payload":"\\ud800"}', 422)):
        resp, _ = await call(client, "POST", "/jobs", data=raw, headers={"Content-Type": "application/json"})
        assert resp.status == status, raw[:60]


async def test_garbage_paths_headers_and_queries_never_give_500(make_client):
    rng = random.Random(7)
    client = await make_client(api_token=TOKEN)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    for _ in range(40):
        junk = "".join(rng.choice("abcdef0123456789%/?&=.~-_ZQ\u00e9") for _ in range(rng.randrange(0, 60)))
        for method, path in (("GET", f"/jobs/{junk}"), ("GET", f"/jobs?{junk}"), ("POST", f"/jobs/{junk}/cancel")):
            resp = await client.request(method, path, headers=auth)
            assert resp.status < 500, (method, path, resp.status)
    for key in ("", " ", "k" * 129, "caf\u00e9", "a b"):
        resp, problem = await submit(client, headers={**auth, "Idempotency-Key": key})
        assert resp.status == 400 and problem["detail"].startswith("Idempotency-Key:"), key


def test_validation_depth_scan_ignores_brackets_inside_strings():
    raw = json.dumps({"type": "echo", "payload": "[" * 1000 + "\\\"{"}).encode()
    assert validation.parse_json_body(raw)["payload"].startswith("[[[")


# --------------------------------------------------------------------------
# Batch submission: POST /jobs with an array


async def test_a_batch_answers_202_with_one_entry_per_job_in_order_and_per_item_problems(make_client):
    body = [
        {"type": "echo", "payload": 1},
        {"type": "nope", "payload": 2},
        {"type": "echo"},
        {"type": "sleep", "payload": {"seconds": 1}, "max_attempts": 2},
    ]
    service = FakeService()
    client = await make_client(service)
    resp, doc = await call(client, "POST", "/jobs", json=body)
    assert resp.status == 202, doc
    assert isinstance(doc, list) and len(doc) == 4
    assert doc[0]["type"] == "echo" and len(doc[0]["id"]) == 40
    assert doc[1]["status"] == 422 and doc[1]["type"] == "urn:workmesh:problem:unknown-job-type"
    assert doc[2]["status"] == 422 and doc[2]["detail"].startswith("payload:")
    assert doc[3]["type"] == "sleep" and doc[3]["max_attempts"] == 2
    assert [c[1] for c in service.calls if c[0] == "submit"] == ["echo", "sleep"]


async def test_a_batch_item_that_the_node_refuses_does_not_sink_the_others(make_client):
    async def flaky(job_type, payload, **kw):
        if payload == "bad":
            raise QuorumUnavailable("only 1 of 3 replicas stored the job")
        return await FakeService.submit(service, job_type, payload, **kw)

    service = FakeService()
    service.submit = flaky
    client = await make_client(service)
    resp, doc = await call(client, "POST", "/jobs", json=[{"type": "echo", "payload": "bad"},
                                                           {"type": "echo", "payload": "ok"}])
    assert resp.status == 202
    assert doc[0]["status"] == 503 and doc[0]["type"] == "urn:workmesh:problem:quorum-unavailable"
    assert doc[1]["status"] == "pending"


async def test_a_batch_keys_each_item_from_the_header_or_its_own_key(make_client):
    body = [{"type": "echo", "payload": 1}, {"type": "echo", "payload": 2, "idempotency_key": "mine"}]
    service = FakeService()
    client = await make_client(service)
    resp, _ = await call(client, "POST", "/jobs", json=body, headers={"Idempotency-Key": "K"})
    assert resp.status == 202
    assert [c[-1] for c in service.calls if c[0] == "submit"] == ["K/0", "mine"]


@pytest.mark.parametrize("body", [[], [{"type": "echo", "payload": i} for i in range(101)]])
async def test_an_empty_or_oversized_batch_is_refused_whole(make_client, body):
    service = FakeService()
    client = await make_client(service, max_body_bytes=1 << 20)
    resp, doc = await call(client, "POST", "/jobs", json=body)
    assert resp.status == 422 and doc["detail"].startswith("body: a batch is an array of 1..100")
    assert not [c for c in service.calls if c[0] == "submit"]


async def test_a_batch_refuses_wait(make_client):
    client = await make_client()
    resp, doc = await call(client, "POST", "/jobs?wait=1", json=[{"type": "echo", "payload": 1}])
    assert resp.status == 400 and doc["detail"].startswith("wait:")
