"""The routing table: exact neighbours, tolerant eviction, bounded buckets; and
the replica set a DHT server derives from it."""

from __future__ import annotations

import asyncio
import os

from hypothesis import given, settings
from hypothesis import strategies as st
from kademlia.node import Node

from workmesh.crypto.identity import Identity
from workmesh.dht.config import DHTConfig
from workmesh.dht.envelope import REPLY, Envelope
from workmesh.dht.routing import Contact, WorkmeshRoutingTable, target_node
from workmesh.dht.server import AcceptAll, DHTServer
from workmesh.dht.storage import FactStore
from workmesh.node import facts as F

KEY = b"k" * 32
ids20 = st.binary(min_size=20, max_size=20)


def dist(a: bytes, b: bytes) -> int:
    return int.from_bytes(a, "big") ^ int.from_bytes(b, "big")


def contact(node_id: bytes, ip: str = "127.0.0.1", port: int = 1) -> Contact:
    return Contact(node_id, ip, port, KEY)


def table(own: bytes, k: int = 20, **kw) -> tuple[WorkmeshRoutingTable, list[Contact]]:
    heads: list[Contact] = []
    return WorkmeshRoutingTable(Node(own), k, on_full=heads.append, **kw), heads


# --------------------------------------------------------------------------- neighbours


@settings(max_examples=200, deadline=None)
@given(ids20, st.lists(ids20, max_size=300, unique=True), ids20, st.integers(1, 25), st.integers(2, 20))
def test_find_neighbors_is_the_brute_force_closest_of_the_table(own, others, target, count, k):
    router, _ = table(own, k)
    for i, node_id in enumerate(others):
        if node_id != own:
            router.add_contact(contact(node_id, port=1 + i))
    held = [c.id for c in router.contacts()]
    truth = sorted((i for i in held if i != target), key=lambda i: dist(i, target))[:count]
    assert [c.id for c in router.find_neighbors(Node(target), k=count)] == truth


@given(ids20, st.lists(ids20, min_size=1, max_size=60, unique=True), ids20)
def test_find_neighbors_excludes_the_asker_by_address(own, others, target):
    router, _ = table(own)
    for i, node_id in enumerate(others):
        router.add_contact(contact(node_id, port=1 + i))
    asker = router.contacts()[0]
    found = router.find_neighbors(Node(target), exclude=Node(b"\0" * 20, asker.ip, asker.port))
    assert asker.id not in [c.id for c in found]


@given(ids20, st.lists(ids20, max_size=200, unique=True))
def test_a_small_table_keeps_every_contact_and_a_large_one_keeps_none_twice(own, others):
    router, heads = table(own, k=8)
    others = [o for o in others if o != own]
    for i, node_id in enumerate(others):
        router.add_contact(contact(node_id, port=1 + i))
    held = [c.id for c in router.contacts()]
    assert len(held) == len(set(held)) == len(router)
    spare = {i for b in router.buckets for i in b.replacement_nodes}
    assert set(held) | spare == set(others)  # nothing silently lost...
    assert not set(held) & spare
    if len(others) <= 8:
        assert set(held) == set(others)
    assert bool(spare) == bool(heads)  # ...and every overflow asked the owner to check a head
    assert all(router.get(i) is not None for i in held)


# --------------------------------------------------------------------------- eviction


def test_a_contact_is_evicted_only_after_consecutive_failures():
    router, _ = table(os.urandom(20), evict_after_failures=3)
    c = contact(os.urandom(20))
    router.add_contact(c)
    assert router.record_failure(c) is False
    assert router.record_failure(c) is False
    router.record_success(c.id)  # an answer resets the count
    assert router.record_failure(c) is False
    assert router.record_failure(c) is False
    assert router.get(c.id) is not None
    # No replacement waits in its bucket: a small or lossy mesh keeps it longer.
    for _ in range(3 * 3 - 3):
        assert router.record_failure(c) is False
    assert router.record_failure(c) is True
    assert router.get(c.id) is None
    assert router.evictions == 1


