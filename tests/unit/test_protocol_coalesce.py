"""Coalescing in the datagram shell (dht/protocol.py), driven directly over a fake transport.

What a user relies on: what one turn sends to a peer leaves in fewer
datagrams, a lone message is sent as before, and each message of a bundle is
held to everything a lone datagram is held to (buckets, authorization by the
token tag, the anti-amplification guard); a bad bundle is dropped and counted.
"""

from __future__ import annotations

import asyncio
import os

import pytest

from workmesh.crypto.identity import Identity
from workmesh.crypto.tokenauth import TokenTagger, token_key
from workmesh.dht.coalesce import bundle, is_bundle, split
from workmesh.dht.config import DHTConfig
from workmesh.dht.envelope import REPLY, REQUEST, Envelope, open_envelope, seal
from workmesh.dht.protocol import RPCProtocol
from tests.unit.test_coalesce import REFUSED

NOW_MS = 1_767_225_600_000
PEER_ADDR = ("203.0.113.5", 4000)


class Clock:
    def monotonic(self) -> float:
        return 0.0

    def wall_ms(self) -> int:
        return NOW_MS


class Transport:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, tuple[str, int]]] = []

    def sendto(self, data: bytes, addr: tuple[str, int]) -> None:
        self.sent.append((data, addr))

    def close(self) -> None:
        pass


def messages_of(datagrams: list[tuple[bytes, tuple[str, int]]]) -> list[bytes]:
    return [m for d, _ in datagrams for m in (split(d, 65_536) if is_bundle(d) else [d])]


def protocol(on_request=None, **config) -> tuple[RPCProtocol, Transport]:
    async def answer_ping(env: Envelope, addr) -> list:
        return []

    p = RPCProtocol(Identity.generate(), DHTConfig(**config), Clock(), lambda: os.urandom(16),
                    on_request or answer_ping, lambda *a: None)
    transport = Transport()
    p.connection_made(transport)
    return p, transport


def request_to(p: RPCProtocol, sender: Identity, method: str = "ping", args: list | None = None) -> bytes:
    return seal(sender, REQUEST, os.urandom(16), NOW_MS, p.identity.node_id, method, args or [], p.identity.public_key)


async def settle(until, turns: int = 200) -> None:
    """Let the loop run until ``until()`` holds (a bounded number of turns, no wall-clock wait)."""
    for _ in range(turns):
        if until():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition not met within the turns allowed")


def test_requests_to_one_peer_in_one_turn_leave_in_one_datagram_and_a_lone_one_as_before():
    async def run():
        p, transport = protocol(rpc_timeout_s=0.05)
        peer = Identity.generate()
        p._proven.add(PEER_ADDR, peer.node_id)  # it answered us before
        asks = [asyncio.ensure_future(p.request(PEER_ADDR, "ping", [], expect_id=peer.node_id, peer_key=peer.public_key))
                for _ in range(10)]
        other = asyncio.ensure_future(p.request(("203.0.113.6", 4000), "ping", [], expect_id=None))
        await settle(lambda: len(transport.sent) == 2)
        await asyncio.gather(*asks, other)
        return p, transport

    p, transport = asyncio.run(run())
    (bundled, to_peer), (lone, to_other) = transport.sent
    assert to_peer == PEER_ADDR and to_other == ("203.0.113.6", 4000)
    assert is_bundle(bundled) and len(split(bundled, 65_536)) == 10
    assert lone[:1] == b"\x99" and open_envelope(lone, datagram_bytes_max=65_536).method == "ping"
    assert (p.counters["messages_out"], p.counters["datagrams_out"], p.counters["bundles_out"]) == (11, 2, 1)


def test_with_coalescing_off_every_message_is_its_own_datagram():
    async def run():
        p, transport = protocol(rpc_timeout_s=0.05, coalesce=False)
        peer = Identity.generate()
        await asyncio.gather(*[p.request(PEER_ADDR, "ping", [], expect_id=peer.node_id, peer_key=peer.public_key)
                               for _ in range(5)])
        return p, transport

    p, transport = asyncio.run(run())
    assert len(transport.sent) == 5 and not any(is_bundle(d) for d, _ in transport.sent)
    assert p.counters["datagrams_out"] == p.counters["messages_out"] == 5


