"""Where a workmesh job's time goes: a cProfile of every node, grouped by layer.

    python simulations/instruments/profile_workmesh.py [--nodes 3] [--jobs 1000] [--kind noop]
                                           [--out /tmp/wm-profile] [--no-profile]

Why it is built this way: it starts a real mesh exactly as ``bench.py`` does
(one subprocess per node, loopback UDP and HTTP) with ``WORKMESH_PROFILE`` set,
which makes ``node/cli.py`` run each node under cProfile and dump the stats
when the node stops. It drives a bounded load (sequential latency jobs, then a
drain), reads every node's ``/status`` counters before and after, stops the
nodes with SIGTERM so they write their profiles, and prints:

* the self time of every function, summed over all nodes and grouped into
  layers (HTTP, encoding, signing/verifying, DHT round trips, gossip, claims,
  results, sqlite, logging, event loop), per job;
* the cost per job: signatures, verifications, MACs, datagrams and bytes,
  against the floor of one signature per fact and one verification per
  replica (see ``docs/performance.md``);
* the resident memory of each node before any job (idle) and at the end.

``--no-profile`` measures the counters without cProfile's overhead. cProfile
slows pure-Python code more than C code, so the shares are indicative.
"""

from __future__ import annotations

import argparse
import json
import os
import pstats
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402

# (layer, substrings of "file:function"); the first match wins, so order matters.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("signing/verifying", ("nacl/", "crypto/identity.py", "_sodium", "crypto_sign", "crypto_scalarmult",
                           "blake2b", "compare_digest")),
    ("encoding", ("msgpack", "crypto/canonical.py", "node/facts.py", "json/", "_json", "dht/envelope.py",
                  "dht/records.py")),
    ("sqlite", ("sqlite3", "dht/storage.py")),
    ("HTTP", ("aiohttp", "api/", "multidict", "yarl", "http/")),
    ("gossip", ("node/gossip.py", "node/rendezvous.py")),
    ("claims", ("node/worker.py", "node/claims.py", "node/leases.py", "node/replica.py", "node/handlers.py")),
    ("results", ("node/lifecycle.py", "node/jobs.py", "node/jobindex.py", "node/node.py")),
    ("DHT round trips", ("dht/", "kademlia", "socket", "sendto", "recvfrom")),
    ("logging", ("structlog", "logging/")),
    ("event loop", ("asyncio", "uvloop", "selectors", "concurrent/", "threading", "<built-in method select")),
)


def layer_of(filename: str, function: str) -> str:
    """The layer a function belongs to (see LAYERS); "other" when none matches."""
    where = f"{filename}:{function}"
    for layer, needles in LAYERS:
        if any(n in where for n in needles):
            return layer
    return "other"


IDLE = "loop idle + uvloop I/O (C)"


def group_profiles(paths: list[Path]) -> tuple[dict[str, float], float, list[tuple[float, str]]]:
    """Self time per layer (s), the total without idle time, and the top functions by self time.

    Built-ins (``~``) that no layer names by itself (``len``, ``sorted``,
    ``dict.get``...) count for the layer of whoever called them, edge by edge.
    The self time of ``asyncio.run`` under uvloop is the C event loop: its
    waiting (cProfile clocks wall time) and its socket I/O; it is its own layer,
    left out of the total.
    """
    stats = pstats.Stats(str(paths[0]))
    for path in paths[1:]:
        stats.add(str(path))
    layers: dict[str, float] = defaultdict(float)
    top = []
    for (filename, _line, function), (_cc, _nc, tottime, _ct, callers) in stats.stats.items():
        if "_lsprof.Profiler" in function:
            continue
        layer = layer_of(filename, function)
        if filename.endswith("asyncio/runners.py") and function == "run":
            layer = IDLE
        if filename == "~" and layer == "other" and callers:
            for (cfile, _cl, cfunc), edge in callers.items():
                layers[layer_of(cfile, cfunc)] += edge[2]
        else:
            layers[layer] += tottime
        top.append((tottime, f"{filename.replace(str(bench.REPO) + '/', '')}:{function}"))
    top.sort(reverse=True)
    return dict(layers), sum(v for k, v in layers.items() if k != IDLE), top[:25]


def _flat(doc: dict[str, Any] | None) -> dict[str, float]:
    """The numeric counters of a /status document, flattened to "section.name"."""
    out: dict[str, float] = {}
    for section, value in (doc or {}).items():
        if isinstance(value, dict):
            out.update((f"{section}.{k}", v) for k, v in value.items() if isinstance(v, int | float))
    return out


