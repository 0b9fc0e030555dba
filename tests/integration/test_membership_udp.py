"""Private meshes and cheap rejection over real loopback UDP, nodes in-process.

* a mesh key (crypto/meshkey.py) is checked before anything else: strangers
  (another key, or none) get no answer, never enter a routing table, and are
  counted as ``dropped_not_member``; a rotating node accepts two keys;
* a source whose envelopes keep failing authentication is shut out for a
  while (before decoding), other sources are not;
* expensive checks (Ed25519 verifications of first contacts) have a
  node-wide budget, so a flood of forged signatures is bounded in CPU.
"""

from __future__ import annotations

import asyncio
import os

import pytest

from workmesh.crypto.identity import Identity, verify_statistics
from workmesh.crypto.meshkey import MeshKeyring, new_mesh_key
from tests.integration.test_dht_adversarial import RawPeer, wait_for
from tests.integration.test_peer_protection import dropped, nodes  # noqa: F401  (fixture)


def forged_ping(peer: RawPeer, node) -> bytes:
    """A first-contact ping (Ed25519-signed envelope) whose signature is wrong."""
    data = bytearray(peer.envelope(node, "ping", [], mac=False))
    data[-1] ^= 0xFF  # the signature's last byte
    return bytes(data)


async def test_strangers_with_another_key_or_none_never_become_peers(nodes):
    k1, k2 = new_mesh_key(), new_mesh_key()
    a = await nodes("a", mesh_keys=(k1,))
    b = await nodes("b", mesh_keys=(k1,))
    other = await nodes("other", mesh_keys=(k2,))
    keyless = await nodes("none")
    assert await b.dht.bootstrap([a.dht.address]) == 1
    assert a.dht.router.get(b.identity.node_id) is not None
    # The strangers try to join through a member: nothing comes back.
    assert await other.dht.bootstrap([a.dht.address]) == 0
    assert await keyless.dht.bootstrap([a.dht.address]) == 0
    for member in (a, b):
        ids = {c.id for c in member.dht.router.contacts()}
        assert other.identity.node_id not in ids and keyless.identity.node_id not in ids
    assert len(other.dht.router) == 0 and len(keyless.dht.router) == 0
    assert dropped(a, "not_member") >= 2
    # ...and the members do not understand each other's strangers either way round.
    assert await a.dht.ping(keyless.dht.address) is None
    # (The mesh tag's first byte is random: one time in 256 it is a bundle's mark.)
    assert sum(dropped(keyless, r) for r in ("malformed", "bad_version", "bad_bundle", "bundle_count")) >= 1


async def test_a_raw_peer_is_answered_only_with_the_mesh_key(nodes):
    key = new_mesh_key()
    node = await nodes(mesh_keys=(key,))
    async with RawPeer() as stranger, RawPeer() as member:
        member.mesh = MeshKeyring(key)
        assert await stranger.request(node, "ping", [], timeout_s=0.5) is None
        assert await stranger.request(node, "find_node", [os.urandom(20)], timeout_s=0.5) is None
        assert dropped(node, "not_member") == 2
        assert not stranger.requests_seen  # the node never pinged the stranger back
        assert await member.request(node, "ping", []) is not None
        # A member's datagram with one bit changed is a stranger's.
        data = bytearray(member.mesh.seal(member.envelope(node, "ping", [])))
        data[-1] ^= 1
        member.sock.sendto(bytes(data), node.dht.address)
        await wait_for(lambda: dropped(node, "not_member") == 3)


async def test_a_rotation_keeps_every_pair_of_nodes_talking(nodes):
    old, new = new_mesh_key(), new_mesh_key()
    not_told = await nodes("old", mesh_keys=(old,))  # step 0: old key only
    accepting = await nodes("s1", mesh_keys=(old, new))  # step 1: accepts new, sends old
    switched = await nodes("s2", mesh_keys=(new, old))  # step 2: sends new, accepts old
    done = await nodes("s3", mesh_keys=(new,))  # step 3: new key only
    # Nodes one step apart always understand each other (each step starts once every node finished the one before).
    for x, y in ((not_told, accepting), (accepting, switched), (switched, done)):
        assert await x.dht.ping(y.dht.address) is not None, (x, y)
        assert await y.dht.ping(x.dht.address) is not None, (y, x)
    # A node that missed step 1 is cut off once others switch: the steps must not be skipped.
    assert await not_told.dht.ping(done.dht.address) is None
    assert await not_told.dht.ping(switched.dht.address) is None


