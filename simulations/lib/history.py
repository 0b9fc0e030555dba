"""History of a real-mesh run, and the checker that judges it.

Shared by ``simulations/mesh.py`` (processes on loopback) and
``simulations/netns.py`` (processes in network namespaces).

A run writes ``history.jsonl``, one event per line, each with ``ev`` and ``t``
(wall-clock seconds; every process runs on the same machine, so the driver's
times, the nodes' log times and the ``ts_ms`` inside signed facts share one
clock):

==============  ==============================================================
ev              fields
==============  ==============================================================
run             params, nodes ([{index, node_id}])
submit          seq, node, type: the driver sends a job to a node
ack             seq, node, code, job (id or null), error: the node's answer
fault           kind (kill, restart, stop, cont, partition, heal, ...), nodes,
                node_ids, note
claim           job, attempt, worker            (from the job's signed facts)
grant           job, attempt, worker, replica   (lease grants, from the facts)
exec_start      job, attempt, worker            (from the worker's log)
exec_end        job, attempt, worker, outcome   (from the worker's log)
result          job, attempt, worker, outcome   (from the facts)
accepted        job, attempt, worker, outcome   (t = the quorum-th seal)
observed        job, status: the driver saw the job terminal
agree           heal, seconds: replicas agreed after a heal (netns)
==============  ==============================================================

``final.json`` holds what the nodes said at the end: every job the driver
knows of (acknowledged, or found in a node's job list) with its view and
signed facts, and which node listed which job.

:func:`check` turns both into figures: lost jobs, unexpected jobs, duplicate
executions, jobs over the attempt bound, jobs with more than one accepted
result, time to recover after each fault, submit-to-done latency percentiles.
Pure functions of the files; ``python simulations/lib/history.py HISTORY FINAL``
re-checks a finished run.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import threading
import time
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable

import msgpack
from stats import percentile

TERMINAL = frozenset({"done", "failed", "cancelled"})
KILL_KINDS = frozenset({"kill", "stop", "partition"})


class Recorder:
    """Append-only JSON-lines writer; safe to call from several threads."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "w", encoding="utf-8")
        self._lock = threading.Lock()
        self.events: list[dict] = []

    def record(self, ev: str, t: float | None = None, **fields: Any) -> dict:
        event = {"ev": ev, "t": round(time.time() if t is None else t, 4), **fields}
        line = json.dumps(event, sort_keys=True)
        with self._lock:
            self.events.append(event)
            self._file.write(line + "\n")
            self._file.flush()
        return event

    def close(self) -> None:
        with self._lock:
            self._file.close()


def read_history(path: str | Path) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


# -- facts --------------------------------------------------------------------
def submit_spec(facts: list[dict]) -> dict | None:
    """The job's spec decoded from the signed submit fact's exact bytes."""
    for f in facts:
        if f.get("kind") == "submit":
            kind, _author, body, _sig = msgpack.unpackb(base64.b64decode(f["raw_b64"]), raw=False)
            job_type, payload_json, max_attempts, lease_ms, timeout_ms, replicas, quorum = body[:7]
            try:
                payload = json.loads(payload_json)
            except ValueError:
                payload = None
            return {"type": job_type, "payload": payload, "max_attempts": max_attempts, "lease_ms": lease_ms,
                    "replicas": replicas, "quorum": quorum}
    return None


def fact_events(job: str, facts: list[dict]) -> list[dict]:
    """History events (claim, grant, result, accepted) from a job's signed facts."""
    spec = submit_spec(facts) or {"quorum": 1}
    out: list[dict] = []
    seals: dict[str, list[int]] = defaultdict(list)
    for f in facts:
        t = f.get("ts_ms", 0) / 1000
        if f["kind"] == "claim":
            out.append({"ev": "claim", "t": t, "job": job, "attempt": f["attempt"], "worker": f["author"]})
        elif f["kind"] == "grant" and f.get("action") == "lease":
            out.append({"ev": "grant", "t": t, "job": job, "attempt": f["attempt"], "worker": f["subject"],
                        "replica": f["author"]})
        elif f["kind"] == "ballot" and f.get("action") == "seal":
            # one ballot's seals decide: count them per (subject, ballot)
            seals[(f["subject"], f["attempt"], f.get("round", 0), f.get("proposer", ""))].append(f.get("ts_ms", 0))
        elif f["kind"] == "result":
            out.append({"ev": "result", "t": t, "job": job, "attempt": f["attempt"], "worker": f["author"],
                        "outcome": f.get("outcome"), "fact_id": f["fact_id"]})
    for r in [e for e in out if e["ev"] == "result"]:
        ballots = [sorted(ts) for key, ts in seals.items() if key[0] == r["fact_id"]]
        times = max(ballots, key=len, default=[])
        if len(times) >= spec["quorum"]:
            # acceptor steps carry ts_ms 0: the result's own time stands for the decision's
            out.append({"ev": "accepted", "t": max(r["t"], times[spec["quorum"] - 1] / 1000), "job": job, "attempt": r["attempt"],
                        "worker": r["worker"], "outcome": r["outcome"], "fact_id": r["fact_id"]})
    return out


