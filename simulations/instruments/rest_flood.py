"""REST floods against real node processes on loopback: what the read path costs and keeps.

    python simulations/instruments/rest_flood.py random-gets [--count 50000] [--wait 0.1]
    python simulations/instruments/rest_flood.py long-polls [--count 2000] [--long-polls-max 1000]
    python simulations/instruments/rest_flood.py read-cost [--nodes 25] [--count 200]
    python simulations/instruments/rest_flood.py all [--json out.json]

* ``random-gets``: ``count`` GETs of random job ids with ``?wait=``, 64 at a
  time, against one node of a small mesh; the node's resident memory (VmRSS
  of its process) when it started, after a warm-up, and after the flood once
  its open waits drained. A leak of one waiter per id shows as growth that
  scales with ``count``; the node's own count of watched jobs must be 0.
* ``long-polls``: one job that never runs (no worker in the mesh), and
  ``count`` concurrent ``GET /jobs/{id}?wait=60`` connections; ``/healthz``
  probed meanwhile. Reports the answers by status, whether every 429/503 said
  ``Retry-After``, and the liveness latencies; then cancels the job so the
  held polls end.
* ``read-cost``: DHT requests one random-id ``GET`` costs (lookups, record
  requests, every request sent), from the node's ``/status`` counters over
  ``count`` sequential GETs on a mesh larger than k (so reads look nodes up).

Everything binds to 127.0.0.1, every loop is bounded by a count and a
deadline, and every process started is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))

from procmesh import ProcMesh, http, wait_until  # noqa: E402

DEADLINE_S = 600.0  # any one scenario stops issuing requests after this


def rss_bytes(pid: int) -> int:
    """Resident memory of a process (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def _raise_open_files(want: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))


def _status(url: str) -> dict:
    code, doc = http("GET", f"{url}/status", timeout_s=10)
    if code != 200:
        raise RuntimeError(f"/status answered {code}")
    return doc


async def _flood_gets(url: str, count: int, wait_s: float, concurrency: int, deadline: float) -> dict[int, int]:
    codes: dict[int, int] = {}
    ids = iter(range(count))
    timeout = aiohttp.ClientTimeout(total=wait_s + 30)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=concurrency)) as session:

        async def worker() -> None:
            for _ in ids:
                if time.monotonic() > deadline:
                    return
                job_id = os.urandom(20).hex()
                try:
                    async with session.get(f"{url}/jobs/{job_id}", params={"wait": f"{wait_s:g}"}) as resp:
                        await resp.read()
                        codes[resp.status] = codes.get(resp.status, 0) + 1
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    codes[0] = codes.get(0, 0) + 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return codes


def random_gets(mesh: ProcMesh, count: int, wait_s: float = 0.1, warmup: int = 2000,
                concurrency: int = 64, deadline_s: float = DEADLINE_S, settle_s: float = 0.0) -> dict:
    """``settle_s``: after the flood, watch the node's memory this long (the
    DHT's replay cache keeps message ids for its 60 s window, then drops them)."""
    node = mesh.nodes[1]
    url, pid = node.url, node.proc.pid
    rss_start = rss_bytes(pid)
    started = time.monotonic()
    deadline = started + deadline_s
    warm = asyncio.run(_flood_gets(url, warmup, wait_s, concurrency, deadline))
    rss_warm = rss_bytes(pid)
    before = _status(url)
    flood_started = time.monotonic()
    codes = asyncio.run(_flood_gets(url, count, wait_s, concurrency, deadline))
    flood_s = time.monotonic() - flood_started
    # The node answered every request; its waits end with them.
    after = wait_until(lambda: _drained(_status(url)), 30, "open waits drained")
    rss_drained = rss_end = rss_bytes(pid)
    settle_until = time.monotonic() + settle_s
    while time.monotonic() < settle_until:  # a measurement over time, not a wait for a condition
        time.sleep(min(5.0, max(0.0, settle_until - time.monotonic())))
        rss_end = rss_bytes(pid)
    done = sum(codes.values())
    return {
        "requests": done,
        "warmup_requests": sum(warm.values()),
        "codes": codes,
        "seconds": round(flood_s, 2),
        "requests_per_s": round(done / flood_s, 1) if flood_s else None,
        "rss_start_mib": round(rss_start / 2**20, 1),
        "rss_after_warmup_mib": round(rss_warm / 2**20, 1),
        "rss_drained_mib": round(rss_drained / 2**20, 1),
        "settle_s": settle_s,
        "rss_end_mib": round(rss_end / 2**20, 1),
        "growth_vs_start": round(rss_end / rss_start - 1, 4),
        "growth_vs_warmup": round(rss_end / rss_warm - 1, 4),
        "jobs_watched_after": (after.get("waits") or {}).get("jobs_watched"),
        "reads": after["jobs_api"]["reads"] - before["jobs_api"]["reads"],
    }


