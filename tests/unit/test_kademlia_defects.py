"""The defects of kademlia 2.2.3 and rpcudp 5.0.1 that our DHT replaces, shown side by side.

Each test drives the UNMODIFIED library classes with small stubs (no network)
and asserts the defect, so it fails the day the library is fixed, and then
drives our replacement through the same situation and asserts the behaviour
we rely on. The list is in docs/protocol.md.
"""

from __future__ import annotations

import asyncio
import os
import random
import time

import pytest
import umsgpack
from kademlia.crawling import NodeSpiderCrawl, ValueSpiderCrawl
from kademlia.network import Server
from kademlia.node import Node
from kademlia.protocol import KademliaProtocol
from kademlia.routing import RoutingTable
from kademlia.storage import ForgetfulStorage
from kademlia.utils import digest
from rpcudp.protocol import RPCProtocol as LibRPCProtocol

from workmesh.crypto.identity import Identity, node_id_of
from workmesh.dht.config import DHTConfig
from workmesh.dht.coalesce import is_bundle
from workmesh.dht.coalesce import split as split_bundle
from workmesh.dht.envelope import REPLY, REQUEST, Envelope, open_envelope, seal
from workmesh.dht.routing import Contact, WorkmeshRoutingTable
from workmesh.dht.server import AcceptAll, DHTServer
from workmesh.dht.storage import FactStore
from workmesh.node import facts as F

ADDR = ("127.0.0.1", 4000)


# --------------------------------------------------------------------------- helpers


def ids(rng: random.Random, n: int) -> list[bytes]:
    return [rng.randbytes(20) for _ in range(n)]


def xor(a: bytes, b: bytes) -> int:
    return int.from_bytes(a, "big") ^ int.from_bytes(b, "big")


def flip(node_id: bytes, bit: int) -> bytes:
    """``node_id`` with bit ``bit`` (0 = least significant) flipped: at XOR distance 2**bit."""
    return (int.from_bytes(node_id, "big") ^ (1 << bit)).to_bytes(20, "big")


def submit_fact(author: Identity, nonce: int) -> F.Fact:
    body = F.Submit("echo", b"{}", 1, 10_000, 60_000, 5, 3, nonce.to_bytes(16, "big"), 1_700_000_000_000)
    return F.sign(author, F.SUBMIT, body)


def cancel_fact(author: Identity, submit: F.Fact) -> F.Fact:
    return F.sign(author, F.CANCEL, F.Cancel(submit.job_id, "stop", 1_700_000_000_001))


class FakeTransport:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, tuple[str, int]]] = []

    def sendto(self, data: bytes, addr) -> None:
        # One entry per message: a coalesced datagram (dht/coalesce.py) is split as its receiver would.
        for message in split_bundle(data, 65536) if is_bundle(data) else [data]:
            self.sent.append((message, addr))

    def close(self) -> None:
        pass


class StubNet:
    """Stands in for ``RPCProtocol.request`` of one DHTServer: each peer is a
    function ``(method, args) -> reply args`` or ``None`` (the reply is lost)."""

    def __init__(self, own: Identity) -> None:
        self.own = own
        self.peers: dict[tuple[str, int], tuple[Identity | bytes, object]] = {}
        self.calls: list[tuple[tuple[str, int], str, list]] = []

    def add(self, node_id: bytes, answer, port: int | None = None) -> Contact:
        """A peer with an arbitrary id (routing logic only cares about ids)."""
        addr = ("127.0.0.1", port or 10_000 + len(self.peers))
        key = os.urandom(32)
        self.peers[addr] = (node_id, key, answer)
        return Contact(node_id, *addr, key)

    async def request(self, addr, method, args, *, expect_id, peer_key=None, timeout_s=None):
        self.calls.append((addr, method, args))
        node_id, key, answer = self.peers[addr]
        reply = answer(method, args)
        if reply is None:
            return None
        return Envelope(REPLY, b"\0" * 16, key, node_id, 0, self.own.node_id, method, reply)


