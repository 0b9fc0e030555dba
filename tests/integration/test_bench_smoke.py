"""The benchmark a user runs to compare workmesh with Celery and Dramatiq.

The smoke test runs ``simulations/instruments/bench.py --smoke`` for real (20 jobs per
drain, 5 latency samples): a 3-node workmesh mesh always, and Celery and
Dramatiq on Redis when the bench extra and ``redis-server`` are installed in
this interpreter, else the bench must list them as skipped with the reason.
It checks that the run completes, prints every column and the cost table,
and leaves no process behind. The small tests above it pin the figures'
arithmetic, which needs nothing installed. It never judges a speed: the
figures are only asserted to exist.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "simulations" / "instruments" / "bench.py"
COLUMNS = ("system", "job", "drain/s", "drain xC", "p50 ms", "p50 xC", "p99 ms", "p99 xC",
           "cpu ms/job", "cpu xC", "rss MiB", "rss xC", "pss MiB", "pss xC", "note")


def _load_bench():
    spec = importlib.util.spec_from_file_location("bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench"] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


def test_percentile_is_nearest_rank():
    bench = _load_bench()
    values = [float(v) for v in range(1, 201)]
    assert bench.percentile(values, 50) == 100.0
    assert bench.percentile(values, 99) == 198.0
    assert bench.percentile([7.0], 99) == 7.0
    assert bench.percentile([], 50) is None


def test_mesh_slots_are_split_over_the_nodes_and_add_up():
    bench = _load_bench()
    assert bench.split_slots(4, 3) == [2, 1, 1]
    assert bench.split_slots(4, 5) == [1, 1, 1, 1, 0]
    assert bench.mesh_size("workmesh5") == 5 and bench.mesh_size("celery") is None


def test_cpu_and_rss_are_read_past_a_process_name_with_parens():
    bench = _load_bench()
    stat = "42 (a (b) c) S 1 42 42 0 -1 4194560 10 0 0 0 7 3 5 1 20 0 1 0 100 1000 256 rest"
    assert bench.parse_stat(stat) == (42, 7 + 3 + 5 + 1, 256)


def test_table_shows_every_column_and_ratios_to_celery():
    bench = _load_bench()
    rows = [bench.Row("celery", "noop", drain_jobs_per_s=400.0, latency_p50_ms=2.0, latency_p99_ms=4.0,
                      cpu_ms_per_job=3.0, peak_rss_mib=100.0, peak_pss_mib=80.0),
            bench.Row("workmesh3", "noop", drain_jobs_per_s=800.0, latency_p50_ms=1.0, latency_p99_ms=2.0,
                      cpu_ms_per_job=6.0, peak_rss_mib=50.0, peak_pss_mib=20.0),
            bench.Row("dramatiq", "noop", note="skipped: dramatiq missing")]
    records = bench.with_ratios(rows)
    assert records[1]["ratios_to_celery"] == {"drain_jobs_per_s": 2.0, "latency_p50_ms": 0.5,
                                              "latency_p99_ms": 0.5, "cpu_ms_per_job": 2.0, "peak_rss_mib": 0.5,
                                              "peak_pss_mib": 0.25}
    table = bench.format_table(records).splitlines()
    assert all(col in table[0] for col in COLUMNS)
    assert "skipped: dramatiq missing" in table[-1]


def _missing(system: str) -> list[str]:
    """What a baseline needs that this interpreter or machine lacks."""
    missing = [m for m in (system, "redis") if importlib.util.find_spec(m) is None]
    if shutil.which("redis-server") is None:
        missing.append("redis-server")
    return missing


def _live_sessions(sessions: set[int]) -> list[int]:
    live = []
    for entry in os.scandir("/proc"):
        try:
            with open(f"/proc/{entry.name}/stat") as fh:
                text = fh.read()
        except OSError:
            continue
        if int(text[text.rindex(")") + 2:].split()[3]) in sessions:
            live.append(int(entry.name))
    return live


@pytest.mark.slow
def test_smoke_bench_prints_every_column_and_skips_what_is_not_installed(tmp_path):
    """The smallest run of the real bench: a 3-node mesh always, the baselines when installed."""
    systems = ["celery", "dramatiq", "workmesh3"]
    out_json = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(BENCH), "--smoke", "--systems", ",".join(systems), "--settle-s", "0.5",
                           "--json", str(out_json)], capture_output=True, text=True, timeout=240, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]

    lines = proc.stdout.splitlines()
    assert any(line.startswith("machine:") for line in lines), proc.stdout
    assert any(line.startswith("cpu ms/job counted until 0.5 s after the drain") for line in lines), proc.stdout
    header = next(line for line in lines if line.startswith("system"))
    assert all(col in header for col in COLUMNS), header
    doc = json.loads(out_json.read_text())
    assert {(r["system"], r["kind"]) for r in doc["rows"]} == {(s, k) for s in systems for k in ("noop", "sha256")}
    for row in doc["rows"]:
        assert any(line.startswith(row["system"]) and row["kind"] in line for line in lines)
        if row["system"] == "workmesh3" or not _missing(row["system"]):  # must have run in full
            assert row["jobs_done"] == 20 and row["jobs_wrong"] == 0, row
            assert row["drain_jobs_per_s"] > 0 and row["peak_rss_mib"] > 0, row
            assert 0 < row["peak_pss_mib"] <= row["peak_rss_mib"], row
            # CPU is read in clock ticks (10 ms): 20 of Dramatiq's no-op jobs
            # (about 0.5 ms each) may take less than one. A mesh takes many.
            assert row["cpu_ms_per_job"] >= 0 and (row["cpu_ms_per_job"] > 0 or row["system"] != "workmesh3"), row
            assert 0 < row["latency_p50_ms"] <= row["latency_p99_ms"], row
            # With --settle-s, the CPU counted until after the drain includes the drain's.
            assert row["cpu_settled_ms_per_job"] >= row["cpu_ms_per_job"], row
        else:  # not installed: skipped, and the reason says what is missing
            assert row["note"].startswith("skipped:") and "missing" in row["note"], row
    mesh = [r for r in doc["rows"] if r["system"] == "workmesh3"]
    assert all(r["cost_per_job"]["signatures"] > 0 and r["cost_per_job"]["datagrams_out"] > 0 for r in mesh)
    assert any(line.startswith("cost per job") for line in lines)
    assert all(r["ratios_to_celery"]["drain_jobs_per_s"] == 1.0 for r in doc["rows"]
               if r["system"] == "celery" and r["drain_jobs_per_s"])

    started = {pid for system in doc["info"].values() for kind in system.values() for pid in kind["sessions"]}
    assert started and not _live_sessions(started), "the bench left processes running"


def test_cpu_per_job_runs_a_mesh_in_one_process_and_prints_both_phases(tmp_path):
    """The A/B instrument for node code (simulations/instruments/cpu_per_job.py): a tiny run
    completes and reports CPU per job for the sequential jobs and the drain."""
    out = tmp_path / "cpu.json"
    done = subprocess.run(
        [sys.executable, str(REPO / "simulations" / "instruments" / "cpu_per_job.py"), "--jobs", "5", "--drain", "20", "--json", str(out)],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "sequential: 5 jobs, cpu" in done.stdout and "drain:      20 jobs, cpu" in done.stdout
    figures = json.loads(out.read_text())
    assert figures["sequential"]["cpu_ms_per_job"] > 0 and figures["drain"]["jobs_per_s"] > 0
