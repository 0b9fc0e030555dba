"""A mesh whose stores fill up keeps running jobs (real UDP and SQLite,
in-process nodes): decided jobs make room before their retention passes.

A replica signs about four facts per job it holds (a lease grant, a vote, a
seal, and its share of submissions and claims), and the records one author
may have in a store are budgeted (``StorageLimits.records_per_author_max``,
100,000 by default). Before, nothing but the retention (a week) freed room:
a 3-node mesh filled that budget after some 23,000 jobs, and from then on
every replica refused the grants a job needs, so accepted jobs waited for
ever. This mesh has a budget of 300 records per author, full after about 70 jobs.
"""

from __future__ import annotations

from tests.integration.test_job_facts import three_replicas
from workmesh.dht.records import StorageLimits


async def test_a_mesh_whose_stores_fill_up_drops_decided_jobs_and_runs_every_new_one(tmp_path):
    limits = StorageLimits(records_per_author_max=300)
    async with three_replicas(tmp_path, workers_on_first=2, store_limits=limits) as nodes:
        for i in range(200):
            view = await nodes[i % 3].submit("echo", {"i": i})
            done = await nodes[i % 3].get(bytes.fromhex(view.id), wait_s=20.0)
            assert (done.status, done.result) == ("done", {"i": i}), f"job {i} of 200: {done.status}"
        early = sum(n.retention.counters["jobs_dropped_early"] for n in nodes)
        assert early > 0  # room was made: 200 jobs do not fit a budget of 300 records
        for node in nodes:
            budget = node.store.budget()
            assert budget["authors_records_max"] <= limits.records_per_author_max
