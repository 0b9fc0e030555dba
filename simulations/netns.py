"""A workmesh mesh whose nodes are hosts with their own addresses (Linux network namespaces).

    sudo python simulations/netns.py --nodes 5 --jobs 60 --faults partition,isolate --out runs/ns1

Needs root and ``ip`` (iproute2). Each node runs in its own network namespace
with one veth pair to a bridge. The script creates, under one unique prefix
(``wmn`` and four hex digits):

* namespaces ``<prefix>-<i>``, each holding ``eth0`` = ``<subnet>.<i+1>``;
* two bridges, ``<prefix>ba`` (the majority side, with ``<subnet>.254`` so the
  driver in the root namespace reaches every REST API through it) and
  ``<prefix>bb`` (the minority side), joined by the trunk veth pair
  ``<prefix>ta``/``<prefix>tb``;
* host ends ``<prefix>h<i>`` of each node's veth pair.

The addresses (default ``10.77.0.0/24``) exist only inside these namespaces
and on the bridge. Nodes bind to their own address, so each needs an API
token (``WORKMESH_API_TOKEN``, a random one per run).

Faults (``--faults``, played in order over the middle of the load phase):

* ``partition``: the trunk goes down (``ip link set <prefix>ta down``): the
  minority side's nodes still see each other but not the majority, nor the
  driver; ``--partition-s`` later the trunk comes back up (heal);
* ``isolate``: one majority node's host link goes down, then up; the node
  chosen is a lease holder (a node running a job) when there is one;
* ``flap``: one majority node's host link goes down and up every
  ``FLAP_PERIOD_S`` for ``--partition-s``, then stays up;
* ``kill``, ``stop``: as in ``simulations/mesh.py``.

After every heal the script measures how long the job's replicas take to
agree: until every live replica of every job it knows lists the job with the
same status. Everything is removed on exit, on Ctrl-C, on SIGTERM and on
failure; leftovers of runs whose process is gone are removed at start.
Outputs as ``simulations/mesh.py``: history.jsonl, final.json, summary.txt,
figures.json, chart.png.
"""

from __future__ import annotations

import argparse
import atexit
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent / "lib"))

import history as H  # noqa: E402
import mesh as M  # noqa: E402
from procmesh import ProcNode, http, spawn, workmesh_command  # noqa: E402

FAMILY = "wmn"
PREFIX_RE = re.compile(rf"^({FAMILY}[0-9a-f]{{4}})")
STATE_DIR = Path("/run/workmesh-netns") if Path("/run").is_dir() else Path(tempfile.gettempdir()) / "workmesh-netns"
P2P_PORT, API_PORT = 7000, 8000
NS_FAULTS = ("partition", "isolate", "flap", "kill", "stop")
FLAP_PERIOD_S = 0.5  # a flapping link is down, then up, for this long each


