"""A guided tour of workmesh: a local mesh of real node processes running real jobs.

    ./simulations/demo.sh          # sets up .venv, then runs this file

Starts 4 ``workmesh start`` processes on 127.0.0.1 (each bootstrapped from the
first), submits jobs through different nodes over HTTP, SIGKILLs the worker of
a running ``sleep`` job, waits for every job, prints what happened and each
surviving node's ``/status``, and stops the mesh. Exits 1 when any job did not
end as expected, 130 on Ctrl-C. Node logs (JSON lines) are kept and their path
printed when something went wrong.
"""

from __future__ import annotations

import hashlib
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "lib"))

from procmesh import ProcMesh, ProcNode, http, wait_until  # noqa: E402

NODES = 4
REPLICAS = 3  # per job; its write and lease quorum is a majority: 2
LEASE_S = 3.0  # short, so the takeover after the kill shows quickly
SLEEP_S = 3.0
WAIT_S = 30.0  # longest wait for one job to end
SHA_DATA, SHA_ROUNDS = "workmesh", 20_000


def say(text: str = "") -> None:
    print(text, flush=True)


def short(node_id: str | None) -> str:
    return node_id[:12] if node_id else "-"


def expected_digest(data: str, rounds: int) -> str:
    d = data.encode()
    for _ in range(rounds):
        d = hashlib.sha256(d).digest()
    return d.hex()


class Demo:
    def __init__(self, base: Path) -> None:
        self.mesh = ProcMesh(
            NODES,
            base,
            node_args=["--workers", "1", "--replicas", str(REPLICAS), "--lease-seconds", str(LEASE_S)],
        )
        self.names: dict[str, str] = {}  # node id -> "node2"
        self.jobs: list[dict] = []  # {"label", "type", "via", "id", "check"}
        self.killed: ProcNode | None = None
        self.sleep_first_worker: str | None = None

    # -- steps ---------------------------------------------------------------
    def start(self) -> None:
        say(f"==> starting {NODES} workmesh nodes on 127.0.0.1 (1 worker slot each, {REPLICAS} replicas per job, "
            f"lease {LEASE_S:g} s)")
        t0 = time.monotonic()
        self.mesh.start(timeout_s=30)
        for node in self.mesh.nodes:
            self.names[node.node_id] = f"node{node.index}"
            say(f"    node{node.index}  id {short(node.node_id)}  p2p udp {node.p2p}  api {node.url}")
        say(f"    all nodes up and peered in {time.monotonic() - t0:.1f} s")

    def submit(self, label: str, via: ProcNode, body: dict, check) -> dict:
        code, doc = http("POST", f"{via.url}/jobs", body)
        if code != 202:
            raise RuntimeError(f"{label}: POST /jobs on node{via.index} answered {code}: {doc}")
        job = {"label": label, "type": body["type"], "via": via, "id": doc["id"], "check": check}
        self.jobs.append(job)
        say(f"    {label:<14} -> node{via.index}  202 Accepted  id {doc['id'][:16]}...  status {doc['status']}")
        return job

    def submit_all(self) -> None:
        say("==> submitting jobs over HTTP, each through a different node")
        n = self.mesh.nodes
        digest = expected_digest(SHA_DATA, SHA_ROUNDS)
        self.submit(
            "sleep (killed)", n[0], {"type": "sleep", "payload": {"seconds": SLEEP_S}},
            lambda d: self._check_sleep(d),
        )
        self.submit(
            "echo", n[1], {"type": "echo", "payload": {"hello": "mesh"}},
            lambda d: d["status"] == "done" and d["result"] == {"hello": "mesh"},
        )
        self.submit(
            "sha256", n[2], {"type": "sha256", "payload": {"data": SHA_DATA, "rounds": SHA_ROUNDS}},
            lambda d: d["status"] == "done" and d["result"] == {"digest": digest},
        )
        self.submit(
            "fail x2", n[3], {"type": "fail", "payload": {"message": "failing on purpose"}, "max_attempts": 2},
            lambda d: d["status"] == "failed" and d["attempts"] == 2 and d["error"] == "failing on purpose",
        )

    def kill_sleep_worker(self) -> None:
        job = self.jobs[0]
        say("==> waiting for the sleep job to start running, then SIGKILLing its worker")

        def running():
            for node in self.mesh.live():
                code, doc = http("GET", f"{node.url}/jobs/{job['id']}", timeout_s=5)
                if code == 200 and doc["status"] == "running" and doc["worker"]:
                    return doc
                break  # ask one live node per round
            return None

        doc = wait_until(running, 20, "the sleep job to run")
        worker = self.mesh.by_id(doc["worker"])
        if worker is None:
            raise RuntimeError(f"the sleep job runs on an unknown node {doc['worker']}")
        self.sleep_first_worker = worker.node_id
        worker.kill()
        self.killed = worker
        job["killed_at"] = time.monotonic()
        say(f"    sleep job running on node{worker.index} (attempt {doc['attempts']}): kill -9 sent, node{worker.index} "
            f"is gone; its lease ({LEASE_S:g} s) will go stale on the replicas")

    def wait_all(self) -> list[tuple[dict, dict | None, bool]]:
        say("==> waiting for every job to end (GET /jobs/{id}?wait=...) from a surviving node")
        outcomes = []
        for i, job in enumerate(self.jobs):
            live = self.mesh.live()
            reader = live[i % len(live)]
            code, doc = http("GET", f"{reader.url}/jobs/{job['id']}?wait={WAIT_S:g}&history=1", timeout_s=WAIT_S + 15)
            ok = code == 200 and bool(job["check"](doc))
            if code != 200:
                doc = None
            extra = ""
            if job["type"] == "sha256" and ok:
                extra = " (digest matches hashlib)"
            if "killed_at" in job and doc is not None and doc["status"] == "done":
                extra = f" ({time.monotonic() - job['killed_at']:.1f} s after the kill)"
            say(f"    {job['label']:<14} read on node{reader.index}: "
                f"{doc['status'] if doc else f'HTTP {code}'}{extra}  {'ok' if ok else 'UNEXPECTED'}")
            outcomes.append((job, doc, ok))
        return outcomes

    def _check_sleep(self, doc: dict) -> bool:
        return (
            doc["status"] == "done"
            and doc["result"] == {"slept": SLEEP_S}
            and doc["worker"] is not None
            and doc["worker"] != self.sleep_first_worker
            and doc["attempts"] >= 2
        )

    # -- output ----------------------------------------------------------------
    def name(self, node_id: str | None) -> str:
        if not node_id:
            return "-"
        return self.names.get(node_id, short(node_id))

    def table(self, outcomes) -> None:
        say()
        header = f"{'job':<15}{'type':<8}{'via':<7}{'status':<10}{'attempts':>8}  {'worker':<8}{'result / error'}"
        say(header)
        say("-" * max(len(header) + 20, 96))
        for job, doc, ok in outcomes:
            if doc is None:
                say(f"{job['label']:<15}{job['type']:<8}node{job['via'].index:<3}{'?':<10}{'?':>8}  {'?':<8}(no answer)")
                continue
            if doc["status"] == "done":
                text = _clip(doc["result"])
            elif doc["status"] == "failed":
                text = f"error: {doc['error']}"
            else:
                text = f"last error: {doc['last_error']}" if doc.get("last_error") else ""
            mark = "" if ok else "   <-- UNEXPECTED"
            say(f"{job['label']:<15}{doc['type']:<8}node{job['via'].index:<3}{doc['status']:<10}{doc['attempts']:>8}  "
                f"{self.name(doc['worker']):<8}{text}{mark}")
        say()

    def explain_takeover(self, outcomes) -> None:
        job, doc, ok = outcomes[0]
        if doc is None or self.killed is None:
            return
        claims = sorted(
            {(f["attempt"], f["author"]) for f in doc.get("history", []) if f["kind"] == "claim"}
        )
        say("==> the killed worker's job")
        for attempt, author in claims:
            fate = "killed with SIGKILL while running" if author == self.killed.node_id else "took over the stale lease"
            say(f"    attempt {attempt}: claimed by {self.name(author)} ({short(author)}): {fate}")
        if ok:
            say(f"    finished on {self.name(doc['worker'])}, not on the killed node{self.killed.index}: "
                f"result {_clip(doc['result'])}")
        else:
            say(f"    UNEXPECTED: {doc['status']} on {self.name(doc['worker'])}")
        say()

    def statuses(self) -> None:
        say("==> /status of each live node")
        say(f"    {'node':<7}{'node id':<14}{'peers':>5}  {'workers':<9}{'jobs known, by status'}")
        for node in self.mesh.nodes:
            if not node.alive:
                say(f"    node{node.index:<3}{short(node.node_id):<14}{'-':>5}  {'-':<9}(killed)")
                continue
            code, st = http("GET", f"{node.url}/status", timeout_s=5)
            if code != 200:
                say(f"    node{node.index:<3}/status answered {code}")
                continue
            jobs = ", ".join(f"{k} {v}" for k, v in st["jobs"].items() if v) or "none"
            workers = f"{st['workers']['busy']}/{st['workers']['slots']} busy"
            say(f"    node{node.index:<3}{short(st['node_id']):<14}{st['peers']:>5}  {workers:<9}{jobs}")
        say()


