"""A job's signed history, checked and explained for the dashboard. Pure.

``GET /jobs/{id}?history=1`` lists a job's facts with their raw signed bytes.
:func:`annotate` decodes each one again (:func:`node.facts.decode` checks its
form, its Ed25519 signature and that it is filed under this job), applies the
rules that need the submission (:func:`node.facts.context_error`), names the
signer's role (submitter, worker, replica) and sorts the facts into a
timeline. :func:`replica_summary` tells which replicas were placed, granted a
lease (to whom, for which attempt) and sealed a result or cancel.

The check is made by the node that serves the page, with the same code its
replicas run; a browser that distrusts that node can take ``raw_b64`` and
verify it elsewhere.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from workmesh.node import facts as F
from workmesh.node.errors import InvalidFact


def _decode(entry: dict, job_id: bytes) -> tuple[F.Fact | None, str | None]:
    try:
        raw = base64.b64decode(entry.get("raw_b64", ""), validate=True)
    except (binascii.Error, ValueError):
        return None, "raw bytes are not base64"
    try:
        return F.decode(raw, key=job_id), None
    except InvalidFact as exc:
        return None, str(exc)


def _role(fact: F.Fact) -> str:
    if fact.kind in (F.SUBMIT, F.CANCEL) or (fact.kind == F.GRANT and fact.body.action == F.PLACE):
        return "submitter"
    if fact.kind in (F.CLAIM, F.RENEW, F.RESULT):
        return "worker"
    if fact.kind == F.BALLOT and fact.body.step in (F.PREPARE, F.PROPOSE):
        return "proposer"
    return "replica"


def annotate(history: list[dict], job_id: bytes) -> list[dict[str, Any]]:
    """The history as a timeline (in causal order, see ``_causal_order``), each fact with
    ``signature_ok``, ``check`` (why it fails, or None), ``role`` and a
    one-line ``summary``."""
    decoded = [(entry, *_decode(entry, job_id)) for entry in history]
    submit = next((f for _, f, _ in decoded if f is not None and f.kind == F.SUBMIT), None)
    out = []
    for entry, fact, error in decoded:
        row = {k: v for k, v in entry.items() if k != "raw_b64"}
        row["signature_ok"] = fact is not None
        row["check"] = error
        if fact is not None:
            if submit is not None and error is None:
                row["check"] = F.context_error(submit, fact, job_id)
            row["role"] = _role(fact)
            row["summary"] = _summary(fact)
            if fact.kind == F.SUBMIT:
                spec = fact.body
                row["payload"] = spec.payload
                row["spec"] = {"type": spec.job_type, "max_attempts": spec.max_attempts,
                               "lease_seconds": spec.lease_ms / 1000, "timeout_seconds": spec.timeout_ms / 1000,
                               "replicas": spec.replicas, "quorum": spec.quorum}
            elif fact.kind == F.RESULT:
                row["data"] = fact.body.data
        else:
            row["role"] = "unknown"
            row["summary"] = entry.get("kind", "?")
        out.append(row)
    out.sort(key=_causal_order)
    return out


_STEP = {F.CLAIM: 0, F.LEASE: 1, F.RENEW: 2, F.RESULT: 3, F.PREPARE: 4, F.PROMISE: 5, F.PROPOSE: 6, F.VOTE: 7, F.SEAL: 8}
_LAST = 1 << 30


def _causal_order(row: dict) -> tuple[int, int, int]:
    """Submit and placement first; then each attempt's claim, grants, renewals,
    result and seals; a cancel and its seals last. Time only breaks ties, as
    the signers' clocks need not agree."""
    kind, action, attempt, ts = row.get("kind"), row.get("action"), row.get("attempt") or 0, row.get("ts_ms") or 0
    if kind == F.SUBMIT:
        return (-1, 0, ts)
    if action == F.PLACE:
        return (-1, 1, ts)
    if kind == F.CANCEL:
        return (_LAST, 0, ts)
    if kind == F.BALLOT and (row.get("round") or 0) >= 1:  # a canceller's or recovering replica's round
        return (_LAST, 1 + _STEP.get(action, 0), ts)
    return (attempt, _STEP.get(action if kind in (F.GRANT, F.BALLOT) else kind, 9), ts)


def _summary(fact: F.Fact) -> str:
    body = fact.body
    if fact.kind == F.SUBMIT:
        return f"submitted {body.job_type!r}: {body.replicas} replicas, quorum {body.quorum}, " \
               f"up to {body.max_attempts} attempts"
    if fact.kind == F.GRANT:
        if body.action == F.PLACE:
            return f"placed on {len(F.placement_ids(body.subject))} replicas"
        if body.action == F.LEASE:
            return f"granted attempt {body.attempt} to {body.subject.hex()[:12]}"
        return f"granted {body.action}"
    if fact.kind == F.CLAIM:
        return f"claimed attempt {body.attempt}"
    if fact.kind == F.RENEW:
        return f"renewed the lease of attempt {body.attempt}"
    if fact.kind == F.RESULT:
        return f"result of attempt {body.attempt}: {body.outcome} ({len(body.grants)} grants attached)"
    if fact.kind == F.CANCEL:
        return f"cancelled: {body.reason}"
    if fact.kind == F.BALLOT:
        at = f"ballot {body.attempt}.{body.round} of {body.proposer.hex()[:12]}"
        if body.step in (F.VOTE, F.SEAL, F.PROPOSE):
            return f"{body.step} {body.subject.hex()[:12]} at {at}"
        if body.step == F.PROMISE and body.subject:
            return f"promised {at}, reporting sealed {body.subject.hex()[:12]}"
        return f"{body.step} {at}"
    return fact.kind


def replica_summary(timeline: list[dict]) -> list[dict[str, Any]]:
    """Per replica: placed or not, lease grants ``[{attempt, to}]``, seals ``[fact id]``.

    Only facts whose signature verified count."""
    rows: dict[str, dict[str, Any]] = {}

    def row(node_id: str) -> dict[str, Any]:
        return rows.setdefault(node_id, {"node_id": node_id, "placed": False, "granted": [], "sealed": []})

    for fact in timeline:
        if fact.get("kind") not in (F.GRANT, F.BALLOT) or not fact.get("signature_ok"):
            continue
        action, subject = fact.get("action"), fact.get("subject", "")
        if action == F.PLACE:
            width = 2 * F.NODE_ID_BYTES  # hex characters per node id
            for i in range(0, len(subject) - width + 1, width):
                row(subject[i : i + width])["placed"] = True
        elif action == F.LEASE:
            row(fact["author"])["granted"].append({"attempt": fact.get("attempt"), "to": subject})
        elif action == F.SEAL and fact.get("kind") == F.BALLOT:
            row(fact["author"])["sealed"].append(subject)
    return list(rows.values())
