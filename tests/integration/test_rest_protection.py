"""REST protection, over real HTTP: token, loopback rule, rate limit, size and time limits.

Most tests talk to real ``workmesh start`` processes on 127.0.0.1: node 0
requires a bearer token for writes, node 1 also rate-limits clients. The
connection-timing tests (idle, slowloris, slow body) serve the same aiohttp
application with ``run_api`` in this process, with timeouts short enough for a
test, over a real TCP socket; the defaults are the same code path with longer
timeouts. Nothing binds anywhere but 127.0.0.1: the loopback rule is checked by
the CLI refusing to start, before it binds.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import time
import urllib.request

import pytest

from workmesh.api import app as api_app
from workmesh.api.app import create_app, run_api
from procmesh import ProcMesh, http, workmesh_command
from tests.unit.test_api import FakeService

TOKEN = "rest-protection-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
RATE_PER_S = 2.0
SUBMIT = {"type": "echo", "payload": {"x": 1}}


@pytest.fixture(scope="module")
def nodes(tmp_path_factory):
    mesh = ProcMesh(
        2, tmp_path_factory.mktemp("rest"),
        node_args=["--replicas", "1", "--workers", "0", "--api-token", TOKEN],
        per_node_args={1: ["--rate-limit", str(RATE_PER_S)]},
    )
    with mesh:
        yield mesh.nodes[0].url, mesh.nodes[1].url


def raw_http(url: str, request: bytes, timeout_s: float = 5.0) -> bytes:
    """Send raw bytes to the node's HTTP port; everything it answers until it closes or goes quiet."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout_s) as sock:
        sock.sendall(request)
        chunks = []
        try:
            while data := sock.recv(65536):
                chunks.append(data)
                if b"\r\n\r\n" in b"".join(chunks) and b"Connection: close" not in request:
                    break
        except TimeoutError:
            pass
    return b"".join(chunks)


# --------------------------------------------------------------------------- token


def test_cli_refuses_to_bind_off_loopback_without_a_token(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "WORKMESH_API_TOKEN"}
    for host, extra in (("0.0.0.0", []), ("::", []), ("192.0.2.1", []), ("0.0.0.0", ["--api-token", ""])):
        data_dir = tmp_path / f"refused-{host.replace(':', '_')}-{len(extra)}"
        started = time.monotonic()
        proc = subprocess.run(
            [*workmesh_command(), "start", "--host", host, "--p2p-port", "0", "--api-port", "0",
             "--data-dir", str(data_dir), *extra],
            env=env, capture_output=True, text=True, timeout=30,
        )
        assert proc.returncode == 2, (host, extra, proc.returncode, proc.stderr)
        assert "needs --api-token" in proc.stderr
        assert not data_dir.exists(), "refused before creating anything, let alone binding"
        print(f"--host {host} {extra}: refused in {time.monotonic() - started:.2f}s")


def test_writes_need_the_bearer_token_and_reads_do_not(nodes):
    url, _ = nodes
    wrong = [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": "Bearer " + "x" * len(TOKEN)},  # same length
        {"Authorization": "Bearer " + TOKEN[:-1]},  # a prefix
        {"Authorization": "Bearer " + TOKEN + "x"},  # an extension
        {"Authorization": "Basic " + TOKEN},  # right token, wrong scheme
        {"Authorization": TOKEN},
    ]
    for headers in wrong:
        code, doc = http("POST", f"{url}/jobs", SUBMIT, headers=headers)
        assert code == 401, (headers, code, doc)
        assert doc["status"] == 401
        code, doc = http("POST", f"{url}/jobs/{'ab' * 20}/cancel", {}, headers=headers)
        assert code == 401, (headers, code, doc)
    # The right token writes; reads need none.
    code, job = http("POST", f"{url}/jobs", SUBMIT, headers=AUTH)
    assert code == 202, job
    assert http("GET", f"{url}/jobs/{job['id']}")[0] == 200
    assert http("GET", f"{url}/status")[0] == 200
    code, doc = http("POST", f"{url}/jobs/{job['id']}/cancel", {"reason": "test"}, headers=AUTH)
    assert code == 200 and doc["status"] == "cancelled", doc


