"""Per-operation costs of the hot paths a job goes through, in one process.

    python simulations/instruments/profile_micro.py [--rounds 3000]
    python simulations/instruments/profile_micro.py --against /path/to/other/checkout [--rounds 3000] [--repeat 5]

Why: the mesh profile (``profile_workmesh.py``) says which layers a job's time
goes to; this measures the single operations inside them (sealing and opening
an envelope, decoding a fact, storing a fact) so that a change to one of them
is judged before and after in microseconds, next to a reference operation
measured in the same run (a bare msgpack round trip and an Ed25519
verification), so a busy machine shows as a shift of everything.

``--against`` loads the decode path of another checkout (its
``crypto/canonical.py``, ``crypto/identity.py``, ``node/facts.py`` and
``dht/envelope.py``) into this process beside this one, and times each
operation on both, alternating, ``--repeat`` times: it prints the best
microseconds of each side (the least disturbed by other load on the
machine) and their ratio (this / other; below 1 is faster).
Facts signed by either side are the same bytes, so both decode the same input.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parents[2])
sys.path.insert(0, _ROOT)

import msgpack  # noqa: E402
import nacl.signing  # noqa: E402

import workmesh.crypto.identity as ci  # noqa: E402
from workmesh.crypto.canonical import canonical_pack, canonical_unpack  # noqa: E402
from workmesh.crypto.identity import Identity  # noqa: E402
from workmesh.dht.envelope import REQUEST, open_envelope, seal  # noqa: E402
from workmesh.dht.storage import FactStore  # noqa: E402
from workmesh.node import facts as F  # noqa: E402


def per_call_us(fn: Callable[[], object], rounds: int) -> float:
    """Best of three timings of ``rounds`` calls, in microseconds per call."""
    fn()
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(rounds):
            fn()
        best = min(best, (time.perf_counter() - t0) / rounds)
    return best * 1e6


# The modules of the decode path, in import order: each is loaded from the
# other checkout with the ones before it standing in for this checkout's.
_DECODE_PATH = (
    ("workmesh.crypto.canonical", "crypto/canonical.py"),
    ("workmesh.crypto.identity", "crypto/identity.py"),
    ("workmesh.node.facts", "node/facts.py"),
    ("workmesh.dht.envelope", "dht/envelope.py"),
)


def load_other(checkout: Path) -> dict[str, object]:
    """The decode-path modules of ``checkout``, loaded under private names beside ours."""
    loaded: dict[str, object] = {}
    saved = {name: sys.modules[name] for name, _ in _DECODE_PATH}
    try:
        for name, rel in _DECODE_PATH:
            spec = importlib.util.spec_from_file_location(f"_other_{name.replace('.', '_')}", checkout / rel)
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module  # dataclasses look their module up
            spec.loader.exec_module(module)
            sys.modules[name] = module  # what the next one imports
            loaded[name] = module
    finally:
        sys.modules.update(saved)
    return loaded


def decode_rows(canonical, identity, facts, envelope) -> list[tuple[str, Callable[[], object]]]:
    """The decode path's operations, bound to one side's modules (facts signed by that side)."""
    a, b = identity.Identity.from_seed(bytes(32)), identity.Identity.from_seed(bytes([1]) * 32)
    F = facts
    submit = F.sign(a, F.SUBMIT, F.Submit("echo", b'{"i":1}', 3, 10_000, 300_000, 3, 2, bytes(16), 1))
    job = submit.job_id
    replicas = [identity.Identity.from_seed(bytes([2 + i]) * 32) for i in range(3)]
    place = F.sign(a, F.GRANT, F.Grant(job, F.PLACE, 0, b"".join(r.node_id for r in replicas), 1))
    claim = F.sign(b, F.CLAIM, F.Claim(job, 1, 2))
    renew = F.sign(b, F.RENEW, F.Renew(job, 1, 3))
    grants = tuple(F.sign(r, F.GRANT, F.Grant(job, F.LEASE, 1, b.node_id, 2)) for r in replicas[:2])
    result = F.sign(b, F.RESULT, F.Result(job, 1, F.OK, b'{"ok":true}', grants, 4))
    vote = F.sign(replicas[0], F.BALLOT, F.BallotStep(job, F.VOTE, 1, 0, b.node_id, result.fact_id, (), 5))
    cancel = F.sign(a, F.CANCEL, F.Cancel(job, "no longer needed", 6))
    config = F.sign(replicas[0], F.CONFIG, F.Config(job, 1, place.body.subject, 7))
    store_args = [job, [submit.raw, claim.raw]]
    datagram = envelope.seal(a, envelope.REQUEST, bytes(16), 1, b.node_id, "store", store_args, b.public_key)
    reply = envelope.seal(b, envelope.REPLY, bytes(16), 1, a.node_id, "find_value", [[result.raw, vote.raw]],
                          a.public_key)
    signed = envelope.seal(a, envelope.REQUEST, bytes(16), 1, b"", "ping", [])
    b.pair_key(a.public_key), a.pair_key(b.public_key)
    rows: list[tuple[str, Callable[[], object]]] = [
        (f"decode a {fact.kind}{'/' + fact.body.action if fact.kind == F.GRANT else ''} fact (verify cached)",
         lambda fact=fact: F.decode(fact.raw, key=job))
        for fact in (submit, place, grants[0], claim, renew, result, vote, cancel, config)
    ]
    return rows + [
        ("open a store request (MAC)", lambda: envelope.open_envelope(datagram, datagram_bytes_max=60_000, identity=b)),
        ("open a find_value reply of 2 facts (MAC)",
         lambda: envelope.open_envelope(reply, datagram_bytes_max=60_000, identity=a)),
        ("open a signed ping (verify cached)", lambda: envelope.open_envelope(signed, datagram_bytes_max=60_000)),
        ("canonical_unpack of a datagram", lambda: canonical.canonical_unpack(datagram)),
        ("derive a pair key (peer key converted before)", lambda: (b._pair_keys.clear(), b.pair_key(a.public_key))),
        ("sign a claim fact", lambda: F.sign(b, F.CLAIM, F.Claim(job, 1, 3))),
        ("seal a store request (MAC)", lambda: envelope.seal(a, envelope.REQUEST, bytes(16), 1, b.node_id, "store",
                                                             store_args, b.public_key)),
    ]


def against(other: Path, rounds: int, repeat: int) -> int:
    """Time the decode path here and in ``other``, alternating; print medians and ratios."""
    import workmesh.crypto.canonical as canonical
    import workmesh.crypto.identity as identity
    import workmesh.dht.envelope as envelope
    import workmesh.node.facts as facts

    theirs = load_other(other)
    ours_rows = decode_rows(canonical, identity, facts, envelope)
    their_rows = decode_rows(*(theirs[name] for name, _ in _DECODE_PATH))
    width = max(len(name) for name, _ in ours_rows)
    print(f"this: {Path(_ROOT)}  other: {other}  (best of {repeat} alternating runs of {rounds} calls)")
    print(f"{'operation':{width}s}  {'this us':>8s}  {'other us':>8s}  ratio")
    for (name, ours), (_, their) in zip(ours_rows, their_rows, strict=True):
        a, b = [], []
        for _ in range(repeat):
            a.append(per_call_us(ours, rounds))
            b.append(per_call_us(their, rounds))
        mine, other_us = min(a), min(b)
        print(f"{name:{width}s}  {mine:8.2f}  {other_us:8.2f}  {mine / other_us:5.2f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3000)
    parser.add_argument("--against", type=Path, help="another checkout: time its decode path beside this one")
    parser.add_argument("--repeat", type=int, default=5, help="alternating runs per operation (--against)")
    args = parser.parse_args(argv)
    n = args.rounds
    if args.against:
        return against(args.against.resolve(), n, args.repeat)
    a, b = Identity.from_seed(bytes(32)), Identity.from_seed(bytes([1]) * 32)
    submit = F.sign(a, F.SUBMIT, F.Submit("echo", b'{"i":1}', 3, 10_000, 300_000, 3, 2, bytes(16), 1))
    claim = F.sign(b, F.CLAIM, F.Claim(submit.job_id, 1, 2))
    store_args = [submit.job_id, [submit.raw, claim.raw]]
    datagram = seal(a, REQUEST, bytes(16), 1, b.node_id, "store", store_args, b.public_key)
    signed = seal(a, REQUEST, bytes(16), 1, b"", "ping", [])
    raw_msg = b"x" * 100
    sig = nacl.signing.SigningKey(bytes(32)).sign(raw_msg).signature
    vk = nacl.signing.VerifyKey(a.public_key)

    def decode_uncached() -> None:
        ci._cache._entries.clear()
        F.decode(submit.raw, key=submit.job_id)

    rows = [
        ("reference: msgpack packb+unpackb of a datagram", lambda: msgpack.packb(msgpack.unpackb(datagram))),
        ("reference: ed25519 verify (PyNaCl)", lambda: vk.verify(raw_msg, sig)),
        ("canonical_pack of a datagram's fields", lambda: canonical_pack(canonical_unpack(datagram))),
        ("canonical_unpack of a datagram", lambda: canonical_unpack(datagram)),
        ("seal a store request (MAC)", lambda: seal(a, REQUEST, bytes(16), 1, b.node_id, "store", store_args,
                                                     b.public_key)),
        ("open a store request (MAC)", lambda: open_envelope(datagram, datagram_bytes_max=60_000, identity=b)),
        ("open a signed ping (verify cached)", lambda: open_envelope(signed, datagram_bytes_max=60_000)),
        ("decode a submit fact (verify cached)", lambda: F.decode(submit.raw, key=submit.job_id)),
        ("decode a submit fact (verify uncached)", decode_uncached),
        ("sign a claim fact", lambda: F.sign(b, F.CLAIM, F.Claim(submit.job_id, 1, 3))),
    ]
    workdir = tempfile.mkdtemp(prefix="profile-micro-")
    try:
        store = FactStore(os.path.join(workdir, "store.sqlite"), lambda k, r: F.decode(r, key=k))
        store.open()
        facts = [F.sign(a, F.SUBMIT, F.Submit("echo", b"{}", 3, 10_000, 300_000, 3, 2, i.to_bytes(16, "big"), 1))
                 for i in range(4 * n + 8)]
        it = iter(facts)

        def merge_one() -> None:
            fact = next(it)
            store.merge(fact.job_id, [fact])

        rows.append(("FactStore.merge of one new fact (SQLite file)", merge_one))
        rows.append(("FactStore.get of a held key", lambda: store.get(submit.job_id if store.has(submit.job_id)
                                                                      else facts[0].job_id)))
        width = max(len(name) for name, _ in rows)
        print(f"{'operation':{width}s}  us/call")
        for name, fn in rows:
            print(f"{name:{width}s}  {per_call_us(fn, n):7.2f}")
        store.close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
