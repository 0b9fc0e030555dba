"""Reading a job from the mesh: its facts from the replicas, merged.

A job's facts live on the r nodes closest to its key *and* on the replicas
its placement names (the two sets drift apart as nodes join and leave). A
read asks the closest nodes plus the placement replicas this node knows of;
when the answers reveal a placement it had not asked, it asks those too.
When nobody knows the job, it asks the 2r closest nodes it has not asked yet
(from the same lookup) before it answers "not found"; and at most once per
``REVIVE_ON_MISS_EVERY_S`` it first pings contacts it evicted (the far side
of a partition that just healed).

What a read of an id nobody knows costs, then: one lookup and at most 2r
record requests (r, then the r next closest), plus, once per
``REVIVE_ON_MISS_EVERY_S`` on the whole node, ``REVIVE_ON_MISS`` pings (and
a lookup of its own, when one of them answers). A flood of random ids cannot
make a node ask more per read, nor stall reads behind rounds of pings.
"""

from __future__ import annotations

import weakref

from workmesh.dht.server import DHTServer
from workmesh.node import lifecycle, placement
from workmesh.node.derived import DerivedStates, local_state, state_of

REVIVE_ON_MISS = 8  # evicted contacts pinged before a read answers "not found"
REVIVE_ON_MISS_EVERY_S = 5.0  # ...at most once per this, however many reads miss
# A read that found nothing asks this many times r closest nodes once more:
# as many as a placement chooses its replicas among (node/placement.py).
WIDER_READ = placement.WIDER

# When each node's reads last revived evicted contacts (monotonic s).
_revived_at: weakref.WeakKeyDictionary[DHTServer, float] = weakref.WeakKeyDictionary()


async def read_job(
    dht: DHTServer, job_id: bytes, derived: DerivedStates | None = None
) -> tuple[lifecycle.JobState | None, int]:
    """(the derived state or None when nobody knows the job, replicas that answered).

    ``derived``: the node's memo of derived states over ``dht.records``
    (None: derive every time; the answer is the same).
    """
    local = local_state(derived, dht.records, job_id)
    placed = local.replicas if local is not None else ()
    facts, answered = await dht.fetch(job_id, also=placed)
    state = state_of(derived, facts)
    if state is None:
        # Nobody we asked knows the job. The job's placed replicas may not be
        # the r closest (placed past nodes that did not answer, or a
        # partition healed, or nodes joined); a miss is rare for a real job,
        # so search twice as wide once, waiting for every answer, before
        # answering "not found": the next closest from the same lookup.
        asked = {c.id for c in await dht.replicas_for(job_id)} | set(placed)
        if dht.has_dormant() and _may_revive(dht):
            # Before that, try the contacts we evicted: after a partition they
            # may be the other half (a revival renews the view; the wider read
            # then looks up again).
            await dht.revive(REVIVE_ON_MISS)
        facts, wider = await dht.fetch(job_id, replicas=WIDER_READ * dht.config.replicas, until_found=True, skip=asked)
        state = state_of(derived, facts)
        answered += wider
    if state is not None and state.replicas and not placed:
        more, extra = await dht.fetch(job_id, also=state.replicas)
        facts = [*facts, *more]
        state = state_of(derived, facts)
        answered = max(answered, extra)
    if state is not None and local is not None:
        _keep_up(dht, job_id, facts)
    return state, answered


def _may_revive(dht: DHTServer) -> bool:
    """At most one revival per ``REVIVE_ON_MISS_EVERY_S`` from reads that missed."""
    now = dht.clock.monotonic()
    if now - _revived_at.get(dht, float("-inf")) < REVIVE_ON_MISS_EVERY_S:
        return False
    _revived_at[dht] = now
    return True


def _keep_up(dht: DHTServer, job_id: bytes, facts: list) -> None:
    """A node that holds the job keeps what decides it (results, cancels,
    seals) that it learned by reading, so its own index and status agree
    with what it just answered."""
    held = dht.records.record_ids(job_id)
    missing = [f for f in facts if f.record_id not in held and dht.worth_repairing(f)]
    if missing:
        dht.ingest(job_id, missing, dht.node.id)
