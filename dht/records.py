"""What the DHT stores: opaque signed records, validated by an injected function.

The DHT layer knows nothing about jobs. Per 160-bit key it keeps a *set* of
signed records and merges by union, so replicas that saw the same records agree
whatever the delivery order and a replayed datagram changes nothing. The one
refinement is the *slot*: records that share ``(key, slot)`` replace each other
and the highest ``(version, record_id)`` wins. That is a max-register, which is
as commutative, associative and idempotent as the union itself; it lets a
heartbeat (a job's ``renew``) occupy one place instead of growing the set.

What a record means, and whether it is valid, is decided by the layer above
through a :data:`Validator` (:class:`Record` and :data:`Validator` are part of
the DHT's contract, ``dht/contract.py``, and re-exported here);
``node.facts.Fact`` is such a record, with the validator
``lambda key, raw: facts.decode(raw, key=key)``. Storage runs the
validator again on every record it loads from disk, so nothing unverified is
ever served.

:func:`plan_merge` is the merge rule under storage bounds, as a pure function
(no I/O, no clock): ``dht/storage.py`` writes its plan to SQLite and then
applies it to memory, and tests drive it directly with fake records.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from workmesh.dht.contract import Record, Validator  # noqa: F401 (re-exported)

KEY_BYTES = 20
RECORD_ID_BYTES = 32
AUTHOR_ID_BYTES = 20
_INT64 = range(-(2**63), 2**63)


def supersedes(new: Record, old: Record) -> bool:
    """True when ``new`` beats ``old`` in their shared slot.

    Highest version wins; a tie goes to the higher record id, so every replica
    picks the same winner whatever order the two arrive in.
    """
    return (new.version, new.record_id) > (old.version, old.record_id)


@dataclass(frozen=True, slots=True)
class StorageLimits:
    # Records kept under one key; slot replacements do not count twice.
    records_per_key_max: int = 256
    # Records signed by one author, across all keys (one key cannot flood a node).
    records_per_author_max: int = 100_000
    # Sum of len(raw) over every stored record.
    bytes_total_max: int = 256 * 2**20
    # Distinct keys held.
    keys_max: int = 200_000


@dataclass(slots=True)
class MergePlan:
    """What one merge does: the records to add, the stored ones they replace, and counters."""

    added: list[Record] = field(default_factory=list)
    removed: list[Record] = field(default_factory=list)
    rejected_limit: int = 0
    rejected_malformed: int = 0
    superseded: int = 0
    bytes_delta: int = 0


def _well_formed(r: Record) -> bool:
    """Shape checks that keep a buggy validator from corrupting the database."""
    return (
        isinstance(r.raw, bytes)
        and isinstance(r.record_id, bytes) and len(r.record_id) == RECORD_ID_BYTES
        and isinstance(r.author_id, bytes) and len(r.author_id) == AUTHOR_ID_BYTES
        and (r.slot is None or isinstance(r.slot, bytes))
        and isinstance(r.version, int) and r.version in _INT64
    )


def plan_merge(
    current: Mapping[bytes, Record],
    slots: Mapping[bytes, bytes],
    records: Iterable[Record],
    *,
    author_counts: Mapping[bytes, int],
    bytes_total: int,
    key_allowed: bool,
    limits: StorageLimits,
) -> MergePlan:
    """Decide a merge into one key without changing anything (pure).

    ``current`` maps record id -> record for the key, ``slots`` maps slot ->
    record id; ``key_allowed`` is False when the key is new and ``keys_max``
    is reached. Records are taken in order; within one call a slot may be
    replaced several times and only the final winner is reported as added.
    """
    plan = MergePlan()
    view = dict(current)
    slot_view = dict(slots)
    added: dict[bytes, Record] = {}
    authors: Counter[bytes] = Counter()
    for r in records:
        if not _well_formed(r):
            plan.rejected_malformed += 1
            continue
        rid = r.record_id
        if rid in view:
            continue  # already held: union is idempotent
        old = None
        if r.slot is not None and (old_id := slot_view.get(r.slot)) is not None:
            old = view[old_id]
            if not supersedes(r, old):
                plan.superseded += 1
                continue
        author = r.author_id
        size_delta = len(r.raw) - (len(old.raw) if old is not None else 0)
        author_after = author_counts.get(author, 0) + authors[author] + 1
        if old is not None and old.author_id == author:
            author_after -= 1
        if (
            not key_allowed
            or (old is None and len(view) >= limits.records_per_key_max)
            or author_after > limits.records_per_author_max
            or bytes_total + plan.bytes_delta + size_delta > limits.bytes_total_max
        ):
            plan.rejected_limit += 1
            continue
        if old is not None:
            del view[old.record_id]
            authors[old.author_id] -= 1
            if added.pop(old.record_id, None) is None:
                plan.removed.append(old)
        view[rid] = r
        added[rid] = r
        authors[author] += 1
        if r.slot is not None:
            slot_view[r.slot] = rid
        plan.bytes_delta += size_delta
    plan.added = list(added.values())
    return plan