def test_a_contact_with_a_replacement_waiting_goes_after_the_threshold():
    router, _ = table(bytes(20), k=2, evict_after_failures=3)
    # Four ids far from ours sharing a 5-bit prefix: kademlia does not split
    # their bucket (depth % 5 == 0), so two are contacts and two wait as spares.
    for first in (0x80, 0x84, 0x82, 0x81):
        router.add_contact(contact(bytes([first]) + os.urandom(19)))
    bucket = next(b for b in router.buckets if b.replacement_nodes)  # full, with spares waiting
    victim = next(iter(bucket.nodes.values()))
    assert [router.record_failure(victim) for _ in range(3)] == [False, False, True]
    assert router.get(victim.id) is None
    assert len(bucket.nodes) == 2  # a replacement took its place


def test_re_adding_a_contact_forgets_its_failures():
    router, _ = table(os.urandom(20), evict_after_failures=2)
    c = contact(os.urandom(20))
    router.add_contact(c)
    router.record_failure(c)
    router.add_contact(c)  # it proved itself again
    assert router.record_failure(c) is False
    assert router.get(c.id) is not None


def test_an_evicted_contact_is_replaced_from_the_replacement_list():
    own = b"\x00" * 20
    router, heads = table(own, k=2, evict_after_failures=1)
    # One bucket far from us whose first two contacts share a 5-bit prefix:
    # kademlia does not split it (depth % 5 == 0), so the third is a replacement.
    far = [bytes([first]) + os.urandom(19) for first in (0x80, 0x84, 0x82)]
    for node_id in far:
        router.add_contact(contact(node_id))
    assert [h.id for h in heads] == [far[0]] and len(router) == 2
    assert router.get(far[2]) is None
    assert router.record_failure(router.get(far[0])) is True  # the head did not answer
    assert len(router) == 2 and router.get(far[2]) is not None


def test_a_sender_is_worth_proving_only_if_the_table_would_use_it():
    """Issue 15, item 8: every new sender used to be pinged back, and in a large
    mesh most fall in full far buckets that only file them as one more spare.
    A bucket that is full, cannot split and holds two spares wants no more."""
    own = b"\x00" * 20
    router, _ = table(own, k=2)
    far = [bytes([first]) + os.urandom(19) for first in (0x80, 0x84)]
    for node_id in far:
        router.add_contact(contact(node_id))
    newcomer = contact(bytes([0x81]) + os.urandom(19))
    assert router.wants(newcomer)  # no spare yet
    router.add_contact(contact(bytes([0x82]) + os.urandom(19)))
    assert router.wants(newcomer)  # one spare
    router.add_contact(contact(bytes([0x83]) + os.urandom(19)))
    assert not router.wants(newcomer)  # full, unsplittable, two spares
    assert router.wants(router.get(far[0]))  # a member (perhaps at a new address) is always worth it
    assert router.wants(contact(b"\x00" * 19 + b"\x07"))  # our own bucket splits


def test_contacts_per_prefix_are_limited_per_bucket():
    router, _ = table(os.urandom(20), contacts_per_prefix_max=2)
    for i in range(3):
        router.add_contact(Contact(os.urandom(20), f"10.1.2.{i + 1}", 1, KEY))
    router.add_contact(Contact(os.urandom(20), "10.1.3.1", 1, KEY))
    assert len(router) == 3 and router.prefix_refusals == 1


# --------------------------------------------------------------------------- replica sets


class FakeNet:
    """Stands in for the server's protocol: contacts by address, and a reply
    envelope from one of them (subclasses decide what each answers, and when)."""

    def __init__(self, own: Identity) -> None:
        self.own = own
        self.by_addr: dict[tuple[str, int], Contact] = {}

    def add(self, c: Contact) -> Contact:
        self.by_addr[c.addr] = c
        return c

    def reply(self, c: Contact, method: str, body: list) -> Envelope:
        return Envelope(REPLY, b"\0" * 16, c.public_key, c.id, 0, self.own.node_id, method, body)


class StubNet(FakeNet):
    """Every contact answers find_node with ``referrals[node id]``."""

    def __init__(self, own: Identity, referrals: dict[bytes, list[Contact]]) -> None:
        super().__init__(own)
        self.referrals = referrals
        self.asked: list[bytes] = []

    async def request(self, addr, method, args, *, expect_id, peer_key=None, timeout_s=None):
        c = self.by_addr[addr]
        self.asked.append(c.id)
        return self.reply(c, method, [r.to_wire() for r in self.referrals.get(c.id, [])] if method == "find_node" else [])


