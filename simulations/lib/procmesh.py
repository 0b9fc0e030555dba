"""Real meshes of ``workmesh start`` processes on loopback, for tests and scripts.

Each node is a real OS process started with the CLI, with its own data
directory, UDP port and HTTP port; it can be killed (SIGKILL), paused
(SIGSTOP/SIGCONT), stopped cleanly (SIGTERM) and restarted on the same data.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path


def wait_until(predicate, timeout_s: float, what: str = "condition", interval_s: float = 0.05):
    """Poll ``predicate`` until it returns something truthy (returned), or
    raise TimeoutError after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise TimeoutError(f"{what}: not met within {timeout_s:g} s")


def free_port(kind: int | None = None) -> int:
    """A port free on 127.0.0.1 right now: for ``kind`` (``socket.SOCK_STREAM``
    or ``socket.SOCK_DGRAM``), or for both TCP and UDP when ``kind`` is None."""
    if kind is not None:
        with socket.socket(socket.AF_INET, kind) as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]
    for _ in range(50):
        port = free_port(socket.SOCK_STREAM)
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                udp.bind(("127.0.0.1", port))
        except OSError:
            continue
        return port
    raise RuntimeError("no port free for both TCP and UDP on 127.0.0.1")


def spawn(argv: list[str], log_path: str | os.PathLike, *, env: dict[str, str] | None = None,
          cwd: str | os.PathLike | None = None) -> subprocess.Popen:
    """The one process launcher: ``argv`` in its own session (so a signal to
    its process group reaches its children too), stdin closed, stdout and
    stderr appended to ``log_path``."""
    with open(log_path, "ab") as log:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                env=env, cwd=cwd, start_new_session=True)


def _free_pair() -> tuple[int, int]:
    """A UDP port and a TCP port that are both free right now."""
    return free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_STREAM)


def workmesh_command() -> list[str]:
    script = Path(sys.executable).parent / "workmesh"
    if script.exists():
        return [str(script)]
    found = shutil.which("workmesh")
    return [found] if found else [sys.executable, "-m", "workmesh"]


def http(method: str, url: str, body: object | None = None, *, timeout_s: float = 30.0, headers: dict | None = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            raw = resp.read()
            return resp.status, json.loads(raw) if raw else {}
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            return exc.code, json.loads(raw) if raw else {}
        except ValueError:
            return exc.code, {"raw": raw.decode(errors="replace")}


@dataclass
class ProcNode:
    index: int
    data_dir: Path
    p2p_port: int
    api_port: int
    args: list[str] = field(default_factory=list)
    command: list[str] | None = None  # the workmesh command (default: workmesh_command())
    proc: subprocess.Popen | None = None
    node_id: str | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def p2p(self) -> str:
        return f"127.0.0.1:{self.p2p_port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir.parent / f"node{self.index}.log"

    def start(self, bootstrap: list[str]) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            *(self.command or workmesh_command()), "start",
            "--host", "127.0.0.1",
            "--p2p-port", str(self.p2p_port),
            "--api-port", str(self.api_port),
            "--data-dir", str(self.data_dir),
            "--log-format", "json",
            *[a for b in bootstrap for a in ("--bootstrap", b)],
            *self.args,
        ]
        self.proc = spawn(cmd, self.log_path)

    def wait_ready(self, timeout_s: float = 20.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"node {self.index} exited with {self.proc.returncode}; see {self.log_path}")
            try:
                code, doc = http("GET", f"{self.url}/status", timeout_s=2)
                # Only this node counts: another process may hold the port it was given.
                if code == 200 and doc.get("p2p") == self.p2p:
                    self.node_id = doc["node_id"]
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"node {self.index} not ready after {timeout_s} s; see {self.log_path}")

    def start_ready(self, bootstrap: list[str], timeout_s: float = 20.0, tries: int = 3) -> None:
        """Start and wait until ready. The ports were free when chosen, not
        reserved: when another process took one meanwhile (the node exits with
        "address already in use"), start again on new ports."""
        for attempt in range(tries):
            self.start(bootstrap)
            try:
                self.wait_ready(timeout_s)
                return
            except RuntimeError:
                if attempt == tries - 1 or "address already in use" not in self.log_path.read_text(errors="replace"):
                    raise
                self.p2p_port, self.api_port = _free_pair()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(timeout=10)

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.signal(signal.SIGCONT)
        self.signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()


class ProcMesh:
    """``n`` nodes, each bootstrapped from node 0."""

    def __init__(self, n: int, base_dir: str | os.PathLike, *, node_args: list[str] | None = None, per_node_args: dict[int, list[str]] | None = None, command: list[str] | None = None) -> None:
        self.base = Path(base_dir)
        self.nodes: list[ProcNode] = []
        for i in range(n):
            p2p, api = _free_pair()
            args = list(node_args or []) + list((per_node_args or {}).get(i, []))
            self.nodes.append(ProcNode(i, self.base / f"node{i}", p2p, api, args, command))

    def start(self, timeout_s: float = 30.0) -> ProcMesh:
        first = self.nodes[0]
        first.start_ready([], timeout_s)
        for node in self.nodes[1:]:
            node.start([first.p2p])
        for node in self.nodes[1:]:
            try:
                node.wait_ready(timeout_s)
            except RuntimeError:
                if "address already in use" not in node.log_path.read_text(errors="replace"):
                    raise
                node.p2p_port, node.api_port = _free_pair()
                node.start_ready([first.p2p], timeout_s)
        self.wait_peers(timeout_s)
        return self

    def wait_peers(self, timeout_s: float) -> None:
        """Until every live node knows every other live node (small meshes)."""
        want = min(len([n for n in self.nodes if n.alive]) - 1, 20)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            counts = [http("GET", f"{n.url}/status")[1].get("peers", 0) for n in self.nodes if n.alive]
            if all(c >= want for c in counts):
                return
            time.sleep(0.1)
        raise TimeoutError(f"peers did not converge: {counts}")

    def restart(self, node: ProcNode, timeout_s: float = 20.0) -> None:
        node.stop()
        others = [n.p2p for n in self.nodes if n is not node and n.alive]
        node.start(others[:3])
        node.wait_ready(timeout_s)

    def by_id(self, node_id: str) -> ProcNode | None:
        return next((n for n in self.nodes if n.node_id == node_id), None)

    def live(self) -> list[ProcNode]:
        return [n for n in self.nodes if n.alive]

    def stop(self) -> None:
        for node in self.nodes:
            node.signal(signal.SIGCONT)
            node.signal(signal.SIGTERM)
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> ProcMesh:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def logs(self) -> str:
        return "\n".join(f"--- node {n.index}\n" + (n.log_path.read_text()[-3000:] if n.log_path.exists() else "") for n in self.nodes)
