"""Per-operation costs of the hot paths a job goes through, in one process.

    python simulations/instruments/profile_micro.py [--rounds 3000]

Why: the mesh profile (``profile_workmesh.py``) says which layers a job's time
goes to; this measures the single operations inside them (sealing and opening
an envelope, decoding a fact, storing a fact) so that a change to one of them
is judged before and after in microseconds, next to a reference operation
measured in the same run (a bare msgpack round trip and an Ed25519
verification), so a busy machine shows as a shift of everything.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3000)
    args = parser.parse_args(argv)
    n = args.rounds
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