def ip(*args: str, check: bool = True, ns: str | None = None) -> subprocess.CompletedProcess:
    cmd = (["ip", "netns", "exec", ns] if ns else []) + ["ip", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {proc.stderr.strip()}")
    return proc


def why_unavailable() -> str | None:
    """None when this process can create network namespaces, else why not."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is missing: apt-get install -y iproute2"
    probe = f"{FAMILY}probe{os.getpid() % 10000}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"ip netns add failed: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _ns_names() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _link_names() -> list[str]:
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if ":" in line]


def remove_prefix(prefix: str) -> list[str]:
    """Remove every namespace and link named ``prefix...`` (and what runs in those namespaces)."""
    removed = []
    for ns in _ns_names():
        if not ns.startswith(prefix):
            continue
        pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
        for pid in pids:  # only processes inside a namespace this script family created
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        removed.append(ns)
    for link in _link_names():
        if link.startswith(prefix):
            subprocess.run(["ip", "link", "del", link], capture_output=True)
            removed.append(link)
    (STATE_DIR / f"{prefix}.pid").unlink(missing_ok=True)
    return removed


def remove_leftovers() -> list[str]:
    """Namespaces and links of earlier runs whose process is gone."""
    prefixes = {m.group(1) for name in _ns_names() + _link_names() if (m := PREFIX_RE.match(name))}
    removed = []
    for prefix in sorted(prefixes):
        pid_file = STATE_DIR / f"{prefix}.pid"
        try:
            pid = int(pid_file.read_text())
        except (OSError, ValueError):
            pid = None
        if pid is None or not _pid_alive(pid):
            removed += remove_prefix(prefix)
    return removed


@dataclass
class NsNode(ProcNode):
    ns: str = ""
    address: str = ""
    token: str = ""
    host_link: str = ""

    @property
    def url(self) -> str:
        return f"http://{self.address}:{self.api_port}"

    @property
    def p2p(self) -> str:
        return f"{self.address}:{self.p2p_port}"

    def start(self, bootstrap: list[str]) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            "ip", "netns", "exec", self.ns, *workmesh_command(), "start",
            "--host", self.address,
            "--p2p-port", str(self.p2p_port),
            "--api-port", str(self.api_port),
            "--data-dir", str(self.data_dir),
            "--log-format", "json",
            *[a for b in bootstrap for a in ("--bootstrap", b)],
            *self.args,
        ]
        # Off loopback a node needs a mesh key (or --open-mesh): the run's nodes share one.
        mesh_key = self.data_dir.parent / "mesh.key"
        if not mesh_key.exists():  # the format of `workmesh mesh-key`: 32 random bytes in hex, mode 0600
            fd = os.open(mesh_key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_hex(32) + "\n")
        env = {**os.environ, "WORKMESH_API_TOKEN": self.token, "WORKMESH_MESH_KEY_FILE": str(mesh_key)}
        # ip netns exec execs the command: the pid is the node's
        self.proc = spawn(cmd, self.log_path, env=env)


class Topology:
    """The namespaces, bridges and links of one run, and their removal."""

    def __init__(self, prefix: str, subnet: ipaddress.IPv4Network, n: int, minority: int) -> None:
        self.prefix = prefix
        self.subnet = subnet
        self.n = n
        self.minority = minority  # the last `minority` nodes sit on bridge B
        hosts = list(subnet.hosts())
        if n + 1 > len(hosts):
            raise ValueError(f"{subnet} is too small for {n} nodes")
        self.addresses = [str(hosts[i]) for i in range(n)]
        self.bridge_address = str(hosts[-1])
        self.bridge_a, self.bridge_b = f"{prefix}ba", f"{prefix}bb"
        self.trunk_a, self.trunk_b = f"{prefix}ta", f"{prefix}tb"
        self.lock = threading.Lock()
        self.removed = False

    def ns(self, i: int) -> str:
        return f"{self.prefix}-{i}"

    def host_link(self, i: int) -> str:
        return f"{self.prefix}h{i}"

    def side_b(self, i: int) -> bool:
        return i >= self.n - self.minority

    def create(self) -> None:
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        (STATE_DIR / f"{self.prefix}.pid").write_text(str(os.getpid()))
        for br in (self.bridge_a, self.bridge_b):
            ip("link", "add", br, "type", "bridge")
            ip("link", "set", br, "up")
        ip("addr", "add", f"{self.bridge_address}/{self.subnet.prefixlen}", "dev", self.bridge_a)
        ip("link", "add", self.trunk_a, "type", "veth", "peer", "name", self.trunk_b)
        ip("link", "set", self.trunk_a, "master", self.bridge_a, "up")
        ip("link", "set", self.trunk_b, "master", self.bridge_b, "up")
        for i, address in enumerate(self.addresses):
            ns, host, inner = self.ns(i), self.host_link(i), f"{self.prefix}n{i}"
            ip("netns", "add", ns)
            ip("link", "add", host, "type", "veth", "peer", "name", inner)
            ip("link", "set", inner, "netns", ns)
            ip("link", "set", host, "master", self.bridge_b if self.side_b(i) else self.bridge_a, "up")
            ip("link", "set", inner, "name", "eth0", ns=ns)
            ip("addr", "add", f"{address}/{self.subnet.prefixlen}", "dev", "eth0", ns=ns)
            ip("link", "set", "eth0", "up", ns=ns)
            ip("link", "set", "lo", "up", ns=ns)

    def set_link(self, name: str, up: bool) -> None:
        ip("link", "set", name, "up" if up else "down")

    def remove(self) -> list[str]:
        with self.lock:
            if self.removed:
                return []
            self.removed = True
        return remove_prefix(self.prefix)


class NetnsDriver(M.Driver):
    """The mesh driver plus partitions (links down, then up) and replica agreement after heals."""

    def __init__(self, *a, topo: Topology, **kw) -> None:
        super().__init__(*a, **kw)
        self.topo = topo
        self.agree_threads: list[threading.Thread] = []
        self.snapshots: dict[int, dict] = {}

    def inject(self, kind: str) -> None:
        if kind in ("kill", "stop"):
            return super().inject(kind)
        a = self.args
        if kind == "partition":
            with self.lock:
                victims = [n for n in self.nodes if self.topo.side_b(n.index) and n.index not in self.busy]
                for n in victims:
                    self.down.add(n.index)
                    self.busy.add(n.index)
            link = self.topo.trunk_a
        else:  # isolate (or flap) one node of the majority side, a lease holder when one runs a job
            majority = [n for n in self.nodes if not self.topo.side_b(n.index)]
            holders = [n for n in self.busy_workers(wait_s=2.0) if n in majority] if kind == "isolate" else []
            victims = self.pick(1, holders + [n for n in majority if n not in holders])
            link = victims[0].host_link if victims else ""
        if not victims:
            self.log(f"[{time.time() - self.t0:7.1f} s] fault {kind} skipped: no node may go down now")
            return
        self.counts["faults"] += 1
        self.topo.set_link(link, up=False)
        self.fault("partition", victims, note=f"{kind}: {link} down")
        with self.lock:
            for n in victims:
                self.busy.discard(n.index)
        heal = self._flap_then_heal if kind == "flap" else self._heal_later
        self.pending_fault_futures.append(self.fault_pool.submit(heal, link, victims, time.time() + a.partition_s))

    def _flap_then_heal(self, link: str, victims: list, until: float) -> None:
        """Toggle the link every FLAP_PERIOD_S (bounded by ``until``), then heal it."""
        up = False
        while time.time() + FLAP_PERIOD_S < until:
            time.sleep(FLAP_PERIOD_S)
            up = not up
            self.topo.set_link(link, up=up)
        self._heal_later(link, victims, until)

    def _heal_later(self, link: str, victims: list, at: float) -> None:
        time.sleep(max(0.0, at - time.time()))
        self.topo.set_link(link, up=True)
        t_heal = time.time()
        self.fault("heal", victims, note=f"{link} up")
        with self.lock:
            for n in victims:
                self.down.discard(n.index)
        heal_no = len([e for e in self.rec.events if e["ev"] == "fault" and e["kind"] == "heal"])
        thread = threading.Thread(target=self.wait_agreement, args=(t_heal, heal_no), daemon=True)
        thread.start()
        self.agree_threads.append(thread)

    def join_agreement(self) -> None:
        for thread in self.agree_threads:
            thread.join(self.args.agree_timeout_s + 30)

    def snapshot(self) -> dict:
        """Every live node's local job list (``GET /jobs``: what it holds as a replica). Passive: no job is read."""
        lists: dict[str, dict[str, str]] = {}
        for n in self.nodes:
            if not n.alive:
                continue
            try:
                code, doc = self.get(n, "/jobs?limit=500", timeout_s=5)
            except OSError:
                continue
            if code == 200:
                lists[n.node_id] = {j["id"]: j["status"] for j in doc["jobs"]}
        return {"t": time.time(), "lists": lists}

    def peers(self) -> dict[int, int | None]:
        out = {}
        for n in self.nodes:
            try:
                out[n.index] = self.get(n, "/status", timeout_s=3)[1].get("peers") if n.alive else None
            except OSError:
                out[n.index] = None
        return out

    def wait_agreement(self, t_heal: float, heal_no: int) -> None:
        """Snapshot the job lists until they look settled or the window ends; judged later by :func:`agreement`."""
        deadline = t_heal + self.args.agree_timeout_s
        self.rec.record("peers", heal=heal_no, peers=self.peers())
        snaps, quiet = [], 0
        while time.time() < deadline:
            snaps.append(self.snapshot())
            quiet = quiet + 1 if len(snaps) > 1 and snaps[-1]["lists"] == snaps[-2]["lists"] else 0
            if quiet >= 8 and settled(snaps[-1]["lists"], self.acked):  # 2 s without change
                break
            time.sleep(0.25)
        self.snapshots[heal_no] = {"t_heal": t_heal, "snaps": snaps, "peers_after": self.peers()}


def settled(lists: dict[str, dict[str, str]], acked) -> bool:
    """Cheap stop rule: every acknowledged job is terminal on every node that lists it."""
    for job in acked:
        seen = [lst[job] for lst in lists.values() if job in lst]
        if not seen or any(st not in H.TERMINAL for st in seen) or len(set(seen)) > 1:
            return False
    return True


def placements(final: dict) -> dict[str, list[str]]:
    """Each job's replica ids from its signed placement grant (the lowest fact id wins, as in node/lifecycle.py)."""
    out = {}
    for job, doc in final["jobs"].items():
        places = sorted((f for f in doc.get("facts", []) if f.get("kind") == "grant" and f.get("action") == "place"),
                        key=lambda f: f["fact_id"])
        if places:
            subject = places[0]["subject"]
            out[job] = [subject[i:i + 40] for i in range(0, len(subject), 40)]
    return out


def agreement(heal: dict, final: dict, jobs: set[str]) -> tuple[float | None, list[dict]]:
    """Seconds from the heal to the first snapshot in which every live replica of every job
    (its placement) lists it with one status; None and the last disagreements when none did."""
    placed = placements(final)
    ids = [n["node_id"] for n in final["nodes"]]
    bad: list[dict] = []
    for snap in heal["snaps"]:
        lists = snap["lists"]
        bad = []
        for job in sorted(jobs | {j for lst in lists.values() for j in lst}):
            spec = H.submit_spec(final["jobs"].get(job, {}).get("facts", [])) or {}
            replicas = placed.get(job) or M.xor_closest(job, ids, spec.get("replicas", 1))
            live = [r for r in replicas if r in lists]
            statuses = {lists[r].get(job) for r in live}
            if len(statuses) != 1 or None in statuses:
                bad.append({"job": job, "status": {ids.index(r): lists[r].get(job) for r in live}})
        if not bad:
            return round(snap["t"] - heal["t_heal"], 3), []
    return None, bad


def parse_ns_faults(text: str) -> list[str]:
    faults = [f.strip() for f in text.split(",") if f.strip()]
    bad = [f for f in faults if f not in NS_FAULTS]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown fault {bad[0]!r}; choose from {', '.join(NS_FAULTS)}")
    return faults


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Needs root. Outputs: history.jsonl, final.json, summary.txt, figures.json, "
                                            "chart.png in --out.")
    M.common_arguments(parser, nodes=5, jobs=60)
    parser.add_argument("--faults", type=parse_ns_faults, default=["partition", "isolate"],
                        help="comma list: partition, isolate, flap, kill, stop (default partition,isolate)")
    parser.add_argument("--partition-s", type=float, default=6.0, help="how long a partition lasts (default 6 s)")
    parser.add_argument("--minority", type=int, help="nodes on the minority side (default (nodes-1)//2)")
    parser.add_argument("--agree-timeout-s", type=float, default=60.0, help="give up waiting for agreement after (default 60 s)")
    parser.add_argument("--subnet", default="10.77.0.0/24", help="private range for the nodes (default 10.77.0.0/24)")
    parser.add_argument("--prefix", help=f"name prefix of namespaces and links (default {FAMILY} + 4 random hex digits)")
    args = parser.parse_args(argv)
    why = why_unavailable()
    if why:
        print(f"netns: {why}", file=sys.stderr)
        return 2
    if args.nodes < 2:
        parser.error("--nodes must be at least 2")
    prefix = args.prefix or f"{FAMILY}{secrets.token_hex(2)}"
    if not PREFIX_RE.match(prefix) or len(prefix) != 7:
        parser.error(f"--prefix must be {FAMILY} followed by 4 hex digits")
    subnet = ipaddress.ip_network(args.subnet)
    left = remove_leftovers()
    if left:
        print(f"removed leftovers of earlier runs: {' '.join(left)}", flush=True)
    routed = subprocess.run(["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True).stdout
    clash = [line for line in routed.split("\n") if line and ipaddress.ip_interface(line.split()[3]).network.overlaps(subnet)]
    if clash:
        print(f"netns: {subnet} overlaps an address of this host ({clash[0].split()[1]}); choose --subnet", file=sys.stderr)
        return 2
    M.finish_args(args, args.nodes)
    minority = args.minority if args.minority is not None else (args.nodes - 1) // 2
    out = Path(args.out or tempfile.mkdtemp(prefix="workmesh-netns-"))
    out.mkdir(parents=True, exist_ok=True)
    data = Path(tempfile.mkdtemp(prefix="workmesh-netns-data-"))
    token = secrets.token_urlsafe(24)
    topo = Topology(prefix, subnet, args.nodes, minority)
    atexit.register(topo.remove)

    def on_signal(signum, frame):  # SIGTERM, SIGHUP: leave through the finally blocks
        raise KeyboardInterrupt

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    print(f"netns: {args.nodes} nodes in namespaces {prefix}-*, {subnet}, minority side {minority}, {args.jobs} jobs "
          f"over {args.load_s:g} s, faults {args.faults}, seed {args.seed}; output in {out}", flush=True)
    rec = H.Recorder(out / "history.jsonl")
    node_args = ["--workers", str(args.workers), "--replicas", str(args.replicas), "--lease-seconds", str(args.lease_s),
                 "--max-attempts", str(args.max_attempts)]
    nodes = [NsNode(i, data / f"node{i}", P2P_PORT, API_PORT, list(node_args), ns=topo.ns(i), address=topo.addresses[i],
                    token=token, host_link=topo.host_link(i)) for i in range(args.nodes)]
    driver = None
    code = 1
    try:
        topo.create()
        t_boot = time.time()
        nodes[0].start([])
        nodes[0].wait_ready(60)
        for n in nodes[1:]:
            n.start([nodes[0].p2p])
        for n in nodes[1:]:
            n.wait_ready(60)
        _wait_peers(nodes, 60)
        print(f"booted {args.nodes} nodes in {time.time() - t_boot:.1f} s", flush=True)
        rec.record("run", params={k: v for k, v in vars(args).items() if k != "out"} | {"out": str(out), "prefix": prefix},
                   nodes=[{"index": n.index, "node_id": n.node_id, "address": n.address, "side": "b" if topo.side_b(n.index) else "a"}
                          for n in nodes])

        def restart(node: NsNode) -> None:
            node.stop()
            others = [n.p2p for n in nodes if n is not node and n.alive]
            node.start(others[:3])
            node.wait_ready(30)

        driver = NetnsDriver(nodes, rec, args, restart=restart, headers={"Authorization": f"Bearer {token}"},
                             log=lambda s: print(s, flush=True), topo=topo)
        driver.t0 = rec.events[0]["t"]
        driver.run_load(list(args.faults))
        driver.restore()
        driver.drain()
        driver.join_agreement()
        final = driver.collect(out)
        for heal_no, heal in sorted(driver.snapshots.items()):
            seconds, bad = agreement(heal, final, set(driver.acked))
            rec.record("agree", heal=heal_no, seconds=seconds, snapshots=len(heal["snaps"]), disagreeing=bad[:50],
                       peers_after=heal["peers_after"])
            print(f"heal {heal_no}: replicas " + (f"agree {seconds:.2f} s after the heal" if seconds is not None else
                  f"did not agree within {args.agree_timeout_s:g} s: {len(bad)} jobs differ"), flush=True)
        code = 0
    except KeyboardInterrupt:
        print("interrupted: removing namespaces and links", file=sys.stderr)
        code = 130
    finally:
        if driver is not None:
            driver.close()
        for n in nodes:
            n.stop(timeout_s=5)
        removed = topo.remove()
        print(f"removed {len(removed)} namespaces and links with prefix {prefix}", flush=True)
        rec.close()
        for n in nodes:
            if n.log_path.exists():
                shutil.copy(n.log_path, out / n.log_path.name)
        if not args.keep:
            shutil.rmtree(data, ignore_errors=True)
    if code:
        return code
    fig = H.check(H.read_history(out / "history.jsonl"), json.loads((out / "final.json").read_text()))
    res = H.write_outputs(fig, out, f"{args.nodes} nodes in network namespaces")
    print(res["table"])
    if res["chart_missing"]:
        print(res["chart_missing"])
    print(f"figures: {res['json']}" + (f"; chart: {res['chart']}" if res["chart"] else ""))
    return 0 if H.ok(fig) else 1


def _wait_peers(nodes: list[NsNode], timeout_s: float) -> None:
    want = min(len(nodes) - 1, 20)
    deadline = time.monotonic() + timeout_s
    counts: list[int] = []
    while time.monotonic() < deadline:
        counts = [http("GET", f"{n.url}/status", timeout_s=5)[1].get("peers", 0) for n in nodes]
        if all(c >= want for c in counts):
            return
        time.sleep(0.1)
    raise TimeoutError(f"peers did not converge: {counts}")


if __name__ == "__main__":
    sys.exit(main())
