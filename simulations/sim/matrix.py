"""Run scenarios across seeds and print one table, with a replay command for every failure.

    python simulations/sim/matrix.py --scenarios steady,crash --seeds 1-8 --nodes 12 --jobs 12
        [--deadline-s 60] [--loss P] [--parallel K] [--out DIR]

Each run is ``run.py`` in its own process (so each gets ``PYTHONHASHSEED=0``
and a fresh memory), its figures in ``OUT/SCENARIO-sSEED.json``. A run
*fails* when it lost or destroyed a job, broke an invariant, logged a node
error, or read back fewer than all accepted jobs (record availability < 1).
The table sums each scenario's runs; every failing run is listed with the
command that replays it. Exit status 0 when no run failed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RUN = REPO / "simulations" / "sim" / "run.py"
RUN_TIMEOUT_S = 900  # one run's wall-time bound


def seeds_of(text: str) -> list[int]:
    """``1-8`` or ``1,3,5`` (or a mix) as a list of seeds."""
    out: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return out


def failures(f: dict) -> list[str]:
    """Why one run's figures fail the promises (empty: it kept them)."""
    why = []
    if f["jobs_lost"] or f["jobs_destroyed"]:
        why.append(f"lost {f['jobs_lost']} destroyed {f['jobs_destroyed']}"
                   + (f" ({f['jobs_lost_quorum_gone']} lost a majority of replicas)" if f.get("jobs_lost_quorum_gone") else ""))
    if f["invariant_violations"]:
        why.append(f"violations {f['violations_by_kind']}")
    if f["node_errors"]:
        why.append(f"node errors {f['node_errors']}")
    if f["record_availability"] < 1.0:
        why.append(f"availability {f['record_availability']} {f['final_reads']}")
    return why


def replay_command(scenario: str, seed: int, args: argparse.Namespace) -> str:
    # Exactly the arguments run_one gave the run (--loss too: it is a parameter
    # of every run, and a replay without it is another run).
    return (
        f"python simulations/sim/run.py --scenario {scenario} --nodes {args.nodes} --jobs {args.jobs} "
        f"--seed {seed} --deadline-s {args.deadline_s:g} --loss {args.loss:g} --trace trace.txt"
    )


def run_one(scenario: str, seed: int, args: argparse.Namespace, out: Path) -> dict | None:
    path = out / f"{scenario}-s{seed}.json"
    cmd = [
        sys.executable, str(RUN), "--scenario", scenario, "--nodes", str(args.nodes), "--jobs", str(args.jobs),
        "--seed", str(seed), "--deadline-s", str(args.deadline_s), "--loss", str(args.loss),
        "--out", str(out / f"{scenario}-s{seed}"), "--json", str(path), "--quiet", "--no-chart",
    ]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False)
    if not path.exists():
        print(f"[matrix] {scenario} seed {seed}: no figures (exit {done.returncode})\n{done.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(path.read_text())


def table(results: dict[tuple[str, int], dict | None], scenarios: list[str], seeds: list[int]) -> list[str]:
    head = (
        "| scenario | runs failed | accepted (503) | lost / destroyed | violations | jobs run twice "
        "| availability (min) | p95 latency s (max) | lookup success | wall s per run |"
    )
    lines = [head, "|" + "---|" * 10]
    for s in scenarios:
        runs = [results.get((s, n)) for n in seeds]
        ok = [f for f in runs if f is not None]
        if not ok:
            lines.append(f"| {s} | {len(runs)} (no figures) |" + " |" * 8)
            continue
        failed = sum(1 for f in runs if f is None or failures(f))
        rates = [f["lookup_success_rate"] for f in ok if f["lookup_success_rate"] is not None]
        lines.append(
            f"| {s} | {failed} of {len(runs)} "
            f"| {sum(f['jobs_accepted'] for f in ok)} ({sum(f['jobs_rejected_503'] for f in ok)}) "
            f"| {sum(f['jobs_lost'] for f in ok)} / {sum(f['jobs_destroyed'] for f in ok)} "
            f"| {sum(f['invariant_violations'] for f in ok)} "
            f"| {sum(f['duplicate_execution_jobs'] for f in ok)} "
            f"| {min(f['record_availability'] for f in ok):.2f} "
            f"| {max(f['latency_s_p95'] for f in ok):.1f} "
            f"| {(sum(rates) / len(rates)) if rates else float('nan'):.3f} "
            f"| {sum(f['wall_s'] for f in ok) / len(ok):.1f} |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenarios", default="steady,crash,churn,partition,loss,drift")
    ap.add_argument("--seeds", default="1-8", help="e.g. 1-8 or 1,4,9")
    ap.add_argument("--nodes", type=int, default=12)
    ap.add_argument("--jobs", type=int, default=12)
    ap.add_argument("--deadline-s", type=float, default=60.0)
    ap.add_argument("--loss", type=float, default=0.1, help="the loss scenario's datagram loss")
    ap.add_argument("--parallel", type=int, default=1, help="runs at once (each is one process)")
    ap.add_argument("--out", default=str(REPO / "simulations" / "out" / "matrix"))
    args = ap.parse_args(argv)
    scenarios = [s for s in args.scenarios.split(",") if s]
    seeds = seeds_of(args.seeds)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(s, n) for s in scenarios for n in seeds]
    print(f"[matrix] {len(jobs)} runs: {','.join(scenarios)} x seeds {args.seeds}, {args.nodes} nodes, {args.jobs} jobs", file=sys.stderr)
    results: dict[tuple[str, int], dict | None] = {}
    started = time.perf_counter()

    def one(key: tuple[str, int]) -> None:
        f = run_one(*key, args, out)
        results[key] = f
        verdict = "no figures" if f is None else ("FAIL " + "; ".join(failures(f)) if failures(f) else "ok")
        print(f"[matrix] {len(results)}/{len(jobs)} {key[0]} seed {key[1]}: {verdict} "
              f"(wall {time.perf_counter() - started:.0f}s)", file=sys.stderr, flush=True)

    with ThreadPoolExecutor(max(1, args.parallel)) as pool:
        list(pool.map(one, jobs))
    print("\n".join(table(results, scenarios, seeds)))
    bad = [(k, f) for k, f in sorted(results.items()) if f is None or failures(f)]
    for (s, n), f in bad:
        print(f"\nFAIL {s} seed {n}: {'; '.join(failures(f)) if f else 'no figures'}")
        print(f"  replay: {replay_command(s, n, args)}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
