"""A node left without contacts (a lossy join, every contact lost) finds the
mesh again before a lookup would ask nobody: its reads would answer "not
found" and its placements name itself alone although the mesh is there
(the simulator: a 12-node mesh at 20% loss, one node whose four join pings
were all lost read 3 of 12 jobs as not found)."""

from __future__ import annotations

import asyncio
import os

from workmesh.crypto.identity import Identity
from workmesh.dht.config import DHTConfig
from workmesh.dht.contacts import REJOIN_MIN_INTERVAL_S
from workmesh.dht.envelope import REPLY, Envelope
from workmesh.dht.server import AcceptAll, DHTServer
from workmesh.dht.storage import FactStore
from workmesh.node import facts as F

BOOT = ("127.0.0.1", 7001)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def wall_ms(self) -> int:
        return int(self.now * 1000)


class Peer:
    """The bootstrap node, behind a link that loses what ``up`` says."""

    def __init__(self, own: Identity) -> None:
        self.own = own
        self.identity = Identity.generate()
        self.up = True
        self.lose_next = 0
        self.pings = 0

    async def request(self, addr, method, args, *, expect_id, peer_key=None, timeout_s=None):
        assert addr == BOOT
        if method == "ping":
            self.pings += 1
        if not self.up or self.lose_next > 0:
            self.lose_next -= 1
            return None
        return Envelope(REPLY, os.urandom(16), self.identity.public_key, self.identity.node_id, 0, self.own.node_id, method, [])


def make_node() -> tuple[DHTServer, Peer, Clock]:
    identity = Identity.generate()
    store = FactStore(None, lambda key, raw: F.decode(raw, key=key))
    store.open()
    clock = Clock()
    server = DHTServer(
        identity, store, AcceptAll(lambda key, raw: F.decode(raw, key=key)), config=DHTConfig(replicas=3, quorum=2), clock=clock
    )
    peer = Peer(identity)
    server.protocol.request = peer.request
    return server, peer, clock


async def test_a_join_ping_lost_once_is_sent_again():
    server, peer, _clock = make_node()
    peer.lose_next = 2  # two lost datagrams in a row: 4% of joins at 20% loss
    assert await server.bootstrap([BOOT]) == 1
    assert server.router.get(peer.identity.node_id) is not None


async def test_an_empty_table_asks_its_bootstrap_address_again_before_a_lookup():
    server, peer, clock = make_node()
    peer.up = False
    assert await server.bootstrap([BOOT]) == 0  # every join ping lost: the node is alone
    peer.up = True
    clock.now += REJOIN_MIN_INTERVAL_S
    closest = await server.replicas_for(os.urandom(20))
    assert peer.identity.node_id in {c.id for c in closest}  # not this node alone
    assert server.stats["rejoins_before_lookup"] == 1
    # With contacts again, lookups ask them: no more pings of the bootstrap address.
    pings = peer.pings
    await server.replicas_for(os.urandom(20))
    assert peer.pings == pings


async def test_a_node_truly_alone_pings_its_bootstrap_address_once_per_interval_shared_by_its_reads():
    server, peer, clock = make_node()
    peer.up = False
    await server.bootstrap([BOOT])
    clock.now += REJOIN_MIN_INTERVAL_S
    pings = peer.pings
    results = await asyncio.gather(*(server.replicas_for(os.urandom(20)) for _ in range(10)))
    assert all([c.id for c in r] == [server.node.id] for r in results)
    assert server.stats["rejoins_before_lookup"] == 1  # ten reads, one attempt
    after_one = peer.pings
    assert after_one > pings
    await server.replicas_for(os.urandom(20))  # within the interval: no second round
    assert peer.pings == after_one
    clock.now += REJOIN_MIN_INTERVAL_S
    await server.replicas_for(os.urandom(20))
    assert peer.pings > after_one


async def test_a_mesh_of_one_asks_nobody():
    server, peer, _clock = make_node()
    assert await server.bootstrap([]) == 0
    assert [c.id for c in await server.replicas_for(os.urandom(20))] == [server.node.id]
    assert peer.pings == 0 and server.stats["rejoins_before_lookup"] == 0