def make_server(identity: Identity | None = None, *, stub: bool = True, **config) -> tuple[DHTServer, StubNet]:
    """Our DHT server over an in-memory store; with ``stub``, its requests go to a :class:`StubNet`."""
    identity = identity or Identity.generate()
    store = FactStore(None, lambda key, raw: F.decode(raw, key=key))
    store.open()
    server = DHTServer(identity, store, AcceptAll(lambda key, raw: F.decode(raw, key=key)), config=DHTConfig(**config))
    net = StubNet(identity)
    if stub:
        server.protocol.request = net.request
    return server, net


def lib_rule(own: bytes, new: bytes, neighbours: list[bytes], target: bytes) -> bool:
    """``KademliaProtocol.welcome_if_new``'s hand-off test, for the key node ``target``."""
    ranked = sorted(neighbours, key=lambda n: xor(n, target))
    return xor(new, target) < xor(ranked[-1], target) and xor(own, target) < xor(ranked[0], target)


class LibStubProtocol:
    """The protocol surface the library's table and crawlers call."""

    def __init__(self) -> None:
        self.pings = 0

    async def call_ping(self, node):
        self.pings += 1
        return (True, None)


# --------------------------------------------------------------------------- 1. find_neighbors


async def test_library_find_neighbors_misses_true_closest_ours_is_exact():
    rng = random.Random(1)
    own = rng.randbytes(20)
    lib = RoutingTable(LibStubProtocol(), 20, Node(own))
    ours = WorkmeshRoutingTable(Node(own), 20, on_full=lambda head: None)
    for node_id in ids(rng, 400):
        lib.add_contact(Node(node_id, "127.0.0.1", 1))
        ours.add_contact(Contact(node_id, "127.0.0.1", 1, b"k" * 32))
    assert sorted(c.id for b in lib.buckets for c in b.get_nodes()) == sorted(c.id for c in ours.contacts())
    held = [c.id for c in ours.contacts()]

    lib_misses = 0
    for target in ids(rng, 200):
        truth = sorted(held, key=lambda i: xor(i, target))[:20]
        if [n.id for n in lib.find_neighbors(Node(target), k=20)] != truth:
            lib_misses += 1
        assert [c.id for c in ours.find_neighbors(Node(target), k=20)] == truth
    assert lib_misses > 0, "the library's find_neighbors returned the true closest every time"


# --------------------------------------------------------------------------- 2. eviction


async def test_library_evicts_after_one_lost_reply_ours_after_evict_after_failures():
    rng = random.Random(2)
    peer = Node(rng.randbytes(20), "127.0.0.1", 4001)
    lib = KademliaProtocol(Node(rng.randbytes(20)), ForgetfulStorage(), 20)
    lib.router.add_contact(peer)
    lib.handle_call_response((False, None), peer)  # one lost reply
    assert lib.router.is_new_node(peer), "the library kept a contact after a lost reply"

    server, net = make_server(evict_after_failures=3)
    # lost, lost, answered, then lost nine times: with no replacement waiting
    # in its bucket a contact goes after 3 x evict_after_failures in a row.
    replies = iter([None, None, [], *[None] * 9])
    contact = net.add(peer.id, lambda method, args: next(replies))
    server.router.add_contact(contact)
    for expect_present in (True, True, True, *[True] * 8, False):
        await server.call(contact, "ping", [])
        assert (server.router.get(contact.id) is not None) is expect_present
    assert server.router.evictions == 1


# --------------------------------------------------------------------------- 3. hand-off