def test_each_request_of_a_bundle_is_answered_and_the_replies_share_a_datagram():
    async def run():
        p, transport = protocol()
        peer = Identity.generate()
        p._proven.add(PEER_ADDR, peer.node_id)
        requests = [request_to(p, peer) for _ in range(6)]
        p.datagram_received(bundle(requests), PEER_ADDR)
        await settle(lambda: len(messages_of(transport.sent)) == 6)
        return p, transport, peer, requests

    p, transport, peer, requests = asyncio.run(run())
    assert len(transport.sent) == 1
    replies = [open_envelope(m, datagram_bytes_max=65_536, identity=peer) for m in messages_of(transport.sent)]
    assert all(r.kind == REPLY for r in replies)
    assert {r.msg_id for r in replies} == {open_envelope(q, datagram_bytes_max=65_536, identity=p.identity).msg_id for q in requests}
    assert (p.counters["datagrams_in"], p.counters["bundles_in"], p.counters["messages_in"]) == (1, 1, 6)


def test_an_address_that_never_answered_gets_one_datagram_per_message():
    """Anti-amplification datagram by datagram: a spoofed source gets nothing larger than it sent."""
    async def run():
        p, transport = protocol()
        stranger = Identity.generate()
        requests = [request_to(p, stranger) for _ in range(4)]
        p.datagram_received(bundle(requests), PEER_ADDR)
        await settle(lambda: len(transport.sent) >= 4)
        return p, transport, requests

    p, transport, requests = asyncio.run(run())
    assert not any(is_bundle(d) for d, _ in transport.sent)
    assert all(len(d) <= min(map(len, requests)) for d, _ in transport.sent)
    assert p.counters["unproven_not_coalesced"] >= 1


def test_each_message_of_a_bundle_draws_on_the_source_bucket():
    async def run():
        p, _ = protocol(peer_datagrams_per_s=0.001, peer_datagram_burst=20)
        sender = Identity.generate()
        bad = [seal(sender, REQUEST, os.urandom(16), NOW_MS, b"", "m" * 33, []) for _ in range(10)]  # malformed
        for _ in range(5):
            p.datagram_received(bundle(bad), PEER_ADDR)
        return p.dropped

    dropped = asyncio.run(run())
    assert dropped["malformed"] == 20 and dropped["rate_limited"] == 30


@pytest.mark.parametrize("name", list(REFUSED))
def test_a_bad_bundle_is_dropped_and_counted_never_raised(name):
    data, reason = REFUSED[name]
    p, transport = protocol()
    p.datagram_received(data, PEER_ADDR)
    assert p.dropped == {reason: 1} and transport.sent == []


def test_a_token_tag_on_a_bundle_authorizes_each_message_and_its_absence_none():
    token = (token_key("s3cret"),)
    served: list[Envelope] = []

    async def serve(env: Envelope, addr) -> list:
        served.append(env)
        return [True]

    async def run():
        p, _ = protocol(serve, token_keys=token)
        peer = Identity.generate()
        stores = [request_to(p, peer, "store", [os.urandom(20), []]) for _ in range(3)]
        p.datagram_received(bundle(stores), PEER_ADDR)  # no tag: no store acts
        stores = [request_to(p, peer, "store", [os.urandom(20), []]) for _ in range(3)]
        p.datagram_received(TokenTagger(token).tag(bundle(stores)), PEER_ADDR)
        await settle(lambda: len(served) == 3)
        return p

    p = asyncio.run(run())
    assert p.dropped["unauthorized"] == 3
    assert len(served) == 3 and all(env.authorized for env in served)


def test_a_bundle_buys_an_unproven_stranger_no_more_reply_bytes_than_it_sent():
    async def serve(env: Envelope, addr) -> list:
        return [b"x" * 2000]  # far larger than any request here

    async def run():
        p, transport = protocol(serve, rpc_timeout_s=0.04)
        stranger = Identity.generate()
        requests = [request_to(p, stranger, "find_records", [os.urandom(20)]) for _ in range(8)]
        p.datagram_received(bundle(requests), PEER_ADDR)
        await settle(lambda: not p._tasks, turns=10**6)  # the address proof times out, unanswered
        return p, transport, stranger, requests

    p, transport, stranger, requests = asyncio.run(run())
    sent = [(m, open_envelope(m, datagram_bytes_max=65_536, identity=stranger)) for m in messages_of(transport.sent)]
    replies = [(m, e) for m, e in sent if e.kind == REPLY]
    assert p.dropped["unproven_large_reply"] == 8
    assert all(e.args == ["unproven"] for _, e in replies)  # a short error at most, never the payload
    assert sum(len(m) for m, _ in replies) <= sum(len(q) for q in requests)
    # Only the address proof went out besides: pings, each no larger than a request.
    assert all(e.method == "ping" and len(m) <= min(map(len, requests)) for m, e in sent if e.kind == REQUEST)
