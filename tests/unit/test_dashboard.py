"""api/dashboard.py in process: routes, content negotiation, the event stream,
and a service that offers no node insight (the REST layer's fake)."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from tests.unit.test_api import FakeService
from workmesh.api.app import create_app, run_api
from workmesh.api.dashboard import is_ui_route, prefers_html


@pytest.mark.parametrize(
    ("accept", "html"),
    [
        ("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", True),  # a browser
        ("*/*", False),  # curl
        ("", False),
        ("application/json", False),
        ("application/json, text/html;q=0.5", False),
        ("text/html;q=0.9, application/json;q=0.8", True),
        ("text/html;q=oops", False),
    ],
)
def test_prefers_html(accept, html):
    assert prefers_html(accept) is html


def test_ui_routes():
    assert all(is_ui_route(p) for p in ("/", "/ui", "/ui/", "/ui/api/jobs/{id}"))
    assert not any(is_ui_route(p) for p in ("/jobs", "/status", "/uix", "/openapi.json"))


@pytest.fixture
async def client():
    service = FakeService()
    async with TestClient(TestServer(create_app(service, api_token="t"))) as c:
        c.service = service
        yield c


async def test_root_redirects_browsers_and_indexes_for_others(client):
    resp = await client.get("/", headers={"Accept": "text/html,*/*;q=0.8"}, allow_redirects=False)
    assert resp.status == 302 and resp.headers["Location"] == "/ui/" and resp.headers["Vary"] == "Accept"
    resp = await client.get("/", headers={"Accept": "*/*"})
    assert resp.status == 200 and (await resp.json())["ui"] == "/ui/"
    resp = await client.get("/ui", allow_redirects=False)
    assert resp.status == 301 and resp.headers["Location"] == "/ui/"


async def test_static_files_are_served_with_a_strict_policy(client):
    for path, ctype in (("/ui/", "text/html"), ("/ui/app.js", "text/javascript"), ("/ui/style.css", "text/css")):
        resp = await client.get(path)
        assert resp.status == 200 and resp.content_type == ctype, path
        csp = resp.headers["Content-Security-Policy"]
        assert "default-src 'none'" in csp and "connect-src 'self'" in csp
    html = await (await client.get("/ui/")).text()
    assert "http://" not in html.replace("http://www.w3.org", "") and "https://" not in html
    for missing in ("/ui/nope.js", "/ui/..%2fapp.py", "/ui/openapi.yaml"):
        resp = await client.get(missing)
        assert resp.status == 404 and resp.content_type == "application/problem+json", missing


async def test_reads_work_without_node_insight_and_without_a_token(client):
    await client.service.submit("echo", {"a": 1}, max_attempts=None, lease_seconds=None, timeout_seconds=None,
                                idempotency_key=None)
    node = await (await client.get("/ui/api/node")).json()
    assert node["auth"] is True and node["job_types"] == ["echo", "sleep"] and node["flow"] is None
    nodes = await (await client.get("/ui/api/nodes")).json()
    assert nodes["nodes"][0]["liveness"] == "self"
    jobs = await (await client.get("/ui/api/jobs?q=ech")).json()
    assert [j["type"] for j in jobs["jobs"]] == ["echo"]
    job_id = jobs["jobs"][0]["id"]
    doc = await (await client.get(f"/ui/api/jobs/{job_id}")).json()
    assert doc["job"]["id"] == job_id and doc["timeline"][0]["signature_ok"] is False  # the fake's bytes are junk
    for bad in ("/ui/api/jobs?limit=0", "/ui/api/jobs?status=nope", "/ui/api/jobs?after=xyz", "/ui/api/jobs/xyz"):
        resp = await client.get(bad)
        assert resp.status == 400 and resp.content_type == "application/problem+json", bad


async def test_the_stream_outlives_the_idle_timeout_and_ends_at_shutdown():
    app = create_app(FakeService(), api_token=None)
    runner = await run_api(app, "127.0.0.1", 0, idle_timeout_s=0.5)
    port = runner.addresses[0][1]
    events: list[str] = []
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{port}/ui/events") as resp:
            assert resp.headers["Content-Type"] == "text/event-stream"
            async with asyncio.timeout(10):
                while events.count("tick") < 3:  # 2 s, four times the idle timeout
                    line = await resp.content.readline()
                    assert line, "the stream ended early"
                    if line.startswith(b"event: "):
                        events.append(line[7:].strip().decode())
                    if line.startswith(b"data: "):
                        assert json.loads(line[6:])["node_id"] == "12" * 20
            loop = asyncio.get_running_loop()
            started = loop.time()
            async with asyncio.timeout(5):  # an open stream must not hold up shutdown
                await runner.cleanup()
                await resp.content.read()  # returns once the node closed the stream
            assert loop.time() - started < 3  # aiohttp alone would wait up to 60 s for the handler
