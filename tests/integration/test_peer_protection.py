"""Peer protection in the DHT, over real loopback UDP sockets.

* per-peer datagram rate limit: a token bucket per source address, checked
  before decoding; the excess is dropped and counted, other peers and replies
  to the node's own requests go through;
* anti-amplification: a reply larger than its request goes only to an address
  that proved it receives there; a sender that never answers (as a spoofed
  victim address would not) gets nothing larger than what it sent;
* at most ``contacts_per_prefix_max`` routing-table contacts per /24;
* the identity puzzle: keys without enough leading zero bits are neither
  answered nor asked, so they never enter the routing table.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from dataclasses import replace

import pytest

from workmesh.crypto.identity import Identity, node_id_of, puzzle_bits
from workmesh.dht.config import DHTConfig
from workmesh.dht.envelope import REQUEST, seal
from workmesh.dht.routing import Contact
from workmesh.node.config import NodeConfig
from workmesh.node.node import Node
from tests.integration.test_dht_adversarial import RawPeer, wait_for

DEADLINE_S = 5.0


async def start_node(tmp_path, name: str, *, identity: Identity | None = None, **dht) -> Node:
    config = NodeConfig(data_dir=str(tmp_path / name), workers=0, reannounce_first_s=3600.0)
    node = Node(replace(config, dht=replace(config.dht, **dht)), identity=identity)
    await node.start()
    return node


@pytest.fixture
async def nodes(tmp_path):
    started: list[Node] = []

    async def make(name: str = "n", **kw) -> Node:
        node = await start_node(tmp_path, f"{name}{len(started)}", **kw)
        started.append(node)
        return node

    yield make
    for node in started:
        await node.stop()


def dropped(node: Node, reason: str) -> int:
    return node.dht.protocol.dropped.get(reason, 0)


class Listener:
    """A bare UDP socket on 127.0.0.1 that never answers: it records what it is sent."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.addr = self.sock.getsockname()

    async def collect(self, for_s: float) -> list[bytes]:
        loop, got = asyncio.get_running_loop(), []
        deadline = loop.time() + for_s
        while (left := deadline - loop.time()) > 0:
            try:
                data, _ = await asyncio.wait_for(loop.sock_recvfrom(self.sock, 65536), left)
            except asyncio.TimeoutError:
                break
            got.append(data)
        return got

    def close(self) -> None:
        self.sock.close()


# --------------------------------------------------------------------------- per-peer rate


async def test_a_flooding_address_is_cut_to_its_rate_and_others_are_not(nodes):
    rate, burst = 200.0, 50
    node = await nodes(peer_datagrams_per_s=rate, peer_datagram_burst=burst)
    async with RawPeer() as flooder, RawPeer() as bystander:
        before = node.dht.protocol.statistics()["dropped_total"]
        started = time.monotonic()
        for _ in range(1000):
            flooder.send(os.urandom(120), node)
        await wait_for(lambda: node.dht.protocol.statistics()["dropped_total"] >= before + 1000)
        elapsed = time.monotonic() - started
        limited = dropped(node, "rate_limited")
        decoded = 1000 - limited  # reached the decoder (and were dropped as malformed)
        print(f"1000 datagrams in {elapsed:.3f}s from one address: {limited} cut before decoding, {decoded} decoded")
        assert decoded <= burst + elapsed * rate + 1 and limited >= 1000 - burst - elapsed * rate - 1
        # Another address has its own bucket: served at once.
        reply = await bystander.request(node, "ping", [])
        assert reply is not None
        # The node's own request to the flooder is answered through the empty bucket.
        assert await node.dht.ping(flooder.addr) is not None
        # The flooder itself is served again once its bucket refilled.
        await asyncio.sleep(2 / rate)
        assert await flooder.request(node, "ping", []) is not None


async def test_without_a_rate_every_datagram_is_decoded(nodes):
    """Control: with the limit off the same flood reaches the decoder whole."""
    node = await nodes(peer_datagrams_per_s=0.0)
    async with RawPeer() as flooder:
        for _ in range(300):
            flooder.send(b"\x00" + os.urandom(119), node)  # never a bundle's mark: malformed, every one
        await wait_for(lambda: dropped(node, "malformed") >= 300)
        assert dropped(node, "rate_limited") == 0


# --------------------------------------------------------------------------- anti-amplification


def _fill_routing_table(node: Node, n: int = 20) -> None:
    for _ in range(n):
        ident = Identity.generate()
        node.dht.router.add_contact(Contact(ident.node_id, "127.0.0.1", 9, ident.public_key))


def _find_node_request(sender: Identity, node: Node) -> bytes:
    return seal(sender, REQUEST, os.urandom(16), int(time.time() * 1000), node.identity.node_id, "find_node",
                [os.urandom(20)], node.identity.public_key)


async def test_an_unproven_address_never_gets_more_bytes_than_it_sent(nodes):
    node = await nodes()
    _fill_routing_table(node)
    victim = Listener()  # stands for a spoofed source: it never sent anything and never answers
    try:
        request = _find_node_request(Identity.generate(), node)
        victim.sock.sendto(request, node.dht.address)
        got = await victim.collect(1.5)
    finally:
        victim.close()
    sizes = [len(d) for d in got]
    print(f"request {len(request)} bytes; the unproven address received {sizes}")
    assert got, "the node pings the address (to prove it) and answers with a short error"
    assert all(size <= len(request) for size in sizes), (len(request), sizes)
    assert dropped(node, "unproven_large_reply") == 1


