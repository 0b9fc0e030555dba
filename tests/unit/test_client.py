"""The client's failover, keys, answers and errors, against an in-memory transport."""

import asyncio
import json
import re

import httpx
import pytest

import workmesh
from workmesh import client as C
from workmesh.api.errors import _slug
from workmesh.node import errors as node_errors

JOB = {"id": "ab" * 20, "type": "echo", "status": "pending", "attempts": 0, "max_attempts": 3, "result": None,
       "error": None, "worker": None, "submitted_by": "cd" * 20, "created_ms": 0, "last_error": None}


def problem(status, name, detail="x"):
    return httpx.Response(status, json={"type": C.PROBLEM_PREFIX + name, "title": name, "status": status,
                                        "detail": detail}, headers={"Content-Type": "application/problem+json"})


class Mesh:
    """Per host: a function of the request, or an exception to raise."""

    def __init__(self, **hosts):
        self.hosts = hosts
        self.seen: list[tuple[str, str, str | None]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        self.seen.append((host, f"{request.method} {request.url.raw_path.decode()}", request.headers.get("Idempotency-Key")))
        answer = self.hosts[host]
        if isinstance(answer, Exception):
            raise answer
        return answer(request)


def client(mesh, **kw):
    return workmesh.Client(["http://a:1", "http://b:1", "http://c:1"], transport=httpx.MockTransport(mesh), **kw)


def test_every_problem_type_of_the_node_has_its_own_exception_named_like_it():
    def subclasses(cls):
        for sub in cls.__subclasses__():
            yield sub
            yield from subclasses(sub)

    for cls in [node_errors.WorkmeshError, *subclasses(node_errors.WorkmeshError)]:
        if cls.__module__ != node_errors.__name__:
            continue
        mapped = C.PROBLEM_TYPES[C.PROBLEM_PREFIX + _slug(cls.__name__)]
        assert mapped.__name__ == cls.__name__ or (cls is node_errors.WorkmeshError and mapped is C.ServerError)
        assert issubclass(mapped, C.ProblemError) and issubclass(mapped, workmesh.WorkmeshError)


def test_a_refused_node_and_a_503_fail_over_and_the_key_is_resent_unchanged():
    mesh = Mesh(a=httpx.ConnectError("refused"), b=lambda r: problem(503, "quorum-unavailable"),
                c=lambda r: httpx.Response(202, json=JOB))
    with client(mesh) as cl:
        job = cl.submit("echo", {"n": 1}, max_attempts=2)
        assert job.id == JOB["id"] and job.status == "pending"
        keys = {k for _, _, k in mesh.seen}
        assert len(keys) == 1 and None not in keys and [h for h, _, _ in mesh.seen] == ["a", "b", "c"]
        # The client stays with the node that answered.
        cl.get(JOB["id"])
        assert mesh.seen[-1][0] == "c"
        # A key given is the key sent.
        cl.submit("echo", 1, idempotency_key="mine")
        assert mesh.seen[-1][2] == "mine"


def test_problems_raise_their_own_type_and_only_failover_statuses_move_on():
    mesh = Mesh(a=lambda r: problem(422, "idempotency-key-reused", "Idempotency-Key: already used"),
                b=lambda r: httpx.Response(202, json=JOB), c=lambda r: httpx.Response(202, json=JOB))
    with client(mesh) as cl, pytest.raises(workmesh.IdempotencyKeyReused) as info:
        cl.submit("echo", 1, idempotency_key="k")
    assert info.value.status == 422 and info.value.node == "http://a:1" and len(mesh.seen) == 1
    assert isinstance(info.value, workmesh.ValidationFailed)


def test_no_node_answering_is_connection_failed_after_every_round():
    mesh = Mesh(a=httpx.ConnectError("x"), b=httpx.ReadTimeout("y"), c=httpx.RemoteProtocolError("z"))
    with client(mesh, rounds=2) as cl, pytest.raises(workmesh.ConnectionFailed) as info:
        cl.get("ab" * 20)
    assert len(info.value.failures) == 6


def test_all_503_raises_the_problem():
    mesh = Mesh(a=lambda r: problem(503, "quorum-unavailable"), b=lambda r: problem(503, "not-ready"),
                c=lambda r: problem(503, "quorum-unavailable"))
    with client(mesh, rounds=1) as cl, pytest.raises(workmesh.QuorumUnavailable):
        cl.get("ab" * 20)


def test_wait_long_polls_and_carries_on_at_the_next_node_when_one_dies():
    calls = {"n": 0}

    def a(request):
        calls["n"] += 1
        if calls["n"] == 1:
            return httpx.Response(200, json=JOB)
        raise httpx.RemoteProtocolError("the node died mid-poll")

    mesh = Mesh(a=a, b=lambda r: httpx.Response(200, json={**JOB, "status": "done", "result": 5}), c=a)
    with client(mesh) as cl:
        job = cl.wait(JOB["id"], timeout=30)
    assert job.status == "done" and job.result == 5 and job.terminal
    waits = [p for _, p, _ in mesh.seen]
    assert all(re.fullmatch(rf"GET /jobs/{JOB['id']}\?wait=[0-9.]+", p) for p in waits)


def test_wait_times_out_with_the_last_view():
    mesh = Mesh(a=lambda r: httpx.Response(200, json=JOB), b=lambda r: httpx.Response(200, json=JOB),
                c=lambda r: httpx.Response(200, json=JOB))
    with client(mesh) as cl, pytest.raises(workmesh.WaitTimeout) as info:
        cl.wait(JOB["id"], timeout=0.05)
    assert isinstance(info.value, TimeoutError) and info.value.job.status == "pending"


def test_list_yields_pages_until_the_last():
    def a(request):
        after = request.url.params.get("after")
        if after is None:
            return httpx.Response(200, json={"jobs": [JOB], "next": "p2"})
        return httpx.Response(200, json={"jobs": [{**JOB, "id": "ef" * 20}], "next": None})

    with client(Mesh(a=a)) as cl:
        pages = list(cl.list(status="pending"))
    assert [[j.id for j in p] for p in pages] == [["ab" * 20], ["ef" * 20]]
    assert pages[0].next_cursor == "p2" and pages[1].next_cursor is None


def test_submit_many_batches_keys_every_item_and_returns_problems_in_place():
    bodies = []

    def a(request):
        items = json.loads(request.content)
        bodies.append(items)
        return httpx.Response(202, json=[
            {**JOB, "id": f"{i:040x}"} if item["type"] == "echo" else
            {"type": C.PROBLEM_PREFIX + "unknown-job-type", "title": "t", "status": 422, "detail": "type: no"}
            for i, item in enumerate(items)
        ])

    specs = [{"type": "echo", "payload": i} for i in range(150)] + [("nope", 1), {"type": "echo", "payload": 0,
                                                                                  "idempotency_key": "mine"}]
    with client(Mesh(a=a)) as cl:
        out = cl.submit_many(specs)
    assert len(out) == 152 and [len(b) for b in bodies] == [100, 52]
    assert isinstance(out[150], workmesh.UnknownJobType) and isinstance(out[151], workmesh.Job)
    keys = [item["idempotency_key"] for b in bodies for item in b]
    assert len(set(keys)) == 152 and keys[-1] == "mine"


def test_cancel_resent_after_a_failover_returns_the_cancelled_job():
    mesh = Mesh(a=lambda r: problem(409, "conflict", "job is already cancelled") if r.method == "POST"
                else httpx.Response(200, json={**JOB, "status": "cancelled"}))
    with client(mesh) as cl:
        assert cl.cancel(JOB["id"]).status == "cancelled"
    mesh = Mesh(a=lambda r: problem(409, "conflict", "job is already done") if r.method == "POST"
                else httpx.Response(200, json={**JOB, "status": "done"}))
    with client(mesh) as cl, pytest.raises(workmesh.Conflict):
        cl.cancel(JOB["id"])


async def test_the_async_client_mirrors_the_blocking_one():
    mesh = Mesh(a=httpx.ConnectError("refused"), b=lambda r: httpx.Response(200 if r.method == "GET" else 202,
                                                                            json={**JOB, "status": "done"}))
    async with workmesh.AsyncClient(["http://a:1", "http://b:1"], transport=httpx.MockTransport(mesh)) as cl:
        job = await cl.submit("echo", 1)
        assert (await cl.wait(job.id, timeout=5)).status == "done"
        assert (await cl.get(job.id)).id == job.id
        assert mesh.seen[-1][0] == "b"
    assert asyncio.iscoroutinefunction(workmesh.AsyncClient.submit_many)
