"""Metric names and types follow the Prometheus conventions; job times come from signed facts."""

from __future__ import annotations

import re
from types import SimpleNamespace

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from workmesh.node import metrics as M

NAME = re.compile(r"^workmesh_[a-z][a-z0-9_]*$")
# Words that say a metric counts things dropped or refused: those come with a reason label.
DROP_WORDS = ("dropped", "rejected", "refused")


def status_doc() -> dict:
    """A /status document with every section a node reports (values made up)."""
    return {
        "uptime_seconds": 12.5, "peers": 4,
        "jobs": {"pending": 1, "running": 0, "done": 3, "failed": 0, "cancelled": 0},
        "workers": {"slots": 2, "busy": 1},
        "dht": {"peers": 4, "evictions": 0, "keys": 3, "stores": 9, "store_quorum_missed": 0, "fetches": 2,
                "records_refused": 1, "records_invalid": 0, "datagrams_in": 50, "bytes_in": 4000,
                "datagrams_out": 40, "bytes_out": 3500, "dropped_rate_limited": 2, "dropped_misdirected": 1,
                "dropped_total": 3, "inflight_requests": 6, "store_keys": 3, "store_records": 12,
                "store_bytes": 2048, "store_rejected_limit": 0, "store_rejected_malformed": 0, "store_added": 12},
        "gossip": {"announced": 3, "duplicates": 1, "malformed": 0, "seen_cache": 3},
        "leases": {"grants_issued": 3, "claims_refused": 0, "renews_refused": 0, "facts_refused": 0,
                   "slots": 2, "busy": 1, "runnable": 0, "observed_jobs": 1, "claims_won": 3},
        "jobs_api": {"submitted": 4, "reads": 7},
        "derive_cache": {"hits": 5, "misses": 2, "cached": 2},
        "crypto": {"signatures": 10, "verifications": 20},
    }


def exposition() -> str:
    registry = CollectorRegistry(auto_describe=False)
    node = SimpleNamespace(status=status_doc)
    registry.register(M._StatusCollector(node))
    return generate_latest(registry).decode()


def test_every_status_metric_follows_the_naming_conventions():
    families = list(text_string_to_metric_families(exposition()))
    assert families
    for family in families:
        assert NAME.match(family.name), family.name
        assert family.type in ("counter", "gauge"), family.name
        for sample in family.samples:
            if family.type == "counter":
                assert sample.name.endswith("_total"), sample.name
            else:
                assert not sample.name.endswith("_total"), f"a gauge named like a counter: {sample.name}"
            if any(word in family.name for word in DROP_WORDS):
                assert "reason" in sample.labels, f"{sample.name}: drop reasons belong in a label"


def test_units_are_in_the_names():
    by_name = {f.name: f for f in text_string_to_metric_families(exposition())}
    assert by_name["workmesh_uptime_seconds"].type == "gauge"
    assert by_name["workmesh_store_bytes"].type == "gauge"
    assert by_name["workmesh_dht_received_bytes"].type == "counter"
    assert by_name["workmesh_dht_sent_bytes"].type == "counter"


def test_drop_reasons_are_one_counter_with_a_reason_label():
    by_name = {f.name: f for f in text_string_to_metric_families(exposition())}
    dropped = by_name["workmesh_dht_datagrams_dropped"]
    assert dropped.type == "counter"
    assert {s.labels["reason"]: s.value for s in dropped.samples} == {"rate_limited": 2, "misdirected": 1}
    rejected = by_name["workmesh_dht_records_rejected"]
    assert {s.labels["reason"] for s in rejected.samples} == {"refused", "invalid"}
    assert "workmesh_dht_dropped_total" not in exposition()  # the sum is left to PromQL


def test_levels_are_gauges_and_counts_are_counters():
    assert M.classify("workers", "busy").kind == "gauge"
    assert M.classify("dht", "store_records").kind == "gauge"
    assert M.classify("dht", "stores").kind == "counter"
    assert M.classify("jobs_api", "submitted") == M.Sample("jobs_api_submitted", "counter")
    assert M.classify("leases", "slots") is None  # shown once, as workers.slots


def fact(kind, author, ts_ms, attempt=0, **body):
    return SimpleNamespace(kind=kind, author_id=author, body=SimpleNamespace(ts_ms=ts_ms, attempt=attempt, **body))


def test_job_times_come_from_the_claim_and_the_deciding_result():
    worker = b"w" * 20
    submit = SimpleNamespace(body=SimpleNamespace(created_ms=1_000, job_type="echo"))
    claim1 = fact("claim", worker, 1_100, attempt=1)
    claim2 = fact("claim", worker, 2_000, attempt=2)
    result = fact("result", worker, 2_500, attempt=2)
    state = SimpleNamespace(decided=result, facts=(claim1, claim2, result), submit=submit, placement=None)
    assert M.job_times(state) == (0.5, 1.5)
    cancelled = SimpleNamespace(decided=fact("cancel", b"s" * 20, 1_300), facts=(), submit=submit, placement=None)
    assert M.job_times(cancelled) == (None, 0.3)
    keyed = SimpleNamespace(decided=result, facts=(claim2, result), placement=None,
                            submit=SimpleNamespace(body=SimpleNamespace(created_ms=0, job_type="echo")))
    assert M.job_times(keyed) == (0.5, None)


def test_histograms_by_job_type_and_by_route_and_code():
    metrics = M.Metrics(SimpleNamespace(status=status_doc))
    worker = b"w" * 20
    result = fact("result", worker, 2_500, attempt=1)
    state = SimpleNamespace(decided=result, facts=(fact("claim", worker, 2_000, attempt=1), result),
                            submit=SimpleNamespace(body=SimpleNamespace(created_ms=1_000, job_type="sha256")),
                            placement=None)
    metrics.observe_terminal(state)
    metrics.observe_http("/jobs/{id}", "GET", 200, 0.003)
    families = {f.name: f for f in text_string_to_metric_families(generate_latest(metrics.registry).decode())}
    run = families["workmesh_job_run_seconds"]
    assert run.type == "histogram"
    count = next(s for s in run.samples if s.name.endswith("_count"))
    assert count.labels == {"type": "sha256"} and count.value == 1
    assert families["workmesh_job_submit_to_terminal_seconds"].type == "histogram"
    http = families["workmesh_http_request_duration_seconds"]
    count = next(s for s in http.samples if s.name.endswith("_count"))
    assert count.labels == {"route": "/jobs/{id}", "method": "GET", "code": "200"}