def _clip(value, width: int = 60) -> str:
    import json

    text = json.dumps(value, separators=(",", ":"))
    return text if len(text) <= width else text[: width - 3] + "..."


def _on_sigterm(signum, frame):
    raise KeyboardInterrupt


def main() -> int:
    signal.signal(signal.SIGTERM, _on_sigterm)
    base = Path(tempfile.mkdtemp(prefix="workmesh-demo-"))
    t0 = time.monotonic()
    demo = Demo(base)
    ok = False
    code = 1
    try:
        demo.start()
        demo.submit_all()
        demo.kill_sleep_worker()
        outcomes = demo.wait_all()
        demo.table(outcomes)
        demo.explain_takeover(outcomes)
        demo.statuses()
        ok = all(good for _, _, good in outcomes)
        code = 0 if ok else 1
    except KeyboardInterrupt:
        say("\n==> interrupted")
        code = 130
    except Exception as exc:  # report, clean up, exit non-zero
        say(f"\n==> FAILED: {type(exc).__name__}: {exc}")
    finally:
        say("==> stopping the mesh (SIGTERM to each node)")
        try:
            demo.mesh.stop()
        except KeyboardInterrupt:
            for node in demo.mesh.nodes:
                node.kill()
        if code != 1:
            shutil.rmtree(base, ignore_errors=True)
        else:
            say(f"    node logs and data kept in {base}")
    elapsed = time.monotonic() - t0
    if ok:
        say(f"==> all {len(demo.jobs)} jobs ended as expected, in {elapsed:.1f} s")
    elif code == 1:
        say(f"==> some jobs did not end as expected ({elapsed:.1f} s)")
    return code


if __name__ == "__main__":
    sys.exit(main())
