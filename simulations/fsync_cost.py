"""What durability costs per job: fsyncs and commit time, with and without group commit.

    python simulations/fsync_cost.py [--jobs 300] [--concurrency 32] [--json out.json]

Every fact a replica stores is on disk before anything that depends on it is
answered (SQLite ``synchronous=FULL``: a COMMIT returns after its fsync).
Two ways to pay for it, both measured here on real SQLite files:

* **per write** (``group_commit=False``): every store a replica answers is
  its own transaction and fsync, on the event loop;
* **group commit** (the default): the writes of one event-loop turn share one
  transaction and one fsync, run in the store's writer thread while the loop
  goes on; every answer that depends on them waits for that commit.

Two phases, each bounded in count and time, each run in both modes:

* ``store``: one replica's store alone, driven the way ``DHTServer`` drives it
  (a merge, then ``await durable()`` before the answer), ``--jobs`` jobs of
  four writes each (the submission and placement, a claim and its grant, a
  result and its seal, the decision noted for retention), ``--concurrency``
  jobs in flight: fsyncs per job, commit ms per job, jobs per second.
* ``mesh``: three in-process nodes over real UDP (one event loop), ``--jobs``
  echo jobs, ``--concurrency`` at once: the same figures for the whole mesh
  (every replica's commits), plus jobs per second.

Figures depend on the disk (an fsync is ~7 ms on the 2-core VM this was
written on, ~0.01 ms without it) and on what else the machine runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from workmesh.crypto.identity import Identity
from workmesh.dht.config import DHTConfig
from workmesh.dht.storage import FactStore
from workmesh.node import facts as F
from workmesh.node import lifecycle
from workmesh.node.config import NodeConfig
from workmesh.node.node import Node

TIME_MAX_S = 300.0  # each phase gives up after this long


def _facts(n: int, author: Identity, worker: Identity, replica: Identity) -> list[list[F.Fact]]:
    """The four writes a replica makes for job ``n``."""
    body = F.Submit("echo", b'{"n":%d}' % n, 3, 10_000, 60_000, 3, 2, n.to_bytes(16, "big"), 1000)
    submit = F.sign(author, F.SUBMIT, body)
    job = submit.job_id
    place = F.sign(author, F.GRANT, F.Grant(job, F.PLACE, 0, replica.node_id * 3, 1000))
    claim = F.sign(worker, F.CLAIM, F.Claim(job, 1, 2000))
    grant = F.sign(replica, F.GRANT, F.Grant(job, F.LEASE, 1, worker.node_id, 2000))
    result = F.sign(worker, F.RESULT, F.Result(job, 1, F.OK, b"{}", (), 3000))
    seal = F.sign(replica, F.GRANT, F.Grant(job, F.SEAL, 1, result.fact_id, 3000))
    return [[submit, place], [claim, grant], [result, seal], []]


async def store_phase(directory: Path, jobs: int, concurrency: int, group: bool) -> dict:
    author, worker, replica = (Identity.from_seed(bytes([i]) * 32) for i in (1, 2, 3))
    writes = [_facts(n, author, worker, replica) for n in range(jobs)]
    store = FactStore(directory / f"store-{group}.sqlite", lambda key, raw: F.decode(raw, key=key), group_commit=group)
    store.open()
    sem = asyncio.Semaphore(concurrency)

    async def one(steps: list[list[F.Fact]]) -> None:
        async with sem:
            key = steps[0][0].job_id
            for step in steps:
                mark = store.write_mark()
                if step:
                    store.merge(key, step)
                else:
                    store.mark_decided(key, 1)
                await store.durable(mark)  # what a replica does before it answers
                await asyncio.sleep(0)  # the next request of this job arrives in a later turn

    started = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(one(w) for w in writes)), TIME_MAX_S)
    wall = time.perf_counter() - started
    stats = store.statistics()
    store.close()
    return _figures(jobs, wall, stats["commits"], stats["commit_ms_total"])


async def mesh_phase(directory: Path, jobs: int, concurrency: int, group: bool) -> dict:
    dht = replace(DHTConfig(), replicas=3, quorum=2)
    nodes = []
    for i in range(3):
        cfg = NodeConfig(data_dir=str(directory / f"mesh-{group}-{i}"), dht=dht, workers=4, group_commit=group)
        node = Node(cfg)
        await node.start()
        nodes.append(node)
    try:
        for node in nodes[1:]:
            await node.join([nodes[0].dht.address])
        deadline = time.monotonic() + 10
        while not all(len(n.dht.router) == 2 and (n is nodes[0] or n.dht.stats["find_node_replies"]) for n in nodes):
            if time.monotonic() > deadline:
                raise RuntimeError("the mesh did not form")
            await asyncio.sleep(0.02)
        before = [n.store.statistics() for n in nodes]
        sem = asyncio.Semaphore(concurrency)

        async def one(n: int) -> str:
            async with sem:
                node = nodes[n % 3]
                try:
                    view = await node.submit("echo", {"n": n})
                    return (await node.get(bytes.fromhex(view.id), wait_s=30)).status
                except Exception as exc:  # a 503: too few replicas answered in time
                    return type(exc).__name__

        started = time.perf_counter()
        statuses = await asyncio.wait_for(asyncio.gather(*(one(n) for n in range(jobs))), TIME_MAX_S)
        wall = time.perf_counter() - started
        after = [n.store.statistics() for n in nodes]
        commits = sum(a["commits"] - b["commits"] for a, b in zip(after, before))
        commit_ms = sum(a["commit_ms_total"] - b["commit_ms_total"] for a, b in zip(after, before))
        out = _figures(jobs, wall, commits, commit_ms)
        out["done"] = sum(s == lifecycle.DONE for s in statuses)
        out["refused"] = sum(s not in lifecycle.TERMINAL and s not in (lifecycle.PENDING, lifecycle.RUNNING) for s in statuses)
        return out
    finally:
        for node in nodes:
            await node.stop()


def _figures(jobs: int, wall_s: float, commits: int, commit_ms: float) -> dict:
    return {
        "jobs": jobs,
        "fsyncs_per_job": round(commits / jobs, 2),
        "commit_ms_per_job": round(commit_ms / jobs, 2),
        "jobs_per_s": round(jobs / wall_s, 1),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--phases", default="store,mesh")
    parser.add_argument("--json")
    args = parser.parse_args()
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="fsync-cost-") as tmp:
        for phase in args.phases.split(","):
            run = store_phase if phase == "store" else mesh_phase
            for group in (True, False):
                name = f"{phase} {'group commit' if group else 'per write'}"
                results[name] = await run(Path(tmp), args.jobs, args.concurrency, group)
                print(f"{name:24s} {results[name]}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
