"""The blob show, full size: a 100 MiB file through a 5-node mesh of real processes.

    .venv/bin/python simulations/instruments/blob_bench.py [--mib 100] [--nodes 5]

Uploads the file to node 0 (streamed, ``workmesh.blobs_client.put_blob``),
SIGKILLs the node holding most of its chunks besides the uploader, downloads
the blob from another node and compares it byte for byte, reads three byte
ranges, and prints upload and download throughput in MiB/s beside ``cp`` of
the same file on the same disk. Exits 1 when a check failed. Loopback
figures on a shared machine: run it on a quiet one when the numbers matter.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))

from procmesh import ProcMesh, http  # noqa: E402

from workmesh.blobs_client import get_blob, put_blob  # noqa: E402

MiB = 2**20


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=100)
    parser.add_argument("--nodes", type=int, default=5)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="workmesh-blob-bench-"))
    src = base / "input.bin"
    with open(src, "wb") as f:
        for _ in range(args.mib):
            f.write(os.urandom(MiB))
    want = hashlib.sha256(src.read_bytes()).hexdigest()
    started = time.monotonic()
    subprocess.run(["cp", str(src), str(base / "cp.bin")], check=True)
    cp_s = time.monotonic() - started
    ok = True
    with ProcMesh(args.nodes, base / "mesh") as mesh:
        started = time.monotonic()
        doc = put_blob(mesh.nodes[0].url, src)
        up_s = time.monotonic() - started
        held = {n.index: http("GET", f"{n.url}/status")[1]["blobs"]["chunks"] for n in mesh.nodes}
        victim = max(mesh.nodes[1:], key=lambda n: held[n.index])
        victim.kill()
        reader = next(n for n in reversed(mesh.nodes) if n is not victim)
        out = base / "download.bin"
        started = time.monotonic()
        get_blob(reader.url, doc["hash"], out)
        down_s = time.monotonic() - started
        same = hashlib.sha256(out.read_bytes()).hexdigest() == want
        ok &= same
        data = src.read_bytes()
        size = len(data)
        for start, end in ((0, 99), (size // 3, size // 3 + 5 * MiB), (size - 4096, size - 1)):
            ok &= get_blob(reader.url, doc["hash"], byte_range=(start, end)) == data[start : end + 1]
    print(f"blob {doc['hash']} of {args.mib} MiB, chunks held per node {held}")
    print(f"SIGKILLed node{victim.index}; downloaded from node{reader.index}: {'byte-identical' if same else 'DIFFERENT'}")
    print(f"ranged reads: {'right bytes' if ok else 'WRONG'}")
    print(f"upload   {args.mib / up_s:8.1f} MiB/s  ({up_s:.2f} s)")
    print(f"download {args.mib / down_s:8.1f} MiB/s  ({down_s:.2f} s, after the kill)")
    print(f"cp       {args.mib / cp_s:8.1f} MiB/s  ({cp_s:.2f} s)")
    shutil.rmtree(base, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