async def test_a_proven_address_gets_the_full_reply(nodes):
    """Control: a peer that answers the node's ping receives all 20 contacts."""
    node = await nodes()
    _fill_routing_table(node)
    async with RawPeer() as peer:
        request = _find_node_request(peer.identity, node)
        reply = await peer.request_bytes(request, node)
        assert reply is not None and reply.method == "find_node" and len(reply.args) == 20
        assert node.dht.protocol.counters["proofs_awaited"] >= 1
        # Once proven, the next large reply needs no ping.
        pings = sum(1 for e in peer.requests_seen if e.method == "ping")
        assert (await peer.request_bytes(_find_node_request(peer.identity, node), node)) is not None
        assert sum(1 for e in peer.requests_seen if e.method == "ping") == pings
    assert dropped(node, "unproven_large_reply") == 0


async def test_small_replies_to_unproven_senders_go_out_at_once(nodes):
    node = await nodes()
    victim = Listener()
    try:
        ping = seal(Identity.generate(), REQUEST, os.urandom(16), int(time.time() * 1000), node.identity.node_id,
                    "ping", [], node.identity.public_key)
        victim.sock.sendto(ping, node.dht.address)
        got = await victim.collect(0.5)
    finally:
        victim.close()
    assert got and all(len(d) <= len(ping) for d in got)
    assert dropped(node, "unproven_large_reply") == 0


# --------------------------------------------------------------------------- prefix limit


@pytest.mark.parametrize("per_prefix, expected", [(2, 2), (0, 6)], ids=["limit-2", "no-limit"])
async def test_routing_table_keeps_a_few_contacts_per_prefix(nodes, per_prefix, expected):
    node = await nodes(contacts_per_prefix_max=per_prefix)
    peers = [RawPeer() for _ in range(6)]  # all on 127.0.0.1: one /24
    for p in peers:
        await p.__aenter__()
    try:
        for p in peers:
            assert await p.request(node, "ping", []) is not None
        # The node pings every new sender back; those that answer are offered to the table.
        await wait_for(lambda: sum(1 for p in peers for e in p.requests_seen if e.method == "ping") >= 6)
        await wait_for(lambda: len(node.dht.router) + node.dht.router.prefix_refusals >= 6)
        assert len(node.dht.router) == expected
        assert node.dht.router.prefix_refusals == (6 - expected if per_prefix else 0)
    finally:
        for p in peers:
            await p.__aexit__(None, None, None)


# --------------------------------------------------------------------------- identity puzzle

BITS = 8


def _weak_identity() -> Identity:
    while True:
        ident = Identity.generate()
        if puzzle_bits(ident.public_key) < BITS:
            return ident


def test_generated_identities_solve_the_puzzle_and_keep_spread_ids():
    started = time.perf_counter()
    plain = [Identity.generate() for _ in range(20)]
    base_s = time.perf_counter() - started
    started = time.perf_counter()
    solved = [Identity.generate(puzzle=BITS) for _ in range(20)]
    hard_s = time.perf_counter() - started
    print(f"{BITS}-bit puzzle: identities cost {hard_s / base_s:.0f}x a plain one (expected about {2 ** BITS})")
    assert all(puzzle_bits(i.public_key) >= BITS for i in solved)
    assert sum(puzzle_bits(i.public_key) >= BITS for i in plain) <= 2
    # The puzzle hash is not the node id: solved identities' ids do not share a prefix.
    assert len({node_id_of(i.public_key)[0] >> 4 for i in solved}) > 4


async def test_keys_that_fail_the_puzzle_are_not_answered_nor_admitted(nodes):
    node = await nodes(identity=Identity.generate(puzzle=BITS), identity_puzzle_bits=BITS)
    async with RawPeer(_weak_identity()) as weak, RawPeer(Identity.generate(puzzle=BITS)) as strong:
        assert await weak.request(node, "ping", [], timeout_s=0.5) is None
        assert dropped(node, "puzzle_unsolved") == 1
        assert await node.dht.ping(weak.addr) is None  # its reply is dropped too
        assert node.dht.router.get(weak.identity.node_id) is None
        # Control: a key that solved it is answered and admitted.
        assert await strong.request(node, "ping", []) is not None
        await wait_for(lambda: node.dht.router.get(strong.identity.node_id) is not None)


async def test_a_mesh_with_a_puzzle_admits_only_nodes_that_solved_it(nodes):
    config = dict(identity_puzzle_bits=BITS)
    seed = await nodes("seed", identity=Identity.generate(puzzle=BITS), **config)
    good = await nodes("good", identity=Identity.generate(puzzle=BITS), **config)
    bad = await nodes("bad", identity=_weak_identity(), **config)
    assert await good.join([seed.dht.address]) >= 1
    assert await bad.join([seed.dht.address]) == 0
    assert seed.dht.router.get(good.identity.node_id) is not None
    assert seed.dht.router.get(bad.identity.node_id) is None
    # And the seed never asks the weak node anything, even told its key.
    contact = Contact(bad.identity.node_id, *bad.dht.address, bad.identity.public_key)
    assert await seed.dht.call(contact, "ping", []) is None
    assert seed.dht.protocol.counters["puzzle_unsolved_skipped"] >= 1
