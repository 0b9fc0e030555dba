"""Replica-set epochs: which replica set owns a ballot of a job, after repairs. Pure.

A job's replicas are placed at submission (epoch 0). A repair
(node/repairs.py) proposes a new set as a ``config`` fact and decides it by
the job's own consensus; once a quorum of the then current set sealed it at
ballot ``b``, the new set owns every ballot above ``b``. Derivation
(node/lifecycle.py) and the replica's admission (node/replica.py) count a
lease grant or a ballot step only when its author belongs to the set that
owns its ballot.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from workmesh.node import facts as F
from workmesh.node.facts import Fact


@dataclass(frozen=True, slots=True)
class Epoch:
    """A replica set and the ballot above which it is the job's acceptors."""

    start: tuple | None  # the ballot that decided it (None: the placement's, epoch 0)
    replicas: tuple[bytes, ...]


def ballot_key(fact: Fact) -> tuple | None:
    """The ballot a fact speaks at, for choosing its epoch: a lease grant's
    ``(n, 0, worker)``, a ballot step's own; None for facts of no ballot."""
    if fact.kind == F.GRANT and fact.body.action == F.LEASE:
        return (fact.body.attempt, 0, fact.body.subject)
    if fact.kind == F.BALLOT:
        return fact.body.ballot
    return None


def members_at(epochs: tuple[Epoch, ...], ballot: tuple | None) -> tuple[bytes, ...]:
    """The replica set that owns ``ballot``: the last epoch that starts below it."""
    for epoch in reversed(epochs):
        if epoch.start is None or (ballot is not None and ballot > epoch.start):
            return epoch.replicas
    return epochs[0].replicas


def epochs_of(facts: Iterable[Fact], submit: Fact, placement: Fact | None) -> tuple[Epoch, ...]:
    """The job's replica sets in order: the placement's, then each ``config``
    fact that a quorum of the then current set sealed at a ballot inside its
    epoch (the lowest such ballot). One epoch's ballots decide one subject
    (the consensus), so once a new set is decided no outcome can be decided
    in the old epoch, and the new set's ballots all lie above the one that
    decided it: no fact counts in two sets."""
    if placement is None:
        return ()
    epochs = [Epoch(None, F.placement_ids(placement.body.subject))]
    facts = list(facts)
    configs = {
        f.fact_id: f for f in facts if f.kind == F.CONFIG and F.context_error(submit, f) is None
    }
    if not configs:
        return tuple(epochs)
    seals = [f for f in facts if f.kind == F.BALLOT and f.body.step == F.SEAL and f.body.subject in configs]
    quorum = submit.body.quorum
    while len(epochs) <= F.EPOCHS_MAX:
        current = epochs[-1]
        members = frozenset(current.replicas)
        by: dict[tuple, set[bytes]] = {}
        for seal in seals:
            b = seal.body.ballot
            if seal.author_id not in members or (current.start is not None and not b > current.start):
                continue
            if configs[seal.body.subject].body.epoch != len(epochs):
                continue
            by.setdefault((b, seal.body.subject), set()).add(seal.author_id)
        found = [key for key, who in by.items() if len(who) >= quorum]
        if not found:
            break
        ballot, subject = min(found)
        epochs.append(Epoch(ballot, F.placement_ids(configs[subject].body.replicas)))
    return tuple(epochs)
