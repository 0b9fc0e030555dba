"""api/limits.py: Host check, default rate limit off loopback, long-poll and connection caps.

The pure parts (Host names, which clients are limited) are tested as
functions; the rest over real HTTP on 127.0.0.1 against the dict-backed fake
node of ``test_api.py``. A client "off loopback" is made by a test middleware
placed before the app's own, which hands the rest of the chain a copy of the
request with another remote address (nothing binds off loopback).
"""

from __future__ import annotations

import asyncio
import json

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from workmesh.api.app import create_app, run_api
from workmesh.api.limits import (
    HostCheck,
    RequestLimits,
    RestLimits,
    default_hosts,
    host_name,
    is_loopback,
)
from tests.unit.test_api import FakeService, call, submit

REMOTE = "203.0.113.9"


# --------------------------------------------------------------------------- pure


@pytest.mark.parametrize("header, name", [
    ("127.0.0.1:8000", "127.0.0.1"),
    ("LocalHost.:80", "localhost"),
    ("[::1]:8000", "::1"),
    ("[::1]", "::1"),
    ("::1", "::1"),
    ("evil.example", "evil.example"),
    ("evil.example:8000", "evil.example"),
])
def test_host_name_strips_port_brackets_case_and_dot(header, name):
    assert host_name(header) == name


def test_a_loopback_node_answers_only_to_its_loopback_names_by_default():
    check = HostCheck(default_hosts("127.0.0.1"))
    for ok in ("127.0.0.1:8000", "localhost:8000", "localhost", "[::1]:8000", None):
        assert check.allows(ok), ok
    for bad in ("evil.example:8000", "127.0.0.1.evil.example", "localhost.evil.example:80", "10.0.0.1:8000", ""):
        assert not check.allows(bad), bad
    assert default_hosts("0.0.0.0") == () and HostCheck(()).allows("anything")
    assert HostCheck(["*"]).allows("anything") and HostCheck(["mesh.example"]).allows("MESH.example:443")
    assert "node.test" in default_hosts("127.0.0.1", "node.test")


def test_only_clients_off_loopback_are_limited_unless_a_rate_is_set():
    default = RequestLimits(RestLimits())
    assert not default.limited("127.0.0.1") and not default.limited("::1") and default.limited(REMOTE)
    everyone = RequestLimits(RestLimits(rate_per_s=5.0))
    assert everyone.limited("127.0.0.1") and everyone.limited(REMOTE)
    nobody = RequestLimits(RestLimits(remote_rate_per_s=0))
    assert not nobody.limited(REMOTE)
    assert is_loopback("127.3.4.5") and is_loopback("localhost") and not is_loopback(REMOTE)


# --------------------------------------------------------------------------- over HTTP


