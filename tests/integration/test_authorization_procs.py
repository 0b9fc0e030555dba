"""Real node processes: an open mesh whose nodes hold the API token, and a
node without it bootstrapped to a member. Through its own REST API (no
token needed there: it has none) it tries to inject a job and to cancel a
member's job; both fail, the members count the attempts, and the members'
job ends done."""

from __future__ import annotations

import pytest

from procmesh import ProcMesh, ProcNode, _free_pair, http, wait_until

pytestmark = pytest.mark.slow

TOKEN = "operators-only"


def test_a_node_without_the_token_can_neither_inject_nor_cancel(tmp_path, monkeypatch):
    monkeypatch.delenv("WORKMESH_API_TOKEN", raising=False)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    mesh = ProcMesh(3, tmp_path / "mesh", node_args=["--api-token", TOKEN, "--workers", "1", "--replicas", "3"])
    with mesh:
        members = list(mesh.nodes)
        p2p, api = _free_pair()
        outsider = ProcNode(3, mesh.base / "node3", p2p, api, ["--replicas", "3", "--workers", "1"])
        mesh.nodes.append(outsider)
        outsider.start([members[0].p2p])
        outsider.wait_ready(30)

        code, job = http("POST", f"{members[0].url}/jobs", {"type": "sleep", "payload": {"seconds": 3}}, headers=auth)
        assert code == 202, job
        # Cancel through the outsider: it must ask the submitter, which ignores it.
        code, doc = http("POST", f"{outsider.url}/jobs/{job['id']}/cancel", {}, timeout_s=30)
        assert code == 503 and "submitter did not answer" in doc["detail"], (code, doc)
        # Inject: the outsider accepts nothing the members would store.
        code, doc = http("POST", f"{outsider.url}/jobs", {"type": "echo", "payload": {"evil": 1}}, timeout_s=30)
        assert code == 503 and "replicas stored the job" in doc["detail"], (code, doc)

        code, done = http("GET", f"{members[1].url}/jobs/{job['id']}?wait=30", timeout_s=40)
        assert code == 200 and done["status"] == "done" and done["result"] == {"slept": 3}, done
        counted = [http("GET", f"{m.url}/status")[1]["dht"] for m in members]
        refused = sum(d.get("dropped_unauthorized", 0) for d in counted)
        ignored = sum(d.get("dropped_unauthorized_reply", 0) for d in counted)
        print(f"members refused {refused} acting requests and ignored {ignored} replies of the outsider")
        assert counted[0].get("unauthorized_cancel_job", 0) >= 1
        assert sum(d.get("unauthorized_store", 0) for d in counted) >= 1
        for m in members:
            peers = {p["node_id"] for p in http("GET", f"{m.url}/status")[1]["peer_list"]}
            assert outsider.node_id not in peers
