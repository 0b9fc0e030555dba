"""A real mesh of ``workmesh start`` processes on loopback, under load and faults.

    python simulations/mesh.py --nodes 5 --jobs 100 --faults kill,stop,replica,churn --out runs/mesh1

Starts N nodes (``procmesh.ProcMesh``), drives a bounded job load (at most
``--jobs`` jobs, at most ``--load-s`` seconds) through random live nodes,
injects faults on a schedule, restores every node, waits (at most
``--drain-s``) for the acknowledged jobs to finish, then reads every job's
signed facts and the workers' logs into ``history.jsonl`` and checks it
(``simulations/lib/history.py``). Writes ``history.jsonl``, ``final.json``,
``summary.txt``, ``figures.json`` and ``chart.png`` (when matplotlib is
installed) in ``--out``. Exit status 0 when no acknowledged job was lost and
none has more than one accepted result or went over its attempt bound.

Faults (``--faults``, a comma list played in order, evenly spread over the
middle of the load phase):

* ``kill``: SIGKILL a node that is running a job, restart it ``--down-s`` later;
* ``stop``: SIGSTOP a busy node, SIGCONT it ``--down-s`` later;
* ``replica``: SIGKILL a replica of a job in flight, restart it later;
* ``churn``: SIGKILL ``--churn`` of the nodes at once, restart them later.

At most ``--max-down`` nodes are down at once (default: what the replica
quorum tolerates), so every guarantee the protocol makes still applies.

The driver (:class:`Driver`) works on any nodes that look like
``procmesh.ProcNode``; ``simulations/netns.py`` reuses it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent / "lib"))

import history as H  # noqa: E402
from procmesh import ProcMesh, ProcNode, http  # noqa: E402

FAULT_KINDS = ("kill", "stop", "replica", "churn")


def xor_closest(job: str, node_ids: list[str], r: int) -> list[str]:
    """The job's replicas: the r node ids closest to the job id (XOR metric)."""
    target = int(job, 16)
    return sorted(node_ids, key=lambda n: int(n, 16) ^ target)[:r]