# -- node logs ------------------------------------------------------------------
def log_events(lines: Iterable[str], node_ids: Iterable[str]) -> list[dict]:
    """``execution_started`` / ``execution_finished`` lines of a worker's JSON log."""
    by_prefix = {nid[:12]: nid for nid in node_ids}
    out = []
    for line in lines:
        if "execution_" not in line:
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        name = rec.get("event")
        if name not in ("execution_started", "execution_finished") or "job_id" not in rec:
            continue
        t = datetime.fromisoformat(rec["timestamp"].replace("Z", "+00:00")).timestamp()
        worker = by_prefix.get(rec.get("node_id", ""), rec.get("node_id"))
        ev = {"ev": "exec_start" if name == "execution_started" else "exec_end", "t": t, "job": rec["job_id"],
              "attempt": rec.get("attempt"), "worker": worker}
        if name == "execution_finished":
            ev["outcome"] = rec.get("outcome")
        out.append(ev)
    return out


# -- the checker ------------------------------------------------------------------
def percentiles(values: list[float], qs: Iterable[float] = (50, 90, 95, 99)) -> dict[str, float | None]:
    if not values:
        return {f"p{q:g}": None for q in qs} | {"max": None, "mean": None}
    out = {f"p{q:g}": round(percentile(values, q), 3) for q in qs}
    return out | {"max": round(max(values), 3), "mean": round(sum(values) / len(values), 3)}


def _tag_of(spec: dict | None) -> str | None:
    payload = (spec or {}).get("payload")
    return payload.get("tag") if isinstance(payload, dict) else None


