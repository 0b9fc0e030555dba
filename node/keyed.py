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
bounded, and in a file beside their store) so that they can cancel it;
other nodes ask them. Pure but for :class:`Owners`' file.
"""

from __future__ import annotations

import hashlib
import math
import os
import sqlite3
from collections import OrderedDict
from typing import Any

from workmesh.crypto.identity import Identity
from workmesh.node import facts as F

FINGERPRINT_BYTES = F.NONCE_BYTES - F.KEYED_MARK_BYTES
OWNERS_MAX = 100_000  # keyed jobs whose owner a node remembers (about 200 bytes each)


def owner_seed(idempotency_key: str) -> bytes:
    """The Ed25519 seed of the owner of ``idempotency_key``'s job."""
    return hashlib.blake2b(idempotency_key.encode("utf-8"), digest_size=32, person=b"wm-idem-owner").digest()


def owner(idempotency_key: str) -> Identity:
    """The identity that signs the job of ``idempotency_key`` on every node."""
    return Identity.from_seed(owner_seed(idempotency_key))


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
    """The owners of the keyed jobs this node accepted: job id -> owner seed, bounded (LRU).

    With a ``path``, they are also kept in a small SQLite file beside the
    node's store (mode 0600: whoever holds an owner key can sign for its
    job), so a node that restarts can still cancel the keyed jobs it
    accepted. Written without fsync: a crash loses at most the last few,
    which then only another accepting node can cancel.
    """

    def __init__(self, size_max: int = OWNERS_MAX, path: str | None = None) -> None:
        self._owners: OrderedDict[bytes, bytes] = OrderedDict()
        self._size_max = size_max
        self._db: sqlite3.Connection | None = None
        if path is not None:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            os.close(fd)
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA synchronous=OFF")
            self._db.execute("CREATE TABLE IF NOT EXISTS owners (job_id BLOB PRIMARY KEY, seed BLOB NOT NULL)")
            rows = self._db.execute("SELECT job_id, seed FROM owners ORDER BY rowid DESC LIMIT ?", (size_max,))
            for job_id, seed in reversed(rows.fetchall()):
                self._owners[bytes(job_id)] = bytes(seed)

    def remember(self, job_id: bytes, seed: bytes) -> None:
        known = job_id in self._owners
        self._owners[job_id] = seed
        self._owners.move_to_end(job_id)
        if self._db is not None and not known:
            self._db.execute("INSERT OR REPLACE INTO owners VALUES (?, ?)", (job_id, seed))
        while len(self._owners) > self._size_max:
            dropped, _ = self._owners.popitem(last=False)
            if self._db is not None:
                self._db.execute("DELETE FROM owners WHERE job_id = ?", (dropped,))

    def get(self, job_id: bytes) -> Identity | None:
        """The owner identity, to sign the job's cancel; None if this node never accepted it."""
        seed = self._owners.get(job_id)
        return Identity.from_seed(seed) if seed is not None else None

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def __len__(self) -> int:
        return len(self._owners)
