"""Cancels racing jobs that are finishing, with one of five nodes SIGKILLed (issue 13).

Five real node processes over real UDP, SQLite and HTTP; one node (never the
submitter) is killed with SIGKILL after the first submissions, so it is down
for every job it was placed on. Fifty sleep jobs of 0.3-1.2 s are submitted
at node 0 and each is cancelled at node 0 at a moment spread around its
finish. Every job must be decided, every live node must show the same
outcome, and a cancel answered ``cancelled`` must hold.
"""

from __future__ import annotations

import random
import threading
import time

import pytest
from procmesh import ProcMesh, http, wait_until

JOBS = 50
TERMINAL = {"done", "failed", "cancelled"}


@pytest.mark.slow
def test_cancels_racing_finishing_jobs_with_a_replica_killed_all_decide_and_agree(tmp_path):
    rng = random.Random(13)
    mesh = ProcMesh(5, tmp_path, node_args=["--workers", "2", "--lease-seconds", "2"])
    mesh.start()
    try:
        submitter = mesh.nodes[0]
        jobs: list[tuple[str, float]] = []
        for i in range(JOBS):
            seconds = round(rng.uniform(0.3, 1.2), 2)
            code, doc = http("POST", f"{submitter.url}/jobs", {"type": "sleep", "payload": {"seconds": seconds}})
            assert code == 202, (code, doc)
            jobs.append((doc["id"], seconds))
            if i == 2:
                mesh.nodes[3].kill()  # a replica of most jobs, down from here on
        answers: dict[str, tuple[int, dict]] = {}

        def cancel(job_id: str, delay_s: float) -> None:
            time.sleep(delay_s)
            answers[job_id] = http("POST", f"{submitter.url}/jobs/{job_id}/cancel", {"reason": "race"}, timeout_s=30)

        threads = [
            threading.Thread(target=cancel, args=(job_id, seconds * rng.uniform(0.6, 1.4)), daemon=True)
            for job_id, seconds in jobs
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not any(t.is_alive() for t in threads)

        def statuses(node) -> dict[str, str] | None:
            out = {}
            for job_id, _ in jobs:
                code, doc = http("GET", f"{node.url}/jobs/{job_id}")
                if code != 200 or doc["status"] not in TERMINAL:
                    return None
                out[job_id] = doc["status"]
            return out

        live = mesh.live()
        views = {n.node_id: wait_until(lambda n=n: statuses(n), 60, "every job decided", interval_s=0.5) for n in live}
        first = views[live[0].node_id]
        assert all(v == first for v in views.values()), views  # every live node agrees
        for job_id, (code, doc) in answers.items():
            if code == 200 and doc.get("status") == "cancelled":
                assert first[job_id] == "cancelled", (job_id, doc)  # an answered cancel holds
        counts = {s: sum(1 for v in first.values() if v == s) for s in TERMINAL}
        print(f"\nFIGURES cancel race, 5 nodes, one killed: {JOBS} jobs {counts}, cancel answers "
              f"{sorted((c, d.get('status', d.get('title'))) for c, d in answers.values())}")
        assert counts["cancelled"] > 0 and counts["done"] > 0  # the race went both ways
    finally:
        mesh.stop()
