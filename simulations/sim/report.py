"""A run's figures as a summary table, a JSON file and a PNG chart."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SUMMARY_ROWS = (
    ("scenario", lambda f: f["params"]["scenario"]),
    ("seed", lambda f: f["params"]["seed"]),
    ("nodes (started / live at end)", lambda f: f"{f['nodes_started']} / {f['nodes_live_at_end']}"),
    ("crashed / joined later", lambda f: f"{f['crashed']} / {f['joined_later']}"),
    ("jobs submitted / accepted / 503", lambda f: f"{f['jobs_submitted']} / {f['jobs_accepted']} / {f['jobs_rejected_503']}"),
    ("client errors", lambda f: f["client_errors"]),
    ("while split: majority / minority side accepted (503)", lambda f: _by_side(f)),
    ("jobs by status", lambda f: ", ".join(f"{k} {v}" for k, v in sorted(f["jobs_by_status"].items()))),
    ("lost / destroyed jobs", lambda f: f"{f['jobs_lost']} / {f['jobs_destroyed']}"
     + (f" ({f['jobs_lost_quorum_gone']} lost a majority of replicas for good)" if f.get("jobs_lost_quorum_gone") else "")),
    ("latency mean / p95 / max (s)", lambda f: f"{f['latency_s_mean']} / {f['latency_s_p95']} / {f['latency_s_max']}"),
    ("executions", lambda f: f["executions"]),
    ("duplicate executions (jobs)", lambda f: f"{f['duplicate_execution_jobs']} (overlapping {f['duplicate_overlapping']}, after crash {f['duplicate_after_crash']})"),
    ("invariant violations", lambda f: f"{f['invariant_violations']} {f['violations_by_kind'] or ''}"),
    ("node errors", lambda f: f["node_errors"]),
    ("records verified", lambda f: f["records_verified"]),
    ("record availability", lambda f: f["record_availability"]),
    ("lookups / success rate", lambda f: f"{f['lookups']} / {f['lookup_success_rate']}"),
    ("hops mean / p95", lambda f: f"{f['hops_mean']} / {f['hops_p95']}"),
    ("bytes per node per s mean / p95", lambda f: f"{f['bytes_per_node_s_mean']:.0f} / {f['bytes_per_node_s_p95']:.0f}"),
    ("datagrams sent / lost / partitioned", lambda f: f"{f['network'].get('sent', 0)} / {f['network'].get('dropped_loss', 0)} / {f['network'].get('dropped_partition', 0)}"),
    ("per job: offers / claims / fetches / reannounces", lambda f: _per_job(f, "worker_offers", "worker_claims", "dht_fetches", "node_reannounced")),
    ("load per job: datagrams / KB / lookups", lambda f: _load(f)),
    ("virtual time (s)", lambda f: f["virtual_s"]),
    ("wall time (s) / cpu (s)", lambda f: f"{f.get('wall_s', '?')} / {f.get('cpu_s', '?')}"),
    ("peak memory (MiB)", lambda f: f.get("peak_rss_mib", "?")),
    ("trace sha256", lambda f: f"{f['trace_sha256']} ({f['trace_events']} events)"),
)


def _by_side(figures: dict[str, Any]) -> str:
    sides = figures.get("submits_by_side", {})
    return " / ".join(f"{sides[s]['accepted']} ({sides[s]['refused']})" for s in ("majority", "minority") if s in sides)


def _load(figures: dict[str, Any]) -> str:
    per = figures.get("load_per_job") or {}
    return f"{per.get('datagrams', 0):.1f} / {per.get('bytes', 0) / 1000:.1f} / {per.get('lookups', 0):.1f}"


def _per_job(figures: dict[str, Any], *names: str) -> str:
    jobs = max(1, figures["jobs_accepted"])
    return " / ".join(f"{figures['node_totals'].get(n, 0) / jobs:.1f}" for n in names)


def summary_table(figures: dict[str, Any]) -> str:
    rows = [(name, str(get(figures))) for name, get in SUMMARY_ROWS]
    width = max(len(name) for name, _ in rows)
    lines = [f"{name:<{width}}  {value}" for name, value in rows]
    rule = "-" * max(len(line) for line in lines)
    return "\n".join([rule, *lines, rule])


def write_json(figures: dict[str, Any], path: str | Path) -> None:
    Path(path).write_text(json.dumps(figures, indent=1, sort_keys=True) + "\n")


def chart_available() -> bool:
    """True when matplotlib can be imported (it is in the ``sim`` extra, not a core dependency)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def write_chart(figures: dict[str, Any], path: str | Path) -> bool:
    """Jobs accepted and decided, live nodes, executions running, and bytes per second, over virtual time.

    Returns False, writing nothing, when matplotlib is not installed
    (``pip install -e '.[sim]'`` adds it); the run's figures do not need it.
    """
    if not chart_available():
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = figures["series"]
    t = [row["t"] for row in series]
    fig, (top, mid, low) = plt.subplots(3, 1, figsize=(9, 8), sharex=True)
    p = figures["params"]
    fig.suptitle(f"{p['scenario']}: {p['nodes']} nodes, {p['jobs']} jobs, seed {p['seed']}")
    top.plot(t, [r["accepted"] for r in series], label="accepted")
    top.plot(t, [r["decided"] for r in series], label="decided")
    top.set_ylabel("jobs")
    top.legend(loc="lower right")
    nodes = top.twinx()
    live = [r["live"] for r in series]
    nodes.plot(t, live, color="grey", linestyle=":", label="live nodes")
    nodes.set_ylim(0, max(live, default=1) * 1.15)
    nodes.set_ylabel("live nodes (dotted)")
    mid.plot(t, [r["running"] for r in series], color="tab:green")
    mid.set_ylabel("handlers running")
    rates = [0.0] + [
        (b["bytes"] - a["bytes"]) / max(1e-9, b["t"] - a["t"]) / 1024 for a, b in zip(series, series[1:])
    ]
    low.plot(t, rates, color="tab:red")
    low.set_ylabel("KiB/s sent (mesh)")
    low.set_xlabel("virtual time (s)")
    for i, (when, label) in enumerate(figures["marks"]):
        for ax in (top, mid, low):
            ax.axvline(when, color="black", alpha=0.3, linewidth=0.8)
        top.annotate(label, (when, 0.98 - 0.12 * (i % 3)), xycoords=("data", "axes fraction"), fontsize=7, va="top")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
