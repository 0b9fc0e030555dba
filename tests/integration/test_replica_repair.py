"""Replica-set repair with real processes (issue 13, item 3).

Eight node processes over real UDP, SQLite and HTTP, none with a worker
slot, so a submitted job stays pending. Three of the job's five placed
replicas are removed for good, one after another: SIGKILLed and their data
directories deleted (a wiped node would come back with a new id). After each
removal the job's remaining replicas must agree, through the job's
consensus, on a new replica set without the removed node (read from the
job's signed facts, as any client can). Then a node with a worker slot
joins, and the job, whose original replicas are now mostly gone, completes.
The replicas re-announce the pending job at most 2 s apart
(``--reannounce-max``), so the worker hears of it soon after it joins rather
than at the next of the default 30 s re-announcements.
"""

from __future__ import annotations

import base64
import shutil

import pytest
from procmesh import ProcMesh, ProcNode, _free_pair, http, wait_until

from workmesh.node import facts as F
from workmesh.node import lifecycle

REMOVALS = 3


def current(node: ProcNode, job_id: str) -> lifecycle.JobState | None:
    """The job's state derived here from the signed facts a node serves."""
    code, doc = http("GET", f"{node.url}/jobs/{job_id}?history=1")
    if code != 200:
        return None
    facts = [F.decode(base64.b64decode(f["raw_b64"])) for f in doc["history"]]
    return lifecycle.derive(facts, job_id=bytes.fromhex(job_id))


@pytest.mark.slow
def test_three_of_five_replicas_removed_for_good_one_after_another_and_the_job_completes(tmp_path):
    args = ["--workers", "0", "--replicas", "5", "--repair-after", "2s", "--lease-seconds", "2", "--reannounce-max", "2s"]
    mesh = ProcMesh(8, tmp_path, node_args=args)
    mesh.start()
    try:
        entry = mesh.nodes[0]
        code, doc = http("POST", f"{entry.url}/jobs", {"type": "echo", "payload": {"survives": True}})
        assert code == 202, (code, doc)
        job_id = doc["id"]
        placed = current(entry, job_id)
        assert placed is not None and len(placed.replicas) == 5 and placed.epoch == 0
        removed: list[str] = []
        for step in range(1, REMOVALS + 1):
            state = current(entry, job_id)
            victim = next(
                n
                for n in mesh.live()
                if n is not entry and bytes.fromhex(n.node_id) in set(state.replicas) & set(placed.replicas)
            )
            victim.kill()
            shutil.rmtree(victim.data_dir)  # gone for good: a wiped node returns with a new id
            removed.append(victim.node_id)

            def repaired():
                s = current(entry, job_id)
                ids = {r.hex() for r in s.replicas} if s is not None else set()
                return s if s is not None and s.epoch == step and not ids & set(removed) else None

            after = wait_until(repaired, 60, f"replica set repaired after removal {step}")
            live_ids = {n.node_id for n in mesh.live()}
            assert {r.hex() for r in after.replicas} <= live_ids  # every member is a live node
            assert after.status == lifecycle.PENDING
        original = {r.hex() for r in placed.replicas}
        assert len(original & set(removed)) == REMOVALS
        # A worker joins; the job, three of whose five original replicas are gone, completes.
        p2p, api = _free_pair()
        worker = ProcNode(len(mesh.nodes), tmp_path / "worker", p2p, api, ["--workers", "1", "--replicas", "5", "--reannounce-max", "2s"])
        mesh.nodes.append(worker)
        worker.start([entry.p2p])
        worker.wait_ready()
        code, doc = http("GET", f"{entry.url}/jobs/{job_id}?wait=60", timeout_s=90)
        assert code == 200 and doc["status"] == "done", doc
        assert doc["result"] == {"survives": True} and doc["worker"] == worker.node_id
        final = current(mesh.nodes[-1], job_id)
        print(f"\nFIGURES repair: epochs {final.epoch}, removed {len(removed)} of the 5 placed replicas, done by the new worker")
    finally:
        mesh.stop()
