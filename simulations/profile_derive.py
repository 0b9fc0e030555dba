"""CPU cost of deriving a job's state, before and after, in one process.

    python simulations/profile_derive.py [--base 29fd4eb] [--rounds 30]

Why: ``lifecycle.derive`` runs about 33 times per job over a mesh's nodes
(docs/performance.md, "Where a workmesh job's time goes"), and most calls see
the previous fact set plus one new fact. This builds realistic, really signed
fact sets (a job's life: submit, place, then per attempt a claim, r lease
grants, a renew and its newer replacement, a result; r seals of the final
result) for r = 3 and r = 5, with and without retries, and times three ways a
node derives them, each with the code of ``--base`` (loaded from git into
temporary modules) and with the working tree's code:

* ``whole``: ``derive(facts[:k])`` for every prefix k, a new list each time
  (a read that merges replies, the worker);
* ``local``: facts merged one at a time into a ``FactStore`` and
  ``DerivedStates.local(key)`` after each merge (``Node._on_stored``, reads of
  the local store);
* ``judge``: ``DerivedStates.of(store contents)`` before each merge, as
  ``JobReplica._judge`` does with what it knows;
* ``node``: per fact, the judgement, the merge, ``local`` (``_on_stored``)
  and a read (``reads.read_job``: the local store, then the replicas'
  answer, which holds one fact more than this store); before, reads called
  ``lifecycle.derive`` directly, after they go through the memo (figures per
  fact, four derives each).

Times are the process CPU spent inside the derive calls only (not the
store's merges), best of ``--rounds`` sweeps; every cache of the code
under test is cleared before each sweep (a sweep is one job's life, so what
it caches is what a node would cache while that job runs). The figures are
microseconds per derive and the ratio after/before. Both versions' states are
compared field by field, so a faster but different answer fails loudly.
"""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from workmesh.crypto.identity import Identity  # noqa: E402
from workmesh.dht.storage import FactStore  # noqa: E402
from workmesh.node import derived as new_derived  # noqa: E402
from workmesh.node import facts as F  # noqa: E402
from workmesh.node import lifecycle as new_lifecycle  # noqa: E402

BASE_DEFAULT = "29fd4eb"  # the commit before the derive work (perf-derive's fork point)


def load_old(base: str) -> tuple[types.ModuleType, types.ModuleType]:
    """``node.lifecycle`` and ``node.derived`` as they were at ``base``, as temporary modules."""

    def module(name: str, path: str) -> types.ModuleType:
        source = subprocess.run(["git", "show", f"{base}:{path}"], cwd=ROOT, check=True, capture_output=True, text=True).stdout
        mod = types.ModuleType(name)
        mod.__file__ = f"{base}:{path}"
        sys.modules[name] = mod  # dataclasses look their module up
        exec(compile(source, mod.__file__, "exec"), mod.__dict__)
        return mod

    old_lifecycle = module("_old_lifecycle", "node/lifecycle.py")
    old_derived = module("_old_derived", "node/derived.py")
    old_derived.lifecycle = old_lifecycle  # its derive, not the working tree's
    return old_lifecycle, old_derived


# --------------------------------------------------------------------------
# A job's life, really signed

SUBMITTER = Identity.from_seed(b"\x50" * 32)
REPLICAS = tuple(Identity.from_seed(bytes([1 + i]) * 32) for i in range(5))
WORKERS = tuple(Identity.from_seed(bytes([100 + i]) * 32) for i in range(3))


def job_life(r: int, retries: int, nonce: int) -> list[F.Fact]:
    """The facts of one job in the order a replica stores them."""
    q = r // 2 + 1
    job = F.sign(
        SUBMITTER, F.SUBMIT, F.Submit("echo", b'{"n":1}', retries + 1, 10_000, 60_000, r, q, nonce.to_bytes(16, "big"), 1)
    )
    jid = job.job_id
    replicas = REPLICAS[:r]
    place = F.sign(SUBMITTER, F.GRANT, F.Grant(jid, F.PLACE, 0, b"".join(x.node_id for x in replicas), 1))
    out = [job, place]
    final = None
    for attempt in range(1, retries + 2):
        worker = WORKERS[attempt % len(WORKERS)]
        out.append(F.sign(worker, F.CLAIM, F.Claim(jid, attempt, 10 * attempt)))
        grants = [F.sign(x, F.GRANT, F.Grant(jid, F.LEASE, attempt, worker.node_id, 10 * attempt + 1)) for x in replicas]
        out.extend(grants)
        out.append(F.sign(worker, F.RENEW, F.Renew(jid, attempt, 10 * attempt + 2)))
        out.append(F.sign(worker, F.RENEW, F.Renew(jid, attempt, 10 * attempt + 3)))  # replaces the one before
        ok = attempt == retries + 1
        data = b'{"v":1}' if ok else b'{"error":"boom"}'
        final = F.sign(worker, F.RESULT, F.Result(jid, attempt, F.OK if ok else F.ERROR, data, tuple(grants[:q]), 10 * attempt + 4))
        out.append(final)
    assert final is not None
    out.extend(F.sign(x, F.GRANT, F.Grant(jid, F.SEAL, final.attempt, final.fact_id, 99)) for x in replicas)
    return out


def validator(key: bytes, raw: bytes) -> F.Fact:
    return F.decode(raw, key=key)


# --------------------------------------------------------------------------
# The three ways a node derives