def server(k: int, replicas: int, quorum: int) -> tuple[DHTServer, Identity]:
    identity = Identity.generate()
    store = FactStore(None, lambda key, raw: F.decode(raw, key=key))
    store.open()
    s = DHTServer(identity, store, AcceptAll(lambda key, raw: F.decode(raw, key=key)),
                  config=DHTConfig(k=k, replicas=replicas, quorum=quorum))
    return s, identity


def with_top_bit(bit: int) -> bytes:
    raw = bytearray(os.urandom(20))
    raw[0] = (raw[0] & 0x7F) | (bit << 7)
    return bytes(raw)


async def test_a_tiny_table_answers_replica_sets_locally():
    s, identity = server(k=8, replicas=3, quorum=2)
    net = StubNet(identity, {})
    s.protocol.request = net.request
    for i in range(4):
        s.router.add_contact(net.add(Contact(os.urandom(20), "127.0.0.1", 100 + i, KEY)))
    key = os.urandom(20)
    got = await s.replicas_for(key)
    everyone = [c.id for c in s.router.contacts()] + [identity.node_id]
    assert [c.id for c in got] == sorted(everyone, key=lambda i: dist(i, key))[:3]
    assert net.asked == []  # no lookup: the table provably holds the whole (tiny) mesh


async def test_after_the_table_split_replica_sets_come_from_a_lookup():
    s, identity = server(k=4, replicas=3, quorum=2)
    hidden = Identity.generate()  # a node only our contacts know
    key = hidden.node_id[:-1] + bytes([hidden.node_id[-1] ^ 1])
    known = [Contact(with_top_bit(b), "127.0.0.1", 200 + i, KEY) for i, b in enumerate([0, 0, 1, 1, 1])]
    net = StubNet(identity, {c.id: [Contact(hidden.node_id, "127.0.0.1", 300, hidden.public_key)] for c in known})
    net.add(Contact(hidden.node_id, "127.0.0.1", 300, hidden.public_key))
    s.protocol.request = net.request
    for c in known:
        s.router.add_contact(net.add(c))
    assert len(s.router.buckets) > 1 and len(s.router) == 5  # five contacts with k=4: it split
    got = await s.replicas_for(key)
    assert hidden.node_id in [c.id for c in got]


def test_target_node_measures_xor_distance():
    a, b = os.urandom(20), os.urandom(20)
    assert target_node(a).distance_to(target_node(b)) == dist(a, b)


async def test_replica_sets_wider_than_r_come_from_the_lookup_too():
    """A read's wider search and a placement's candidates ask for 2r nodes;
    a table that split must not cut the lookup's answer down to r."""
    s, identity = server(k=4, replicas=2, quorum=2)
    known = [Contact(with_top_bit(b), "127.0.0.1", 200 + i, KEY) for i, b in enumerate([0, 0, 1, 1, 1])]
    net = StubNet(identity, {})
    s.protocol.request = net.request
    for c in known:
        s.router.add_contact(net.add(c))
    assert not s.router_is_complete()
    key = os.urandom(20)
    got = await s.replicas_for(key, count=4)
    everyone = [c.id for c in known] + [identity.node_id]
    assert [c.id for c in got] == sorted(everyone, key=lambda i: dist(i, key))[:4]
    assert [c.id for c in await s.replicas_for(key)] == [c.id for c in got[:2]]  # r by default, from the cache


# --------------------------------------------------------------------------- probes


class ProbeNet(FakeNet):
    """Pings: contacts in ``silent`` never answer (the call is cancelled when
    the probe stops waiting), the others answer at once."""

    def __init__(self, own: Identity, silent: set[bytes]) -> None:
        super().__init__(own)
        self.silent = silent
        self.pinged: list[bytes] = []

    async def request(self, addr, method, args, *, expect_id, peer_key=None, timeout_s=None):
        c = self.by_addr[addr]
        self.pinged.append(c.id)
        if c.id in self.silent:
            await asyncio.sleep(3600)
        return self.reply(c, method, [])


def probing_server(silent_count: int) -> tuple[DHTServer, list[Contact], ProbeNet]:
    s, identity = server(k=8, replicas=3, quorum=2)
    contacts = [Contact(os.urandom(20), "127.0.0.1", 300 + i, KEY) for i in range(5)]
    net = ProbeNet(identity, {c.id for c in contacts[:silent_count]})
    s.protocol.request = net.request
    for c in contacts:
        s.router.add_contact(net.add(c))
    return s, contacts, net


