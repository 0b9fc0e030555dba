"""Cost per fact of signing and verifying, record format v1 against v2 batches, in one process.

    python simulations/instruments/batch_sign_bench.py [--rounds 40] [--v1-rev b7fb1f4]

v1 (``node/facts.py`` at ``--v1-rev``, the last commit with one signature
per fact, loaded beside the current one) signs and verifies every fact
alone. v2 signs a batch of n facts with one signature (``facts.sign_batch``)
and verifies each fact alone with its Merkle proof, from the viewpoint of a
replica that has seen none of them (the cache of verified signatures is
emptied before each batch, so its first fact pays the one verification).
For n in 1, 10 and 100 the two are measured alternately (in turns of
100 facts, each side first in every other round), ``--rounds`` times; the best time of each (the least disturbed by other load on the
machine) is printed in microseconds per fact with the ratio v2 / v1.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(_ROOT))

from workmesh.crypto import identity as ci  # noqa: E402
from workmesh.node import facts as F  # noqa: E402

SIZES = (1, 10, 100)
FACTS_PER_ROUND = 100  # a multiple of every size: a short measurement, less often preempted


def load_v1(rev: str):
    source = subprocess.run(["git", "-C", str(_ROOT), "show", f"{rev}:node/facts.py"], check=True,
                            capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "facts_v1.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("facts_v1", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["facts_v1"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def bodies(mod, job_id: bytes, worker: bytes, start: int) -> list[tuple[str, object]]:
    """Facts a replica signs for many jobs in one turn: lease grants and votes, alternately."""
    out = []
    for i in range(FACTS_PER_ROUND):
        if i % 2:
            out.append((mod.GRANT, mod.Grant(job_id, mod.LEASE, 1, worker, start + i)))
        else:
            out.append((mod.BALLOT, mod.BallotStep(job_id, mod.VOTE, 1, 0, worker, (start + i).to_bytes(32, "big"), (), start + i)))
    return out


def _verify_batches(decode, signed: list, key: bytes, n: int) -> float:
    """Seconds to decode every fact, the verify cache emptied before each batch of ``n``
    (a replica meets each batch once)."""
    t0 = time.perf_counter()
    for i in range(0, len(signed), n):
        ci.forget_verified()
        for fact in signed[i : i + n]:
            decode(fact.raw, key=key)
    return time.perf_counter() - t0


def run_v1(mod, me: ci.Identity, items, key: bytes, n: int) -> tuple[float, float, int]:
    t0 = time.perf_counter()
    signed = [mod.sign(me, kind, body) for kind, body in items]
    t1 = time.perf_counter()
    return t1 - t0, _verify_batches(mod.decode, signed, key, n), sum(len(f.raw) for f in signed)


def run_v2(me: ci.Identity, items, key: bytes, n: int) -> tuple[float, float, int]:
    t0 = time.perf_counter()
    signed = []
    for i in range(0, len(items), n):
        signed += F.sign_batch(me, items[i : i + n])
    t1 = time.perf_counter()
    return t1 - t0, _verify_batches(F.decode, signed, key, n), sum(len(f.raw) for f in signed)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--v1-rev", default="b7fb1f4", help="a commit whose node/facts.py is format v1")
    args = ap.parse_args()
    v1 = load_v1(args.v1_rev)
    me = ci.Identity.from_seed(b"\x21" * 32)
    submitter = ci.Identity.from_seed(b"\x22" * 32)
    worker = ci.Identity.from_seed(b"\x23" * 32).node_id
    spec = F.Submit("echo", b"{}", 3, 10_000, 300_000, 3, 2, bytes(16), 1)
    job1, job2 = v1.sign(submitter, v1.SUBMIT, spec).job_id, F.sign(submitter, F.SUBMIT, spec).job_id
    best: dict[tuple[str, int], list[float]] = {}
    size: dict[tuple[str, int], float] = {}
    for r in range(args.rounds):
        for n in SIZES:
            # fresh bodies each round: Ed25519 is deterministic, and a signature made before would be cached
            first_v1 = r % 2 == 0  # alternate the order: neither side always runs first
            a = b = None
            for side in ("v1", "v2") if first_v1 else ("v2", "v1"):
                if side == "v1":
                    a = run_v1(v1, me, bodies(v1, job1, worker, r * 10_000_000 + n * 10_000), job1, n)
                else:
                    b = run_v2(me, bodies(F, job2, worker, r * 10_000_000 + n * 10_000 + 5_000_000), job2, n)
            for name, (s, v, nbytes) in (("v1", a), ("v2", b)):
                old = best.get((name, n), [float("inf")] * 2)
                best[name, n] = [min(old[0], s), min(old[1], v)]
                size[name, n] = nbytes / FACTS_PER_ROUND
    us = 1e6 / FACTS_PER_ROUND
    print(f"per fact, best of {args.rounds} rounds of {FACTS_PER_ROUND} facts (lease grants and votes), v1 = {args.v1_rev}")
    print(f"{'batch':>5}  {'v1 sign':>8}  {'v2 sign':>8}  {'ratio':>6}  {'v1 verify':>9}  {'v2 verify':>9}  {'ratio':>6}"
          f"  {'v1 both':>8}  {'v2 both':>8}  {'ratio':>6}  {'v1 B':>5}  {'v2 B':>5}")
    for n in SIZES:
        (s1, v1t), (s2, v2t) = best["v1", n], best["v2", n]
        print(f"{n:>5}  {s1 * us:8.1f}  {s2 * us:8.1f}  {s2 / s1:6.2f}  {v1t * us:9.1f}  {v2t * us:9.1f}  {v2t / v1t:6.2f}"
              f"  {(s1 + v1t) * us:8.1f}  {(s2 + v2t) * us:8.1f}  {(s2 + v2t) / (s1 + v1t):6.2f}"
              f"  {size['v1', n]:5.0f}  {size['v2', n]:5.0f}")
    print("(us per fact: sign = making it, verify = a replica decoding it alone; B = bytes per fact on the wire)")


if __name__ == "__main__":
    main()
