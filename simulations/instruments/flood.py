"""A bogus-signature flood against one node of a loopback mesh, and its submit latency.

    python simulations/instruments/flood.py --rate 20000 --seconds 10 --ports 8 [--mesh-key] [--out runs/flood]

Starts a mesh of ``--nodes`` real ``workmesh start`` processes on 127.0.0.1
(``procmesh.ProcMesh``, no workers, so only submission is measured), then:

1. quiet: ``--submits`` sequential ``POST /jobs`` to node 0, each latency kept;
2. flood: a separate process sends forged envelopes to node 0's UDP port,
   ``--rate`` datagrams a second spread over ``--ports`` source ports, for
   ``--seconds``; meanwhile the same submits are measured again.

Each forged datagram is a first-contact envelope (Ed25519 form) from a fresh
random key with a random signature: without the defences each one would
cost the node a full signature verification. Bounded: at most rate x seconds
datagrams, at most ``seconds`` + 5 s of flooding, loopback only.

Prints (and writes to ``--out``/flood.json) submit p50/p99 quiet and under
flood (of the accepted submits; failures counted apart), the datagrams
sent, and node 0's drop counters and verifications.
``--mesh-key``: the mesh is private and the flooder has no key (every
datagram then costs one MAC check).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))

from procmesh import ProcMesh, http  # noqa: E402
from stats import percentile  # noqa: E402

FORGED_DISTINCT = 4096  # distinct datagrams built, sent round robin


def forged_datagrams(target_id: bytes, count: int) -> list[bytes]:
    """First-contact envelopes with random keys and random (wrong) signatures."""
    import msgpack

    out = []
    now_ms = int(time.time() * 1000)
    for _ in range(count):
        key = os.urandom(32)
        fields = [1, 0, os.urandom(16), key, now_ms, target_id, "ping", [], os.urandom(64)]
        out.append(msgpack.packb(fields, use_bin_type=True))
    return out


def send_flood(addr: tuple[str, int], target_id: bytes, rate_per_s: float, seconds: float, ports: int) -> int:
    """Send the flood from ``ports`` sockets; returns datagrams sent (at most rate x seconds)."""
    if addr[0] not in ("127.0.0.1", "::1", "localhost"):
        raise SystemExit("flood.py sends to loopback only")
    datagrams = forged_datagrams(target_id, FORGED_DISTINCT)
    socks = []
    for _ in range(ports):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        s.setblocking(False)
        socks.append(s)
    total = int(rate_per_s * seconds)
    sent, started = 0, time.monotonic()
    hard_stop = started + seconds + 5.0
    while sent < total and time.monotonic() < hard_stop:
        due = min(total, int((time.monotonic() - started) * rate_per_s) + 1)
        while sent < due:
            try:
                socks[sent % ports].sendto(datagrams[sent % len(datagrams)], addr)
            except (BlockingIOError, OSError):
                pass  # a full socket buffer: the datagram is lost, as on a real network
            sent += 1
        time.sleep(0.001)
    for s in socks:
        s.close()
    return sent


def measure_submits(url: str, count: int, deadline_s: float, token: str | None = None) -> tuple[list[float], int]:
    """Latencies (s) of the accepted ones of up to ``count`` sequential
    submits, for at most ``deadline_s``, and how many were not accepted."""
    headers = {"Authorization": f"Bearer {token}"} if token else None
    out, failed, stop = [], 0, time.monotonic() + deadline_s
    for i in range(count):
        if time.monotonic() > stop:
            break
        started = time.monotonic()
        try:
            code, _ = http("POST", f"{url}/jobs", {"type": "echo", "payload": {"i": i}}, headers=headers, timeout_s=10)
        except OSError:
            code = 0
        if code == 202:
            out.append(time.monotonic() - started)
        else:
            failed += 1
    return out, failed


def run(nodes: int, rate: float, seconds: float, ports: int, submits: int, base: Path, mesh_key: bool) -> dict:
    args = ["--workers", "0", "--replicas", str(min(3, nodes))]
    if mesh_key:
        from workmesh.crypto.meshkey import write_mesh_key_file

        key = base / "mesh.key"
        write_mesh_key_file(key)
        args += ["--mesh-key", str(key)]
    with ProcMesh(nodes, base / "mesh", node_args=args) as mesh:
        target = mesh.nodes[0]
        measure_submits(target.url, 20, 10)  # warm-up
        quiet, quiet_failed = measure_submits(target.url, submits, seconds)
        before = http("GET", f"{target.url}/status")[1]
        flooder = subprocess.Popen(
            [sys.executable, __file__, "send", "--addr", target.p2p, "--node-id", target.node_id,
             "--rate", str(rate), "--seconds", str(seconds), "--ports", str(ports)],
            stdout=subprocess.PIPE, text=True,
        )
        time.sleep(min(1.0, seconds / 5))  # let the flood reach its rate
        flooded, flood_failed = measure_submits(target.url, submits, seconds)
        out, _ = flooder.communicate(timeout=seconds + 30)
        after = http("GET", f"{target.url}/status")[1]
    sent = int(out.strip() or 0)
    dht_before, dht_after = before["dht"], after["dht"]
    drops = {k: dht_after[k] - dht_before.get(k, 0) for k in dht_after if k.startswith("dropped_")}
    report = {
        "nodes": nodes, "rate_per_s": rate, "seconds": seconds, "ports": ports, "mesh_key": mesh_key,
        "datagrams_sent": sent,
        "quiet_submits": len(quiet), "flood_submits": len(flooded),
        "quiet_failed": quiet_failed, "flood_failed": flood_failed,
        "quiet_p50_ms": 1000 * percentile(quiet, 50), "quiet_p99_ms": 1000 * percentile(quiet, 99),
        "flood_p50_ms": 1000 * (percentile(flooded, 50) or 0), "flood_p99_ms": 1000 * (percentile(flooded, 99) or 0),
        "drops": {k: v for k, v in drops.items() if v},
        "verifications": after["crypto"]["verifications"] - before["crypto"]["verifications"],
        "sources_shut_out": dht_after.get("sources_shut_out", 0) - dht_before.get("sources_shut_out", 0),
    }
    report["p99_ratio"] = report["flood_p99_ms"] / report["quiet_p99_ms"]
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")
    send = sub.add_parser("send", help="(internal) the flooding process")
    send.add_argument("--addr", required=True)
    send.add_argument("--node-id", required=True)
    for p in (parser, send):
        p.add_argument("--rate", type=float, default=20_000.0, help="datagrams per second (default 20,000)")
        p.add_argument("--seconds", type=float, default=10.0, help="flood duration (default 10)")
        p.add_argument("--ports", type=int, default=8, help="source ports (default 8)")
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--submits", type=int, default=200, help="submits measured quiet and under flood")
    parser.add_argument("--mesh-key", action="store_true", help="a private mesh; the flooder has no key")
    parser.add_argument("--out", help="directory for flood.json")
    args = parser.parse_args(argv)
    if args.command == "send":
        host, _, port = args.addr.rpartition(":")
        print(send_flood((host, int(port)), bytes.fromhex(args.node_id), args.rate, args.seconds, args.ports))
        return 0
    with tempfile.TemporaryDirectory(prefix="workmesh-flood-") as tmp:
        report = run(args.nodes, args.rate, args.seconds, args.ports, args.submits, Path(tmp), args.mesh_key)
    print(json.dumps(report, indent=2))
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "flood.json").write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