async def test_a_probe_returns_who_answered_without_waiting_out_the_silent():
    s, contacts, net = probing_server(silent_count=2)
    answered = await asyncio.wait_for(s.probe(contacts, enough=3, grace_s=0.01), timeout=5)
    assert answered == {c.id for c in contacts[2:]}
    assert net.pinged.count(contacts[0].id) == 2  # each contact is pinged twice at once
    assert s.answered_age_s(contacts[4].id) is not None and s.answered_age_s(contacts[0].id) is None
    assert s.answered_age_s(s.node.id) == 0.0
    s.protocol.close()  # the silent pings


async def test_a_probe_stops_as_soon_as_the_caller_is_settled():
    s, contacts, _ = probing_server(silent_count=1)

    def until(answered: set[bytes], pending: set[bytes]) -> bool:
        assert pending <= {contacts[0].id}
        return contacts[1].id in answered

    # enough=2 is never reached: only ``until`` can end the wait before the silent ping.
    answered = await asyncio.wait_for(s.probe(contacts[:2], enough=2, grace_s=3600, until=until), timeout=5)
    assert answered == {contacts[1].id}
    s.protocol.close()


async def test_failures_count_lost_replies_in_a_row_and_reset_on_an_answer():
    s, contacts, _ = probing_server(silent_count=0)
    c = contacts[0]
    assert s.failures(c.id) == 0
    s.router.record_failure(c)
    s.router.record_failure(c)
    assert s.failures(c.id) == 2
    assert await s.probe([c], enough=1, grace_s=0.0) == {c.id}
    assert s.failures(c.id) == 0 and 0.0 <= s.answered_age_s(c.id) < 1.0
    assert s.failures(s.node.id) == 0


# --------------------------------------------------------------------------- store quorum


class StoreNet(FakeNet):
    """Store RPCs: every contact stores; each answers after its own delay."""

    def __init__(self, own: Identity, delays: dict[bytes, float]) -> None:
        super().__init__(own)
        self.delays = delays
        self.answered: list[bytes] = []

    async def request(self, addr, method, args, *, expect_id, peer_key=None, timeout_s=None):
        c = self.by_addr[addr]
        await asyncio.sleep(self.delays[c.id])
        self.answered.append(c.id)
        return self.reply(c, method, [True, [], []])


def storing_server(delays: list[float]) -> tuple[DHTServer, list[Contact], StoreNet]:
    s, identity = server(k=8, replicas=3, quorum=2)
    contacts = [Contact(os.urandom(20), "127.0.0.1", 400 + i, KEY) for i in range(len(delays))]
    net = StoreNet(identity, {c.id: d for c, d in zip(contacts, delays)})
    s.protocol.request = net.request
    for c in contacts:
        s.router.add_contact(net.add(c))
    return s, contacts, net


def a_fact() -> F.Fact:
    return F.sign(Identity.generate(), F.CLAIM, F.Claim(b"j" * 20, 1, 1))


async def test_on_quorum_fires_once_at_the_quorum_while_the_store_waits_for_the_last_replica():
    # Two replicas answer at 20 ms (so the grace is about 20 ms), the third at 30 ms.
    s, contacts, net = storing_server([0.02, 0.02, 0.03])
    fact = a_fact()
    seen: list[tuple[int, list[bytes]]] = []
    outcome = await s.store(
        fact.job_id, [fact], targets=[c.id for c in contacts], quorum=2,
        on_quorum=lambda so_far: seen.append((so_far.stored_on, list(net.answered))),
    )
    assert len(seen) == 1
    stored_then, answered_then = seen[0]
    assert stored_then == 2 and contacts[2].id not in answered_then  # called before the last answer
    assert outcome.stored_on == 3  # and the store still waited for it


async def test_a_store_without_grace_returns_at_the_quorum():
    s, contacts, net = storing_server([0.0, 0.0, 0.5])
    fact = a_fact()
    outcome = await asyncio.wait_for(
        s.store(fact.job_id, [fact], targets=[c.id for c in contacts], quorum=2, grace_s=0.0), timeout=0.4
    )
    assert outcome.stored_on == 2 and contacts[2].id not in outcome.stored_ids
    s.protocol.close()  # the slow call