async def test_a_source_sending_forged_signatures_is_shut_out_and_others_are_not(nodes):
    node = await nodes(auth_failure_burst=10, auth_failures_per_s=1.0, shutout_s=60.0)
    async with RawPeer() as forger, RawPeer() as bystander:
        before = verify_statistics()["verifications"]
        for _ in range(500):
            forger.send(forged_ping(forger, node), node)
        await wait_for(lambda: dropped(node, "bad_signature") + dropped(node, "shut_out") >= 500)
        verified = verify_statistics()["verifications"] - before
        print(f"500 forged signatures from one source: {dropped(node, 'bad_signature')} verified and failed, "
              f"{dropped(node, 'shut_out')} dropped unverified (shut out)")
        assert dropped(node, "bad_signature") <= 12 and dropped(node, "shut_out") >= 488
        assert verified <= 12
        assert node.dht.protocol.counters["sources_shut_out"] == 1
        # Even its honest requests are refused while it is shut out...
        assert await forger.request(node, "ping", [], timeout_s=0.3) is None
        # ...while another source (another port of loopback: another source) is served.
        assert await bystander.request(node, "ping", []) is not None


async def test_forged_signatures_from_many_sources_cost_a_bounded_number_of_verifications(nodes):
    node = await nodes(expensive_checks_per_s=50.0, expensive_check_burst=50, auth_failure_burst=10**6)
    peers = [RawPeer() for _ in range(8)]
    for p in peers:
        await p.__aenter__()
    try:
        before = verify_statistics()["verifications"]
        for i in range(800):
            peers[i % 8].send(forged_ping(peers[i % 8], node), node)
        await wait_for(lambda: dropped(node, "bad_signature") + dropped(node, "verify_budget") >= 800)
        verified = verify_statistics()["verifications"] - before
        assert dropped(node, "verify_budget") >= 600 and verified <= 200
        # A genuine first contact still gets through once the budget refilled.
        await wait_for(lambda: node.dht.protocol._expensive.allow(None, node.dht.clock.monotonic()) or True)
        fresh = RawPeer(Identity.generate())
        async with fresh:
            async def first_contact() -> bool:
                return await fresh.request(node, "ping", [], mac=False, timeout_s=0.3) is not None

            deadline = asyncio.get_running_loop().time() + 5.0
            while not await first_contact():
                assert asyncio.get_running_loop().time() < deadline, "a genuine first ping never got through"
    finally:
        for p in peers:
            await p.__aexit__()


async def test_one_sender_announcing_without_end_is_bounded(nodes, monkeypatch):
    from workmesh.node import gossip

    monkeypatch.setattr(gossip, "TAKEN_PER_SENDER_PER_S", 200.0)  # read when the node starts
    node = await nodes()
    async with RawPeer() as peer:
        count = int(gossip.TAKEN_PER_SENDER_PER_S * 2 + 1000)
        started = asyncio.get_running_loop().time()
        for i in range(count):
            peer.send(peer.envelope(node, "announce", [os.urandom(20), "echo", 1, os.urandom(8), []]), node)
            if i % 200 == 199:
                await asyncio.sleep(0)  # let the node read its socket buffer
        stats = node.gossip.counters
        await wait_for(lambda: stats["received"] >= count - 50)
        elapsed = asyncio.get_running_loop().time() - started
        taken = stats["received"] - stats["sender_over_rate"]
        print(f"{stats['received']} announcements from one sender in {elapsed:.2f}s: {taken} taken, "
              f"{stats['sender_over_rate']} over its rate")
        assert taken <= 2 * gossip.TAKEN_PER_SENDER_PER_S + elapsed * gossip.TAKEN_PER_SENDER_PER_S + 1
        assert stats["sender_over_rate"] >= 1


async def test_many_keys_behind_one_address_earn_one_verification_ping_at_a_time(nodes):
    node = await nodes()
    async with RawPeer() as peer:
        peer.handlers = {}  # never answers: every verification stays pending until it times out
        for _ in range(50):
            signer = Identity.generate()
            peer.send(peer.envelope(node, "find_node", [os.urandom(20)], signer=signer, mac=False), node)
        await wait_for(lambda: node.dht.protocol.counters.get("requests_in", 0) >= 50)
        # Every sender judged (49 skipped) and the one verification ping sent;
        # no other can follow before that ping times out (1 s) and frees the address.
        await wait_for(lambda: node.dht.stats["verifications_skipped"] >= 49
                       and node.dht.protocol.counters.get("requests_out", 0) >= 1)
        # (each ping is MAC'd for its signer's key, so the peer cannot read them: count what the node sent)
        pings = node.dht.protocol.counters.get("requests_out", 0)
        print(f"50 new keys from one address: {pings} verification pings, "
              f"{node.dht.stats['verifications_skipped']} skipped")
        assert pings <= 1 and node.dht.stats["verifications_skipped"] >= 49