def _drained(status: dict) -> dict | None:
    """The status document once no wait is open on the node, else None."""
    waits = status.get("waits")
    api = status.get("rest")
    if waits is None or api is None:  # a node without these counters (older code)
        return status
    return status if waits["waiting"] == 0 and api["long_polls"] == 0 else None


async def _long_polls(url: str, job_id: str, count: int, wait_s: float, deadline: float) -> dict:
    results: list[tuple[int, str | None, float]] = []
    health: list[float] = []
    timeout = aiohttp.ClientTimeout(total=wait_s + 30)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as session:
        started = time.monotonic()

        async def poll() -> None:
            t0 = time.monotonic()
            try:
                async with session.get(f"{url}/jobs/{job_id}", params={"wait": f"{wait_s:g}"}) as resp:
                    await resp.read()
                    results.append((resp.status, resp.headers.get("Retry-After"), time.monotonic() - t0))
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                results.append((0, type(exc).__name__, time.monotonic() - t0))

        polls = [asyncio.create_task(poll()) for _ in range(count)]
        # Until every poll is either answered or held by the node (or the deadline).
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as probe:
            held = 0
            while time.monotonic() < min(deadline, started + wait_s - 5):
                async with probe.get(f"{url}/status") as resp:
                    held = (await resp.json()).get("rest", {}).get("long_polls", 0)
                if held + len(results) >= count:
                    break
                await asyncio.sleep(0.2)
            # Liveness while the node holds its long polls, on new connections.
            for _ in range(20):
                t0 = time.monotonic()
                try:
                    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as fresh:
                        async with fresh.get(f"{url}/healthz") as resp:
                            ok = resp.status == 200 and (await resp.json()) == {"ok": True}
                    health.append(time.monotonic() - t0 if ok else float("inf"))
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    health.append(float("inf"))
                await asyncio.sleep(0.05)
            answered_early = list(results)
            async with probe.post(f"{url}/jobs/{job_id}/cancel", json={"reason": "flood over"}) as resp:
                cancelled = resp.status
        await asyncio.wait(polls, timeout=max(1.0, deadline - time.monotonic()))
        for task in polls:
            task.cancel()
    codes: dict[int, int] = {}
    for code, _, _ in results:
        codes[code] = codes.get(code, 0) + 1
    refused = [(c, ra) for c, ra, _ in results if c in (429, 503)]
    early = [t for c, _, t in answered_early if c in (429, 503)]
    finite = [h for h in health if h != float("inf")]
    return {
        "connections": count,
        "held_by_node": held,
        "codes": codes,
        "refused": len(refused),
        "refused_with_retry_after": sum(1 for _, ra in refused if ra and ra.isdigit()),
        "refused_answer_s_max": round(max(early), 3) if early else None,
        "healthz_ok": len(finite),
        "healthz_tries": len(health),
        "healthz_ms_p50": round(statistics.median(finite) * 1000, 1) if finite else None,
        "healthz_ms_max": round(max(finite) * 1000, 1) if finite else None,
        "cancel_status": cancelled,
    }


