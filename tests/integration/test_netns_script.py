"""simulations/netns.py end to end: nodes in network namespaces, a partition and its heal.

Needs root and ``ip netns``; skipped otherwise. The namespaces and links are
created and removed by the script under a prefix of its own; the test checks
that none is left behind.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "simulations" / "netns.py"
sys.path.insert(0, str(ROOT / "simulations"))

import netns  # noqa: E402

WHY = netns.why_unavailable()
pytestmark = pytest.mark.skipif(WHY is not None, reason=f"netns unavailable: {WHY}")


def leftovers(prefix: str) -> list[str]:
    return [n for n in netns._ns_names() + netns._link_names() if n.startswith(prefix)]


@pytest.fixture(scope="module")
def partition_run(tmp_path_factory):
    """One small run: 4 nodes (one on the minority side), 16 jobs, one 3 s partition, then heal."""
    out, prefix = tmp_path_factory.mktemp("netns") / "run", "wmnbeef"
    cmd = [sys.executable, str(SCRIPT), "--nodes", "4", "--jobs", "16", "--load-s", "8", "--faults", "partition",
           "--partition-s", "3", "--lease-s", "2", "--work-s-max", "1.5", "--drain-s", "30", "--agree-timeout-s", "10",
           "--seed", "5", "--subnet", "10.78.0.0/24", "--prefix", prefix, "--progress-s", "3", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=150)
    left = leftovers(prefix)
    figures = json.loads((out / "figures.json").read_text()) if (out / "figures.json").exists() else None
    return proc, figures, left, out


def test_partition_run_completes_and_cleans_up(partition_run):
    proc, figures, left, out = partition_run
    detail = proc.stdout[-3000:] + proc.stderr[-3000:]
    assert left == [], "the script left namespaces or links behind"
    assert figures is not None, detail
    assert figures["acknowledged"] >= 12, detail
    assert [r["kind"] for r in figures["recoveries"]] == ["partition"], figures["recoveries"]
    assert figures["multiple_accepted_results"] == 0, figures["multiple_accepted_jobs"]
    assert figures["over_attempt_bound"] == 0, figures["over_attempt_bound_jobs"]
    assert len(figures["agree_after_heal_s"]) == 1
    assert (out / "summary.txt").exists() and (out / "history.jsonl").exists()
    assert "replicas agree" in (out / "summary.txt").read_text()


def test_partition_and_heal_loses_no_job(partition_run):
    """The minority node rejoins after the heal (it once stayed alone with an empty routing table and took jobs
    with one replica, which the rest of the mesh never saw), and no acknowledged job is lost."""
    proc, figures, _left, out = partition_run
    final = json.loads((out / "final.json").read_text())
    peers = {i: st["peers"] for i, st in final["node_status"].items()}
    assert all(p == 3 for p in peers.values()), f"routing tables after the heal: {peers}"
    assert figures["lost"] == 0, figures["lost_jobs"]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_interrupted_run_removes_its_namespaces(tmp_path):
    """SIGTERM in the middle of a run: every namespace and link of the run is gone afterwards."""
    import signal
    import time

    prefix = "wmnfee1"
    cmd = [sys.executable, str(SCRIPT), "--nodes", "2", "--jobs", "100", "--load-s", "60", "--faults", "",
           "--subnet", "10.78.1.0/24", "--prefix", prefix, "--out", str(tmp_path / "run")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        line = ""
        while "booted" not in line:  # wait for the namespaces and nodes to exist
            assert time.monotonic() < deadline and proc.poll() is None, "the run did not boot"
            line = proc.stdout.readline()
        assert len(leftovers(prefix)) >= 2 + 2 + 2
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130
    assert leftovers(prefix) == []


def test_leftovers_of_dead_runs_are_removed_and_live_runs_kept():
    dead, live = "wmnd0d0", "wmna1a1"
    try:
        for prefix in (dead, live):
            subprocess.run(["ip", "netns", "add", f"{prefix}-0"], check=True)
            subprocess.run(["ip", "link", "add", f"{prefix}ba", "type", "bridge"], check=True)
        netns.STATE_DIR.mkdir(parents=True, exist_ok=True)
        (netns.STATE_DIR / f"{live}.pid").write_text(str(netns.os.getpid()))  # this process: alive
        (netns.STATE_DIR / f"{dead}.pid").write_text("999999999")  # no such process
        removed = netns.remove_leftovers()
        assert sorted(removed) == [f"{dead}-0", f"{dead}ba"]
        assert leftovers(dead) == []
        assert sorted(leftovers(live)) == [f"{live}-0", f"{live}ba"]
    finally:
        netns.remove_prefix(dead)
        netns.remove_prefix(live)
    assert leftovers(live) == []


def test_a_flapping_link_loses_no_job_and_cleans_up(tmp_path):
    """One node's link goes down and up every half second for 3 s, under load."""
    out, prefix = tmp_path / "run", "wmnf1a0"
    cmd = [sys.executable, str(SCRIPT), "--nodes", "4", "--jobs", "12", "--load-s", "6", "--faults", "flap",
           "--partition-s", "3", "--lease-s", "2", "--work-s-max", "1.0", "--drain-s", "30", "--agree-timeout-s", "10",
           "--seed", "6", "--subnet", "10.79.0.0/24", "--prefix", prefix, "--progress-s", "3", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=150)
    detail = proc.stdout[-3000:] + proc.stderr[-3000:]
    assert leftovers(prefix) == [], "the script left namespaces or links behind"
    figures = json.loads((out / "figures.json").read_text())
    assert [r["kind"] for r in figures["recoveries"]] == ["partition"], figures["recoveries"]
    assert figures["lost"] == 0, figures["lost_jobs"]
    assert figures["multiple_accepted_results"] == 0, figures["multiple_accepted_jobs"]
    assert proc.returncode == 0, detail
