"""Idempotency across the mesh: a keyed submission is the same job on every node.

A client that retries a ``POST /jobs`` after a timeout or a ``503`` sends it to
another node with the same ``Idempotency-Key``. That node must find the job the
first one accepted, or make the very same one. So a keyed job is not signed by
the accepting node but by an *owner* identity derived from the key alone:

- owner = the Ed25519 key pair whose seed is BLAKE2b(key);
- job id = BLAKE2b-160(owner's public key), for a submit whose nonce starts
  with the owner's *mark* (``facts.keyed_mark``); replicas refuse a second,
  different submission under one job id, so one key is one job;
- nonce = mark (8 bytes) + the request's fingerprint (8 bytes): BLAKE2b of
  the canonical ``[type, payload, max_attempts, lease_seconds,
  timeout_seconds]`` as the client gave them, so a node tells "the same
  request again" (answer the job as it is now) from "the same key, another
  body" (``422``, as the IETF httpapi Idempotency-Key draft asks).

Ed25519 signatures are deterministic, so two nodes given the same key and
request sign byte-identical submissions (``created_ms`` is 0: a keyed
submission carries no clock reading). Whoever knows the key can sign as the
owner: the nodes that accepted a keyed job keep its owner (in memory,
bounded) so that they can cancel it; other nodes ask them. Pure: no I/O.
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from typing import Any

from workmesh.crypto.identity import Identity
from workmesh.node import facts as F

FINGERPRINT_BYTES = F.NONCE_BYTES - F.KEYED_MARK_BYTES
OWNERS_MAX = 100_000  # keyed jobs whose owner a node remembers (about 200 bytes each)


def owner(idempotency_key: str) -> Identity:
    """The identity that signs the job of ``idempotency_key`` on every node."""
    seed = hashlib.blake2b(idempotency_key.encode("utf-8"), digest_size=32, person=b"wm-idem-owner").digest()
    return Identity.from_seed(seed)


def _number(value: float | None) -> float | None:
    return None if value is None else float(value)


def fingerprint(
    job_type: str, payload: Any, max_attempts: int | None, lease_seconds: float | None, timeout_seconds: float | None
) -> bytes:
    """The request as the client gave it (absent options stay absent: nodes
    with other defaults still see the same request)."""
    lease, timeout = _number(lease_seconds), _number(timeout_seconds)
    if any(v is not None and not math.isfinite(v) for v in (lease, timeout)):
        raise F.InvalidFact("lease_seconds and timeout_seconds must be finite")
    doc = F.canonical_json([job_type, payload, max_attempts, lease, timeout])
    return hashlib.blake2b(doc, digest_size=FINGERPRINT_BYTES, person=b"wm-idem-body").digest()


def nonce(owner_key: bytes, request_fingerprint: bytes) -> bytes:
    """The nonce of a keyed submission: the owner's mark, then the request's fingerprint."""
    return F.keyed_mark(owner_key) + request_fingerprint


def fingerprint_of(submit: F.Fact) -> bytes | None:
    """The request fingerprint a keyed submission carries; None for an unkeyed one."""
    if not F.is_keyed(submit.author, submit.body):
        return None
    return submit.body.nonce[F.KEYED_MARK_BYTES :]


class Owners:
    """The owners of the keyed jobs this node accepted: job id -> identity, bounded (LRU)."""

    def __init__(self, size_max: int = OWNERS_MAX) -> None:
        self._owners: OrderedDict[bytes, Identity] = OrderedDict()
        self._size_max = size_max

    def remember(self, job_id: bytes, identity: Identity) -> None:
        self._owners[job_id] = identity
        self._owners.move_to_end(job_id)
        while len(self._owners) > self._size_max:
            self._owners.popitem(last=False)

    def get(self, job_id: bytes) -> Identity | None:
        return self._owners.get(job_id)

    def __len__(self) -> int:
        return len(self._owners)
