"""CPU per job of a small mesh run in one process: an A/B instrument for node code.

    python simulations/instruments/cpu_per_job.py [--nodes 3] [--jobs 400] [--drain 1000] [--json out.json]
                                      [--profile out.prof]
    PYTHONPATH=/path/to/other/checkout python simulations/instruments/cpu_per_job.py   # the other side of an A/B

Why it exists: the bench (``bench.py``) runs every node as its own process,
which is what a user deploys, but on a shared 2-core machine its figures move
by 10-20% from run to run, more than most single changes are worth. Here
every node runs in this process, in one event loop (uvloop when installed),
over real UDP and real HTTP on loopback, and the client is in the same loop:
``time.process_time()`` over a phase is exactly the CPU the nodes and the
client spent on it, whatever else the machine is doing.

Two phases, each bounded in count and time:

* sequential: ``--jobs`` echo jobs, one at a time, each submitted and waited
  for in one request (``POST /jobs?wait=``) to the first node: CPU per job
  and the latency p50 of a job on an idle mesh;
* drain: ``--drain`` echo jobs submitted 64 at a time round-robin to all
  nodes, then every result read (``GET /jobs/{id}?wait=``): CPU per job and
  jobs per second on one core.

What it does not show, and the multi-process mesh pays: the nodes share the
process-wide cache of verified signatures, so each fact is verified once
instead of once per replica (``verifications`` is 0 here; a 3-node mesh makes
18 per job, about 1.1 ms of CPU), and there are no context switches between
nodes. Use it to compare two versions of node code, not as the mesh's cost.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

# A checkout named by PYTHONPATH wins over this one (the other side of an A/B).
_HERE = str(Path(__file__).resolve().parents[2])
if os.environ.get("PYTHONPATH"):
    sys.path.append(_HERE)
else:
    sys.path.insert(0, _HERE)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))
from procmesh import free_port  # noqa: E402

SUBMIT_CONCURRENCY = 64
PHASE_DEADLINE_S = 300.0


async def _start_node(index: int, data_dir: str, workers: int, bootstrap: str | None):
    from workmesh.api.app import create_app, run_api
    from workmesh.node.cli import build_parser, config_from_args
    from workmesh.node.node import Node

    argv = ["start", "--data-dir", f"{data_dir}/n{index}", "--workers", str(workers), "--p2p-port", "0",
            "--api-port", str(free_port(socket.SOCK_STREAM)), "--log-level", "warning"]
    config = config_from_args(build_parser().parse_args(argv + (["--bootstrap", bootstrap] if bootstrap else [])))
    node = Node(config)
    await node.start()
    app = create_app(node, api_token=None, max_body_bytes=config.max_body_bytes,
                     rate_limit_per_s=config.rate_limit_per_s, logger=node.log)
    runner = await run_api(app, config.host, config.api_port)
    await node.join()
    return node, runner, f"http://127.0.0.1:{config.api_port}"


def _slots(nodes: int) -> list[int]:
    """2 worker slots per core in all, as the bench gives a mesh (the first node gets the rest)."""
    total = 2 * (os.cpu_count() or 1)
    base, extra = divmod(total, nodes)
    return [max(1, base + (1 if i < extra else 0)) for i in range(nodes)]


async def _measure(args: argparse.Namespace) -> dict:
    import aiohttp

    from workmesh.node.logs import configure

    configure("json", "warning")
    started = []
    with tempfile.TemporaryDirectory(prefix="workmesh-cpu-") as data_dir:
        try:
            for i, slots in enumerate(_slots(args.nodes)):
                boot = None if i == 0 else f"127.0.0.1:{started[0][0].dht.address[1]}"
                started.append(await _start_node(i, data_dir, slots, boot))
            urls = [url for _, _, url in started]
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=SUBMIT_CONCURRENCY)) as http:
                await _wait_for_peers(http, urls, args.nodes - 1)
                return await _phases(http, urls, args)
        finally:
            for node, runner, _ in started:
                await runner.cleanup()
                await node.stop()


async def _wait_for_peers(http, urls: list[str], want: int) -> None:
    deadline = time.monotonic() + 30.0
    while True:
        counts = [(await (await http.get(f"{u}/status")).json()).get("peers", 0) for u in urls]
        if all(c >= want for c in counts):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"peers did not converge: {counts}")
        await asyncio.sleep(0.1)


async def _one(http, url: str, i: int) -> None:
    async with http.post(f"{url}/jobs", params={"wait": "10"}, json={"type": "echo", "payload": {"i": i}}) as resp:
        doc = await resp.json()
    if doc.get("status") != "done" or doc.get("result") != {"i": i}:
        raise RuntimeError(f"job {i} ended {doc.get('status')}: {doc}")


async def _drain(http, urls: list[str], count: int, end: float) -> None:
    ids: list[str | None] = [None] * count
    todo = iter(range(count))

    async def submitter() -> None:
        for i in todo:
            async with http.post(f"{urls[i % len(urls)]}/jobs", json={"type": "echo", "payload": {"i": i}}) as resp:
                ids[i] = (await resp.json())["id"]

    async def collector() -> None:
        for i in todo:
            while time.monotonic() < end:
                async with http.get(f"{urls[i % len(urls)]}/jobs/{ids[i]}", params={"wait": "10"}) as resp:
                    if (await resp.json()).get("status") == "done":
                        break
            else:
                raise TimeoutError(f"job {i} not done by the deadline")

    await asyncio.gather(*(submitter() for _ in range(SUBMIT_CONCURRENCY)))
    todo = iter(range(count))
    await asyncio.gather(*(collector() for _ in range(SUBMIT_CONCURRENCY)))


async def _phases(http, urls: list[str], args: argparse.Namespace) -> dict:
    for i in range(20):  # warm-up: connections, caches, the first derive of each code path
        await _one(http, urls[0], i)
    profiler = cProfile.Profile() if args.profile else None
    figures: dict = {"nodes": args.nodes, "code": str(Path(sys.modules["workmesh.node"].__file__).resolve().parent.parent)}

    cpu0, wall0 = time.process_time(), time.perf_counter()
    latencies = []
    if profiler:
        profiler.enable()
    for i in range(args.jobs):
        t = time.perf_counter()
        await _one(http, urls[0], i)
        latencies.append(time.perf_counter() - t)
        if time.perf_counter() - wall0 > PHASE_DEADLINE_S:
            break
    cpu1, wall1 = time.process_time(), time.perf_counter()
    latencies.sort()
    done = len(latencies)
    figures["sequential"] = {"jobs": done, "cpu_ms_per_job": round((cpu1 - cpu0) / done * 1e3, 3),
                             "p50_ms": round(latencies[done // 2] * 1e3, 3)}
    if args.drain:
        await _drain(http, urls, args.drain, time.monotonic() + PHASE_DEADLINE_S)
        cpu2, wall2 = time.process_time(), time.perf_counter()
        figures["drain"] = {"jobs": args.drain, "cpu_ms_per_job": round((cpu2 - cpu1) / args.drain * 1e3, 3),
                            "jobs_per_s": round(args.drain / (wall2 - wall1), 1)}
    if profiler:
        profiler.disable()
        profiler.dump_stats(args.profile)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=400, help="sequential jobs (bounded)")
    parser.add_argument("--drain", type=int, default=1000, help="jobs in the drain (0: none)")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    parser.add_argument("--profile", type=Path, help="cProfile both phases into this file (pstats)")
    args = parser.parse_args(argv)
    if args.nodes < 1 or args.jobs < 1 or args.drain < 0:
        parser.error("--nodes and --jobs must be positive, --drain not negative")
    try:
        import uvloop

        figures = uvloop.run(_measure(args))
    except ImportError:
        figures = asyncio.run(_measure(args))
    seq = figures["sequential"]
    print(f"code: {figures['code']}")
    print(f"sequential: {seq['jobs']} jobs, cpu {seq['cpu_ms_per_job']:.3f} ms/job, p50 {seq['p50_ms']:.3f} ms")
    if "drain" in figures:
        d = figures["drain"]
        print(f"drain:      {d['jobs']} jobs, cpu {d['cpu_ms_per_job']:.3f} ms/job, {d['jobs_per_s']:.1f} jobs/s")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
