"""The larger clock and partition matrix behind docs/guarantees.md (the CI-sized rows are
tests/sim/test_fault_matrix.py).

    python simulations/instruments/faults.py [--nodes 16] [--jobs 30] [--seeds 1 2 3] [--json out.json]

For each seed it runs the simulator's ``drift`` scenario with wall-clock steps
of up to 1, 5 and 30 s (and clock rates at the 2% tolerance), and the
``partition`` scenario, then prints one line of figures per run and a total:
accepted, lost, by status, invariant violations, duplicate executions
(overlapping), time to decide every job after the heal, p95 latency. Exit
status 1 when any run lost a job, violated an invariant or logged a node error.
Only the public ``simulate(Params)`` API is used. Each run is a fresh process
with ``PYTHONHASHSEED=0`` (as ``simulations/sim/run.py`` does): runs in one
process were seen to depend on the runs before them, so only a fresh process
replays a row from its seed alone (``--one SCENARIO SEED '{"extra": ...}'``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from simulations.sim.driver import simulate  # noqa: E402
from simulations.sim.scenarios import Params  # noqa: E402

ROWS = [
    ("drift", {"wall_step_ms_max": 1_000}),
    ("drift", {"wall_step_ms_max": 5_000}),
    ("drift", {"wall_step_ms_max": 30_000}),
    ("drift", {"wall_step_ms_max": 30_000, "drift_max": 0.02}),
    ("partition", {}),
]


def one(scenario: str, seed: int, extra: dict, nodes: int, jobs: int) -> dict:
    f = simulate(Params(scenario=scenario, nodes=nodes, jobs=jobs, seed=seed, liveness_deadline_s=120.0, **extra))
    return {
        "scenario": scenario, "seed": seed, **extra,
        "accepted": f["jobs_accepted"], "lost": f["jobs_lost"], "lost_job_ids": f["lost_job_ids"],
        "by_status": f["jobs_by_status"], "violations": f["invariant_violations"],
        "duplicates": f["duplicate_execution_jobs"], "duplicates_overlapping": f["duplicate_overlapping"],
        "executions": f["executions"], "decided_after_heal_s": f["decided_within_s_after_heal"],
        "latency_p95_s": f["latency_s_p95"], "record_availability": f["record_availability"],
        "node_errors": f["node_errors"], "wall_s": f["wall_s"],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", type=int, default=16)
    ap.add_argument("--jobs", type=int, default=30)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--one", nargs=3, metavar=("SCENARIO", "SEED", "EXTRA_JSON"), default=None)
    args = ap.parse_args(argv)
    if args.one:
        scenario, seed, extra = args.one
        print(json.dumps(one(scenario, int(seed), json.loads(extra), args.nodes, args.jobs)), flush=True)
        return 0
    out, bad = [], 0
    for seed in args.seeds:
        for scenario, extra in ROWS:
            done = subprocess.run(
                [sys.executable, __file__, "--nodes", str(args.nodes), "--jobs", str(args.jobs),
                 "--one", scenario, str(seed), json.dumps(extra)],
                env={**os.environ, "PYTHONHASHSEED": "0"}, capture_output=True, text=True, check=True,
            )
            row = json.loads(done.stdout.strip().splitlines()[-1])
            bad += bool(row["lost"] or row["violations"] or row["node_errors"])
            out.append(row)
            print(json.dumps(row), flush=True)
    total = {k: sum(r[k] for r in out) for k in ("accepted", "lost", "violations", "duplicates", "duplicates_overlapping", "node_errors")}
    print("TOTAL", json.dumps({"runs": len(out), **total}))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
