"""Rendezvous ranking: which free worker should claim a job first. Pure.

Every worker ranks ``(job, node)`` pairs by one hash, so all workers agree on
the order without talking to each other: the best-ranked free worker claims at
once and the others wait a delay that grows with their rank. If the best
worker is busy or dead, the next one claims a little later. Collisions on one
attempt stay rare, and load spreads evenly because the hash is uniform per job
(docs/protocol.md, "Rendezvous").
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

RANK_KEY_BYTES = 8
# A re-announced job (no signed submission along) is one whose earlier lease
# may just have gone stale on the replica that re-announced it; the other
# replicas judge the same lease on their own clocks, a few milliseconds apart.
# A claim sent at once finds some of them not yet willing to grant, wins only
# a minority, and the next-ranked worker's claim, one step later, collects
# the rest: a split vote that costs a whole lease. Every worker, the best
# ranked too, waits this long first, so the best one's claim finds them all
# past the old lease.
REANNOUNCED_SETTLE_S = 0.1


def rank_key(job_id: bytes, node_id: bytes) -> int:
    """BLAKE2b-64 of ``job_id || node_id`` as a big-endian int; lower is better."""
    digest = hashlib.blake2b(job_id + node_id, digest_size=RANK_KEY_BYTES).digest()
    return int.from_bytes(digest, "big")


def rank(job_id: bytes, node_id: bytes, others: Iterable[bytes]) -> int:
    """Position of ``node_id`` among ``others`` plus itself; 0 is the best.

    Duplicates and ``node_id`` itself in ``others`` are ignored. Equal keys
    (a 64-bit collision) are broken by the node id, so the order is total and
    every worker computes the same position for every node.
    """
    mine = (rank_key(job_id, node_id), node_id)
    return sum(1 for other in set(others) if other != node_id and (rank_key(job_id, other), other) < mine)


def claim_delay_s(position: int, step_s: float = 0.05, cap_s: float = 2.0, settle_s: float = 0.0) -> float:
    """How long a worker at ``position`` waits before claiming: linear, capped,
    after ``settle_s`` (``REANNOUNCED_SETTLE_S`` for a re-announced job).

    The cap keeps a job from waiting long when many workers ranked above
    this one are busy; the step only has to exceed a claim round trip so the
    better-ranked worker's grants usually land first.
    """
    if position <= 0:
        return settle_s
    return settle_s + min(cap_s, position * step_s)
