"""REST limits on real ``workmesh start`` processes (loopback only), CI-sized.

The same scenarios as ``simulations/instruments/rest_flood.py`` (which runs them full
size: 50,000 random-id GETs, 2,000 concurrent long polls, a 25-node mesh),
bounded here in count and time:

- random-id ``GET ?wait=0.1`` leave no waiter behind, and the node's memory
  settles (a waiter leaked per id before);
- long polls beyond ``--long-polls-max`` get ``503`` with ``Retry-After`` at
  once, ``/healthz`` answers meanwhile, and the held polls end when the job
  does (there was no cap);
- a random-id ``GET`` costs one lookup and at most 2r record requests (it
  cost two lookups and 3r);
- a loopback node refuses a foreign ``Host`` (there was no check) unless it
  is allowed with ``--allowed-host``.
"""

from __future__ import annotations

import socket

import pytest

from procmesh import ProcMesh, http
from rest_flood import joined, long_polls, random_gets, read_cost

pytestmark = pytest.mark.slow

POLLS_MAX = 100


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    with ProcMesh(3, tmp_path_factory.mktemp("limits"), node_args=[
        "--workers", "0", "--replicas", "3", "--long-polls-max", str(POLLS_MAX),
    ], per_node_args={2: ["--allowed-host", "mesh.example"]}) as m:
        yield m


def test_random_id_waits_leave_no_waiter_and_memory_settles(mesh):
    out = random_gets(mesh, count=3000, wait_s=0.1, warmup=500, concurrency=32, deadline_s=120)
    print(out)
    assert out["codes"] == {404: 3000}, out
    assert out["jobs_watched_after"] == 0, out
    assert out["growth_vs_warmup"] < 0.10, out


def test_long_polls_beyond_the_cap_get_503_with_retry_after_and_healthz_answers(mesh):
    out = long_polls(mesh, count=3 * POLLS_MAX, wait_s=60, deadline_s=90)
    print(out)
    assert out["held_by_node"] == POLLS_MAX, out
    assert out["codes"] == {200: POLLS_MAX, 503: 2 * POLLS_MAX}, out
    assert out["refused_with_retry_after"] == out["refused"] == 2 * POLLS_MAX
    assert out["refused_answer_s_max"] < 10, "the excess is refused at once, not after the wait"
    assert out["healthz_ok"] == out["healthz_tries"] == 20
    assert out["rest"]["long_polls"] == 0 and out["rest"]["long_polls_refused"] == 2 * POLLS_MAX


def _raw_status(url: str, host: bytes) -> bytes:
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /status HTTP/1.1\r\nHost: " + host + b"\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data.split(b"\r\n", 1)[0]


def test_a_loopback_node_refuses_a_foreign_host_unless_allowed(mesh):
    url = mesh.nodes[0].url
    port = url.rsplit(":", 1)[1].encode()
    assert _raw_status(url, b"127.0.0.1:" + port).startswith(b"HTTP/1.1 200")
    assert _raw_status(url, b"localhost:" + port).startswith(b"HTTP/1.1 200")
    assert _raw_status(url, b"rebound.example:" + port).startswith(b"HTTP/1.1 403")
    # The limits' counters sit beside the node's own fields, not over them.
    code, status = http("GET", f"{url}/status")
    assert code == 200 and status["api"] == f"127.0.0.1:{port.decode()}" and "long_polls" in status["rest"]
    allowing = mesh.nodes[2].url
    assert _raw_status(allowing, b"mesh.example").startswith(b"HTTP/1.1 200")
    assert _raw_status(allowing, b"rebound.example").startswith(b"HTTP/1.1 403")


def test_a_random_id_get_costs_one_lookup_and_at_most_2r_record_requests(tmp_path):
    with joined(ProcMesh(10, tmp_path, node_args=["--workers", "0", "--k", "6", "--replicas", "3"]), 6) as m:
        out = read_cost(m, count=40)
    print(out)
    assert out["codes"] == {404: 40}, out
    assert out["lookups_per_get"] <= 1.0, out
    assert out["record_requests_per_get"] is not None and out["record_requests_per_get"] <= 6, out
