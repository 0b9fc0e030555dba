"""Clock and partition faults in the deterministic simulator, CI-sized (8 nodes, 8 jobs, fixed seeds).

Uses only the public ``simulate(Params)`` API. The ``drift`` scenario runs
every node's monotonic clock up to ``drift_max`` fast or slow and steps random
nodes' wall clocks forward and back by up to ``wall_step_ms_max``; the rows
below step by up to 1, 5 and 30 s (inside the 60 s window of signed
datagrams) and run clock rates at the edge of ``LeaseRules.rate_tolerance``.
The ``partition`` scenario downs single links, splits the mesh 60/40 for
several leases, and heals.

Each row asserts the promises (no accepted job lost, every accepted job
decided, no invariant violation, no node error) and, for clock faults (no
crash, no split), no duplicate execution: leases are judged on monotonic
clocks only, so a wall-clock step must not cause one. Each row prints its
figures; docs/guarantees.md quotes them.
"""

from __future__ import annotations

import pytest

from simulations.sim.driver import simulate
from simulations.sim.scenarios import Params

ROWS = [
    pytest.param("drift", 11, {"wall_step_ms_max": 1_000}, id="wall-step-1s"),
    pytest.param("drift", 12, {"wall_step_ms_max": 5_000}, id="wall-step-5s"),
    pytest.param("drift", 13, {"wall_step_ms_max": 30_000}, id="wall-step-30s"),
    pytest.param("drift", 14, {"wall_step_ms_max": 30_000, "drift_max": 0.02}, id="rate-at-tolerance"),
    pytest.param("partition", 3, {}, id="partition-seed3"),
    pytest.param("partition", 4, {}, id="partition-seed4"),
]


@pytest.mark.parametrize(("scenario", "seed", "extra"), ROWS)
def test_fault_row_keeps_every_promise(scenario, seed, extra):
    f = simulate(Params(scenario=scenario, nodes=8, jobs=8, seed=seed, liveness_deadline_s=60.0, **extra))
    print(
        f"\nFIGURES sim {scenario} seed={seed} {extra}: accepted={f['jobs_accepted']} lost={f['jobs_lost']} "
        f"by_status={f['jobs_by_status']} violations={f['invariant_violations']} "
        f"duplicates={f['duplicate_execution_jobs']} (overlapping {f['duplicate_overlapping']}) "
        f"executions={f['executions']} decided_after_heal_s={f['decided_within_s_after_heal']} "
        f"latency_p95_s={f['latency_s_p95']} wall_s={f['wall_s']}"
    )
    assert f["jobs_accepted"] > 0
    assert f["violations"] == [], f["violations"]
    assert f["jobs_lost"] == 0, f["lost_job_ids"]
    assert f["jobs_destroyed"] == 0, f["destroyed_job_ids"]
    decided = sum(f["jobs_by_status"].get(s, 0) for s in ("done", "failed", "cancelled"))
    assert decided == f["jobs_accepted"], f["jobs_by_status"]
    assert f["node_errors"] == 0, f["node_error_samples"]
    assert f["record_availability"] == 1.0
    if scenario == "drift":
        assert f["duplicate_execution_jobs"] == 0
