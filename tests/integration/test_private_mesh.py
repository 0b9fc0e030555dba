"""A private mesh of real node processes: members hold K1, strangers do not.

The issue's first "Show" item: a mesh started with ``--mesh-key K1``, plus a
node with another key and one with none, bootstrapped to a member. The
strangers never become peers, a job they accept never shows on a member, the
members keep running jobs, and the members' drop counters show the
strangers' datagrams.
"""

from __future__ import annotations

import pytest

from procmesh import ProcMesh, ProcNode, _free_pair, http, wait_until
from workmesh.crypto.meshkey import write_mesh_key_file

pytestmark = pytest.mark.slow


def stranger(mesh: ProcMesh, index: int, args: list[str]) -> ProcNode:
    p2p, api = _free_pair()
    node = ProcNode(index, mesh.base / f"node{index}", p2p, api, args)
    mesh.nodes.append(node)  # stopped with the mesh
    node.start([mesh.nodes[0].p2p])
    node.wait_ready(30)
    return node


def status(node: ProcNode) -> dict:
    code, doc = http("GET", f"{node.url}/status")
    assert code == 200
    return doc


def test_strangers_never_join_a_private_mesh_and_members_keep_working(tmp_path):
    k1, k2 = tmp_path / "k1", tmp_path / "k2"
    write_mesh_key_file(k1)
    write_mesh_key_file(k2)
    mesh = ProcMesh(3, tmp_path / "mesh", node_args=["--mesh-key", str(k1), "--workers", "1", "--replicas", "3"])
    with mesh:
        members = list(mesh.nodes)
        other = stranger(mesh, 3, ["--mesh-key", str(k2), "--replicas", "3"])
        keyless = stranger(mesh, 4, ["--replicas", "3"])
        strangers = {other.node_id, keyless.node_id}
        # Both strangers sent the member their bootstrap pings; they were dropped unanswered.
        wait_until(lambda: status(members[0])["dht"].get("dropped_not_member", 0) >= 2, 10, "strangers counted")
        # A stranger may accept a job (it thinks itself a mesh of one) or refuse it; either way
        # no member ever hears of it.
        code, doc = http("POST", f"{keyless.url}/jobs", {"type": "echo", "payload": {"from": "stranger"}})
        stray_id = doc.get("id") if code == 202 else None
        # The members keep running jobs.
        for i in range(3):
            code, job = http("POST", f"{members[i].url}/jobs?wait=20", {"type": "echo", "payload": {"i": i}}, timeout_s=40)
            assert code in (200, 202), job
            code, job = http("GET", f"{members[(i + 1) % 3].url}/jobs/{job['id']}?wait=20", timeout_s=40)
            assert code == 200 and job["status"] == "done" and job["result"] == {"i": i}, job
        for node in members:
            doc = status(node)
            assert doc["peers"] == 2, doc["peer_list"]
            assert not strangers & {p["node_id"] for p in doc["peer_list"]}
            if stray_id is not None:
                code, _ = http("GET", f"{node.url}/jobs/{stray_id}")
                assert code in (404, 503)
        for node in (other, keyless):
            assert status(node)["peers"] == 0
        assert status(members[0])["dht"]["mesh_keys"] == 1 and status(keyless)["dht"]["mesh_keys"] == 0
        dropped = [status(n)["dht"].get("dropped_not_member", 0) for n in members]
        print(f"members' dropped_not_member: {dropped}; stray job accepted: {stray_id is not None}")
        assert dropped[0] >= 2