def test_token_is_compared_in_constant_time_whatever_its_length(monkeypatch):
    """Every check goes through hmac.compare_digest on equal-length digests, so
    neither the token's bytes nor its length show in the answer's timing."""
    seen: list[tuple[int, int]] = []
    real = api_app.hmac.compare_digest

    def recording(a, b):
        seen.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(api_app.hmac, "compare_digest", recording)

    async def scenario() -> list[int]:
        app = create_app(FakeService(), api_token=TOKEN)
        runner = await run_api(app, "127.0.0.1", 0)
        port = runner.addresses[0][1]
        try:
            loop = asyncio.get_running_loop()
            codes = []
            for given in ("", "x", TOKEN[:-1], TOKEN + "y" * 100, "z" * len(TOKEN), TOKEN):
                req = urllib.request.Request(f"http://127.0.0.1:{port}/jobs", data=json.dumps(SUBMIT).encode(),
                                             method="POST", headers={"Authorization": f"Bearer {given}",
                                                                     "Content-Type": "application/json"})
                codes.append(await loop.run_in_executor(None, _status_of, req))
            return codes
        finally:
            await runner.cleanup()

    codes = asyncio.run(scenario())
    assert codes == [401, 401, 401, 401, 401, 202]
    assert len(seen) == 6 and all(a == b == seen[0][0] for a, b in seen), seen


def _status_of(req: urllib.request.Request) -> int:
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        if exc.code == 401:
            assert exc.headers["WWW-Authenticate"].startswith("Bearer")
        return exc.code


# --------------------------------------------------------------------------- rate limit


def test_a_client_over_its_rate_gets_429_with_retry_after_then_recovers(nodes):
    _, url = nodes
    codes, retry_after = [], None
    started = time.monotonic()
    for _ in range(150):  # the bucket holds 100; 150 in well under 25 s of refill at 2/s
        req = urllib.request.Request(f"{url}/status")
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                codes.append(resp.status)
        except urllib.error.HTTPError as exc:
            codes.append(exc.code)
            if exc.code == 429:
                retry_after = exc.headers["Retry-After"]
                doc = json.loads(exc.read())
                assert exc.headers["Content-Type"].startswith("application/problem+json")
                assert doc["status"] == 429
    elapsed = time.monotonic() - started
    refused = codes.count(429)
    print(f"150 requests in {elapsed:.2f}s: {codes.count(200)} answered, {refused} refused with 429")
    assert set(codes) == {200, 429}
    # The bucket holds 100 (the mesh start-up polled /status a few times too), refilled at 2/s.
    assert 80 <= codes.count(200) <= 100 + int(elapsed * RATE_PER_S) + 1
    assert retry_after is not None and retry_after.isdigit() and int(retry_after) >= 1
    # Liveness is never throttled; the client is served again after Retry-After.
    assert http("GET", f"{url}/healthz")[0] == 200
    time.sleep(int(retry_after))
    assert http("GET", f"{url}/status")[0] == 200


# --------------------------------------------------------------------------- sizes


def test_body_over_the_limit_is_413_and_the_node_keeps_serving(nodes):
    url, _ = nodes
    body = {"type": "echo", "payload": "x" * 70_000}
    code, doc = http("POST", f"{url}/jobs", body, headers=AUTH)
    assert code == 413 and doc["status"] == 413, doc
    assert http("GET", f"{url}/healthz")[0] == 200


@pytest.mark.parametrize("name, payload, detail", [
    ("nested 40 deep", json.loads("[" * 40 + "]" * 40), "deep"),
    ("9 KiB string", "y" * 9000, "bytes"),
    ("many small items", list(range(3000)), "bytes"),
])
def test_payload_depth_and_size_are_limited(nodes, name, payload, detail):
    url, _ = nodes
    code, doc = http("POST", f"{url}/jobs", {"type": "echo", "payload": payload}, headers=AUTH)
    assert code == 422, (name, code, doc)
    assert "payload" in doc["detail"] and detail in doc["detail"], doc


