"""The iterative lookup (``dht/crawl.py``): when it stops, whom each round asks,
what it returns; and the rule for a request's sender that is new to the table
(``dht/contacts.py``)."""

from __future__ import annotations

import asyncio
import hashlib
import random

from workmesh.dht.contacts import ADMIT, KNOWN, VERIFY, new_sender_rule
from workmesh.dht.crawl import BETA, lookup, lookup_done, next_batch
from workmesh.dht.routing import Contact

KEY = b"k" * 32
K, ALPHA = 20, 3


def node_id(i: int) -> bytes:
    return hashlib.blake2b(i.to_bytes(4, "big"), digest_size=20).digest()


def dist(a: bytes, b: bytes) -> int:
    return int.from_bytes(a, "big") ^ int.from_bytes(b, "big")


class FakeMesh:
    """``n`` nodes with Kademlia-shaped tables: each knows up to 4 nodes at
    random per distance bucket (the bit length of the XOR distance) and its 8
    closest, and answers ``find_node`` with the k closest it knows. ``asked``
    lists the queries; ``dead`` nodes do not answer."""

    def __init__(self, n: int, seed: int = 1) -> None:
        rng = random.Random(seed)
        self.contacts = {node_id(i): Contact(node_id(i), "10.0.0.1", 1000 + i, KEY) for i in range(n)}
        ids = list(self.contacts)
        self.known: dict[bytes, list[Contact]] = {}
        for me in ids:
            others = [i for i in ids if i != me]
            rng.shuffle(others)
            buckets: dict[int, list[bytes]] = {}
            for i in others:
                bucket = buckets.setdefault(dist(i, me).bit_length(), [])
                if len(bucket) < 4:
                    bucket.append(i)
            near = sorted(others, key=lambda i: dist(i, me))[:8]
            self.known[me] = [self.contacts[i] for i in {*near, *(i for b in buckets.values() for i in b)}]
        self.dead: set[bytes] = set()
        self.asked: list[bytes] = []

    def asker(self, key: bytes):
        async def ask(contact: Contact) -> list[Contact] | None:
            self.asked.append(contact.id)
            if contact.id in self.dead:
                return None
            return sorted(self.known[contact.id], key=lambda c: dist(c.id, key))[:K]

        return ask

    def truly_closest(self, key: bytes, count: int) -> list[bytes]:
        return sorted((i for i in self.contacts if i not in self.dead), key=lambda i: dist(i, key))[:count]


# ---------------------------------------------------------------- the rules


def test_a_lookup_is_done_once_the_want_closest_known_have_all_answered():
    order = [b"a", b"b", b"c", b"d"]
    assert lookup_done(order, {b"a", b"b", b"c"}, 3)
    assert not lookup_done(order, {b"a", b"c", b"d"}, 3)  # the second closest has not answered
    assert lookup_done(order, {b"a"}, 1)
    assert lookup_done([b"a", b"b"], {b"a", b"b"}, 5)  # fewer known than wanted: all of them


def test_a_round_asks_alpha_of_the_closest_unasked_and_a_wide_round_all_of_the_want_closest():
    order = [b"a", b"b", b"c", b"d", b"e", b"f", b"g"]
    asked = {b"a", b"c"}
    assert next_batch(order, asked, want=5, alpha=2, wide=False) == [b"b", b"d"]
    assert next_batch(order, asked, want=5, alpha=2, wide=True) == [b"b", b"d", b"e"]
    # Never past max(want, alpha): a contact beyond them cannot change the answer.
    assert next_batch(order, {b"a", b"b", b"c"}, want=3, alpha=3, wide=True) == []


# ------------------------------------------------------------- the lookup


