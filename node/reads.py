"""Reading a job from the mesh: its facts from the replicas, merged.

A job's facts live on the r nodes closest to its key *and* on the replicas
its placement names (the two sets drift apart as nodes join and leave). A
read asks the closest nodes plus the placement replicas this node knows of;
when the answers reveal a placement it had not asked, it asks those too.
When nobody knows the job, it asks the 2r closest nodes it knows and has not
asked yet (from the same lookup and its routing table) before it answers
"not found"; when it evicted contacts, it first waits for a round of pings
of them that began after it missed (the far side of a partition that just
healed: they rejoin the table, and the wider search reaches them).

What a read of an id nobody knows costs, then: one lookup and at most 2r
record requests (r, then the r next closest), plus a share of one round of
``REVIVE_ON_MISS`` pings (and, when one of them answers, the lookups that
renew this node's view). Reads that miss together share one round, and a
node runs one round at a time, so a flood of random ids costs at most
``REVIVE_ON_MISS`` pings per round trip timeout, and a read waits behind at
most the round in flight and its own (pings of one round go out together).

A round that began before the read missed does not count: a node whose
reads missed during a partition pinged its evicted contacts then, in vain,
and a read right after the heal must ping them again (the simulator found
it answering "not found" for a job two nodes across the healed split held,
because a round 4 s earlier had used up a once-per-5-s allowance).

Every reply is whole: a replica's answer counts only when the reader got all
of its pages (``DHTServer.read_all``), so a state is never derived from part
of a job's facts. A job whose retention passed is *gone*: when nobody holds
it and a node that dropped it says so (or this node did), the read says
``gone`` instead of searching wider.
"""

from __future__ import annotations

import asyncio
import weakref

from workmesh.dht.routing import target_node
from workmesh.dht.server import DHTServer
from workmesh.node import lifecycle, placement

REVIVE_ON_MISS = 8  # evicted contacts pinged before a read answers "not found"
# A read that found nothing asks this many times r closest nodes once more:
# as many as a placement chooses its replicas among (node/placement.py).
WIDER_READ = placement.WIDER



class _Revivals:
    """One node's rounds of pings of evicted contacts for reads that missed:
    one at a time (``lock``), numbered as they start (``started``) and end
    (``ended``)."""

    __slots__ = ("lock", "started", "ended")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.started = 0
        self.ended = 0


_revivals: weakref.WeakKeyDictionary[DHTServer, _Revivals] = weakref.WeakKeyDictionary()


class JobRead(tuple):
    """``(state, answered)`` of a read (it unpacks as the pair), and ``gone``:
    nobody holds the job and a node remembers dropping it (retention)."""

    gone: bool

    def __new__(cls, state: lifecycle.JobState | None, answered: int, gone: bool = False) -> JobRead:
        self = super().__new__(cls, (state, answered))
        self.gone = gone
        return self


async def read_job(dht: DHTServer, job_id: bytes) -> JobRead:
    """(the derived state or None when nobody knows the job, replicas that
    answered in full), and whether the job is known to be gone.

    States are derived through ``dht.records`` (``FactStore.state_of``):
    from what the store derived of the job, when it holds it.
    """
    store = dht.records
    local = store.state(job_id)
    placed = local.replicas if local is not None else ()
    fetched = await dht.fetch(job_id, also=placed)
    facts, answered = fetched
    state = store.state_of(job_id, facts)
    if state is None and (fetched.gone or dht.records.is_gone(job_id)):
        return JobRead(None, answered, True)
    if state is None:
        # Nobody we asked knows the job. The job's placed replicas may not be
        # the r closest (placed past nodes that did not answer, or a
        # partition healed, or nodes joined); a miss is rare for a real job,
        # so search twice as wide once, waiting for every answer, before
        # answering "not found": the next closest this node knows, from the
        # same lookup and its routing table (no second lookup).
        closest = await dht.replicas_for(job_id)  # what the read just looked up (cached)
        asked = {c.id for c in closest} | set(placed)
        if dht.has_dormant():
            # Before that, try the contacts we evicted: after a partition they
            # may be the other half (they rejoin the routing table).
            await _revive_after_miss(dht)
        wider_ids = [i for i in _wider(dht, job_id, closest) if i not in asked]
        # Ask again the first ones that had not answered: the read returned
        # once a majority had answered, and an empty majority may answer
        # before the nodes that hold the job (seen in the simulator: a job
        # placed during a partition read as not found). This search waits
        # for every answer.
        unanswered = [i for i in asked if i not in fetched.answered_ids]
        # At most WIDER_READ * r record requests per read in all: a replica
        # asked again takes the place of the farthest wider node.
        budget = WIDER_READ * dht.config.replicas - len(asked) - len(unanswered)
        wider_ids = wider_ids[: max(0, budget)]
        wide = await dht.fetch(job_id, also=[*unanswered, *wider_ids], until_found=True, skip=fetched.answered_ids)
        facts, wider = wide
        state = store.state_of(job_id, facts)
        answered += wider
        if state is None and wide.gone:
            return JobRead(None, answered, True)
    if state is not None and state.replicas and not placed:
        # The placed replicas may not be the closest: ask those not heard
        # yet. One that answered already is not asked again (its answer is
        # in ``facts``; a second full copy of the job cost a reply each).
        more = await dht.fetch(job_id, also=state.replicas, skip=fetched.answered_ids)
        more_facts, _ = more
        facts = [*facts, *more_facts]
        state = store.state_of(job_id, facts)
        answered = max(answered, len(fetched.answered_ids | more.answered_ids))
    if state is not None and local is not None:
        _keep_up(dht, job_id, facts)
    return JobRead(state, answered)


def _wider(dht: DHTServer, job_id: bytes, closest: list) -> list[bytes]:
    """The ``WIDER_READ`` * r closest nodes to the job that this node knows:
    from the lookup the read just made and from its routing table (so the
    ones not asked yet are contacts: no lookup finds them again)."""
    target = target_node(job_id)
    known = {c.id: c for c in dht.router.find_neighbors(target, k=WIDER_READ * dht.config.replicas)}
    known.update((c.id, c) for c in closest)
    ranked = sorted(known.values(), key=target.distance_to)
    return [c.id for c in ranked[: WIDER_READ * dht.config.replicas]]


async def _revive_after_miss(dht: DHTServer) -> None:
    """Wait for a round of pings of evicted contacts that began after this
    read missed: join the next round, or run it. Reads that miss while a
    round is in flight share the one after it (that round's pings may have
    gone out before a partition healed)."""
    revivals = _revivals.get(dht)
    if revivals is None:
        revivals = _revivals[dht] = _Revivals()
    wanted = revivals.started + 1  # the first round to start from now on
    async with revivals.lock:
        if revivals.ended >= wanted:
            return  # another read ran such a round while this one waited
        revivals.started += 1
        try:
            await dht.revive(REVIVE_ON_MISS)
        finally:
            revivals.ended = revivals.started


def _keep_up(dht: DHTServer, job_id: bytes, facts: list) -> None:
    """A node that holds the job keeps what decides it (results, cancels,
    seals) that it learned by reading, so its own index and status agree
    with what it just answered."""
    held = dht.records.record_ids(job_id)
    missing = [f for f in facts if f.record_id not in held and dht.worth_repairing(f)]
    if missing:
        dht.ingest(job_id, missing, dht.node.id)