def long_polls(mesh: ProcMesh, count: int, wait_s: float = 60.0, deadline_s: float = DEADLINE_S) -> dict:
    _raise_open_files(count + 512)
    url = mesh.nodes[0].url
    code, job = http("POST", f"{url}/jobs", {"type": "sleep", "payload": {"seconds": 1}})
    if code != 202:
        raise RuntimeError(f"submit answered {code}: {job}")
    out = asyncio.run(_long_polls(url, job["id"], count, wait_s, time.monotonic() + deadline_s))
    out["rest"] = _status(url).get("rest")
    return out


def read_cost(mesh: ProcMesh, count: int) -> dict:
    url = mesh.nodes[len(mesh.nodes) // 2].url
    for _ in range(5):  # warm: the first reads after a join may refresh the routing table
        http("GET", f"{url}/jobs/{os.urandom(20).hex()}")
    before = _status(url)["dht"]
    codes: dict[int, int] = {}
    for _ in range(count):
        code, _ = http("GET", f"{url}/jobs/{os.urandom(20).hex()}")
        codes[code] = codes.get(code, 0) + 1
    after = _status(url)["dht"]

    def per_get(key: str) -> float | None:
        if key not in after:
            return None
        return round((after[key] - before.get(key, 0)) / count, 2)

    return {
        "gets": count,
        "codes": codes,
        "lookups_per_get": per_get("lookups"),
        "record_requests_per_get": per_get("record_requests"),
        "dht_requests_per_get": per_get("requests_out"),
        "peers": after["peers"],
    }


def _mesh(base: Path, nodes: int, args: list[str]) -> ProcMesh:
    return ProcMesh(nodes, base, node_args=["--workers", "0", *args])


@contextlib.contextmanager
def joined(mesh: ProcMesh, peers_min: int, timeout_s: float = 60.0) -> Iterator[ProcMesh]:
    """Start ``mesh`` (each node bootstrapped from node 0) until every node
    knows ``peers_min`` others: a mesh larger than k never has everyone know
    everyone, which ``ProcMesh.start`` waits for."""
    try:
        first = mesh.nodes[0]
        first.start([])
        first.wait_ready(timeout_s)
        for node in mesh.nodes[1:]:
            node.start([first.p2p])
        for node in mesh.nodes[1:]:
            node.wait_ready(timeout_s)
        wait_until(lambda: all(_status(n.url)["peers"] >= peers_min for n in mesh.nodes), timeout_s, "peers joined")
        yield mesh
    finally:
        mesh.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scenario", choices=["random-gets", "long-polls", "read-cost", "all"])
    parser.add_argument("--count", type=int, help="requests (default: 50000, 2000, 200 by scenario)")
    parser.add_argument("--wait", type=float, default=0.1, help="random-gets: ?wait= seconds")
    parser.add_argument("--settle", type=float, default=75.0, help="random-gets: seconds to watch memory after")
    parser.add_argument("--nodes", type=int, default=25, help="read-cost: mesh size (k=20, r=5 by default)")
    parser.add_argument("--node-arg", action="append", default=[], help="extra `workmesh start` argument")
    parser.add_argument("--json", help="write the figures here too")
    args = parser.parse_args(argv)
    out: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="rest-flood-") as tmp:
        base = Path(tmp)
        if args.scenario in ("random-gets", "all"):
            with _mesh(base / "gets", 5, ["--replicas", "3", *args.node_arg]) as mesh:
                out["random_gets"] = random_gets(mesh, args.count or 50_000, args.wait, settle_s=args.settle)
        if args.scenario in ("long-polls", "all"):
            with _mesh(base / "polls", 3, ["--replicas", "3", *args.node_arg]) as mesh:
                out["long_polls"] = long_polls(mesh, args.count or 2000)
        if args.scenario in ("read-cost", "all"):
            with joined(_mesh(base / "cost", args.nodes, args.node_arg), min(args.nodes - 1, 20)) as mesh:
                out["read_cost"] = read_cost(mesh, args.count or 200)
    text = json.dumps(out, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
