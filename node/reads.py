"""Reading a job from the mesh: its facts from the replicas, merged.

A job's facts live on the r nodes closest to its key *and* on the replicas
its placement names (the two sets drift apart as nodes join and leave). A
read asks the closest nodes plus the placement replicas this node knows of;
when the answers reveal a placement it had not asked, it asks those too.
When nobody knows the job, it pings contacts it evicted (the far side of a
partition that just healed) and asks again, then asks the 2r closest nodes,
before it answers "not found".

Every reply is whole: a replica's answer counts only when the reader got all
of its pages (``DHTServer.read_all``), so a state is never derived from part
of a job's facts. A job whose retention passed is *gone*: when nobody holds
it and a node that dropped it says so (or this node did), the read says
``gone`` instead of searching wider.
"""

from __future__ import annotations

from workmesh.dht.server import DHTServer
from workmesh.node import lifecycle, placement
from workmesh.node.derived import DerivedStates, local_state, state_of

REVIVE_ON_MISS = 8  # evicted contacts pinged before a read answers "not found"
# A read that found nothing asks this many times r closest nodes once more:
# as many as a placement chooses its replicas among (node/placement.py).
WIDER_READ = placement.WIDER


class JobRead(tuple):
    """``(state, answered)`` of a read (it unpacks as the pair), and ``gone``:
    nobody holds the job and a node remembers dropping it (retention)."""

    gone: bool

    def __new__(cls, state: lifecycle.JobState | None, answered: int, gone: bool = False) -> JobRead:
        self = super().__new__(cls, (state, answered))
        self.gone = gone
        return self


async def read_job(dht: DHTServer, job_id: bytes, derived: DerivedStates | None = None) -> JobRead:
    """(the derived state or None when nobody knows the job, replicas that
    answered in full), and whether the job is known to be gone.

    ``derived``: the node's memo of derived states over ``dht.records``
    (None: derive every time; the answer is the same).
    """
    local = local_state(derived, dht.records, job_id)
    placed = local.replicas if local is not None else ()
    fetched = await dht.fetch(job_id, also=placed)
    facts, answered = fetched
    state = state_of(derived, facts)
    if state is None and (fetched.gone or dht.records.is_gone(job_id)):
        return JobRead(None, answered, True)
    if state is None and dht.has_dormant():
        # Nobody we asked knows the job. Before saying "not found", try the
        # contacts we evicted: after a partition they may be the other half.
        if await dht.revive(REVIVE_ON_MISS):
            facts, answered = await dht.fetch(job_id, also=placed)
            state = state_of(derived, facts)
    if state is None:
        # Still nobody. The job's placed replicas may not be the r closest
        # (placed past nodes that did not answer, or a partition healed, or
        # nodes joined); a miss is rare, so search twice as wide once,
        # waiting for every answer, before answering "not found".
        facts, wider = await dht.fetch(job_id, replicas=WIDER_READ * dht.config.replicas, until_found=True)
        state = state_of(derived, facts)
        answered = max(answered, wider)
    if state is not None and state.replicas and not placed:
        more, extra = await dht.fetch(job_id, also=state.replicas)
        facts = [*facts, *more]
        state = state_of(derived, facts)
        answered = max(answered, extra)
    if state is not None and local is not None:
        _keep_up(dht, job_id, facts)
    return JobRead(state, answered)


def _keep_up(dht: DHTServer, job_id: bytes, facts: list) -> None:
    """A node that holds the job keeps what decides it (results, cancels,
    seals) that it learned by reading, so its own index and status agree
    with what it just answered."""
    held = dht.records.record_ids(job_id)
    missing = [f for f in facts if f.record_id not in held and dht.worth_repairing(f)]
    if missing:
        dht.ingest(job_id, missing, dht.node.id)
