"""Our signed DHT beside the unmodified kademlia package: same machine, same run, one table.

    python simulations/instruments/bench_dht.py [--nodes 50] [--ops 500] [--concurrency 1] [--seed 1] [--json out.json]

Why it is built this way:
* Both meshes run in this one process and one event loop, on real UDP sockets
  on 127.0.0.1, one after the other (never at once, so neither steals the
  other's CPU). Ours: ``node.node.Node`` with the job-fact policy and SQLite
  stores in a temporary directory (``workers=0``: no job execution).
  Theirs: ``kademlia.network.Server`` 2.2.3 as published, in-memory storage.
* The payload is the same for both: one signed job submission (about 200
  bytes), keyed by its job id. Ours stores it as a fact on the r=5 closest
  nodes and answers once a quorum (3) stored; theirs ``set()``s it on the k
  closest and answers when every store returned.
* A store succeeds when the system says so (ours: ``stored_on >= quorum``;
  theirs: ``set()`` returned True, which it also does when every store failed,
  see DESIGN-NOTES). A lookup succeeds only when the exact bytes come back
  (ours: the submit fact is among the merged records; theirs: ``get()`` equals
  the stored value), read from a node other than the writer.
* Latency is per operation (``perf_counter``) with ``--concurrency`` operations
  in flight (1 = sequential, the clean figure); CPU is this process's CPU time
  over the phase, per operation. Loops are bounded: every operation has a
  timeout, and everything started is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))

from kademlia.network import Server  # noqa: E402

from workmesh.crypto.identity import Identity  # noqa: E402
from workmesh.node import facts as F  # noqa: E402
from workmesh.node.config import NodeConfig  # noqa: E402
from workmesh.node.logs import configure  # noqa: E402
from workmesh.node.node import Node  # noqa: E402
from stats import percentile  # noqa: E402

OP_TIMEOUT_S = 30.0


@dataclass
class Phase:
    latencies_ms: list[float] = field(default_factory=list)
    ok: int = 0
    total: int = 0
    wall_s: float = 0.0
    cpu_s: float = 0.0

    def figures(self) -> dict[str, float]:
        nan = float("nan")
        return {
            "p50_ms": percentile(self.latencies_ms, 50, nan),
            "p99_ms": percentile(self.latencies_ms, 99, nan),
            "success_pct": 100.0 * self.ok / max(1, self.total),
            "ops_per_s": self.total / self.wall_s if self.wall_s else float("nan"),
            "cpu_ms_per_op": 1000.0 * self.cpu_s / max(1, self.total),
        }


@dataclass
class Result:
    system: str
    nodes: int
    join_s: float
    store: dict[str, float]
    lookup: dict[str, float]


def make_values(ops: int, seed: int) -> list[tuple[bytes, bytes]]:
    """(key, value): signed job submissions keyed by their job id."""
    author = Identity.from_seed(seed.to_bytes(32, "big"))
    out = []
    for i in range(ops):
        body = F.Submit("echo", b'{"i":%d}' % i, 3, 10_000, 60_000, 5, 3, i.to_bytes(16, "big"), 1_700_000_000_000)
        fact = F.sign(author, F.SUBMIT, body)
        out.append((fact.job_id, fact.raw))
    return out


async def run_phase(ops, concurrency: int) -> Phase:
    """``ops`` are zero-argument coroutine functions returning True on success."""
    phase = Phase(total=len(ops))
    sem = asyncio.Semaphore(concurrency)

    async def one(op) -> None:
        async with sem:
            started = time.perf_counter()
            try:
                ok = await asyncio.wait_for(op(), OP_TIMEOUT_S)
            except Exception:  # a crash or timeout of the system under test is a failed op
                ok = False
            phase.latencies_ms.append(1000.0 * (time.perf_counter() - started))
            phase.ok += bool(ok)

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(one(op) for op in ops))
    phase.wall_s = time.perf_counter() - wall
    phase.cpu_s = time.process_time() - cpu
    return phase


def plan(values, n: int, seed: int) -> list[tuple[bytes, bytes, int, int]]:
    """(key, value, writer index, reader index): reader != writer."""
    rng = random.Random(seed)
    out = []
    for key, value in values:
        writer = rng.randrange(n)
        reader = (writer + rng.randrange(1, n)) % n
        out.append((key, value, writer, reader))
    return out


async def bench_ours(n: int, work, concurrency: int) -> Result:
    with tempfile.TemporaryDirectory(prefix="bench-dht-") as tmp:
        nodes: list[Node] = []
        try:
            started = time.perf_counter()
            for i in range(n):
                node = Node(NodeConfig(data_dir=f"{tmp}/n{i}", workers=0, reannounce_first_s=3600.0))
                await node.start()
                nodes.append(node)
            for node in nodes[1:]:
                await node.join([nodes[0].dht.address])
            join_s = time.perf_counter() - started
            quorum = nodes[0].config.quorum
            facts = {key: F.decode(value, key=key) for key, value, _, _ in work}

            def store(key, writer):
                async def op():
                    outcome = await nodes[writer].dht.store(key, [facts[key]])
                    return outcome.stored_on >= quorum
                return op

            def lookup(key, reader):
                async def op():
                    records, _ = await nodes[reader].dht.fetch(key)
                    return any(r.record_id == facts[key].fact_id for r in records)
                return op

            stores = await run_phase([store(k, w) for k, _, w, _ in work], concurrency)
            lookups = await run_phase([lookup(k, r) for k, _, _, r in work], concurrency)
        finally:
            for node in nodes:
                await node.stop()
    return Result("workmesh", n, join_s, stores.figures(), lookups.figures())


async def bench_kademlia(n: int, work, concurrency: int) -> Result:
    servers: list[Server] = []
    try:
        started = time.perf_counter()
        for _ in range(n):
            server = Server()
            await server.listen(0, interface="127.0.0.1")
            servers.append(server)
        boot = servers[0].transport.get_extra_info("sockname")[:2]
        for server in servers[1:]:
            await server.bootstrap([boot])
        join_s = time.perf_counter() - started

        def store(key, value, writer):
            async def op():
                return await servers[writer].set(key, value) is True
            return op

        def lookup(key, value, reader):
            async def op():
                return await servers[reader].get(key) == value
            return op

        stores = await run_phase([store(k, v, w) for k, v, w, _ in work], concurrency)
        lookups = await run_phase([lookup(k, v, r) for k, v, _, r in work], concurrency)
    finally:
        for server in servers:
            server.stop()
    return Result("kademlia 2.2.3", n, join_s, stores.figures(), lookups.figures())


ROWS = (
    ("store", "p50_ms", "p50 ms"),
    ("store", "p99_ms", "p99 ms"),
    ("store", "success_pct", "success %"),
    ("store", "ops_per_s", "ops/s"),
    ("store", "cpu_ms_per_op", "cpu ms/op"),
    ("lookup", "p50_ms", "p50 ms"),
    ("lookup", "p99_ms", "p99 ms"),
    ("lookup", "success_pct", "success %"),
    ("lookup", "ops_per_s", "ops/s"),
    ("lookup", "cpu_ms_per_op", "cpu ms/op"),
)


def table(ours: Result, theirs: Result) -> str:
    lines = [f"{'op':<7} {'metric':<10} {'workmesh':>10} {'kademlia':>10} {'ours/theirs':>12}"]
    rows = [("join", "s total", ours.join_s, theirs.join_s)]
    rows += [(op, label, getattr(ours, op)[key], getattr(theirs, op)[key]) for op, key, label in ROWS]
    for op, label, a, b in rows:
        ratio = a / b if b else float("nan")
        lines.append(f"{op:<7} {label:<10} {a:>10.2f} {b:>10.2f} {ratio:>12.2f}")
    return "\n".join(lines)


async def main_async(args) -> dict:
    values = make_values(args.ops, args.seed)
    work = plan(values, args.nodes, args.seed)
    ours = await bench_ours(args.nodes, work, args.concurrency)
    theirs = await bench_kademlia(args.nodes, work, args.concurrency)
    print(f"{args.nodes} nodes per mesh on 127.0.0.1, {args.ops} stores then {args.ops} lookups, "
          f"concurrency {args.concurrency}, Python {sys.version.split()[0]}")
    print(table(ours, theirs))
    return {"args": vars(args), "results": [asdict(ours), asdict(theirs)]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=50)
    parser.add_argument("--ops", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=1, help="operations in flight (1 = sequential)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    if args.nodes < 2 or args.ops < 1 or args.concurrency < 1:
        parser.error("need --nodes >= 2, --ops >= 1, --concurrency >= 1")
    configure("console", "error")
    logging.basicConfig(level=logging.ERROR)  # kademlia logs every lost reply at WARNING
    report = asyncio.run(main_async(args))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