def check(events: list[dict], final: dict) -> dict[str, Any]:
    """Figures and findings of a run: see the module docstring."""
    run = next((e for e in events if e["ev"] == "run"), {"params": {}, "nodes": []})
    t0 = run.get("t", events[0]["t"] if events else 0.0)
    tag_prefix = run.get("params", {}).get("tag", "")
    sends = {e["seq"]: e for e in events if e["ev"] == "submit"}
    acks = [e for e in events if e["ev"] == "ack"]
    acked = {e["job"]: e for e in acks if e.get("code") == 202 and e.get("job")}
    acked_seqs = {e["seq"] for e in acked.values()}
    failed_seqs = sorted(set(sends) - acked_seqs)
    jobs_final: dict[str, dict] = final.get("jobs", {})
    by_job: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for e in events:
        if "job" in e and e["ev"] not in ("ack",):
            by_job[e["job"]][e["ev"]].append(e)

    # lost: acknowledged but unknown or unfinished at the end
    lost = []
    for job, ack in sorted(acked.items()):
        view = jobs_final.get(job, {}).get("view")
        if view is None or view.get("status") not in TERMINAL:
            lost.append({"job": job, "seq": ack["seq"], "node": ack["node"],
                         "status": view.get("status") if view else "unknown",
                         "facts": [{k: f.get(k) for k in ("kind", "author", "attempt", "action", "outcome", "ts_ms")}
                                   for f in jobs_final.get(job, {}).get("facts", [])]})
    # unexpected: in the mesh, but not acknowledged to us
    unexpected, unacked_present, resubmitted = [], [], []
    for job, doc in sorted(jobs_final.items()):
        if job in acked:
            continue
        tag = _tag_of(submit_spec(doc.get("facts", [])))
        seq = int(tag.rsplit("-", 1)[1]) if tag and tag_prefix and tag.startswith(tag_prefix + "-") else None
        if seq is None:
            unexpected.append({"job": job, "tag": tag, "listed_by": doc.get("listed_by", [])})
        elif seq in acked_seqs:
            resubmitted.append({"job": job, "seq": seq})
        else:
            unacked_present.append({"job": job, "seq": seq})

    # executions and results
    dup_jobs, over_bound, multi_accepted, split_attempts, concurrent = [], [], [], [], []
    executions_total = 0
    faults = [e for e in events if e["ev"] == "fault"]
    have_logs = any(e["ev"] == "exec_start" for e in events)
    failed_unexecuted = []
    for job in acked:
        ev = by_job.get(job, {})
        starts = sorted(ev.get("exec_start", []), key=lambda e: e["t"])
        if not have_logs:  # no worker log: a quorum-granted (attempt, worker) is an execution
            grants: dict[tuple, set] = defaultdict(set)
            for g in ev.get("grant", []):
                grants[(g["attempt"], g["worker"])].add(g["replica"])
            quorum = (submit_spec(jobs_final.get(job, {}).get("facts", [])) or {}).get("quorum", 1)
            starts = [{"attempt": a, "worker": w, "t": min(x["t"] for x in ev["grant"] if (x["attempt"], x["worker"]) == (a, w))}
                      for (a, w), who in sorted(grants.items()) if len(who) >= quorum]
        executions_total += len(starts)
        spec = submit_spec(jobs_final.get(job, {}).get("facts", [])) or {}
        max_attempts = spec.get("max_attempts") or (jobs_final.get(job, {}).get("view") or {}).get("max_attempts")
        view = jobs_final.get(job, {}).get("view") or {}
        if view.get("status") == "failed" and not starts:
            failed_unexecuted.append({"job": job, "error": view.get("error"), "lease_grants": sorted(
                {(g["attempt"], g["worker"][:12], g["replica"][:12]) for g in ev.get("grant", [])})})
        if len(starts) > 1:
            # a retry is explained when the earlier execution's worker was killed, stopped or cut off during it
            explained = all(
                any(f["kind"] in KILL_KINDS and s["worker"] in f.get("node_ids", []) and f["t"] >= s["t"] for f in faults)
                or any(x["attempt"] == s["attempt"] and x["worker"] == s["worker"] and x.get("outcome") == "error"
                       for x in ev.get("exec_end", []))
                for s in starts[:-1])
            dup_jobs.append({"job": job, "after_fault": explained,
                             "executions": [(s["attempt"], (s["worker"] or "")[:12], round(s["t"] - t0, 3)) for s in starts]})
        if max_attempts and (len(starts) > max_attempts or any((s["attempt"] or 0) > max_attempts for s in starts)):
            over_bound.append({"job": job, "max_attempts": max_attempts, "attempts": [s["attempt"] for s in starts]})
        workers_by_attempt: dict[int, set] = defaultdict(set)
        for s in starts:
            workers_by_attempt[s["attempt"]].add(s["worker"])
        for attempt, who in workers_by_attempt.items():
            if len(who) > 1:
                split_attempts.append({"job": job, "attempt": attempt, "workers": sorted(w or "" for w in who)})
        ends = ev.get("exec_end", [])
        intervals = []
        for s in starts:
            end = next((x["t"] for x in ends if x["attempt"] == s["attempt"] and x["worker"] == s["worker"]), None)
            if end is None:  # killed mid-run: ended at the first kill/stop of its worker after the start
                end = next((f["t"] for f in faults if f["kind"] in KILL_KINDS and s["worker"] in f.get("node_ids", [])
                            and f["t"] >= s["t"]), None)
            intervals.append((s["t"], end if end is not None else float("inf"), s["worker"], s["attempt"]))
        for i, a in enumerate(intervals):
            for b in intervals[i + 1:]:
                if a[0] < b[1] and b[0] < a[1]:
                    concurrent.append({"job": job, "a": [a[3], (a[2] or "")[:12]], "b": [b[3], (b[2] or "")[:12]]})
        accepted = {e["fact_id"] for e in ev.get("accepted", [])}
        if len(accepted) > 1:
            multi_accepted.append({"job": job, "accepted": sorted(ev["accepted"], key=lambda e: e["t"])})

    # latency: submit sent -> result accepted (quorum of seals)
    latencies, done_times = [], []
    for job, ack in acked.items():
        acc = by_job.get(job, {}).get("accepted", [])
        if acc:
            t_done = min(e["t"] for e in acc)
            done_times.append(t_done)
            latencies.append(t_done - sends.get(ack["seq"], ack)["t"])
    done_times.sort()

    # recovery: from a fault until every job in flight on the faulty node is decided
    recoveries = []
    for f in faults:
        if f["kind"] not in KILL_KINDS:
            continue
        ids, tk = set(f.get("node_ids", [])), f["t"]
        affected = []
        for job in acked:
            ev = by_job.get(job, {})
            acc = [e["t"] for e in ev.get("accepted", [])]
            t_done = min(acc) if acc else None
            if t_done is not None and t_done <= tk:
                continue
            ran = any(s["worker"] in ids and s["t"] <= tk for s in ev.get("exec_start", []) + ev.get("grant", []))
            ended = any(x["worker"] in ids and x["t"] <= tk for x in ev.get("exec_end", []) + ev.get("result", []))
            replica = any(g["replica"] in ids and g["t"] <= tk for g in ev.get("grant", []))
            if (ran and not ended) or replica:
                affected.append(t_done)
        nxt = next((t for t in done_times if t > tk), None)
        rec = {"kind": f["kind"], "t_s": round(tk - t0, 3), "nodes": f.get("nodes", []), "jobs_in_flight": len(affected),
               "recover_s": (None if not affected or any(t is None for t in affected) else round(max(affected) - tk, 3)),
               "next_done_s": round(nxt - tk, 3) if nxt is not None else None}
        if not affected:
            rec["recover_s"] = rec["next_done_s"]
        recoveries.append(rec)

    observed_status = defaultdict(int)
    for job in acked:
        view = jobs_final.get(job, {}).get("view")
        observed_status[view.get("status") if view else "unknown"] += 1
    agree = [e for e in events if e["ev"] == "agree"]
    ends = [e["t"] for e in events]
    return {
        "nodes": len(run.get("nodes", [])),
        "submitted": len(sends),
        "acknowledged": len(acked),
        "not_acknowledged": len(failed_seqs),
        "status": dict(observed_status),
        "lost": len(lost),
        "lost_jobs": lost,
        "unexpected": len(unexpected),
        "unexpected_jobs": unexpected,
        "unacknowledged_but_present": len(unacked_present),
        "resubmitted_duplicates": len(resubmitted),
        "executions": executions_total,
        "duplicate_executions": sum(len(d["executions"]) - 1 for d in dup_jobs),
        "jobs_with_duplicate_executions": dup_jobs,
        "duplicate_executions_unexplained": sum(len(d["executions"]) - 1 for d in dup_jobs if not d["after_fault"]),
        "failed_without_execution": len(failed_unexecuted),
        "failed_without_execution_jobs": failed_unexecuted,
        "concurrent_executions": len(concurrent),
        "concurrent_execution_pairs": concurrent,
        "same_attempt_two_workers": split_attempts,
        "over_attempt_bound": len(over_bound),
        "over_attempt_bound_jobs": over_bound,
        "multiple_accepted_results": len(multi_accepted),
        "multiple_accepted_jobs": multi_accepted,
        "latency_s": percentiles(latencies),
        "recoveries": recoveries,
        "agree_after_heal_s": [e.get("seconds") for e in agree],
        "faults": len([f for f in faults if f["kind"] in KILL_KINDS]),
        "duration_s": round(max(ends) - t0, 3) if ends else 0.0,
        "series": {
            "submitted_s": sorted(round(sends[e["seq"]]["t"] - t0, 3) for e in acked.values() if e["seq"] in sends),
            "done_s": [round(t - t0, 3) for t in done_times],
            "faults": [{"t_s": round(f["t"] - t0, 3), "kind": f["kind"], "nodes": f.get("nodes", [])} for f in faults],
            "latency_s": sorted(round(x, 3) for x in latencies),
        },
    }


