"""simulations/mesh.py end to end: real processes, a SIGKILL and a restart, the checker's verdict."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import history as H

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "simulations" / "mesh.py"


def test_help_names_the_faults():
    out = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0
    for word in ("--nodes", "--jobs", "--faults", "kill", "churn", "--out"):
        assert word in out.stdout


def test_small_mesh_with_a_kill_loses_no_job(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, str(SCRIPT), "--nodes", "4", "--jobs", "20", "--load-s", "8", "--faults", "kill",
           "--down-s", "3", "--lease-s", "2", "--work-s-max", "1.5", "--drain-s", "40", "--seed", "7",
           "--progress-s", "3", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    figures = json.loads((out / "figures.json").read_text())
    detail = proc.stdout[-3000:] + proc.stderr[-3000:]
    assert figures["acknowledged"] == 20, detail
    assert figures["lost"] == 0, figures["lost_jobs"]
    assert figures["multiple_accepted_results"] == 0, figures["multiple_accepted_jobs"]
    assert figures["over_attempt_bound"] == 0, figures["over_attempt_bound_jobs"]
    assert [r["kind"] for r in figures["recoveries"]] == ["kill"], figures["recoveries"]
    assert figures["latency_s"]["p50"] is not None
    assert proc.returncode == 0, detail
    assert "lost jobs" in proc.stdout and (out / "summary.txt").read_text().strip() in proc.stdout
    events = H.read_history(out / "history.jsonl")
    kinds = {e["ev"] for e in events}
    assert {"run", "submit", "ack", "fault", "claim", "grant", "exec_start", "exec_end", "result", "accepted"} <= kinds
    assert [e["kind"] for e in events if e["ev"] == "fault"] == ["kill", "restart"]
    if importlib.util.find_spec("matplotlib") is not None:
        assert (out / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    else:
        assert "matplotlib is not installed" in proc.stdout


def test_checker_finds_lost_duplicate_and_double_accepted_jobs():
    """The checker on a hand-made history: it must be able to fail."""
    t = 1000.0
    facts_ok = [{"kind": "submit", "raw_b64": _submit_b64(quorum=2, max_attempts=1), "attempt": 0, "author": "s",
                 "fact_id": "f0", "ts_ms": 0}]
    for fid, worker in (("r1", "w1"), ("r2", "w2")):
        facts_ok.append({"kind": "result", "author": worker, "attempt": 1, "outcome": "ok", "fact_id": fid, "ts_ms": 1_001_500})
        for rep in ("a", "b"):
            facts_ok.append({"kind": "ballot", "action": "seal", "subject": fid, "author": rep, "attempt": 1, "round": 0,
                             "proposer": worker, "ts_ms": 1_001_600})
    events = [{"ev": "run", "t": t, "params": {"tag": "x"}, "nodes": [{"index": 0, "node_id": "w1"}]},
              {"ev": "submit", "t": t, "seq": 0, "node": 0}, {"ev": "ack", "t": t, "seq": 0, "node": 0, "code": 202, "job": "j0"},
              {"ev": "submit", "t": t, "seq": 1, "node": 0}, {"ev": "ack", "t": t, "seq": 1, "node": 0, "code": 202, "job": "j1"},
              {"ev": "exec_start", "t": t + 1, "job": "j0", "attempt": 1, "worker": "w1"},
              {"ev": "exec_start", "t": t + 1.1, "job": "j0", "attempt": 1, "worker": "w2"}]
    for e in H.fact_events("j0", facts_ok):
        events.append(e)
    final = {"jobs": {"j0": {"view": {"status": "done", "max_attempts": 1}, "facts": facts_ok},
                      "j1": {"view": None, "facts": []},
                      "zz": {"view": {"status": "done"}, "facts": []}}}
    fig = H.check(events, final)
    assert fig["lost"] == 1 and fig["lost_jobs"][0]["job"] == "j1"
    assert fig["unexpected"] == 1
    assert fig["duplicate_executions"] == 1 and fig["concurrent_executions"] == 1
    assert len(fig["same_attempt_two_workers"]) == 1
    assert fig["over_attempt_bound"] == 1
    assert fig["multiple_accepted_results"] == 1
    assert not H.ok(fig)
    assert "FAILED" in H.summary_table(fig)


def _submit_b64(*, quorum: int, max_attempts: int) -> str:
    import base64

    import msgpack

    body = ["sleep", b'{"tag":"x-0"}', max_attempts, 2000, 60000, 3, quorum, b"n" * 16, 0]
    return base64.b64encode(msgpack.packb(["submit", b"k" * 32, body, b"s" * 64], use_bin_type=True)).decode()
