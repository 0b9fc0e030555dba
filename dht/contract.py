"""The DHT's contract with the layer above: what it stores and what it answers.

The DHT knows nothing about jobs. The layer above hands it:

* :class:`Record`: an opaque signed record (``node.facts.Fact`` is one), and a
  :data:`Validator` that turns bytes filed under a key into one or raises;
* a :class:`RecordPolicy`: validates records and decides, per incoming batch,
  what a replica admits (an :class:`Admission`: what it accepts, what it
  signs in answer, what it refuses and why);
* optionally a :class:`Deriver`: what the layer above makes of a key's
  records (a job's state), which the store keeps up to date as records merge
  (``FactStore.state``).

and gets back from the server:

* a :class:`StoreOutcome` from every store: how many replicas stored, the
  records they produced, their refusals (reasons include the ``REFUSED_*``
  codes below, which peers compare as strings);
* a :class:`Fetched` from every read: the merged records and how many
  replicas answered in full.

Everything here is a type or a constant: no I/O, no state.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

# Refusal reasons of a store the replica could not keep (codes for peers, text for people).
REFUSED_BUDGET = "storage budget exhausted"
REFUSED_GONE = "gone: retention passed"
REFUSED_DISK = "not stored: the commit to disk failed"

# Keys in one ``store_many`` request: the replies (the replica's grants, votes
# and seals for each key) must fit one datagram too.
STORE_MANY_KEYS_MAX = 8


@runtime_checkable
class Record(Protocol):
    """A verified signed record.

    Declared as read-only properties so that frozen dataclass fields and
    computed properties (as on ``Fact``) both satisfy it.
    """

    @property
    def raw(self) -> bytes:
        """The exact signed bytes; what is stored and sent."""

    @property
    def record_id(self) -> bytes:
        """The 32-byte hash of ``raw``: the record's identity."""

    @property
    def author_id(self) -> bytes:
        """The 20-byte node id of the signer (per-author storage quotas)."""

    @property
    def slot(self) -> bytes | None:
        """Records sharing ``(key, slot)`` replace each other; ``None`` = a plain set member."""

    @property
    def version(self) -> int:
        """Orders records within one slot; the highest wins."""


Validator = Callable[[bytes, bytes], Record]
"""``validator(key, raw) -> Record``; raises any exception when ``raw`` is not
a valid record filed under ``key``."""


@dataclass(slots=True)
class Admission:
    """What a replica does with a batch of incoming records."""

    accept: list[Record] = field(default_factory=list)
    produced: list[Record] = field(default_factory=list)  # signed by this node, stored too
    refused: list[tuple[int, str]] = field(default_factory=list)  # (index in batch, reason)


class RecordPolicy(Protocol):
    def validate(self, key: bytes, raw: bytes) -> Record: ...

    def admit(self, key: bytes, incoming: list[Record], existing: list[Record], sender_id: bytes) -> Admission: ...

    def stored(self, key: bytes, new: list[Record]) -> None: ...

    # Optional: ``worth_repairing(record) -> bool`` limits read repair to durable records;
    # ``holders(records) -> ids``: nodes that must hold the key besides its r closest;
    # ``one_signature()``: a context in which admissions sign what they produce
    # together, when it ends (``dht/ingest.py`` judges a ``store_many`` in one).


class Derived(Protocol):
    """What a :class:`Deriver` derived from one set of records: kept by the
    store, handed back as the start of the next derivation, never mutated."""

    @property
    def state(self) -> Any:
        """What callers ask for (``FactStore.state``); None: nothing to show."""


class Deriver(Protocol):
    """Derives a value from a key's records, incrementally.

    ``derive(key, records, previous)``: the value of ``records`` (a whole set
    filed under ``key``), given ``previous``, a value derived before for
    ``key`` (None: none kept), which it may start from. It must answer what it
    would answer with ``previous`` None, and must not mutate ``previous``.
    """

    def derive(self, key: bytes, records: list[Record], previous: Derived | None) -> Derived: ...


class AcceptAll:
    """A policy that admits every valid record (tests of the DHT alone)."""

    def __init__(self, validate: Callable[[bytes, bytes], Record]) -> None:
        self.validate = validate

    def admit(self, key, incoming, existing, sender_id):
        return Admission(accept=list(incoming))

    def stored(self, key, new):
        pass


@dataclass(frozen=True, slots=True)
class StoreOutcome:
    stored_on: int  # replicas (this node included) that now hold every record
    answered: int  # replicas that replied at all
    asked: int
    produced: list[Record]
    refusals: dict[bytes, list[tuple[int, str]]]  # replica id -> refusals
    stored_ids: frozenset[bytes] = frozenset()  # the replicas that hold every record
    answered_ids: frozenset[bytes] = frozenset()  # the replicas that replied

    def reached(self, quorum: int) -> bool:
        return self.stored_on >= quorum

    def merged(self, other: StoreOutcome) -> StoreOutcome:
        """One outcome for two stores of the same records on disjoint replicas."""
        return StoreOutcome(
            stored_on=self.stored_on + other.stored_on,
            answered=self.answered + other.answered,
            asked=self.asked + other.asked,
            produced=[*self.produced, *other.produced],
            refusals={**self.refusals, **other.refusals},
            stored_ids=self.stored_ids | other.stored_ids,
            answered_ids=self.answered_ids | other.answered_ids,
        )


class Fetched(tuple):
    """``(records, answered)`` of a read, and ``gone``: the replicas that said
    they dropped the key when its retention passed (it unpacks as the pair)."""

    gone: frozenset[bytes]
    answered_ids: frozenset[bytes]  # the nodes that answered in full

    def __new__(
        cls,
        records: list[Record],
        answered: int,
        gone: frozenset[bytes] = frozenset(),
        answered_ids: frozenset[bytes] = frozenset(),
    ) -> Fetched:
        self = super().__new__(cls, (records, answered))
        self.gone = gone
        self.answered_ids = answered_ids
        return self
