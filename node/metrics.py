"""Prometheus metrics of a node, named by the Prometheus conventions.

Two sources, one registry per node (``Metrics.registry``):

* ``/status`` at scrape time. Every number a component's ``statistics()``
  reports is exported, typed by ``classify``: a level (peers, slots, bytes
  held) is a gauge; everything else is a counter, named with ``_total``.
  Units are in names (``_seconds``, ``_bytes``); several counts of one thing
  dropped or refused for different reasons are one counter with a ``reason``
  label. A statistic that ``classify`` does not know is exported as a counter
  (the components report far more counts than levels): a new level must be
  added to ``GAUGES``.
* Histograms observed as things happen: job run time and submit-to-terminal
  time by job type (``observe_terminal``, from the job's signed facts), and
  HTTP request durations by route, method and code (the API's middleware).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from workmesh.node import facts as F

PREFIX = "workmesh_"
_NAME = re.compile(r"[^a-zA-Z0-9_]")
# Seconds: from a no-op job (milliseconds) to long handlers (the default
# job timeout is 300 s).
JOB_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
HTTP_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

# Levels, not counts: (section of /status, key) -> metric name.
GAUGES: dict[tuple[str, str], str] = {
    ("workers", "slots"): "worker_slots",
    ("workers", "busy"): "worker_slots_busy",
    ("leases", "runnable"): "worker_runnable_jobs",
    ("leases", "observed_jobs"): "leases_observed_jobs",
    ("dht", "keys"): "dht_keys",
    ("dht", "inflight_requests"): "dht_inflight_requests",
    ("dht", "outstanding_requests"): "dht_outstanding_requests",
    ("dht", "store_keys"): "store_keys",
    ("dht", "store_records"): "store_records",
    ("dht", "store_bytes"): "store_bytes",
    ("dht", "store_authors"): "store_authors",
    ("gossip", "seen_cache"): "gossip_seen_cache_entries",
    ("tasks", "running"): "tasks_running",
    ("derive_cache", "cached"): "derive_cache_entries",
    ("dht", "mesh_keys"): "dht_mesh_keys",
    ("dht", "token_auth"): "dht_token_auth",
    ("dht", "sources_shut_out_now"): "dht_sources_shut_out",
    ("blobs", "chunks"): "blobs_chunks",
    ("blobs", "disk_bytes_used"): "blobs_disk_used_bytes",
    ("blobs", "disk_bytes_budget"): "blobs_disk_budget_bytes",
    ("blobs", "disk_bytes_free"): "blobs_disk_free_bytes",
    ("blobs", "blob_bytes_max"): "blobs_max_bytes",
    ("blobs", "retention_s"): "blobs_retention_seconds",
    # The fact store against its budgets, and retention (node/retention.py).
    ("storage", "bytes"): "storage_bytes",
    ("storage", "bytes_max"): "storage_budget_bytes",
    ("storage", "keys"): "storage_keys",
    ("storage", "keys_max"): "storage_budget_keys",
    ("storage", "records"): "storage_records",
    ("storage", "records_per_key_max"): "storage_budget_records_per_key",
    ("storage", "authors_records_max"): "storage_largest_author_records",
    ("storage", "records_per_author_max"): "storage_budget_records_per_author",
    ("storage", "retention_s"): "storage_retention_seconds",
    ("storage", "scheduled"): "storage_jobs_awaiting_retention",
    ("storage", "tombstones"): "storage_tombstones",
    ("dht", "store_decided"): "store_decided_keys",
    ("dht", "store_tombstones"): "store_tombstones",
}
# Shown elsewhere already (workers.* holds the same slots and busy as leases.*;
# dht.peers is workmesh_peers; dht.dropped_total is the sum of the labelled
# counter).
SKIPPED: frozenset[tuple[str, str]] = frozenset(
    {("leases", "slots"), ("leases", "busy"), ("dht", "peers"), ("dht", "dropped_total")}
)
# Counters with a unit or a clearer name than section_key.
RENAMED: dict[tuple[str, str], str] = {
    ("dht", "bytes_in"): "dht_received_bytes",
    ("dht", "bytes_out"): "dht_sent_bytes",
    ("dht", "datagrams_in"): "dht_datagrams_received",
    ("dht", "datagrams_out"): "dht_datagrams_sent",
    ("dht", "store_quorum_missed"): "dht_store_quorum_missed",  # the DHT's, not the fact store's
    ("dht", "store_drops"): "store_keys_removed",
    ("blobs", "upload_bytes"): "blobs_uploaded_bytes",
    ("blobs", "download_bytes"): "blobs_downloaded_bytes",
}
# Counts of one thing for different reasons: (section, key) -> (name, reason).
REASONS: dict[tuple[str, str], tuple[str, str]] = {
    ("dht", "records_refused"): ("dht_records_rejected", "refused"),
    ("dht", "records_invalid"): ("dht_records_rejected", "invalid"),
    ("dht", "store_load_rejected"): ("store_records_rejected", "load"),
    ("dht", "store_rejected_limit"): ("store_records_rejected", "limit"),
    ("dht", "store_rejected_malformed"): ("store_records_rejected", "malformed"),
    ("dht", "store_contacts_truncated"): ("store_contacts_dropped", "truncated"),
    ("dht", "store_contacts_rejected"): ("store_contacts_dropped", "rejected"),
    ("gossip", "duplicates"): ("gossip_announcements_dropped", "duplicate"),
    ("gossip", "malformed"): ("gossip_announcements_dropped", "malformed"),
    ("leases", "claims_refused"): ("leases_facts_refused", "claim"),
    ("leases", "renews_refused"): ("leases_facts_refused", "renew"),
    ("leases", "facts_refused"): ("leases_facts_refused", "other"),
    ("leases", "ballots_refused"): ("leases_facts_refused", "ballot"),
    ("dht", "handoffs_dropped"): ("dht_handoffs_dropped", "queue_full"),
    ("dht", "third_party_contacts_rejected"): ("dht_contacts_rejected", "third_party"),
    ("dht", "outstanding_full"): ("dht_requests_skipped", "outstanding_full"),
    ("dht", "puzzle_unsolved_skipped"): ("dht_requests_skipped", "puzzle_unsolved"),
    ("leases", "offers_dropped"): ("worker_offers_dropped", "queue_full"),
    ("leases", "refused_future_ts"): ("leases_facts_refused", "future_ts"),
    ("leases", "refused_past_timeout"): ("leases_facts_refused", "past_timeout"),
    ("leases", "refused_author_rate"): ("leases_facts_refused", "author_rate"),
    ("gossip", "sender_over_rate"): ("gossip_announcements_dropped", "sender_over_rate"),
    ("gossip", "forward_over_rate"): ("gossip_announcements_dropped", "forward_over_rate"),
    ("blobs", "chunks_rejected"): ("blobs_chunks_refused", "invalid"),
    ("blobs", "chunks_refused_full"): ("blobs_chunks_refused", "disk_full"),
    ("blobs", "chunks_dropped_by_owner"): ("blobs_chunks_dropped", "owner"),
    ("dht", "store_rejected_gone"): ("store_records_rejected", "gone"),
    ("dht", "store_rejected_budget"): ("store_batches_rejected", "budget"),
    ("storage", "jobs_dropped"): ("storage_jobs_dropped", "retention"),
    ("storage", "jobs_dropped_early"): ("storage_jobs_dropped", "pressure"),
    ("storage", "facts_dropped"): ("storage_facts_dropped", "retention"),
}
# /status sections that are not statistics (shown above, or configuration).
NOT_STATISTICS = frozenset({"jobs", "replication"})
_DROPPED = "dropped_"  # dht.dropped_<reason>: datagrams the protocol dropped, by reason


@dataclass(frozen=True, slots=True)
class Sample:
    name: str  # without the prefix, and without _total for counters
    kind: str  # "counter" or "gauge"
    labels: tuple[tuple[str, str], ...] = ()


def classify(section: str, key: str) -> Sample | None:
    """How the statistic ``section.key`` of ``/status`` is exported (None: not at all)."""
    where = (section, key)
    if where in SKIPPED:
        return None
    if where in GAUGES:
        return Sample(GAUGES[where], "gauge")
    if where in REASONS:
        name, reason = REASONS[where]
        return Sample(name, "counter", (("reason", reason),))
    if section == "dht" and key.startswith(_DROPPED):
        return Sample("dht_datagrams_dropped", "counter", (("reason", key[len(_DROPPED):]),))
    name = RENAMED.get(where)
    if name is None and section == "dht" and key.startswith("store_"):
        name = key  # the fact store's statistics, reported under dht as store_*
    name = name or _NAME.sub("_", f"{section}_{key}")
    return Sample(name.removesuffix("_total"), "counter")


def status_metrics(status: dict[str, Any]) -> Iterator[Metric]:
    """The metric families of one ``/status`` document (pure)."""
    yield GaugeMetricFamily(PREFIX + "up", "1 while the node serves", value=1)
    yield GaugeMetricFamily(PREFIX + "uptime_seconds", "Seconds since the node started", value=status["uptime_seconds"])
    yield GaugeMetricFamily(PREFIX + "peers", "Contacts in the routing table", value=status["peers"])
    jobs = GaugeMetricFamily(PREFIX + "jobs", "Jobs this node holds, accepted or ran, by status", labels=["status"])
    for name, count in status["jobs"].items():
        jobs.add_metric([name], count)
    yield jobs
    families: dict[str, Metric] = {}
    for section, stats in status.items():
        if not isinstance(stats, dict) or section in NOT_STATISTICS:
            continue
        for key, value in stats.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            sample = classify(section, key)
            if sample is None:
                continue
            family = families.get(sample.name)
            if family is None:
                labels = [k for k, _ in sample.labels]
                doc = f"{section} statistic {key}" if not labels else f"{sample.name.replace('_', ' ')}, by {labels[0]}"
                cls = CounterMetricFamily if sample.kind == "counter" else GaugeMetricFamily
                family = families[sample.name] = cls(PREFIX + sample.name, doc, labels=labels)
            family.add_metric([v for _, v in sample.labels], value)
    yield from families.values()


class _StatusCollector:
    def __init__(self, node: Any) -> None:
        self._node = node

    def collect(self) -> Iterator[Metric]:
        yield from status_metrics(self._node.status())


def job_times(state: Any) -> tuple[float | None, float | None]:
    """(run seconds of the deciding attempt, submit-to-terminal seconds) of a
    terminal job, from the wall times in its signed facts; None where the
    facts do not say (a job cancelled before it ran has no run time; a keyed
    submission carries no submit time)."""
    decided = state.decided
    if decided is None:
        return None, None
    end_ms = decided.body.ts_ms
    run_s = None
    if decided.kind == F.RESULT:
        started = [f.body.ts_ms for f in state.facts
                   if f.kind == F.CLAIM and f.body.attempt == decided.body.attempt and f.author_id == decided.author_id]
        if started and end_ms >= min(started):
            run_s = (end_ms - min(started)) / 1000
    submitted_ms = state.submit.body.created_ms or (state.placement.body.ts_ms if state.placement is not None else 0)
    total_s = (end_ms - submitted_ms) / 1000 if submitted_ms and end_ms >= submitted_ms else None
    return run_s, total_s


class Metrics:
    """A node's registry: the ``/status`` collector and the histograms."""

    def __init__(self, node: Any) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_StatusCollector(node))
        self.job_run = Histogram(
            PREFIX + "job_run_seconds", "Run time of a job's deciding attempt (claim to result), by job type",
            ["type"], buckets=JOB_BUCKETS_S, registry=self.registry)
        self.job_total = Histogram(
            PREFIX + "job_submit_to_terminal_seconds", "Time from a job's submission to its decision, by job type",
            ["type"], buckets=JOB_BUCKETS_S, registry=self.registry)
        self.http = Histogram(
            PREFIX + "http_request_duration_seconds", "REST requests served, by route, method and status code",
            ["route", "method", "code"], buckets=HTTP_BUCKETS_S, registry=self.registry)

    def observe_terminal(self, state: Any) -> None:
        """A job turned terminal (call once per job mesh-wide: the node does
        it on the first replica of the placement)."""
        run_s, total_s = job_times(state)
        job_type = state.submit.body.job_type
        if run_s is not None:
            self.job_run.labels(job_type).observe(run_s)
        if total_s is not None:
            self.job_total.labels(job_type).observe(total_s)

    def observe_http(self, route: str, method: str, code: int, seconds: float) -> None:
        self.http.labels(route, method, str(code)).observe(seconds)


def registry_for(node: Any) -> CollectorRegistry:
    """A registry with the ``/status`` collector only (tests and tools)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_StatusCollector(node))
    return registry
