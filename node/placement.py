"""Choosing a new job's replicas: the closest nodes that answer. Pure.

Theory of operation. A job is placed once, by the node that accepts it: it
signs a ``place`` grant naming the job's ``r`` replicas and answers 202 only
after a quorum of them stored the job. From then on the placement is fixed
(docs/protocol.md, "The replica set is fixed at submission"); which nodes it
names is the accepting node's choice, and the rest of the mesh only has to
find them again:

* a read asks the ``r`` closest nodes and the placed replicas it learns of,
  and a read that finds nothing searches the ``WIDER`` * ``r`` closest
  (``node/reads.py``); republish copies the job to the ``r`` closest too;
* so a placement may name any ``r`` of the ``WIDER`` * ``r`` nodes closest to
  the job's key, and the best choice is the closest of those that can store
  the job now.

Naming the ``r`` closest blindly refused jobs that could have been stored:
during a partition, or with a link down, some of them do not answer, the
write misses its quorum and the client gets a 503 although enough nodes it
reaches were a few places further (docs/simulation.md, finding 11). The
placement cannot be redone after the write either: a replica that stored one
placement refuses another, and two placements of one job could each gather
a quorum. So the choice is made before signing:

1. ``verdict``: each candidate is judged from what the node knows already
   (it answered us recently; requests to it went unanswered in a row);
2. ``to_probe``: the doubtful ones that could change the choice are pinged;
3. ``choose``: the placement takes the closest that are alive (trusted, or
   answered the ping), filling up with the closest others when fewer than
   ``r`` are, so a job always has its planned ``r`` replicas and quorum;
   ``settled`` says when pings still out cannot change that choice.

Without faults every candidate answers and the placement is the ``r``
closest, as before. The asyncio side is ``JobOperations._placement``.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

# A placement names replicas among this many times r closest nodes, and a
# read that finds nothing searches as many (node/reads.py): the one number
# keeps every placed job within a read's reach.
WIDER = 2

# Lost replies in a row after which a candidate counts as failing without a
# ping. One is an everyday loss (at 10% datagram loss one round trip in five
# fails); three in a row are rare (under 1%) unless the node is gone or cut off.
FAILING_AFTER = 3

TRUSTED = "trusted"  # answered one of our requests recently, none unanswered since
UNKNOWN = "unknown"  # nothing recent either way: ping it before naming it
FAILING = "failing"  # our last FAILING_AFTER requests to it went unanswered


def verdict(answered_age_s: float | None, failures: int, fresh_s: float) -> str:
    """What a candidate's recent history says about it.

    ``answered_age_s``: seconds since it last answered a request of ours
    (None: never, or forgotten); ``failures``: our requests to it that went
    unanswered in a row since; ``fresh_s``: how recent an answer is trusted."""
    if failures >= FAILING_AFTER:
        return FAILING
    if failures == 0 and answered_age_s is not None and answered_age_s <= fresh_s:
        return TRUSTED
    return UNKNOWN


def to_probe(candidates: Sequence[bytes], verdicts: Mapping[bytes, str], count: int) -> list[bytes]:
    """The candidates to ping before choosing ``count`` of them (closest first).

    Unknown candidates closer than the ``count``-th trusted one: alive, they
    displace a farther trusted one. Failing ones only when trusted and unknown
    candidates together are fewer than ``count``."""
    probe: list[bytes] = []
    trusted = 0
    for node_id in candidates:
        if trusted >= count:
            break
        v = verdicts.get(node_id, UNKNOWN)
        if v == TRUSTED:
            trusted += 1
        elif v == UNKNOWN:
            probe.append(node_id)
    if sum(1 for i in candidates if verdicts.get(i, UNKNOWN) != FAILING) < count:
        probe.extend(i for i in candidates if verdicts.get(i, UNKNOWN) == FAILING)
    return probe


def probe_enough(candidates: Sequence[bytes], verdicts: Mapping[bytes, str], count: int) -> int:
    """Ping answers after which ``count`` candidates are known alive (0 when
    the trusted ones suffice: pings then only look for closer nodes). Past
    that, a ping still out is waited for only a short grace."""
    return max(0, count - sum(1 for i in candidates if verdicts.get(i, UNKNOWN) == TRUSTED))


def settled(candidates: Sequence[bytes], alive: Collection[bytes], pending: Collection[bytes], count: int) -> bool:
    """True when the pings still ``pending`` cannot change ``choose``: the
    ``count`` closest alive candidates are known and none closer is still
    being asked, or nothing is being asked before the list ends."""
    found = 0
    for node_id in candidates:
        if node_id in alive:
            found += 1
            if found >= count:
                return True
        elif node_id in pending:
            return False
    return True


def choose(candidates: Sequence[bytes], alive: Collection[bytes], count: int) -> tuple[bytes, ...]:
    """The placement: the ``count`` closest candidates that are alive; when
    fewer are, all of them and then the closest others, so the job keeps its
    planned replica count (the write then needs its quorum among the live
    ones). ``candidates`` are distinct, closest first; so is the result."""
    live = [i for i in candidates if i in alive][:count]
    rest = [i for i in candidates if i not in alive][: max(0, count - len(live))]
    chosen = set(live) | set(rest)
    return tuple(i for i in candidates if i in chosen)