def sweep_whole(lifecycle: types.ModuleType, derived: types.ModuleType, facts: list[F.Fact]) -> tuple[list, float]:
    out, cpu = [], 0.0
    for k in range(1, len(facts) + 1):
        prefix = list(facts[:k])
        t0 = time.process_time()
        out.append(lifecycle.derive(prefix))
        cpu += time.process_time() - t0
    return out, cpu


def sweep_local(lifecycle: types.ModuleType, derived: types.ModuleType, facts: list[F.Fact]) -> tuple[list, float]:
    key = facts[0].job_id
    out, cpu = [], 0.0
    with FactStore(None, validator) as store:
        memo = derived.DerivedStates(store)
        for fact in facts:
            store.merge(key, [fact])
            t0 = time.process_time()
            out.append(memo.local(key))
            cpu += time.process_time() - t0
    return out, cpu


def sweep_judge(lifecycle: types.ModuleType, derived: types.ModuleType, facts: list[F.Fact]) -> tuple[list, float]:
    key = facts[0].job_id
    out, cpu = [], 0.0
    with FactStore(None, validator) as store:
        memo = derived.DerivedStates(store)
        for fact in facts:
            known = [*store.get(key), fact]
            t0 = time.process_time()
            out.append(memo.of(known))
            cpu += time.process_time() - t0
            store.merge(key, [fact])
    return out, cpu


def sweep_node(lifecycle: types.ModuleType, derived: types.ModuleType, facts: list[F.Fact]) -> tuple[list, float]:
    key = facts[0].job_id
    routed = derived is new_derived  # before: reads called lifecycle.derive directly
    out, cpu = [], 0.0
    with FactStore(None, validator) as store:
        memo = derived.DerivedStates(store)
        for i, fact in enumerate(facts):
            known = [*store.get(key), fact]
            t0 = time.process_time()
            out.append(memo.of(known))  # JobReplica._judge
            cpu += time.process_time() - t0
            store.merge(key, [fact])
            fetched = [*store.get(key), *facts[i + 1 : i + 2]]
            t0 = time.process_time()
            out.append(memo.local(key))  # Node._on_stored
            if routed:  # reads.read_job: the local store, then what the replicas answered
                out.append(memo.local(key))
                out.append(memo.of(fetched))
            else:
                out.append(lifecycle.derive(store.get(key)))
                out.append(lifecycle.derive(fetched))
            cpu += time.process_time() - t0
    return out, cpu


SWEEPS: dict[str, Callable[..., tuple[list, float]]] = {
    "whole": sweep_whole,
    "local": sweep_local,
    "judge": sweep_judge,
    "node": sweep_node,
}


def clear(lifecycle: types.ModuleType) -> None:
    reset = getattr(lifecycle, "clear_caches", None)
    if reset is not None:
        reset()


def best_cpu_s(
    old: Callable[[], tuple[list, float]], new: Callable[[], tuple[list, float]], rounds: int, before_new: Callable[[], None]
) -> tuple[float, float]:
    """The least CPU time each of ``old`` and ``new`` reports spending in
    derives over ``rounds`` sweeps, taken in turns so that a change in the
    machine's load hits both alike."""
    best_old = best_new = float("inf")
    for _ in range(rounds):
        best_old = min(best_old, old()[1])
        before_new()
        best_new = min(best_new, new()[1])
    return best_old, best_new


def same(a: object, b: object) -> bool:
    if a is None or b is None:
        return a is b
    return dataclasses.astuple(a) == dataclasses.astuple(b)  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default=BASE_DEFAULT, help="git revision of the 'before' code")
    parser.add_argument("--rounds", type=int, default=30, help="sweeps per figure; the best counts")
    args = parser.parse_args(argv)
    old_lifecycle, old_derived = load_old(args.base)
    cases = {
        "r=3": job_life(3, 0, 1),
        "r=3 2 retries": job_life(3, 2, 2),
        "r=5": job_life(5, 0, 3),
        "r=5 2 retries": job_life(5, 2, 4),
    }
    print(f"before: {args.base}, after: working tree; CPU us per fact (one derive each; node: four), best of {args.rounds} sweeps")
    print(f"{'case':<15} {'facts':>5} {'way':<6} {'before':>9} {'after':>9} {'after/before':>13}")
    ratios: dict[str, list[float]] = {way: [] for way in SWEEPS}
    for name, facts in cases.items():
        for way, sweep in SWEEPS.items():
            got_old = sweep(old_lifecycle, old_derived, facts)[0]
            clear(new_lifecycle)
            got_new = sweep(new_lifecycle, new_derived, facts)[0]
            if not all(same(a, b) for a, b in zip(got_old, got_new, strict=True)):
                raise SystemExit(f"{name} {way}: the states differ")
            t_old, t_new = best_cpu_s(
                lambda: sweep(old_lifecycle, old_derived, facts),
                lambda: sweep(new_lifecycle, new_derived, facts),
                args.rounds,
                lambda: clear(new_lifecycle),
            )
            calls = len(facts)
            ratios[way].append(t_new / t_old)
            print(
                f"{name:<15} {len(facts):>5} {way:<6} {t_old / calls * 1e6:>9.1f} {t_new / calls * 1e6:>9.1f} {t_new / t_old:>13.2f}"
            )
    for way, rs in ratios.items():
        mean = sum(rs) / len(rs)
        print(f"mean after/before, {way}: {mean:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