def ok(figures: dict) -> bool:
    """The run kept the guarantees that hold whatever the faults were."""
    return figures["lost"] == 0 and figures["multiple_accepted_results"] == 0 and figures["over_attempt_bound"] == 0


# -- reporting --------------------------------------------------------------------
def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def summary_table(fig: dict) -> str:
    lat = fig["latency_s"]
    rows = [
        ("nodes", fig["nodes"]),
        ("jobs submitted / acknowledged", f"{fig['submitted']} / {fig['acknowledged']}"),
        ("final status of acknowledged jobs", ", ".join(f"{k} {v}" for k, v in sorted(fig["status"].items()))),
        ("lost jobs (acked, unknown or unfinished)", fig["lost"]),
        ("unexpected jobs", fig["unexpected"]),
        ("unacked submits present / resubmitted", f"{fig['unacknowledged_but_present']} / {fig['resubmitted_duplicates']}"),
        ("executions", fig["executions"]),
        ("duplicate executions (jobs)", f"{fig['duplicate_executions']} ({len(fig['jobs_with_duplicate_executions'])})"),
        ("  of which not after a fault of the first worker", fig["duplicate_executions_unexplained"]),
        ("overlapping executions of one job", fig["concurrent_executions"]),
        ("jobs failed without any execution", fig["failed_without_execution"]),
        ("one attempt run by two workers", len(fig["same_attempt_two_workers"])),
        ("jobs over the attempt bound", fig["over_attempt_bound"]),
        ("jobs with >1 accepted result", fig["multiple_accepted_results"]),
        ("latency p50 / p90 / p99 / max (s)", " / ".join(_fmt(lat[k]) for k in ("p50", "p90", "p99", "max"))),
    ]
    for i, r in enumerate(fig["recoveries"]):
        rows.append((f"fault {i + 1}: {r['kind']} {r['nodes']} at {r['t_s']:.1f} s",
                     f"recover {_fmt(r['recover_s'])} s ({r['jobs_in_flight']} jobs in flight)"))
    for i, s in enumerate(fig.get("agree_after_heal_s", [])):
        rows.append((f"heal {i + 1}: replicas agree after", f"{_fmt(s)} s"))
    rows.append(("verdict", "OK" if ok(fig) else "FAILED"))
    width = max(len(r[0]) for r in rows)
    line = "-" * (width + 30)
    return "\n".join([line, *(f"{name:<{width}}  {_fmt(value)}" for name, value in rows), line])


