"""A finished run's figures: what happened to the jobs, the executions, the DHT and the network."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from simulations.lib.stats import percentile

if TYPE_CHECKING:
    from simulations.sim.driver import Run


def run_figures(run: Run, lost: list[str], destroyed: list[str], available: float, records: int, decided_s: float) -> dict[str, Any]:
    """Every figure of a finished run (JSON-ready); see docs/simulation.md for their definitions."""
    now = run.loop.time()
    inv = run.invariants
    latencies = [inv.decided_at[j] - a.at for j, a in run.accepted.items() if j in inv.decided_at]
    statuses = Counter(inv.decided_status.get(j, "undecided") for j in run.accepted)
    runs = run.executions.by_job()
    dup_jobs = dup_overlap = dup_after_crash = 0
    by_name = {s.name: s for s in run.mesh.nodes}
    for job_id, a in run.accepted.items():
        execs = sorted(runs.get(job_id.hex(), []), key=lambda r: r.started)
        if a.kind == "fail" or len(execs) < 2:
            continue
        dup_jobs += 1
        first, second = execs[0], execs[1]
        if first.ended is None or first.ended > second.started:
            dup_overlap += 1
        died = by_name[first.node].died
        if died is not None and died <= second.started:
            dup_after_crash += 1
    accepted_hex = {j.hex() for j in run.accepted}
    per_node_bps = []
    for s in run.mesh.nodes:
        life = (s.died if s.died is not None else now) - s.born
        if life > 1.0:
            per_node_bps.append((run.network.bytes_out[s.addr] + run.network.bytes_in[s.addr]) / life)
    violations = dict(inv.violation_counts)
    return {
        "params": asdict(run.params),
        "virtual_s": round(now, 3),
        "nodes_started": len(run.mesh.nodes),
        "nodes_live_at_end": len(run.mesh.live()),
        "crashed": run.counts["crashed"],
        "joined_later": run.counts["joined_later"],
        "jobs_submitted": run.counts["submitted"],
        "jobs_accepted": len(run.accepted),
        "jobs_rejected_503": run.counts["rejected_503"],
        "client_errors": run.counts["client_errors"],
        # Submissions made while the mesh was split, by the accepting node's side.
        "submits_by_side": {
            side: {"accepted": run.by_side[f"{side}_accepted"], "refused": run.by_side[f"{side}_refused"]}
            for side in ("majority", "minority")
        },
        "jobs_by_status": dict(statuses),
        "jobs_closed_by_closing_attempt": len(inv.closed),
        "jobs_lost": len(lost),
        "jobs_destroyed": len(destroyed),
        # Of the lost: jobs whose replica set lost a majority for good, beyond the fault model.
        "jobs_lost_quorum_gone": len(run.quorum_gone),
        "quorum_gone_job_ids": run.quorum_gone[:20],
        "lost_job_ids": lost[:20],
        "destroyed_job_ids": destroyed[:20],
        "decided_within_s_after_heal": round(decided_s, 3),
        "latency_s_mean": round(sum(latencies) / max(1, len(latencies)), 3),
        "latency_s_p50": round(percentile(latencies, 50, 0.0), 3),
        "latency_s_p95": round(percentile(latencies, 95, 0.0), 3),
        "latency_s_max": round(max(latencies, default=0.0), 3),
        "executions": len(run.executions.runs),
        "executions_of_unaccepted_jobs": sum(1 for r in run.executions.runs if r.job_id not in accepted_hex),
        "duplicate_execution_jobs": dup_jobs,
        "duplicate_overlapping": dup_overlap,
        "duplicate_after_crash": dup_after_crash,
        "invariant_violations": sum(violations.values()),
        "violations_by_kind": violations,
        "violations": inv.violations[:20],
        "node_errors": sum(n for (level, _), n in run.sink.counts.items() if level == "error"),
        "node_error_samples": run.sink.errors[:10],
        "node_warnings": {e: n for (level, e), n in run.sink.counts.items() if level == "warning"},
        "records_verified": records,
        "record_availability": round(available, 4),
        "final_reads": run.reads,
        **run.lookups.figures(),
        "bytes_per_node_s_mean": round(sum(per_node_bps) / max(1, len(per_node_bps)), 1),
        "bytes_per_node_s_p95": round(percentile(per_node_bps, 95, 0.0), 1),
        "network": dict(run.network.counters),
        "node_totals": run.mesh.totals(),
        "load_per_job": load_per_job(run.boot_totals, run.run_totals, len(run.accepted)),
        "states_observed": inv.states_seen,
        "series": run.series,
        "marks": [[round(t, 3), label] for t, label in run.marks],
    }


# What the load phase cost per accepted job (from the load's start to the
# audit's: the jobs, their retries and the upkeep meanwhile; boot and audit
# excluded), the figures issue 15 compares across mesh sizes.
LOAD_PER_JOB = {
    "datagrams": "rpc_datagrams_out",
    "bytes": "rpc_bytes_out",
    "offers": "worker_offers",
    "fetches": "dht_fetches",
    "lookups": "dht_lookups",
    "announcements_received": "gossip_received",
    "reannounces": "node_reannounced",
}


def load_per_job(before: dict[str, int], after: dict[str, int], jobs: int) -> dict[str, float]:
    n = max(1, jobs)
    return {name: round((after.get(key, 0) - before.get(key, 0)) / n, 1) for name, key in LOAD_PER_JOB.items()}