class BlockingService(FakeService):
    """Waits (``?wait=``) block until ``release`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()
        self.waiting = 0

    async def get(self, job_id, *, wait_s=0.0, history=False):
        if wait_s > 0:
            self.waiting += 1
            try:
                await self.release.wait()
            finally:
                self.waiting -= 1
        return await super().get(job_id, wait_s=wait_s, history=history)


def remote_as(address: str):
    @web.middleware
    async def middleware(request: web.Request, handler):
        return await handler(request.clone(remote=address))

    return middleware


@pytest.fixture
async def serve():
    clients: list[TestClient] = []

    async def make(service=None, *, remote: str | None = None, **limits) -> TestClient:
        app = create_app(service or FakeService(), api_token=None, limits=RestLimits(**limits))
        if remote is not None:
            app.middlewares.insert(0, remote_as(remote))
        client = TestClient(TestServer(app, host="127.0.0.1"))
        await client.start_server()
        from workmesh.api.openapi import build_spec

        client.spec = build_spec(auth=False, job_types=FakeService.job_types)
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


async def test_a_foreign_host_header_is_refused_403_on_a_loopback_node(serve):
    client = await serve(hosts=default_hosts("127.0.0.1"))
    port = client.port
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}"):
        resp, _ = await call(client, "GET", "/status", headers={"Host": host})
        assert resp.status == 200, host
    for path in ("/status", "/jobs", "/healthz", f"/jobs/{'ab' * 20}"):
        resp, problem = await call(client, "GET", path, headers={"Host": f"rebound.example:{port}"})
        assert resp.status == 403, path
        assert resp.headers["Content-Type"].startswith("application/problem+json")
        assert problem["status"] == 403 and "rebound.example" in problem["detail"]
    resp, _ = await submit(client, headers={"Host": "rebound.example"})
    assert resp.status == 403
    resp, body = await call(client, "GET", "/status")
    assert body["rest"]["host_refused"] == 5


async def test_allowed_hosts_are_configurable(serve):
    client = await serve(hosts=("mesh.example",))
    assert (await call(client, "GET", "/status", headers={"Host": "mesh.example:8443"}))[0].status == 200
    assert (await call(client, "GET", "/status", headers={"Host": f"127.0.0.1:{client.port}"}))[0].status == 403
    anything = await serve(hosts=("*",))
    assert (await call(anything, "GET", "/status", headers={"Host": "whatever.example"}))[0].status == 200


async def test_a_client_off_loopback_is_rate_limited_by_default(serve):
    limits = RestLimits()
    burst = limits.rate_burst * 3
    remote = await serve(remote=REMOTE)
    answers = await asyncio.gather(*(call(remote, "GET", "/status") for _ in range(burst)))
    codes = [resp.status for resp, _ in answers]
    assert codes.count(200) >= limits.rate_burst and codes.count(429) >= burst // 3, codes
    resp, problem = next(a for a in answers if a[0].status == 429)
    assert int(resp.headers["Retry-After"]) >= 1 and problem["status"] == 429
    assert (await call(remote, "GET", "/healthz"))[0].status == 200  # liveness is never throttled
    # The same load from loopback, with no --rate-limit: never throttled.
    local = await serve()
    answers = await asyncio.gather(*(call(local, "GET", "/status") for _ in range(burst)))
    assert {resp.status for resp, _ in answers} == {200}


async def test_long_polls_beyond_the_cap_get_503_with_retry_after(serve):
    service = BlockingService()
    client = await serve(service, long_polls_max=5)
    _, view = await submit(client)
    url = f"/jobs/{view['id']}?wait=60"
    polls = [asyncio.create_task(client.get(url)) for _ in range(5)]
    while service.waiting < 5:
        await asyncio.sleep(0.01)
    resp, problem = await call(client, "GET", url)
    assert resp.status == 503 and resp.headers["Retry-After"] == "1", problem
    assert problem["type"] == "urn:workmesh:problem:overloaded"
    assert resp.headers.get("Connection", "").lower() == "close"
    resp, _ = await submit(client, params={"wait": "5"})  # a submit that waits is a long poll too
    assert resp.status == 503
    # Everything else is still served, and short reads are not long polls.
    assert (await call(client, "GET", "/healthz"))[0].status == 200
    assert (await call(client, "GET", f"/jobs/{view['id']}"))[0].status == 200
    assert (await call(client, "GET", f"/jobs/{view['id']}?wait=0"))[0].status == 200
    service.release.set()
    assert [r.status for r in await asyncio.gather(*polls)] == [200] * 5
    resp, body = await call(client, "GET", "/status")
    assert body["rest"]["long_polls"] == 0 and body["rest"]["long_polls_refused"] == 2
    assert body["rest"]["long_polls_max_seen"] == 5


async def test_a_client_off_loopback_gets_429_beyond_its_share_of_long_polls(serve):
    service = BlockingService()
    client = await serve(service, remote=REMOTE, long_polls_per_client_max=3)
    _, view = await submit(client)
    polls = [asyncio.create_task(client.get(f"/jobs/{view['id']}?wait=60")) for _ in range(3)]
    while service.waiting < 3:
        await asyncio.sleep(0.01)
    resp, _ = await call(client, "GET", f"/jobs/{view['id']}?wait=60")
    assert resp.status == 429 and resp.headers["Retry-After"] == "1"
    service.release.set()
    assert [r.status for r in await asyncio.gather(*polls)] == [200] * 3


async def _request(port: int, head: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 5.0)
    writer.close()
    return data


async def test_connections_beyond_the_cap_get_a_canned_503_but_healthz_answers():
    app = create_app(FakeService(), api_token=None)
    runner = await run_api(app, "127.0.0.1", 0, connections_max=3)
    port = runner.addresses[0][1]
    held = []
    try:
        for _ in range(3):  # three kept-alive connections fill the cap
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5.0)
            held.append(writer)
        answer = await _request(port, b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503") and b"Retry-After: 1" in head, answer
        assert json.loads(body)["status"] == 503
        answer = await _request(port, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b'{"ok": true}'), answer
        held.pop().close()  # a connection leaves: the next one is served by the app
        for _ in range(100):
            answer = await _request(port, b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            if answer.startswith(b"HTTP/1.1 200"):
                break
            await asyncio.sleep(0.02)
        assert answer.startswith(b"HTTP/1.1 200"), answer
        assert app_stats(app)["connections_refused"] >= 2
    finally:
        for writer in held:
            writer.close()
        await runner.cleanup()


def app_stats(app: web.Application) -> dict:
    from workmesh.api.app import REQUEST_LIMITS

    return app[REQUEST_LIMITS].statistics()
