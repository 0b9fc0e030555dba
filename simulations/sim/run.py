"""Run one deterministic simulation of a workmesh mesh.

    python simulations/sim/run.py --scenario NAME --nodes N --jobs J --seed S
        [--load-s T] [--loss P] [--out DIR] [--json out.json] [--chart out.png] [--trace out.txt]

Scenarios: steady, crash, churn, partition, loss, drift, clockstep (see scenarios.py).
The run prints its seed, a progress line every 10 s of wall time, and ends
with a summary table; it writes ``figures.json``, ``chart.png`` (when
matplotlib is installed: the ``sim`` extra) and ``summary.txt`` into
``--out`` (default ``simulations/out/sim-SCENARIO-NODESn-sSEED``);
``--json`` and ``--chart`` put those two elsewhere. ``--seed S`` replays a
run exactly (same trace hash). The process re-executes itself once with
``PYTHONHASHSEED=0`` so that no set or dict ordering can differ between runs.
Exit status: 0 when no job was lost and no invariant was violated, 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from simulations.sim.driver import simulate  # noqa: E402
from simulations.sim.report import summary_table, write_chart, write_json  # noqa: E402
from simulations.sim.scenarios import SCENARIOS, Params  # noqa: E402


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenario", choices=sorted(SCENARIOS), default="steady")
    ap.add_argument("--nodes", type=int, default=16)
    ap.add_argument("--jobs", type=int, default=30)
    ap.add_argument("--seed", type=int, default=None, help="default: a random seed, printed")
    ap.add_argument("--load-s", type=float, default=None, help="virtual seconds of load (default: max(30, jobs/(0.2*nodes)))")
    ap.add_argument("--loss", type=float, default=0.1, help="datagram loss of the loss scenario (0.05-0.2)")
    ap.add_argument("--churn", type=float, default=0.3, help="fraction of nodes replaced in the churn scenario")
    ap.add_argument("--workers", type=int, default=2, help="handler slots per node")
    ap.add_argument("--replicas", type=int, default=5, help="replicas per job (r); the quorum is a majority")
    ap.add_argument("--job-mix", choices=["mixed", "fail"], default="mixed", help="mixed: work, sha256 and 5%% fail jobs; fail: only fail jobs with three attempts")
    ap.add_argument("--deadline-s", type=float, default=300.0, help="virtual seconds after healing for every job to be decided")
    ap.add_argument("--sample-s", type=float, default=1.0, help="time-series step (virtual seconds)")
    ap.add_argument("--out", default=None, help="directory for figures.json, chart.png, summary.txt (default: simulations/out/sim-SCENARIO-NODESn-sSEED)")
    ap.add_argument("--json", dest="json_path", default=None, help="write the figures here instead of OUT/figures.json")
    ap.add_argument("--chart", dest="chart_path", default=None, help="write the chart here instead of OUT/chart.png")
    ap.add_argument("--no-chart", action="store_true", help="skip the chart (saves importing matplotlib)")
    ap.add_argument("--trace", dest="trace_path", default=None, help="write every trace line here")
    ap.add_argument("--profile", default=None, help="write a cProfile of the run here (pstats format)")
    ap.add_argument("--quiet", action="store_true", help="no progress lines")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.seed is None:
        args.seed = int.from_bytes(os.urandom(4), "big")
    params = Params(
        scenario=args.scenario,
        nodes=args.nodes,
        jobs=args.jobs,
        seed=args.seed,
        load_s=args.load_s,
        loss=args.loss,
        churn=args.churn,
        workers=args.workers,
        replicas=args.replicas,
        job_mix=args.job_mix,
        liveness_deadline_s=args.deadline_s,
        sample_s=args.sample_s,
    )
    print(f"[sim] scenario={params.scenario} nodes={params.nodes} jobs={params.jobs} seed={params.seed} "
          f"(replay: --seed {params.seed})", file=sys.stderr, flush=True)
    trace_out = open(args.trace_path, "w") if args.trace_path else None
    profiler = None
    if args.profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    try:
        figures = simulate(params, trace_out=trace_out, progress=not args.quiet)
    finally:
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(args.profile)
        if trace_out is not None:
            trace_out.close()
    table = summary_table(figures)
    print(table)
    for line in figures["violations"]:
        print(f"violation: {line}")
    out = Path(args.out) if args.out else REPO / "simulations" / "out" / f"sim-{params.scenario}-{params.nodes}n-s{params.seed}"
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.txt").write_text(table + "\n" + "".join(f"violation: {v}\n" for v in figures["violations"]))
    json_path = Path(args.json_path) if args.json_path else out / "figures.json"
    chart_path = Path(args.chart_path) if args.chart_path else out / "chart.png"
    write_json(figures, json_path)
    wrote = False if args.no_chart else write_chart(figures, chart_path)
    print(f"[sim] figures: {json_path}", file=sys.stderr)
    if wrote:
        print(f"[sim] chart: {chart_path}", file=sys.stderr)
    elif not args.no_chart:
        print("[sim] chart: not written, matplotlib is not installed (pip install -e '.[sim]')", file=sys.stderr)
    ok = figures["jobs_lost"] == 0 and figures["jobs_destroyed"] == 0 and figures["invariant_violations"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    if os.environ.get("PYTHONHASHSEED") != "0":
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "PYTHONHASHSEED": "0"})
    sys.exit(main())