def write_chart(fig: dict, path: str | Path, title: str = "workmesh run") -> str | None:
    """A PNG (jobs submitted and done over time with fault marks; latency histogram).

    Returns None when written, else why not (matplotlib missing).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no chart (pip install matplotlib)"
    s = fig["series"]
    f, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, xs in (("acknowledged", s["submitted_s"]), ("done (accepted result)", s["done_s"])):
        ax1.step(xs, range(1, len(xs) + 1), where="post", label=name)
    colours = {"kill": "red", "stop": "orange", "partition": "purple", "restart": "green", "cont": "green",
               "heal": "green"}
    for mark in s["faults"]:
        ax1.axvline(mark["t_s"], color=colours.get(mark["kind"], "grey"), alpha=0.5, lw=1,
                    ls="-" if mark["kind"] in KILL_KINDS else ":")
        if mark["kind"] not in KILL_KINDS:
            continue  # undo marks (restart, cont, heal) are the dotted lines
        ax1.annotate(f"{mark['kind']} {mark['nodes']}", (mark["t_s"], 0.3), xycoords=ax1.get_xaxis_transform(),
                     rotation=90, fontsize=7, va="bottom", xytext=(2, 0), textcoords="offset points")
    ax1.set_xlabel("seconds since start")
    ax1.set_ylabel("jobs")
    ax1.set_title(f"{title}: jobs over time, faults marked")
    ax1.legend(loc="upper left")
    if s["latency_s"]:
        ax2.hist(s["latency_s"], bins=min(40, max(5, len(s["latency_s"]) // 3)))
    lat = fig["latency_s"]
    ax2.set_title(f"submit to done: p50 {_fmt(lat['p50'])} s, p99 {_fmt(lat['p99'])} s")
    ax2.set_xlabel("seconds")
    ax2.set_ylabel("jobs")
    f.tight_layout()
    f.savefig(path, dpi=100)
    plt.close(f)
    return None


def write_outputs(fig: dict, out_dir: Path, title: str) -> dict[str, str | None]:
    """``summary.txt``, ``figures.json``, ``chart.png`` in ``out_dir``; returns their paths."""
    table = summary_table(fig)
    (out_dir / "summary.txt").write_text(table + "\n")
    (out_dir / "figures.json").write_text(json.dumps(fig, indent=1, sort_keys=True))
    why = write_chart(fig, out_dir / "chart.png", title)
    return {"table": table, "json": str(out_dir / "figures.json"),
            "chart": None if why else str(out_dir / "chart.png"), "chart_missing": why}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Check a recorded workmesh run: history.jsonl + final.json.")
    parser.add_argument("history", help="history.jsonl written by mesh.py or netns.py")
    parser.add_argument("final", help="final.json written by the same run")
    parser.add_argument("--out", help="write summary.txt, figures.json and chart.png here")
    args = parser.parse_args(argv)
    fig = check(read_history(args.history), json.loads(Path(args.final).read_text()))
    if args.out:
        res = write_outputs(fig, Path(args.out), "workmesh run")
        if res["chart_missing"]:
            print(res["chart_missing"], file=sys.stderr)
    print(summary_table(fig))
    return 0 if ok(fig) else 1


if __name__ == "__main__":
    sys.exit(main())
