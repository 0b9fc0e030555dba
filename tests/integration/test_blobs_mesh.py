"""Blobs in meshes of real node processes (``simulations/lib/procmesh.py``).

* a 20 MiB file uploaded to one node of five survives the SIGKILL of a
  replica of its chunks, and then of the uploader too: it downloads
  byte-identical from another node, and a ranged read returns the right
  bytes (``simulations/instruments/blob_bench.py`` runs the 100 MiB form and reports MiB/s);
* limits: a blob past the per-blob limit answers 413, one past the node's
  disk budget 507, whether its length is declared or it is streamed, and
  nothing of it stays, here or on the peers;
* an unknown hash answers 404 problem+json from any node.
"""

from __future__ import annotations

import hashlib
import io
import os
import time

import pytest

from procmesh import ProcMesh, http, wait_until
from workmesh.blobs_client import BlobError, get_blob, put_blob

pytestmark = pytest.mark.slow
MiB = 2**20


def chunk_stats(node) -> dict:
    return http("GET", f"{node.url}/status")[1]["blobs"]


def test_a_blob_survives_killed_replicas_and_serves_ranges(tmp_path):
    size = 20 * MiB
    path = tmp_path / "input.bin"
    with open(path, "wb") as f:
        for _ in range(size // MiB):
            f.write(os.urandom(MiB))
    want = hashlib.sha256(path.read_bytes()).hexdigest()
    with ProcMesh(5, tmp_path / "mesh") as mesh:
        uploader = mesh.nodes[0]
        started = time.monotonic()
        doc = put_blob(uploader.url, path)
        up_s = time.monotonic() - started
        assert doc["size"] == size and len(doc["hash"]) == 64
        holders = sorted(mesh.nodes[1:], key=lambda n: -chunk_stats(n)["chunks"])
        victim, reader = holders[0], holders[-1]
        assert chunk_stats(victim)["chunks"] > 0
        victim.kill()

        out = tmp_path / "copy.bin"
        started = time.monotonic()
        assert get_blob(reader.url, doc["hash"], out) == size
        down_s = time.monotonic() - started
        assert hashlib.sha256(out.read_bytes()).hexdigest() == want
        print(f"\n20 MiB over loopback: upload {size / MiB / up_s:.1f} MiB/s, download {size / MiB / down_s:.1f} MiB/s")

        data = path.read_bytes()
        for start, end in ((0, 0), (123_457, 5 * MiB + 17), (size - 1000, size - 1)):
            assert get_blob(reader.url, doc["hash"], byte_range=(start, end)) == data[start : end + 1]

        # The uploader keeps a copy of all it accepted; without it (and the
        # victim) the chunks' own replicas still hold every chunk.
        uploader.kill()
        other = next(n for n in mesh.live() if n is not reader)
        assert hashlib.sha256(get_blob(other.url, doc["hash"])).hexdigest() == want

        code, problem = http("GET", f"{reader.url}/blobs/{'0' * 64}")
        assert code == 404 and problem["status"] == 404 and problem["title"] == "Blob not found"


class Unsized(io.RawIOBase):
    """A stream of ``size`` bytes without a length: uploaded chunked."""

    def __init__(self, size: int) -> None:
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        n = min(len(b), self.left, 65536)
        b[:n] = os.urandom(n)
        self.left -= n
        return n


def test_limits_answer_413_and_507_and_leave_nothing(tmp_path):
    small_disk = ["--blob-max-bytes", str(4 * MiB), "--blob-disk-budget", str(3 * MiB)]
    small_blobs = ["--blob-max-bytes", str(MiB)]
    per_node = {1: small_blobs, 2: small_disk}
    with ProcMesh(3, tmp_path / "mesh", node_args=["--replicas", "3"], per_node_args=per_node) as mesh:
        node = mesh.nodes[2]
        before = [chunk_stats(n)["disk_bytes_used"] for n in mesh.nodes]
        assert chunk_stats(node)["disk_bytes_budget"] == 3 * MiB

        for target, source, status in (
            (node, os.urandom(5 * MiB), 413),  # declared, past the blob limit
            (mesh.nodes[1], io.BufferedReader(Unsized(int(1.5 * MiB))), 413),  # streamed past it
            (node, os.urandom(3 * MiB + 1), 507),  # declared, past the budget
            (node, io.BufferedReader(Unsized(int(3.5 * MiB))), 507),  # streamed past it
        ):
            with pytest.raises(BlobError) as caught:
                put_blob(target.url, source)
            assert caught.value.status == status
            assert caught.value.problem["status"] == status
        # Nothing half-written: this node's disk is as before, and the peers
        # took back the copies they were given.
        wait_until(
            lambda: [chunk_stats(n)["disk_bytes_used"] for n in mesh.nodes] == before, 15, "disk usage back to before"
        )
        # Within the limits the same node takes a blob.
        data = os.urandom(2 * MiB)
        doc = put_blob(node.url, data)
        assert get_blob(mesh.nodes[0].url, doc["hash"]) == data
