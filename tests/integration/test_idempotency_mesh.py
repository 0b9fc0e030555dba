"""Idempotency across the mesh, over raw HTTP: one Idempotency-Key is one job on every node."""

import uuid

import pytest

from procmesh import ProcMesh, http, wait_until

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    m = ProcMesh(3, tmp_path_factory.mktemp("idem"), node_args=["--workers", "1", "--lease-seconds", "2"])
    m.start()
    yield m
    m.stop()


def post(node, body, key):
    return http("POST", f"{node.url}/jobs", body, headers={"Idempotency-Key": key})


def test_the_same_key_and_body_give_one_job_id_on_three_nodes_and_another_body_gets_422(mesh):
    key = f"order-{uuid.uuid4()}"
    body = {"type": "sleep", "payload": {"seconds": 0.5}}
    answers = [post(node, body, key) for node in mesh.nodes]
    assert all(code in (200, 202) for code, _ in answers), answers
    job_id = answers[0][1]["id"]
    assert {doc["id"] for _, doc in answers} == {job_id}, answers
    for node in mesh.nodes:
        code, doc = post(node, {"type": "sleep", "payload": {"seconds": 0.6}}, key)
        assert code == 422, doc
        assert doc["type"] == "urn:workmesh:problem:idempotency-key-reused" and doc["status"] == 422
        assert job_id in doc["detail"]
    # One job ran, once.
    done = wait_until(lambda: (lambda d: d if d[1]["status"] == "done" else None)(http("GET", f"{mesh.nodes[2].url}/jobs/{job_id}?wait=5")), 20, "done")
    assert done[1]["attempts"] == 1


def test_resubmitting_a_finished_job_returns_its_real_status(mesh):
    key = str(uuid.uuid4())
    body = {"type": "echo", "payload": {"n": 1}}
    code, doc = http("POST", f"{mesh.nodes[0].url}/jobs?wait=10", body, headers={"Idempotency-Key": key})
    assert code == 200 and doc["status"] == "done", doc
    for node in mesh.nodes:
        code, again = post(node, body, key)
        assert code == 200 and again["status"] == "done" and again["id"] == doc["id"] and again["result"] == {"n": 1}


def test_a_keyed_job_is_cancelled_from_a_node_that_did_not_accept_it(mesh):
    key = str(uuid.uuid4())
    code, doc = post(mesh.nodes[0], {"type": "sleep", "payload": {"seconds": 30}, "max_attempts": 1}, key)
    assert code == 202, doc
    code, cancelled = http("POST", f"{mesh.nodes[2].url}/jobs/{doc['id']}/cancel", {"reason": "test"})
    assert code == 200 and cancelled["status"] == "cancelled", cancelled


def test_a_keyed_job_is_cancelled_after_the_node_that_accepted_it_restarted(mesh):
    key = str(uuid.uuid4())
    code, doc = post(mesh.nodes[1], {"type": "sleep", "payload": {"seconds": 60}, "max_attempts": 1}, key)
    assert code == 202, doc
    mesh.restart(mesh.nodes[1])
    mesh.wait_peers(20)
    code, cancelled = http("POST", f"{mesh.nodes[0].url}/jobs/{doc['id']}/cancel", {"reason": "after restart"})
    assert code == 200 and cancelled["status"] == "cancelled", cancelled
