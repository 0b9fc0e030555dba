"""A soak: three real nodes with a short retention under sustained load.

    python simulations/soak.py [--duration-s 1800] [--retention 60s] [--concurrency 8]
                               [--sample-s 15] [--json soak.json] [--base-dir DIR]

Three ``workmesh start`` processes (simulations/procmesh.py) with
``--retention``; ``--concurrency`` client threads submit echo jobs back to
back (``POST /jobs?wait=``, round-robin over the nodes) for ``--duration-s``:
a closed loop, so the rate is the highest the mesh sustains with that many
jobs in flight. Every ``--sample-s`` seconds each node's ``/status`` is
sampled: the store's size against its budget (``storage``), jobs and facts
dropped, tombstones.

At the end it checks that nothing acknowledged was lost: every job answered
202/200 was read back ``done`` (by the submit's own wait, or by a read of it
on another node while its retention had not passed); and that a job whose
retention passed reads 404 or 410 (problem+json) on every node.

Bounded: jobs per client thread (``JOBS_PER_CLIENT_MAX``), every request has
a timeout, the whole run ends at the duration plus a drain of at most
``DRAIN_S_MAX``.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent / "lib"))

from procmesh import ProcMesh, http  # noqa: E402

JOBS_PER_CLIENT_MAX = 1_000_000
DRAIN_S_MAX = 60.0
REQUEST_TIMEOUT_S = 30.0
READS_PER_SLOW_JOB_MAX = 6  # reads of a job the submit's wait did not see done


def _get_problem(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=REQUEST_TIMEOUT_S) as resp:
            return resp.status, resp.headers.get("Content-Type", "")
    except urllib.error.HTTPError as exc:
        exc.read()
        return exc.code, exc.headers.get("Content-Type", "")


def run_soak(
    base_dir: Path,
    *,
    duration_s: float,
    retention: str = "60s",
    retention_s: float = 60.0,
    concurrency: int = 8,
    sample_s: float = 15.0,
    log=print,
) -> dict:
    mesh = ProcMesh(3, base_dir, node_args=["--workers", "2", "--replicas", "3", "--retention", retention])
    mesh.start()
    stop = threading.Event()
    lock = threading.Lock()
    acked: dict[str, float] = {}  # job id -> when its 202/200 arrived (monotonic)
    done: set[str] = set()
    errors: dict[str, int] = {}
    slow: dict[str, str] = {}  # jobs not done within the submit's wait -> the last read of them
    samples: list[dict] = []
    started = time.monotonic()

    def client(index: int) -> None:
        rng = random.Random(index)
        for n in range(JOBS_PER_CLIENT_MAX):
            if stop.is_set():
                return
            node = mesh.nodes[(index + n) % 3]
            try:
                code, doc = http("POST", f"{node.url}/jobs?wait=10", {"type": "echo", "payload": {"c": index, "n": n, "r": rng.random()}}, timeout_s=REQUEST_TIMEOUT_S)
            except OSError as exc:
                with lock:
                    errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                continue
            with lock:
                if code in (200, 202):
                    acked[doc["id"]] = time.monotonic()
                    if doc.get("status") == "done":
                        done.add(doc["id"])
                else:
                    errors[str(code)] = errors.get(str(code), 0) + 1
            if code == 202 and doc.get("status") != "done":
                # Not done within the submit's wait: follow it on another node
                # at once (a client reads its result within the retention).
                for attempt in range(READS_PER_SLOW_JOB_MAX):
                    other = mesh.nodes[(index + n + 1 + attempt) % 3]
                    try:
                        rcode, rdoc = http("GET", f"{other.url}/jobs/{doc['id']}?wait=10", timeout_s=REQUEST_TIMEOUT_S)
                    except OSError:
                        continue
                    with lock:
                        slow[doc["id"]] = f"{rcode} {rdoc.get('status', rdoc.get('title'))}"
                        if rcode == 200 and rdoc.get("status") == "done":
                            done.add(doc["id"])
                            break
                    if rcode == 200 and rdoc.get("status") in ("failed", "cancelled"):
                        break

    def sample() -> None:
        row: dict = {"t_s": round(time.monotonic() - started, 1)}
        with lock:
            row["acked"] = len(acked)
        for node in mesh.nodes:
            try:
                code, status = http("GET", f"{node.url}/status", timeout_s=REQUEST_TIMEOUT_S)
            except OSError:
                continue
            st = status.get("storage", {})
            row[f"n{node.index}"] = {k: st.get(k) for k in ("bytes", "bytes_max", "keys", "records", "jobs_dropped", "facts_dropped", "tombstones")}
        samples.append(row)
        log(json.dumps(row))

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(concurrency)]
    try:
        for t in threads:
            t.start()
        next_sample = time.monotonic()
        while time.monotonic() - started < duration_s:
            if time.monotonic() >= next_sample:
                sample()
                next_sample += sample_s
            time.sleep(min(1.0, max(0.0, next_sample - time.monotonic())))
        stop.set()
        for t in threads:
            t.join(REQUEST_TIMEOUT_S + 5)
        load_s = time.monotonic() - started
        sample()
        # Jobs acknowledged but not seen done: read them on another node while
        # their retention has not passed (a job read after it is a 404/410, checked below).
        deadline = time.monotonic() + DRAIN_S_MAX
        with lock:
            unseen = [j for j in acked if j not in done]
        late: list[str] = []
        for i, job_id in enumerate(unseen):
            if time.monotonic() > deadline:
                late.extend(unseen[i:])
                break
            age = time.monotonic() - acked[job_id]
            node = mesh.nodes[i % 3]
            code, doc = http("GET", f"{node.url}/jobs/{job_id}?wait=10", timeout_s=REQUEST_TIMEOUT_S)
            if code == 200 and doc.get("status") == "done":
                done.add(job_id)
            elif code in (404, 410) and age > retention_s:
                late.append(job_id)  # its retention passed before we looked: not counted as found
            else:
                late.append(job_id)
        # A job from the first seconds: its retention has passed, on every node.
        old = [j for j, at in acked.items() if time.monotonic() - at > retention_s + 30][:5]
        gone_codes = [_get_problem(f"{n.url}/jobs/{j}") for j in old for n in mesh.nodes]
        final = samples[-1]
        budget_ok = all(
            final[f"n{i}"]["bytes"] <= final[f"n{i}"]["bytes_max"] for i in range(3) if f"n{i}" in final
        ) and all(r[f"n{i}"]["bytes"] <= r[f"n{i}"]["bytes_max"] for r in samples for i in range(3) if f"n{i}" in r)
        peak = {f"n{i}": max((r[f"n{i}"]["bytes"] for r in samples if f"n{i}" in r), default=0) for i in range(3)}
        report = {
            "duration_s": round(load_s, 1),
            "retention": retention,
            "concurrency": concurrency,
            "jobs_acked": len(acked),
            "jobs_found_done": len(done),
            "jobs_not_found_done": len(late),
            "not_found_ids": late[:20],
            "not_found_last_reads": {j: slow.get(j) for j in late[:20]},
            "jobs_slow": len(slow),
            "jobs_per_s": round(len(acked) / load_s, 1),
            "errors": errors,
            "store_bytes_peak": peak,
            "store_within_budget": budget_ok,
            "facts_dropped": sum(final[f"n{i}"]["facts_dropped"] for i in range(3) if f"n{i}" in final),
            "jobs_dropped": sum(final[f"n{i}"]["jobs_dropped"] for i in range(3) if f"n{i}" in final),
            "old_job_reads": sorted({f"{c} {t.split(';')[0]}" for c, t in gone_codes}),
            "samples": samples,
        }
        return report
    finally:
        stop.set()
        mesh.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration-s", type=float, default=1800.0)
    parser.add_argument("--retention", default="60s")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--sample-s", type=float, default=15.0)
    parser.add_argument("--json")
    parser.add_argument("--base-dir")
    args = parser.parse_args()
    from workmesh.node.retention import parse_duration

    base = Path(args.base_dir) if args.base_dir else Path(tempfile.mkdtemp(prefix="workmesh-soak-"))
    report = run_soak(
        base, duration_s=args.duration_s, retention=args.retention, retention_s=parse_duration(args.retention),
        concurrency=args.concurrency, sample_s=args.sample_s,
    )
    summary = {k: v for k, v in report.items() if k != "samples"}
    print(json.dumps(summary, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0 if report["jobs_not_found_done"] == 0 and report["store_within_budget"] else 1


if __name__ == "__main__":
    sys.exit(main())
