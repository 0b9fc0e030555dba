"""api/audit.py: a job's history re-verified and explained for the dashboard."""

import base64

from tests.unit.strategies import REPLICAS, SUBMITTER, WORKERS, claim, placement, quorum_result, seal, submit
from tests.unit.strategies import flip_signature_bit
from workmesh.api.audit import annotate, replica_summary
from workmesh.node import facts as F


def entry(f: F.Fact, raw: bytes | None = None) -> dict:
    out = {"kind": f.kind, "fact_id": f.fact_id.hex(), "author": f.author_id.hex(), "attempt": f.attempt,
           "ts_ms": getattr(f.body, "ts_ms", getattr(f.body, "created_ms", 0)),
           "raw_b64": base64.b64encode(raw if raw is not None else f.raw).decode()}
    if f.kind == F.GRANT:
        out["action"], out["subject"] = f.body.action, f.body.subject.hex()
    elif f.kind == F.BALLOT:  # as GET /jobs/{id}?history=1 shows it (node/jobs.py)
        out["action"], out["subject"], out["round"] = f.body.step, f.body.subject.hex(), f.body.round
    return out


def test_a_done_job_reads_as_a_timeline_with_roles_signers_and_replicas():
    job = submit(replicas=3, quorum=2)
    worker = WORKERS[0]
    res = quorum_result(job, worker, 1)
    facts = [job, placement(job), claim(worker, job, 1), *res.body.grants, res,
             *(seal(r, job, res) for r in REPLICAS[:2])]
    timeline = annotate([entry(f) for f in reversed(facts)], job.job_id)
    assert all(row["signature_ok"] and row["check"] is None for row in timeline)
    assert timeline[0]["kind"] == "submit" and timeline[0]["payload"] == {"n": 1}
    assert timeline[0]["spec"]["replicas"] == 3
    roles = {(row["kind"], row.get("action")): (row["role"], row["author"]) for row in timeline}
    assert roles[("submit", None)] == ("submitter", SUBMITTER.node_id.hex())
    assert roles[("grant", "place")] == ("submitter", SUBMITTER.node_id.hex())
    assert roles[("result", None)] == ("worker", worker.node_id.hex())
    assert next(r for r in timeline if r["kind"] == "result")["data"] == {"v": 1}
    summary = {r["node_id"]: r for r in replica_summary(timeline)}
    assert set(summary) == {r.node_id.hex() for r in REPLICAS[:3]}
    assert all(summary[r.node_id.hex()]["placed"] for r in REPLICAS[:3])
    for r in REPLICAS[:2]:
        assert summary[r.node_id.hex()]["granted"] == [{"attempt": 1, "to": worker.node_id.hex()}]
        assert summary[r.node_id.hex()]["sealed"] == [res.fact_id.hex()]
    assert summary[REPLICAS[2].node_id.hex()]["granted"] == []


def test_a_tampered_fact_fails_its_check_and_counts_for_nothing():
    job = submit(replicas=3, quorum=2)
    grant = quorum_result(job, WORKERS[1], 1).body.grants[0]
    raw = flip_signature_bit(grant.raw)
    timeline = annotate([entry(job), entry(grant, raw), {"kind": "claim", "raw_b64": "%%"}], job.job_id)
    bad = [row for row in timeline if not row["signature_ok"]]
    assert len(bad) == 2 and all(row["check"] for row in bad)
    assert "signature" in next(r for r in bad if r["kind"] == "grant")["check"]
    assert replica_summary(timeline) == []


def test_a_fact_of_another_job_is_flagged():
    job, other = submit(replicas=3, quorum=2), submit(replicas=3, quorum=2, nonce=b"\x07" * 16)
    timeline = annotate([entry(job), entry(claim(WORKERS[0], other, 1))], job.job_id)
    flagged = next(r for r in timeline if r["kind"] == "claim")
    assert flagged["signature_ok"] is False and "another job" in flagged["check"]