async def test_library_hand_off_rehashes_stored_keys_ours_hands_off_the_stored_key():
    identity = Identity.from_seed(b"\x03" * 32)
    own = identity.node_id
    author = Identity.from_seed(b"\x04" * 32)
    # A stored key near us, so we are certainly one of its replicas.
    submit = next(s for s in (submit_fact(author, n) for n in range(1000)) if xor(s.job_id, own) < 2**156)
    key = submit.job_id
    rng = random.Random(3)
    neighbours = ids(rng, 12)
    newcomer = flip(key, 0)  # the closest possible node to the key
    assert all(xor(own, key) < xor(n, key) for n in neighbours)
    # The library would hand the key off if it tested the key itself; it tests digest(key).
    assert lib_rule(own, newcomer, neighbours, key)
    assert not lib_rule(own, newcomer, neighbours, digest(key))

    lib = KademliaProtocol(Node(own), ForgetfulStorage(), 20)
    for n in neighbours:
        lib.router.add_contact(Node(n, "127.0.0.1", 1))
    lib.storage[key] = submit.raw
    handed: list[bytes] = []

    def call_store(node, k, value):
        handed.append(k)
        return asyncio.sleep(0, (True, True))

    lib.call_store = call_store
    lib.welcome_if_new(Node(newcomer, "127.0.0.1", 2))
    await asyncio.sleep(0)
    assert key not in handed, "the library handed the key to the new neighbour"

    server, net = make_server(identity)
    server.records.merge(key, [submit])
    for n in neighbours:
        server.router.add_contact(net.add(n, lambda m, a: []))
    synced = asyncio.Event()

    def newcomer_answers(method, args):
        if method == "sync":
            synced.set()
            return [False, []]  # "I hold nothing of it"
        return [True, [], []] if method == "store" else []

    new_contact = net.add(newcomer, newcomer_answers)
    handoff = server.protocol.spawn(server.upkeep.handoff_loop(), "handoff")
    try:
        await server.call(new_contact, "ping", [])  # the newcomer proves itself
        await asyncio.wait_for(synced.wait(), 2.0)
        for _ in range(100):
            if any(m == "store" for _, m, _ in net.calls):
                break
            await asyncio.sleep(0.01)
    finally:
        handoff.cancel()
    stores = [(addr, args) for addr, m, args in net.calls if m == "store"]
    assert stores == [(new_contact.addr, [key, [submit.raw]])]
    assert server.stats["handoffs"] == 1


# --------------------------------------------------------------------------- 4. set_digest


def lib_server_with(neighbours: list[bytes], find_node_reply, store_reply) -> Server:
    server = Server(ksize=20, alpha=3, node_id=b"\x00" * 20)
    proto = KademliaProtocol(server.node, server.storage, 20)
    for n in neighbours:
        proto.router.add_contact(Node(n, "127.0.0.1", 1))

    async def call_find_node(peer, node):
        return find_node_reply

    async def call_store(peer, key, value):
        return store_reply

    proto.call_find_node = call_find_node
    proto.call_store = call_store
    server.protocol = proto
    return server


async def test_library_set_digest_raises_when_all_time_out_and_claims_success_when_all_fail():
    rng = random.Random(4)
    neighbours = ids(rng, 6)
    key = rng.randbytes(20)
    dead = lib_server_with(neighbours, (False, None), (False, None))
    with pytest.raises(ValueError):  # max() of an empty list
        await dead.set_digest(key, b"v")
    refusing = lib_server_with(neighbours, (True, []), (False, None))
    assert await refusing.set_digest(key, b"v") is True  # any() of non-empty tuples


async def test_our_store_reports_the_truth_on_dead_refusing_and_empty_neighbourhoods():
    author = Identity.from_seed(b"\x05" * 32)
    submit = submit_fact(author, 1)
    key = submit.job_id

    # Dead: the five closest to the key never answer.
    server, net = make_server()
    for bit in range(6):
        server.router.add_contact(net.add(flip(key, bit), lambda m, a: None))
    outcome = await server.store(key, [submit])
    assert (outcome.stored_on, outcome.answered, outcome.asked) == (0, 0, 5)
    assert not outcome.reached(3)
    assert server.stats["store_quorum_missed"] == 1

    # Refusing: all five answer and refuse.
    server, net = make_server()
    for bit in range(6):
        server.router.add_contact(net.add(flip(key, bit), lambda m, a: [False, [[0, "refused"]], []]))
    outcome = await server.store(key, [submit])
    assert (outcome.stored_on, outcome.answered, outcome.asked) == (0, 5, 5)
    assert len(outcome.refusals) == 5

    # Empty: we are our own only replica; one copy is not a quorum.
    server, _ = make_server()
    outcome = await server.store(key, [submit])
    assert (outcome.stored_on, outcome.asked) == (1, 1)
    assert not outcome.reached(3)