def test_a_payload_just_inside_the_limits_is_accepted(nodes):
    """Positive control for the limits above."""
    url, _ = nodes
    payload = json.loads("[" * 30 + "1" + "]" * 30)
    code, doc = http("POST", f"{url}/jobs", {"type": "echo", "payload": payload}, headers=AUTH)
    assert code == 202, doc


@pytest.mark.parametrize("name, header_lines", [
    ("one 9000-byte header", [b"X-Big: " + b"a" * 9000]),
    ("a 9000-byte request target", None),
    ("100 headers", [b"X-H%d: v" % i for i in range(100)]),
])
def test_oversized_heads_are_refused_before_any_handler(nodes, name, header_lines):
    url, _ = nodes
    if header_lines is None:
        head = b"GET /status?x=" + b"b" * 9000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    else:
        head = b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"".join(h + b"\r\n" for h in header_lines)
    answer = raw_http(url, head + b"Connection: close\r\n\r\n")
    status = answer.split(b"\r\n", 1)[0].split(b" ")[1:2]
    assert status in ([b"400"], [b"431"]), (name, answer[:200])
    # Positive control: the same request with small headers is served.
    ok = raw_http(url, b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Small: a\r\nConnection: close\r\n\r\n")
    assert ok.startswith(b"HTTP/1.1 200"), ok[:200]


# --------------------------------------------------------------------------- slow and idle connections

IDLE_S = 0.5
BODY_S = 0.5


@pytest.fixture
async def quick_server():
    app = create_app(FakeService(), api_token=TOKEN, body_timeout_s=BODY_S)
    runner = await run_api(app, "127.0.0.1", 0, idle_timeout_s=IDLE_S)
    yield runner.addresses[0][1]
    await runner.cleanup()


async def _closed_within(reader: asyncio.StreamReader, timeout_s: float) -> tuple[bytes, float]:
    """Read until the server closes; what it sent and when (raises on timeout)."""
    started = time.monotonic()
    try:
        data = await asyncio.wait_for(reader.read(), timeout_s)
    except ConnectionResetError:  # closed with our unread bytes in its buffer: a reset
        data = b""
    return data, time.monotonic() - started


async def test_an_idle_connection_is_closed(quick_server):
    reader, writer = await asyncio.open_connection("127.0.0.1", quick_server)
    data, after_s = await _closed_within(reader, IDLE_S + 3.0)
    writer.close()
    assert data == b"" and after_s >= IDLE_S * 0.8, (data, after_s)


async def test_a_slowloris_head_is_cut_off_although_bytes_keep_coming(quick_server):
    reader, writer = await asyncio.open_connection("127.0.0.1", quick_server)
    head = b"GET /status HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200

    async def dribble() -> None:
        for byte in head:
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0.02)

    sender = asyncio.create_task(dribble())
    try:
        data, after_s = await _closed_within(reader, IDLE_S + 3.0)
    finally:
        sender.cancel()
        writer.close()
    assert data == b"", data
    assert after_s < len(head) * 0.02 / 2, "closed only once the head was complete"
    print(f"slowloris connection closed after {after_s:.2f}s of dribbling")


async def test_a_slow_body_is_answered_408(quick_server):
    reader, writer = await asyncio.open_connection("127.0.0.1", quick_server)
    writer.write(b"POST /jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode()
                 + b"\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"type\":")
    await writer.drain()
    started = time.monotonic()
    status = await asyncio.wait_for(reader.readline(), BODY_S + 3.0)
    writer.close()
    assert status.startswith(b"HTTP/1.1 408"), status
    assert time.monotonic() - started >= BODY_S * 0.8


async def test_a_prompt_client_is_served_on_a_kept_alive_connection(quick_server):
    """Positive control: the timeouts cut off only slow or idle clients."""
    reader, writer = await asyncio.open_connection("127.0.0.1", quick_server)
    for _ in range(3):
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        assert (await asyncio.wait_for(reader.readline(), 3.0)).startswith(b"HTTP/1.1 200")
        while (await asyncio.wait_for(reader.readline(), 3.0)) != b"\r\n":
            pass
        await asyncio.wait_for(reader.readexactly(len(b'{"ok": true}')), 3.0)
        await asyncio.sleep(IDLE_S / 3)
    writer.close()