class Driver:
    """Load, faults, drain and collection over a list of ProcNode-like nodes.

    ``restart(node)`` starts a killed node again on its data directory;
    ``headers`` go with every write (a bearer token off loopback).
    """

    def __init__(self, nodes: list[ProcNode], rec: H.Recorder, args: argparse.Namespace, *,
                 restart: Callable[[ProcNode], None], headers: dict | None = None, log: Callable[[str], None] = print) -> None:
        self.nodes = nodes
        self.rec = rec
        self.args = args
        self.restart_node = restart
        self.headers = headers or {}
        self.log = log
        self.rng = random.Random(args.seed)
        self.lock = threading.Lock()
        self.down: set[int] = set()  # killed, stopped or cut off: no submits, no new faults
        self.busy: set[int] = set()  # a fault is being applied or undone
        self.acked: dict[str, dict] = {}  # job id -> ack event
        self.inflight: list[str] = []
        self.counts = {"sent": 0, "acked": 0, "refused": 0, "done": 0, "faults": 0}
        self.terminal: dict[str, str] = {}
        self.pool = ThreadPoolExecutor(max_workers=args.concurrency)
        self.fault_pool = ThreadPoolExecutor(max_workers=max(4, len(nodes)))
        self.pending_fault_futures: list = []
        self.t0 = time.time()
        self.tag = args.tag

    # -- helpers ----------------------------------------------------------------
    def available(self) -> list[ProcNode]:
        with self.lock:
            return [n for n in self.nodes if n.alive and n.index not in self.down and n.index not in self.busy]

    def node_ids(self) -> list[str]:
        return [n.node_id for n in self.nodes if n.node_id]

    def get(self, node: ProcNode, path: str, timeout_s: float = 10.0) -> tuple[int, dict]:
        return http("GET", f"{node.url}{path}", timeout_s=timeout_s, headers=self.headers)

    def fault(self, kind: str, nodes: list[ProcNode], note: str = "") -> None:
        self.rec.record("fault", kind=kind, nodes=[n.index for n in nodes], node_ids=[n.node_id for n in nodes], note=note)
        self.log(f"[{time.time() - self.t0:7.1f} s] fault {kind} nodes {[n.index for n in nodes]} {note}")

    # -- load -------------------------------------------------------------------
    def job_body(self, seq: int) -> dict:
        a = self.args
        payload: dict[str, Any] = {"tag": f"{self.tag}-{seq}"}
        if self.rng.random() < a.echo_share:
            job_type = "echo"
        else:
            job_type = "sleep"
            payload["seconds"] = round(self.rng.uniform(a.work_s_min, a.work_s_max), 3)
        body = {"type": job_type, "payload": payload, "max_attempts": a.max_attempts}
        if a.lease_s:
            body["lease_seconds"] = a.lease_s
        return body

    def submit(self, seq: int, body: dict) -> None:
        """Send one job; on no answer or a refusal, try up to two other nodes."""
        tried: set[int] = set()
        for _ in range(3):
            choices = [n for n in self.available() if n.index not in tried] or self.available()
            if not choices:
                time.sleep(0.2)
                continue
            node = self.rng.choice(choices)
            tried.add(node.index)
            self.rec.record("submit", seq=seq, node=node.index, type=body["type"])
            try:
                code, doc = http("POST", f"{node.url}/jobs", body, timeout_s=self.args.submit_timeout_s,
                                 headers={**self.headers, "Idempotency-Key": f"{self.tag}-{seq}"})
            except OSError as exc:
                code, doc = 0, {"detail": repr(exc)}
            job = doc.get("id") if code == 202 else None
            self.rec.record("ack", seq=seq, node=node.index, code=code, job=job,
                            error=None if code == 202 else str(doc.get("detail", doc))[:200])
            with self.lock:
                if code == 202:
                    self.counts["acked"] += 1
                    self.acked[job] = {"seq": seq, "node": node.index}
                    self.inflight.append(job)
                    return
                self.counts["refused"] += 1

    # -- faults -----------------------------------------------------------------
    def max_down(self) -> int:
        return self.args.max_down

    def pick(self, want: int, prefer: list[ProcNode] | None = None) -> list[ProcNode]:
        with self.lock:
            room = self.max_down() - len(self.down)
            free = [n for n in self.nodes if n.alive and n.index not in self.down and n.index not in self.busy]
        want = min(want, room)
        if want <= 0 or not free:
            return []
        ordered = [n for n in (prefer or []) if n in free]
        rest = [n for n in free if n not in ordered]
        self.rng.shuffle(rest)
        chosen = (ordered + rest)[:want]
        with self.lock:
            for n in chosen:
                self.down.add(n.index)
                self.busy.add(n.index)
        return chosen

    def busy_workers(self, wait_s: float = 3.0) -> list[ProcNode]:
        """Live nodes running a job now; polls up to ``wait_s`` for at least one."""
        deadline = time.time() + wait_s
        out = self._busy_now()
        while not out and time.time() < deadline:
            time.sleep(0.1)
            out = self._busy_now()
        return out

    def _busy_now(self) -> list[ProcNode]:
        out = []
        for n in self.available():
            try:
                code, doc = self.get(n, "/status", timeout_s=2)
                if code == 200 and doc.get("workers", {}).get("busy", 0) > 0:
                    out.append(n)
            except OSError:
                pass
        self.rng.shuffle(out)
        return out

    def inject_when_room(self, kind: str, wait_s: float = 30.0) -> None:
        """Wait (bounded) until the fault fits under --max-down, then inject it.

        Faults that take several nodes (churn, partition) wait for every earlier fault to be undone.
        """
        deadline = time.time() + wait_s
        whole = kind in ("churn", "partition")
        while time.time() < deadline:
            with self.lock:
                room = not self.down if whole else len(self.down) < self.max_down()
            if room:
                break
            time.sleep(0.1)
        self.inject(kind)

    def inject(self, kind: str) -> None:
        a = self.args
        if kind == "kill":
            victims = self.pick(1, self.busy_workers())
        elif kind == "stop":
            victims = self.pick(1, self.busy_workers())
        elif kind == "replica":
            with self.lock:
                recent = list(self.inflight[-20:])
            prefer: list[ProcNode] = []
            for job in reversed(recent):
                if job not in self.terminal:
                    ids = xor_closest(job, self.node_ids(), a.replicas_per_job)
                    prefer = [n for n in self.nodes if n.node_id in ids]
                    self.rng.shuffle(prefer)
                    break
            victims = self.pick(1, prefer)
        elif kind == "churn":
            victims = self.pick(max(1, math.ceil(a.churn * len(self.nodes))))
        else:
            raise ValueError(kind)
        if not victims:
            self.log(f"[{time.time() - self.t0:7.1f} s] fault {kind} skipped: no node may go down now")
            return
        self.counts["faults"] += 1
        if kind == "stop":
            for n in victims:
                n.signal(signal.SIGSTOP)
            self.fault("stop", victims)
        else:
            for n in victims:
                n.signal(signal.SIGKILL)
            for n in victims:
                n.proc.wait(timeout=10)
            self.fault("kill", victims, note=kind)
        for n in victims:
            with self.lock:
                self.busy.discard(n.index)
        self.pending_fault_futures.append(self.fault_pool.submit(self._undo_later, kind, victims, time.time() + a.down_s))

    def _undo_later(self, kind: str, victims: list[ProcNode], at: float) -> None:
        time.sleep(max(0.0, at - time.time()))
        self.undo(kind, victims)

    def undo(self, kind: str, victims: list[ProcNode]) -> None:
        with self.lock:
            victims = [n for n in victims if n.index in self.down]
            for n in victims:
                self.busy.add(n.index)
        if not victims:
            return
        try:
            if kind == "stop":
                for n in victims:
                    n.signal(signal.SIGCONT)
                self.fault("cont", victims)
            else:
                for n in victims:
                    self.restart_node(n)
                self.fault("restart", victims)
        finally:
            with self.lock:
                for n in victims:
                    self.down.discard(n.index)
                    self.busy.discard(n.index)

    # -- phases -----------------------------------------------------------------
    def progress(self, phase: str) -> None:
        with self.lock:
            c = dict(self.counts)
            down = sorted(self.down)
        self.log(f"[{time.time() - self.t0:7.1f} s] {phase}: sent {c['sent']} acked {c['acked']} refused {c['refused']} "
                 f"done {len(self.terminal)} faults {c['faults']} down {down}")

    def run_load(self, faults: list[str]) -> None:
        a = self.args
        start = time.time()
        load_s = a.load_s
        interval = load_s / max(1, a.jobs) if a.rate is None else 1.0 / a.rate
        fault_times = [start + load_s * (0.15 + 0.6 * (i + 0.5) / len(faults)) for i in range(len(faults))] if faults else []
        next_progress = start + a.progress_s
        futures = []
        seq = 0
        while time.time() < start + load_s and (seq < a.jobs or fault_times):
            now = time.time()
            if seq < a.jobs and now >= start + seq * interval:
                body = self.job_body(seq)
                with self.lock:
                    self.counts["sent"] += 1
                futures.append(self.pool.submit(self.submit, seq, body))
                seq += 1
                continue
            if fault_times and now >= fault_times[0]:
                fault_times.pop(0)
                self.pending_fault_futures.append(self.fault_pool.submit(self.inject_when_room, faults.pop(0)))
                continue
            if now >= next_progress:
                self.progress("load")
                next_progress = now + a.progress_s
            time.sleep(0.01)
        for f in futures:
            f.result()
        self.progress("load done")

    def restore(self) -> None:
        """Undo every fault now (SIGCONT, restart), and wait for the undo threads."""
        while True:  # injections add undo futures: wait until none is left
            pending = [f for f in self.pending_fault_futures if not f.done()]
            if not pending:
                break
            pending[0].result()
        for f in self.pending_fault_futures:
            f.result()  # re-raise what a fault thread raised
        for n in self.nodes:
            if n.alive:
                n.signal(signal.SIGCONT)
            else:
                self.restart_node(n)
                self.fault("restart", [n], note="restore")

    def drain(self) -> None:
        """Wait (at most --drain-s) until every acknowledged job is terminal."""
        a = self.args
        deadline = time.time() + a.drain_s
        next_progress = time.time() + a.progress_s

        def poll(job: str) -> None:
            nodes = self.available() or [n for n in self.nodes if n.alive]
            node = self.rng.choice(nodes)
            try:
                code, doc = self.get(node, f"/jobs/{job}?wait=2", timeout_s=10)
            except OSError:
                return
            if code == 200 and doc.get("status") in H.TERMINAL:
                with self.lock:
                    if job not in self.terminal:
                        self.terminal[job] = doc["status"]
                        self.rec.record("observed", job=job, status=doc["status"], node=node.index)

        while time.time() < deadline:
            with self.lock:
                todo = [j for j in self.acked if j not in self.terminal]
            if not todo:
                break
            list(self.pool.map(poll, todo[:200]))
            if time.time() >= next_progress:
                self.progress("drain")
                next_progress = time.time() + a.progress_s
        self.progress("drain done")

    def collect(self, out_dir: Path, extra_final: dict | None = None) -> dict:
        """Every job's facts and the workers' logs into the history; final.json."""
        listed: dict[str, list[int]] = {}
        for n in self.nodes:
            if not n.alive:
                continue
            after = None
            for _ in range(100):  # bounded: 100 pages of 500
                q = f"/jobs?limit=500" + (f"&after={after}" if after else "")
                try:
                    code, doc = self.get(n, q)
                except OSError:
                    break
                if code != 200:
                    break
                for j in doc["jobs"]:
                    listed.setdefault(j["id"], []).append(n.index)
                after = doc.get("next")
                if not after:
                    break
        jobs = sorted(set(self.acked) | set(listed))
        final: dict[str, Any] = {"jobs": {}, "nodes": [{"index": n.index, "node_id": n.node_id} for n in self.nodes]}

        def fetch(job: str) -> None:
            doc, last = None, None
            for node in self.rng.sample([n for n in self.nodes if n.alive], k=min(3, len(self.nodes))):
                try:
                    code, got = self.get(node, f"/jobs/{job}?history=1", timeout_s=15)
                except OSError as exc:
                    last = repr(exc)
                    continue
                if code == 200:
                    doc = got
                    break
                last = f"{code} {got.get('detail')}"
            facts = doc.pop("history", []) if doc else []
            final["jobs"][job] = {"view": doc, "facts": facts, "listed_by": listed.get(job, []), "error": None if doc else last}

        list(self.pool.map(fetch, jobs))
        for job in jobs:
            for ev in H.fact_events(job, final["jobs"][job]["facts"]):
                ev.pop("fact_id", None) if ev["ev"] == "result" else None
                self.rec.record(ev.pop("ev"), t=ev.pop("t"), **ev)
        ids = self.node_ids()
        for n in self.nodes:
            if n.log_path.exists():
                with open(n.log_path, encoding="utf-8", errors="replace") as fh:
                    for ev in H.log_events(fh, ids):
                        self.rec.record(ev.pop("ev"), t=ev.pop("t"), **ev)
        final["node_status"] = {}
        for n in self.nodes:
            try:
                code, st = self.get(n, "/status", timeout_s=5) if n.alive else (0, {})
            except OSError:
                code, st = 0, {}
            if code == 200:
                final["node_status"][str(n.index)] = {"peers": st.get("peers"), "jobs": st.get("jobs"),
                                                      "peer_ids": [p["node_id"] for p in st.get("peer_list", [])]}
        if extra_final:
            final.update(extra_final)
        (out_dir / "final.json").write_text(json.dumps(final, indent=1, sort_keys=True))
        return final

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.fault_pool.shutdown(wait=False, cancel_futures=True)