def counter_delta(before: list[dict], after: list[dict]) -> dict[str, float]:
    """After minus before, summed over nodes."""
    total: dict[str, float] = defaultdict(float)
    for b, a in zip(before, after):
        fb, fa = _flat(b), _flat(a)
        for key, value in fa.items():
            total[key] += value - fb.get(key, 0)
    return dict(total)


def rss_mib(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def cost_per_job(delta: dict[str, float], jobs: int, replicas: int) -> dict[str, float]:
    """Crypto operations, datagrams and bytes per job, with the floor they are judged against."""
    get = lambda name: delta.get(name, 0.0) / jobs  # noqa: E731
    return {
        "signatures": get("crypto.signatures"),
        "verifications": get("crypto.verify_cache_misses"),
        "verify_cache_hits": get("crypto.verify_cache_hits"),
        "macs": get("crypto.macs"),
        "datagrams": get("dht.datagrams_out"),
        "bytes": get("dht.bytes_out"),
        "facts_stored": get("dht.store_added"),
        # The floor (docs/performance.md): a job is 4 + 2r facts (submit, placement,
        # claim, r lease grants, result, r seals), each signed once and verified
        # once by each replica that did not sign it; three quorum steps (submit,
        # claim, result) each need a request and a reply to the r - 1 other replicas.
        "floor_signatures": 4 + 2 * replicas,
        "floor_verifications": (4 + 2 * replicas) * (replicas - 1),
        "floor_datagrams": 6 * (replicas - 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=1000, help="jobs in the drain (bounded)")
    parser.add_argument("--latency-samples", type=int, default=50)
    parser.add_argument("--kind", choices=("noop", "sha256"), default="noop")
    parser.add_argument("--slots-per-core", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="keep profiles here (default: a temp dir)")
    parser.add_argument("--no-profile", action="store_true", help="counters and memory only")
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="workmesh-profile-"))
    out_dir = args.out or workdir / "profiles"
    out_dir.mkdir(parents=True, exist_ok=True)
    if not args.no_profile:
        os.environ["WORKMESH_PROFILE"] = str(out_dir / "node")
    launcher = bench.Launcher(workdir)
    slots = args.slots_per_core * (os.cpu_count() or 1)
    driver = bench.WorkmeshDriver(args.nodes, launcher, workdir / "mesh", slots)
    report: dict[str, Any] = {"nodes": args.nodes, "jobs": args.jobs, "kind": args.kind, "profiled": not args.no_profile}
    try:
        procs = driver.start()
        time.sleep(1.0)  # let the nodes settle after the join
        report["idle_rss_mib"] = [rss_mib(p.popen.pid) for p in procs]
        before = [bench._get_json(f"{u}/status") for u in driver._urls]
        lat = driver.latency(args.kind, args.latency_samples, 120.0)
        sessions = {p.session for p in procs}
        cpu0, t0 = bench.session_usage(sessions)[0], time.monotonic()
        drained = driver.drain(args.kind, args.jobs, 300.0)
        report["drain_s"] = time.monotonic() - t0
        report["cpu_ms_per_job"] = 1000 * (bench.session_usage(sessions)[0] - cpu0) / max(1, drained.done)
        after = [bench._get_json(f"{u}/status") for u in driver._urls]
        report["end_rss_mib"] = [rss_mib(p.popen.pid) for p in procs]
        done = drained.done + len(lat.samples_s)
        report["drain"] = {"done": drained.done, "wrong": drained.wrong, "failures": drained.failures,
                           "jobs_per_s": drained.done / report["drain_s"]}
        report["latency_p50_ms"] = 1000 * (bench.percentile(lat.samples_s, 50) or 0)
        delta = counter_delta(before, after)
        replicas = min(5, args.nodes)
        report["per_job"] = cost_per_job(delta, max(1, done), replicas)
        report["counters"] = delta
    finally:
        launcher.stop_all()  # SIGTERM: each node writes its profile on the way out
    if not args.no_profile:
        paths = sorted(out_dir.glob("node.*"))
        if paths:
            layers, total, top = group_profiles(paths)
            jobs = max(1, args.jobs + args.latency_samples)
            report["profile_ms_per_job"] = {k: round(1000 * v / jobs, 3) for k, v in
                                            sorted(layers.items(), key=lambda kv: -kv[1])}
            report["profile_total_ms_per_job"] = round(1000 * total / jobs, 3)
            report["top_functions_ms_per_job"] = [(round(1000 * t / jobs, 3), name) for t, name in top]
    print(json.dumps({k: v for k, v in report.items() if k != "counters"}, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    if args.out is None:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