async def test_the_lookup_returns_the_true_closest_that_answered_in_few_rounds():
    mesh = FakeMesh(400)
    seeds = [mesh.contacts[node_id(i)] for i in range(3)]
    for n in range(20):
        key = node_id(10_000 + n)
        for want in (BETA, 5, 10):
            result = await lookup(key, seeds, mesh.asker(key), k=K, alpha=ALPHA, want=want)
            assert [c.id for c in result.contacts[:want]] == mesh.truly_closest(key, want)
            assert result.hops <= 5, (want, result.hops)


async def test_stopping_at_the_want_closest_asks_fewer_than_confirming_all_k():
    mesh = FakeMesh(400)
    seeds = [mesh.contacts[node_id(i)] for i in range(3)]
    key = node_id(777)
    early = await lookup(key, seeds, mesh.asker(key), k=K, alpha=ALPHA, want=BETA)
    full = await lookup(key, seeds, mesh.asker(key), k=K, alpha=ALPHA, want=K)
    assert early.queries < full.queries
    assert early.hops <= full.hops
    assert [c.id for c in full.contacts] == mesh.truly_closest(key, K)


async def test_dead_contacts_are_left_out_and_the_next_closest_are_asked():
    mesh = FakeMesh(300)
    key = node_id(4242)
    mesh.dead = set(sorted(mesh.contacts, key=lambda i: dist(i, key))[:4])  # the four closest are down
    seeds = [mesh.contacts[node_id(i)] for i in range(3)]
    result = await lookup(key, seeds, mesh.asker(key), k=K, alpha=ALPHA, want=5)
    assert not {c.id for c in result.contacts} & mesh.dead
    assert [c.id for c in result.contacts[:5]] == mesh.truly_closest(key, 5)
    assert result.failures >= 1


async def test_a_silent_contact_far_from_the_key_does_not_hold_the_lookup():
    """A round goes on after ``patience_s``; a contact that never answers and is
    not among the closest is not waited for (its ask goes on in its own task)."""
    mesh = FakeMesh(200)
    key = node_id(999)
    far = max(mesh.contacts, key=lambda i: dist(i, key))
    released = asyncio.Event()
    ask = mesh.asker(key)

    async def slow_ask(contact: Contact):
        if contact.id == far:
            await released.wait()
            return None
        return await ask(contact)

    seeds = [mesh.contacts[far], *(mesh.contacts[node_id(i)] for i in range(2))]
    result = await asyncio.wait_for(
        lookup(key, seeds, slow_ask, k=K, alpha=ALPHA, want=BETA, patience_s=0.01), timeout=10
    )
    assert [c.id for c in result.contacts[:BETA]] == mesh.truly_closest(key, BETA)
    assert not released.is_set()  # returned while the silent contact's ask still runs
    released.set()


async def test_a_slow_contact_among_the_closest_is_waited_for():
    """Later rounds go on without it, but the lookup does not end before the
    closest contact known has answered, and returns it first."""
    mesh = FakeMesh(200)
    key = node_id(31337)
    closest = mesh.truly_closest(key, 1)[0]
    ask = mesh.asker(key)

    async def slow_ask(contact: Contact):
        if contact.id == closest:
            await asyncio.sleep(0.1)  # ten rounds' patience
        return await ask(contact)

    seeds = [mesh.contacts[node_id(i)] for i in range(3)]
    result = await asyncio.wait_for(
        lookup(key, seeds, slow_ask, k=K, alpha=ALPHA, want=BETA, patience_s=0.01), timeout=10
    )
    assert result.contacts[0].id == closest


# ------------------------------------------------------- new senders


def test_a_sender_is_pinged_back_only_when_it_never_proved_its_address():
    here, there = ("10.0.0.1", 1), ("10.0.0.2", 1)
    assert new_sender_rule(here, here, proven=False) == KNOWN  # in the table at this address
    assert new_sender_rule(None, here, proven=True) == ADMIT  # answered us there: no ping
    assert new_sender_rule(there, here, proven=True) == ADMIT
    assert new_sender_rule(None, here, proven=False) == VERIFY
    assert new_sender_rule(there, here, proven=False) == VERIFY  # a new address proves nothing yet