def parse_faults(text: str) -> list[str]:
    faults = [f.strip() for f in text.split(",") if f.strip()]
    bad = [f for f in faults if f not in FAULT_KINDS]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown fault {bad[0]!r}; choose from {', '.join(FAULT_KINDS)}")
    return faults


def common_arguments(parser: argparse.ArgumentParser, *, nodes: int, jobs: int) -> None:
    parser.add_argument("--nodes", type=int, default=nodes, help=f"nodes to start (default {nodes})")
    parser.add_argument("--jobs", type=int, default=jobs, help=f"jobs to submit, at most (default {jobs})")
    parser.add_argument("--load-s", type=float, default=30.0, help="length of the load phase, seconds (default 30)")
    parser.add_argument("--rate", type=float, help="jobs per second (default: --jobs spread over --load-s)")
    parser.add_argument("--drain-s", type=float, default=90.0, help="wait at most this long for jobs to finish (default 90)")
    parser.add_argument("--workers", type=int, default=2, help="worker slots per node (default 2)")
    parser.add_argument("--replicas", type=int, default=5, help="replicas per job, r (default 5; in a smaller mesh the nodes take an odd count)")
    parser.add_argument("--lease-s", type=float, default=3.0, help="lease per job, seconds (default 3)")
    parser.add_argument("--max-attempts", type=int, default=3, help="attempts per job (default 3)")
    parser.add_argument("--work-s-min", type=float, default=0.2, help="shortest sleep job, seconds (default 0.2)")
    parser.add_argument("--work-s-max", type=float, default=2.0, help="longest sleep job, seconds (default 2)")
    parser.add_argument("--echo-share", type=float, default=0.3, help="share of instant echo jobs (default 0.3)")
    parser.add_argument("--down-s", type=float, default=4.0, help="how long a faulty node stays down (default 4)")
    parser.add_argument("--max-down", type=int, help="nodes down at once, at most (default: what the quorum tolerates)")
    parser.add_argument("--concurrency", type=int, default=8, help="driver threads for HTTP (default 8)")
    parser.add_argument("--submit-timeout-s", type=float, default=10.0, help="HTTP timeout of a submit (default 10)")
    parser.add_argument("--progress-s", type=float, default=5.0, help="print progress this often (default 5 s)")
    parser.add_argument("--seed", type=int, help="seed of the driver's choices (default: random, printed)")
    parser.add_argument("--out", help="output directory (default: a new temporary directory)")
    parser.add_argument("--keep", action="store_true", help="keep the nodes' data directories")


