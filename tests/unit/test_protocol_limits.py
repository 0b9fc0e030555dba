"""The datagram shell's per-source limits, fed datagrams from addresses no
loopback socket can have (the protocol is driven directly; nothing is sent)."""

from __future__ import annotations

import asyncio
import os

from workmesh.crypto.identity import Identity
from workmesh.dht.coalesce import is_bundle
from workmesh.dht.config import DHTConfig
from workmesh.dht.protocol import RPCProtocol


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    def wall_ms(self) -> int:
        return 1_767_225_600_000


def protocol(**config) -> RPCProtocol:
    return RPCProtocol(Identity.generate(), DHTConfig(**config), Clock(), lambda: os.urandom(16), None, lambda *a: None)


def junk() -> bytes:
    # Reaches the decoder only if the limits let it; never the bundle mark, so it is refused as malformed.
    data = os.urandom(100)
    return b"\x00" + data[1:] if is_bundle(data) else data


def test_rotating_source_ports_does_not_escape_the_per_address_bucket():
    async def run():
        p = protocol(peer_datagrams_per_s=10.0, peer_datagram_burst=20)
        for port in range(1000, 1500):
            p.datagram_received(junk(), ("203.0.113.7", port))
        return p.dropped

    dropped = asyncio.run(run())
    assert dropped["malformed"] == 20 and dropped["rate_limited"] == 480


def test_many_addresses_of_one_prefix_share_a_prefix_bucket_and_other_prefixes_do_not():
    async def run():
        p = protocol(peer_datagrams_per_s=1000.0, prefix_datagrams_per_s=10.0, prefix_datagram_burst=50)
        for host in range(1, 255):
            p.datagram_received(junk(), (f"198.51.100.{host}", 7000))
        p.datagram_received(junk(), ("192.0.2.1", 7000))
        return p.dropped

    dropped = asyncio.run(run())
    assert dropped["malformed"] == 50 + 1 and dropped["prefix_rate_limited"] == 254 - 50


def test_a_shut_out_source_costs_no_decode_whatever_its_port():
    async def run():
        p = protocol(auth_failure_burst=3, peer_datagrams_per_s=0.0)
        forger = Identity.generate()
        from workmesh.dht.envelope import REQUEST, seal

        for i in range(10):
            data = bytearray(seal(forger, REQUEST, os.urandom(16), 1_767_225_600_000, b"", "ping", []))
            data[-1] ^= 1
            p.datagram_received(bytes(data), ("203.0.113.9", 2000 + i))
        return p.dropped, p.counters

    dropped, counters = asyncio.run(run())
    assert dropped["bad_signature"] == 4 and dropped["shut_out"] == 6 and counters["sources_shut_out"] == 1


def test_the_in_flight_bound_counts_requests_being_served_not_the_nodes_own_tasks():
    """Issue 15 item 7: a node busy with its own pings, probes and lookups still
    serves up to ``inflight_requests_max`` requests, and refuses the next one."""
    from workmesh.dht.envelope import REQUEST, seal

    async def run():
        hold = asyncio.Event()

        async def on_request(env, addr):
            await hold.wait()
            return None

        me = Identity.generate()
        p = RPCProtocol(me, DHTConfig(inflight_requests_max=2), Clock(), lambda: os.urandom(16), on_request, lambda *a: None)
        own = [p.spawn(asyncio.sleep(60), "probe") for _ in range(5)]
        peer = Identity.generate()
        for _ in range(3):
            data = seal(peer, REQUEST, os.urandom(16), Clock().wall_ms(), me.node_id, "ping", [], me.public_key)
            p.datagram_received(data, ("127.0.0.1", 4000))
        await asyncio.sleep(0)
        stats = p.statistics()
        hold.set()
        for task in own:
            task.cancel()
        await asyncio.gather(*own, return_exceptions=True)
        return p.counters["requests_in"], p.dropped["overloaded"], stats

    served, overloaded, stats = asyncio.run(run())
    assert (served, overloaded) == (2, 1)
    assert stats["inflight_requests"] == 2 and stats["tasks"] == 7