# --------------------------------------------------------------------------- 5. reads


class LibValueProtocol:
    def __init__(self, values: dict[bytes, object], referrals: dict[bytes, list[Node]]) -> None:
        self.values, self.referrals = values, referrals
        self.asked: list[bytes] = []
        self.stored: list[tuple[bytes, object]] = []

    async def call_find_value(self, peer, node):
        self.asked.append(peer.id)
        if peer.id in self.values:
            return (True, {"value": self.values[peer.id]})
        return (True, [tuple(n) for n in self.referrals.get(peer.id, [])])

    async def call_store(self, peer, key, value):
        self.stored.append((peer.id, value))
        return (True, True)


async def test_library_read_takes_the_first_answer_and_crashes_on_a_list_ours_merges_every_reply():
    rng = random.Random(5)
    liar, b, c, d, e = (Node(i, "127.0.0.1", 5000 + n) for n, i in enumerate(ids(rng, 5)))
    key = Node(rng.randbytes(20))
    honest = {d.id: b"genuine", e.id: b"genuine"}
    proto = LibValueProtocol({liar.id: b"forged", **honest}, {b.id: [d, e], c.id: [d, e]})
    value = await ValueSpiderCrawl(proto, key, [liar, b, c], 20, 3).find()
    assert value == b"forged"  # one bad peer won the read...
    assert d.id not in proto.asked and e.id not in proto.asked  # ...the honest holders were never asked
    assert (b.id, b"forged") in proto.stored or (c.id, b"forged") in proto.stored  # ...and it spread
    listed = LibValueProtocol({liar.id: [1, 2], **honest}, {})
    with pytest.raises(TypeError):  # Counter() of an unhashable value
        await ValueSpiderCrawl(listed, key, [liar, b, c], 20, 3).find()

    author = Identity.from_seed(b"\x06" * 32)
    submit = submit_fact(author, 2)
    cancel = cancel_fact(author, submit)
    forged = cancel.raw[:-1] + bytes([cancel.raw[-1] ^ 1])
    answers = [[forged], [submit.raw], [submit.raw, cancel.raw], [[1, 2]], []]
    server, net = make_server()
    pushed: dict[bytes, list] = {}
    for bit, records in enumerate(answers):
        node_id = flip(submit.job_id, bit)

        def answer(method, args, records=records, node_id=node_id):
            if method == "find_records":
                return [False, records]
            if method == "store":
                pushed.setdefault(node_id, []).extend(args[1])
                return [True, [], []]
            return []

        server.router.add_contact(net.add(node_id, answer))
    records, answered = await server.fetch(submit.job_id)
    assert {r.record_id for r in records} == {submit.fact_id, cancel.fact_id}
    assert answered == 5
    assert server.stats["records_invalid"] == 2  # the forgery and the list
    for _ in range(100):  # read repair runs in tracked tasks
        if len(pushed) == 4:
            break
        await asyncio.sleep(0.01)
    # Every replica that answered gets what it lacked; the one that had all gets nothing.
    both = {submit.raw, cancel.raw}
    assert {n: set(raws) for n, raws in pushed.items()} == {
        flip(submit.job_id, 0): both,
        flip(submit.job_id, 1): {cancel.raw},
        flip(submit.job_id, 3): both,
        flip(submit.job_id, 4): both,
    }


# --------------------------------------------------------------------------- 6. rpc surface


async def wait_sent(transport: FakeTransport, n: int) -> None:
    for _ in range(100):
        if len(transport.sent) >= n:
            return
        await asyncio.sleep(0.005)