def finish_args(args: argparse.Namespace, mesh_size: int) -> None:
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(2**32)
    # The nodes get --replicas as given; a job in a smaller mesh gets an odd replica
    # count (node/jobs.py replica_plan), so two results can never split the seals.
    r = args.replicas if mesh_size >= args.replicas else (mesh_size if mesh_size % 2 else mesh_size - 1)
    args.replicas_per_job = r
    quorum = r // 2 + 1
    if args.max_down is None:
        args.max_down = max(0, min(r - quorum, (mesh_size - 1) // 2))
    args.tag = f"run{args.seed:08x}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Outputs: history.jsonl, final.json, summary.txt, figures.json, chart.png in --out.")
    common_arguments(parser, nodes=5, jobs=100)
    parser.add_argument("--faults", type=parse_faults, default=["kill", "stop", "replica", "churn"],
                        help="comma list of faults in order: kill, stop, replica, churn (default all four; '' for none)")
    parser.add_argument("--churn", type=float, default=0.3, help="share of nodes a churn fault kills (default 0.3)")
    args = parser.parse_args(argv)
    if args.nodes < 1 or args.jobs < 0 or args.load_s <= 0:
        parser.error("--nodes must be >= 1, --jobs >= 0 and --load-s > 0")
    finish_args(args, args.nodes)
    out = Path(args.out or tempfile.mkdtemp(prefix="workmesh-mesh-"))
    out.mkdir(parents=True, exist_ok=True)
    data = Path(tempfile.mkdtemp(prefix="workmesh-mesh-data-"))
    print(f"mesh: {args.nodes} nodes, {args.jobs} jobs over {args.load_s:g} s, faults {args.faults}, seed {args.seed}, "
          f"r={args.replicas_per_job}, max down {args.max_down}; output in {out}", flush=True)
    rec = H.Recorder(out / "history.jsonl")
    node_args = ["--workers", str(args.workers), "--replicas", str(args.replicas), "--lease-seconds", str(args.lease_s),
                 "--max-attempts", str(args.max_attempts)]
    mesh = ProcMesh(args.nodes, data, node_args=node_args)
    driver = None

    def on_signal(signum, frame):  # Ctrl-C / SIGTERM: stop the nodes, then leave
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    try:
        t_boot = time.time()
        mesh.start(timeout_s=60)
        print(f"booted {args.nodes} nodes in {time.time() - t_boot:.1f} s", flush=True)
        rec.record("run", params={k: v for k, v in vars(args).items() if k != "out"} | {"out": str(out)},
                   nodes=[{"index": n.index, "node_id": n.node_id} for n in mesh.nodes])

        def restart(node: ProcNode) -> None:
            mesh.restart(node, timeout_s=30)

        driver = Driver(mesh.nodes, rec, args, restart=restart, log=lambda s: print(s, flush=True))
        driver.t0 = rec.events[0]["t"]
        driver.run_load(list(args.faults))
        driver.restore()
        driver.drain()
        driver.collect(out)
    except KeyboardInterrupt:
        print("interrupted: stopping the nodes", file=sys.stderr)
        return 130
    finally:
        if driver is not None:
            driver.close()
        mesh.stop()
        rec.close()
        if not args.keep:
            for n in mesh.nodes:  # keep the logs next to the history
                if n.log_path.exists():
                    shutil.copy(n.log_path, out / n.log_path.name)
            shutil.rmtree(data, ignore_errors=True)
    fig = H.check(H.read_history(out / "history.jsonl"), json.loads((out / "final.json").read_text()))
    res = H.write_outputs(fig, out, f"mesh of {args.nodes} nodes")
    print(res["table"])
    if res["chart_missing"]:
        print(res["chart_missing"])
    print(f"figures: {res['json']}" + (f"; chart: {res['chart']}" if res["chart"] else ""))
    return 0 if H.ok(fig) else 1


if __name__ == "__main__":
    sys.exit(main())
