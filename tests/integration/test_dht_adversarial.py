"""A hostile peer on a raw UDP socket against one real node.

Each test sends something a well-behaved peer never would (forged facts inside
a properly signed envelope, contacts whose id is not the hash of their key, a
replayed or stale datagram, garbage, truncated msgpack, an oversized datagram)
and checks the three things an operator relies on: the drop is counted, the
stored data did not change, and the node still answers a ping afterwards.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time

import pytest

from workmesh.crypto.canonical import canonical_unpack
from workmesh.crypto.identity import Identity
from workmesh.crypto.tokenauth import TOKEN_MARK, TOKEN_PREFIX_BYTES
from workmesh.dht.coalesce import BUNDLE_MESSAGES_MAX, BundleError, bundle, is_bundle
from workmesh.dht.coalesce import split as split_bundle
from workmesh.dht.envelope import REPLY, REQUEST, Envelope, EnvelopeError, open_envelope, pack_contact, seal
from workmesh.dht.routing import Contact
from workmesh.node import facts as F
from workmesh.node.config import NodeConfig
from workmesh.node.node import Node

DEADLINE_S = 5.0


class RawPeer:
    """A hand-driven peer: a raw UDP socket on 127.0.0.1 and an identity of its own.

    It answers requests with ``handlers[method](args)`` (a ping by default),
    and matches replies to its own requests by message id.
    """

    def __init__(self, identity: Identity | None = None) -> None:
        self.identity = identity or Identity.generate()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.addr: tuple[str, int] = self.sock.getsockname()
        self.handlers = {"ping": lambda args: []}
        self.requests_seen: list[Envelope] = []
        self.reply_as: Identity | None = None  # sign replies with another identity
        self.mesh = None  # a crypto.meshkey.MeshKeyring: speak in a private mesh
        self.datagrams_in = 0
        self._waiting: dict[bytes, asyncio.Future] = {}
        self._task: asyncio.Task | None = None

    async def __aenter__(self) -> RawPeer:
        self._task = asyncio.create_task(self._serve())
        return self

    async def __aexit__(self, *exc) -> None:
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        self.sock.close()

    def envelope(
        self, node: Node, method: str, args: list, *, kind: int = REQUEST, msg_id: bytes | None = None,
        ts_ms: int | None = None, signer: Identity | None = None, mac: bool = True,
    ) -> bytes:
        signer = signer or self.identity
        return seal(
            signer, kind, msg_id or os.urandom(16), int(time.time() * 1000) if ts_ms is None else ts_ms,
            node.identity.node_id, method, args, node.identity.public_key if mac else None,
        )

    def send(self, data: bytes, node: Node) -> None:
        self.sock.sendto(self.mesh.seal(data) if self.mesh is not None else data, node.dht.address)

    async def request(self, node: Node, method: str, args: list, timeout_s: float = DEADLINE_S, **kw) -> Envelope | None:
        data = self.envelope(node, method, args, **kw)
        return await self.request_bytes(data, node, timeout_s)

    async def request_bytes(self, data: bytes, node: Node, timeout_s: float = DEADLINE_S) -> Envelope | None:
        msg_id = canonical_unpack(data, max_len=1 << 20)[2]
        future = asyncio.get_running_loop().create_future()
        self._waiting[msg_id] = future
        self.send(data, node)
        try:
            return await asyncio.wait_for(future, timeout_s)
        except asyncio.TimeoutError:
            return None
        finally:
            self._waiting.pop(msg_id, None)

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            data, addr = await loop.sock_recvfrom(self.sock, 65536)
            if self.mesh is not None and (data := self.mesh.open(data)) is None:
                continue
            self.datagrams_in += 1
            try:  # a node coalesces what it sends in one turn (dht/coalesce.py)
                messages = split_bundle(data, 65536) if is_bundle(data) else [data]
            except BundleError:
                continue
            for message in messages:
                self._handle(message, addr)

    def _handle(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            env = open_envelope(data, datagram_bytes_max=65536, identity=self.identity)
        except EnvelopeError:
            return
        if env.kind == REPLY:
            future = self._waiting.get(env.msg_id)
            if future is not None and not future.done():
                future.set_result(env)
            return
        self.requests_seen.append(env)
        handler = self.handlers.get(env.method)
        if handler is None:
            return
        signer = self.reply_as or self.identity
        reply = seal(signer, REPLY, env.msg_id, int(time.time() * 1000), env.sender_id, env.method,
                     handler(env.args), env.sender_key)
        self.sock.sendto(self.mesh.seal(reply) if self.mesh is not None else reply, addr)


def make_job(author: Identity, n: int) -> tuple[F.Fact, F.Fact]:
    body = F.Submit("echo", b"{}", 1, 10_000, 60_000, 1, 1, n.to_bytes(16, "big"), 1_700_000_000_000)
    submit = F.sign(author, F.SUBMIT, body)
    return submit, F.sign(author, F.CANCEL, F.Cancel(submit.job_id, "stop", 1_700_000_000_001))


def snapshot(node: Node) -> dict[bytes, set[bytes]]:
    return {key: node.store.record_ids(key) for key in node.store.keys()}


def dropped(node: Node) -> dict[str, int]:
    return dict(node.dht.protocol.dropped)


async def wait_for(predicate, timeout_s: float = DEADLINE_S):
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met before the deadline")
        await asyncio.sleep(0.01)


AUTHOR = Identity.from_seed(b"\x61" * 32)
STRANGER = Identity.from_seed(b"\x62" * 32)
JOB_A = make_job(AUTHOR, 1)  # stored on the node by every test's setup
JOB_B = make_job(AUTHOR, 2)  # never stored


@pytest.fixture
async def node(tmp_path):
    n = Node(NodeConfig(data_dir=str(tmp_path / "victim"), workers=0, reannounce_first_s=3600.0))
    await n.start()
    yield n
    await n.stop()


@pytest.fixture
async def peer(node):
    async with RawPeer() as p:
        # Positive control: a well-formed signed store of a valid submission is accepted.
        reply = await p.request(node, "store", [JOB_A[0].job_id, [JOB_A[0].raw]])
        assert reply is not None and reply.args[0] is True, reply
        assert node.store.record_ids(JOB_A[0].job_id) == {JOB_A[0].fact_id}
        yield p


async def still_answers_ping(node: Node, peer: RawPeer) -> None:
    reply = await peer.request(node, "ping", [])
    assert reply is not None, "the node stopped answering pings"
    assert reply.sender_id == node.identity.node_id and reply.method == "ping"


# --------------------------------------------------------------------------- forged facts


def _flip_last_byte(raw: bytes) -> bytes:
    return raw[:-1] + bytes([raw[-1] ^ 1])  # inside the signature: still canonical msgpack


def _swap_author(fact: F.Fact, other: Identity) -> bytes:
    # [kind, author, body, signature]: same length key, so the bytes stay canonical.
    return fact.raw.replace(fact.author, other.public_key)


FORGERIES = {
    # name: (key the facts are filed under, raws, counter that must grow)
    "bad signature": (JOB_A[0].job_id, lambda: [_flip_last_byte(JOB_A[1].raw)], "records_invalid"),
    "signed by a key other than its author field": (JOB_A[0].job_id, lambda: [_swap_author(JOB_A[1], STRANGER)], "records_invalid"),
    "submit under a key it does not hash to": (JOB_A[0].job_id, lambda: [JOB_B[0].raw], "records_invalid"),
    "cancel filed under another job's key": (JOB_A[0].job_id, lambda: [JOB_B[1].raw], "records_invalid"),
    "cancel signed by someone other than the submitter": (
        JOB_A[0].job_id,
        lambda: [F.sign(STRANGER, F.CANCEL, F.Cancel(JOB_A[0].job_id, "mine now", 5)).raw],
        "records_refused",
    ),
    "cancel of a job the replica does not hold": (JOB_B[0].job_id, lambda: [JOB_B[1].raw], "records_refused"),
    "not bytes": (JOB_A[0].job_id, lambda: [[1, 2, 3]], "records_invalid"),
}


@pytest.mark.parametrize("name", list(FORGERIES))
async def test_forged_fact_inside_a_signed_store_is_refused_and_counted(node, peer, name):
    key, raws, counter = FORGERIES[name]
    before, count = snapshot(node), node.dht.stats[counter]
    reply = await peer.request(node, "store", [key, raws()])
    assert reply is not None, "a signed store is answered, even when refused"
    ok, refusals, produced = reply.args
    assert ok is False and refusals, reply.args
    assert produced == []
    assert node.dht.stats[counter] == count + 1
    assert snapshot(node) == before
    await still_answers_ping(node, peer)


async def test_a_batch_with_one_forgery_stores_nothing(node, peer):
    """Validation happens before admission: one bad fact refuses the whole batch."""
    before = snapshot(node)
    reply = await peer.request(node, "store", [JOB_A[0].job_id, [JOB_A[1].raw, _flip_last_byte(JOB_A[1].raw)]])
    assert reply.args[0] is False
    assert snapshot(node) == before
    # ...and the honest part on its own goes through.
    reply = await peer.request(node, "store", [JOB_A[0].job_id, [JOB_A[1].raw]])
    assert reply.args[0] is True
    assert JOB_A[1].fact_id in node.store.record_ids(JOB_A[0].job_id)


# --------------------------------------------------------------------------- third-party contacts


async def test_third_party_contacts_get_the_id_of_their_key_and_malformed_ones_are_rejected(node, peer):
    liar, honest = Identity.generate(), Identity.generate()
    forged_ids = [
        os.urandom(20),  # an id made up for a real key
        node.identity.node_id[:-1] + bytes([node.identity.node_id[-1] ^ 1]),  # an id next to the victim's
    ]
    packed = pack_contact(liar.public_key, "127.0.0.1", 9)
    reply_entries = [
        [forged_ids[0], "127.0.0.1", 9, liar.public_key],  # the old list form, with an id: no longer read
        [forged_ids[1], "127.0.0.1", 9, liar.public_key],
        packed[:-2] + b"\x00\x00",  # port 0
        packed[:-1],  # short entry
        forged_ids[1] + packed,  # an id in front: a wrong length
        pack_contact(honest.public_key, "127.0.0.1", 9),  # well-formed: kept, under its key's id
    ]
    peer.handlers["find_node"] = lambda args: reply_entries
    before, count = snapshot(node), node.dht.stats["third_party_contacts_rejected"]
    # The node meets the peer and looks itself up through it.
    await node.dht.bootstrap([peer.addr])
    assert any(e.method == "find_node" for e in peer.requests_seen)
    assert node.dht.stats["third_party_contacts_rejected"] == count + 5
    for bad in [*forged_ids, liar.node_id]:
        assert node.dht.router.get(bad) is None
    assert node.dht.router.get(peer.identity.node_id) is not None  # the peer itself proved its key
    assert snapshot(node) == before
    await still_answers_ping(node, peer)


async def test_a_reply_signed_by_another_key_than_the_one_asked_is_dropped(node, peer):
    peer.reply_as = Identity.generate()  # answers come back MAC'd by a key the node did not ask
    peer_contact = await node.dht.ping(peer.addr)  # first ping by address: any key may answer it
    assert peer_contact is not None and peer_contact.id == peer.reply_as.node_id
    count = dropped(node).get("reply_from_wrong_peer", 0)
    impostor_reply = await node.dht.call(
        Contact(peer.identity.node_id, *peer.addr, peer.identity.public_key), "ping", [], timeout_s=0.3
    )
    assert impostor_reply is None
    assert dropped(node)["reply_from_wrong_peer"] == count + 1
    peer.reply_as = None
    await still_answers_ping(node, peer)


# --------------------------------------------------------------------------- datagram-level drops


def _job_b_store(peer: RawPeer, node: Node, **kw) -> bytes:
    return peer.envelope(node, "store", [JOB_B[0].job_id, [JOB_B[0].raw]], **kw)


DATAGRAMS = {
    # name: (build(peer, node) -> bytes, drop reason)
    "ts_ms ten minutes old": (lambda p, n: _job_b_store(p, n, ts_ms=int(time.time() * 1000) - 600_000), "stale"),
    "ts_ms ten minutes ahead": (lambda p, n: _job_b_store(p, n, ts_ms=int(time.time() * 1000) + 600_000), "stale"),
    # Never the bundle mark (nor the token mark, behind which it could sit) in front.
    "random bytes": (lambda p, n: b"\x00" + os.urandom(299), "malformed"),
    "truncated msgpack": (lambda p, n: _job_b_store(p, n)[:-20], "malformed"),
    "trailing bytes": (lambda p, n: _job_b_store(p, n) + b"\x00", "malformed"),
    # Larger than the largest datagram a node sends (a body at the bound behind a token tag),
    # so it is oversized whatever its first byte is: random bytes start with the token mark
    # one time in 256, and a body at the bound plus one would then be merely malformed.
    "oversized garbage": (lambda p, n: os.urandom(n.config.dht.datagram_bytes_max + TOKEN_PREFIX_BYTES + 1), "oversized"),
    "oversized garbage behind a token mark": (
        lambda p, n: bytes([TOKEN_MARK]) + os.urandom(n.config.dht.datagram_bytes_max + TOKEN_PREFIX_BYTES),
        "oversized",
    ),
    "oversized signed envelope": (
        lambda p, n: p.envelope(n, "store", [JOB_B[0].job_id, [b"x" * n.config.dht.datagram_bytes_max]]),
        "oversized",
    ),
    "tampered MAC": (lambda p, n: _flip_last_byte(_job_b_store(p, n)), "bad_signature"),
    "tampered signature": (lambda p, n: _flip_last_byte(_job_b_store(p, n, mac=False)), "bad_signature"),
    "MAC for another node": (
        lambda p, n: seal(p.identity, REQUEST, os.urandom(16), int(time.time() * 1000), os.urandom(20), "ping", [],
                          n.identity.public_key),
        "misdirected",
    ),
    "reply nobody asked for": (lambda p, n: p.envelope(n, "ping", [], kind=REPLY), "unexpected_reply"),
    "method nobody registered": (lambda p, n: p.envelope(n, "rpc_store", [JOB_B[0].job_id, [JOB_B[0].raw]]), "unknown_method"),
    # Coalesced datagrams (dht/coalesce.py): a bad frame is dropped whole, before any of it acts.
    "truncated bundle": (lambda p, n: bundle([p.envelope(n, "ping", []), _job_b_store(p, n)])[:-20], "bad_bundle"),
    "bundle with trailing bytes": (lambda p, n: bundle([p.envelope(n, "ping", []), _job_b_store(p, n)]) + b"\x00", "bad_bundle"),
    "bundle holding garbage": (lambda p, n: bundle([_job_b_store(p, n), os.urandom(200)]), "bad_bundle"),
    "bundle inside a bundle": (
        lambda p, n: bundle([p.envelope(n, "ping", []), bundle([_job_b_store(p, n), p.envelope(n, "ping", [])])]),
        "nested_bundle",
    ),
    "bundle of more messages than the bound": (
        lambda p, n: bundle([_job_b_store(p, n)] + [p.envelope(n, "ping", []) for _ in range(BUNDLE_MESSAGES_MAX)]),
        "bundle_count",
    ),
    "bundle of one message": (lambda p, n: bundle([_job_b_store(p, n)]), "bundle_count"),
    "oversized bundle": (
        lambda p, n: bundle([_job_b_store(p, n), b"\x99" + os.urandom(n.config.dht.datagram_bytes_max)]),
        "oversized",
    ),
    # A good frame: each message is judged alone, as a lone datagram would be.
    "stale store in a bundle": (
        lambda p, n: bundle([p.envelope(n, "ping", []), _job_b_store(p, n, ts_ms=int(time.time() * 1000) - 600_000)]),
        "stale",
    ),
    "tampered store in a bundle": (lambda p, n: bundle([p.envelope(n, "ping", []), _flip_last_byte(_job_b_store(p, n))]), "bad_signature"),
}


@pytest.mark.parametrize("name", list(DATAGRAMS))
async def test_bad_datagram_is_dropped_counted_and_harmless(node, peer, name):
    build, reason = DATAGRAMS[name]
    data = build(peer, node)
    before, count = snapshot(node), dropped(node).get(reason, 0)
    peer.send(data, node)
    await wait_for(lambda: dropped(node).get(reason, 0) == count + 1)
    assert snapshot(node) == before
    assert not node.store.has(JOB_B[0].job_id)
    await still_answers_ping(node, peer)


async def test_a_replayed_datagram_is_dropped_and_changes_nothing(node, peer):
    data = _job_b_store(peer, node)
    first = await peer.request_bytes(data, node)
    assert first is not None and first.args[0] is True
    after_first = snapshot(node)
    assert after_first[JOB_B[0].job_id] == {JOB_B[0].fact_id}
    count = dropped(node).get("replayed", 0)
    peer.send(data, node)
    await wait_for(lambda: dropped(node).get("replayed", 0) == count + 1)
    assert snapshot(node) == after_first
    await still_answers_ping(node, peer)


async def test_a_burst_of_garbage_leaves_the_node_serving(node, peer):
    before = snapshot(node)
    total = node.dht.protocol.statistics()["dropped_total"]
    for i in range(500):
        peer.send(os.urandom(1 + i * 7 % 1400), node)
    await wait_for(lambda: node.dht.protocol.statistics()["dropped_total"] >= total + 500)
    assert snapshot(node) == before
    await still_answers_ping(node, peer)