async def test_rpcudp_serves_any_rpc_method_ours_only_registered_ones():
    class Leaky(LibRPCProtocol):
        def rpc_ping(self, sender):
            return "pong"

        def rpc_dump_storage(self, sender):  # a helper, never meant for the network
            return "every secret"

    lib = Leaky()
    transport = FakeTransport()
    lib.connection_made(transport)
    lib.datagram_received(b"\x00" + os.urandom(20) + umsgpack.packb(["dump_storage", []]), ADDR)
    await wait_sent(transport, 1)
    assert umsgpack.unpackb(transport.sent[0][0][21:]) == "every secret"
    # A typo is not an AttributeError but an RPC sent to the network.
    lib.pnig(ADDR)
    assert len(transport.sent) == 2 and umsgpack.unpackb(transport.sent[1][0][21:])[0] == "pnig"
    lib._outstanding.clear()

    server, _ = make_server(stub=False)
    transport = FakeTransport()
    server.protocol.connection_made(transport)
    peer = Identity.generate()
    now = int(time.time() * 1000)
    for method in ("dump_storage", "statistics", "_rpc_store", "save_contacts", "rpc_ping"):
        data = seal(peer, REQUEST, os.urandom(16), now, server.identity.node_id, method, [], server.identity.public_key)
        server.protocol.datagram_received(data, ADDR)
    await asyncio.sleep(0.05)
    assert transport.sent == []
    assert server.protocol.statistics()["dropped_unknown_method"] == 5
    with pytest.raises(AttributeError):
        server.protocol.pnig  # noqa: B018
    # A registered method is served.
    data = seal(peer, REQUEST, os.urandom(16), now, server.identity.node_id, "ping", [], server.identity.public_key)
    server.protocol.datagram_received(data, ADDR)
    await wait_sent(transport, 1)
    reply = open_envelope(transport.sent[0][0], datagram_bytes_max=65536, identity=peer)
    assert reply.kind == REPLY and reply.sender_id == server.identity.node_id


async def test_rpcudp_matches_replies_by_id_alone_ours_also_by_address_and_key():
    lib = LibRPCProtocol(wait_timeout=1)
    transport = FakeTransport()
    lib.connection_made(transport)
    future = lib.ping(ADDR, b"id")
    msg_id = transport.sent[0][0][1:21]
    lib._accept_response(msg_id, "spoofed", ("10.6.6.6", 666))  # another host answers
    assert future.result() == (True, "spoofed")

    server, _ = make_server(stub=False)
    transport = FakeTransport()
    server.protocol.connection_made(transport)
    peer, impostor = Identity.generate(), Identity.generate()

    async def ask_and_answer(by: Identity, from_addr) -> Envelope | None:
        sent = len(transport.sent)
        pending = asyncio.ensure_future(
            server.protocol.request(ADDR, "ping", [], expect_id=peer.node_id, peer_key=peer.public_key, timeout_s=0.3)
        )
        await wait_sent(transport, sent + 1)
        request = open_envelope(transport.sent[sent][0], datagram_bytes_max=65536, identity=peer)
        now = int(time.time() * 1000)
        reply = seal(by, REPLY, request.msg_id, now, server.identity.node_id, "ping", [], server.identity.public_key)
        server.protocol.datagram_received(reply, from_addr)
        return await pending

    assert await ask_and_answer(peer, ("10.6.6.6", 666)) is None  # right key, wrong address
    assert await ask_and_answer(impostor, ADDR) is None  # right address, wrong key
    assert server.protocol.dropped["reply_from_wrong_peer"] == 2
    env = await ask_and_answer(peer, ADDR)
    assert env is not None and env.sender_id == peer.node_id


# --------------------------------------------------------------------------- 7. unauthenticated store


async def test_library_stores_anything_from_anyone_ours_only_valid_facts():
    lib = KademliaProtocol(Node(b"\x01" * 20), ForgetfulStorage(), 20)
    key = os.urandom(20)
    assert lib.rpc_store(ADDR, os.urandom(20), key, b"whatever I like") is True  # sender id is just an argument
    assert lib.storage.get(key) == b"whatever I like"

    server, _ = make_server()
    peer = Identity.generate()
    env = Envelope(REQUEST, os.urandom(16), peer.public_key, node_id_of(peer.public_key), 0,
                   server.identity.node_id, "store", [key, [b"whatever I like"]])
    ok, refused, produced = await server._on_request(env, ADDR)
    assert ok is False and refused and produced == []
    assert server.records.get(key) == []
