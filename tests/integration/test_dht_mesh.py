"""Thirty real nodes on loopback UDP: stores reach their replicas, every key is
readable from every node, and a node that joins late receives the keys it
became a replica of.

One process, one event loop, real sockets on 127.0.0.1 and real SQLite files.
Nodes run no workers (``workers=0``): this exercises the DHT (signed envelopes,
iterative lookups, quorum stores, merged reads, hand-off) under the job-fact
record policy, not job execution.

Bucket size ``k=8`` (production: 20) makes 30 nodes a real multi-hop mesh: no
routing table holds everyone, so placement and reads depend on iterative
lookups, which is what these tests are about. It also halves the cost of the
6,000 reads. Identities are fixed seeds, so every run builds the same mesh.
"""

from __future__ import annotations

import asyncio
import random
import time

import pytest
import pytest_asyncio

from workmesh.crypto.identity import Identity
from workmesh.dht.config import DHTConfig
from workmesh.dht.routing import target_node
from workmesh.node import facts as F
from workmesh.node.proposer import RoundDriver
from workmesh.node import lifecycle
from workmesh.node.config import NodeConfig
from workmesh.node.node import Node

NODES = 30
KEYS = 200
REPLICAS = 5
QUORUM = 3
K = 8
CONCURRENCY = 32

pytestmark = pytest.mark.asyncio(loop_scope="module")

class RecordingLogger:
    """Drops info, keeps warnings and errors, so a test can assert that no
    background task failed."""

    def __init__(self, sink: list) -> None:
        self.sink = sink

    def bind(self, **kw):
        return self

    def debug(self, *a, **kw):
        pass

    info = debug

    def warning(self, event, **kw):
        self.sink.append(("warning", event, kw))

    def error(self, event, **kw):
        self.sink.append(("error", event, kw))


def make_job(author: Identity, i: int) -> tuple[F.Fact, F.Fact]:
    """A job's submission and its cancel, both signed by ``author`` (placed by :func:`place`)."""
    body = F.Submit("echo", b'{"i":%d}' % i, 1, 10_000, 60_000, REPLICAS, QUORUM, i.to_bytes(16, "big"), 1_700_000_000_000)
    submit = F.sign(author, F.SUBMIT, body)
    cancel = F.sign(author, F.CANCEL, F.Cancel(submit.job_id, "not needed", 1_700_000_000_001))
    return submit, cancel


def place(author: Identity, submit: F.Fact, ids) -> F.Fact:
    """The submitter's placement of the job on its true r closest nodes."""
    subject = b"".join(true_replicas(submit.job_id, ids))
    return F.sign(author, F.GRANT, F.Grant(submit.job_id, F.PLACE, 0, subject, 1_700_000_000_000))


def start_node(path, seed: int, log: list) -> Node:
    # Re-announcement gossip of pending jobs is the node layer's business, not
    # the DHT's; push it past the end of the test so it adds no traffic.
    config = NodeConfig(
        data_dir=str(path), workers=0, reannounce_first_s=3600.0, reannounce_max_s=3600.0, dht=DHTConfig(k=K)
    )
    return Node(config, identity=Identity.from_seed(seed.to_bytes(32, "big")), logger=RecordingLogger(log))


def true_replicas(key: bytes, node_ids) -> set[bytes]:
    target = target_node(key)
    return set(sorted(node_ids, key=lambda i: target.distance_to(target_node(i)))[:REPLICAS])


async def wait_for(predicate, timeout_s: float, interval_s: float = 0.05):
    """Poll ``predicate`` until it holds or the deadline passes; its last value."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        await asyncio.sleep(interval_s)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def mesh(tmp_path_factory):
    """30 joined nodes holding 200 jobs (submit + cancel each), stored through random nodes."""
    base = tmp_path_factory.mktemp("dht-mesh")
    log: list = []
    nodes: list[Node] = []
    try:
        for i in range(NODES):
            node = start_node(base / f"n{i}", 1000 + i, log)
            await node.start()
            nodes.append(node)
        boot = nodes[0].dht.address
        for node in nodes[1:]:
            await node.join([boot])
        for node in nodes[1:]:  # a second round: early joiners learn of later ones
            await node.join([boot])

        rng = random.Random(20240601)
        author = Identity.from_seed(b"\x42" * 32)
        jobs = [make_job(author, i) for i in range(KEYS)]
        sem = asyncio.Semaphore(CONCURRENCY)

        ids = [n.identity.node_id for n in nodes]

        async def put(node: Node, submit: F.Fact, cancel: F.Fact):
            async with sem:
                return await node.dht.store(submit.job_id, [submit, place(author, submit, ids), cancel])

        started = time.monotonic()
        choices = [rng.choice(nodes) for _ in jobs]
        outcomes = await asyncio.gather(*(put(n, s, c) for n, (s, c) in zip(choices, jobs)))
        store_s = time.monotonic() - started

        async def decide(node: Node, submit: F.Fact, cancel: F.Fact):
            # The canceller's round of the job's consensus (node/proposer.py).
            async with sem:
                state = lifecycle.derive([submit, place(author, submit, ids), cancel])
                driver = RoundDriver(node.identity, node.dht.store, node.clock.wall_ms)
                return await driver.recover(state, own=cancel, extra=[cancel])

        rounds = await asyncio.gather(*(decide(n, s, c) for n, (s, c) in zip(choices, jobs)))
        yield {
            "nodes": nodes,
            "ids": [n.identity.node_id for n in nodes],
            "jobs": jobs,
            "outcomes": outcomes,
            "rounds": rounds,
            "log": log,
            "base": base,
            "store_s": store_s,
        }
    finally:
        for node in nodes:
            await node.stop()


async def test_every_store_reaches_a_quorum_of_replicas_and_a_round_decides_the_cancel(mesh):
    for (submit, cancel), outcome, decided in zip(mesh["jobs"], mesh["outcomes"], mesh["rounds"]):
        assert outcome.asked == REPLICAS, submit
        # A store returns once a quorum stored (after a short grace for the rest).
        assert outcome.stored_on >= QUORUM, (submit, outcome)
        # The canceller's round: a quorum of the replicas sealed the cancel.
        assert decided.subject == cancel, (submit, decided.phase)
        assert len({s.author_id for s in decided.seals}) >= QUORUM
    assert not [e for e in mesh["log"] if e[0] == "error"], mesh["log"][:5]
    print(f"\nstored {KEYS} keys in {mesh['store_s']:.2f} s")


async def test_every_key_lands_on_its_true_r_closest_nodes(mesh):
    by_id = dict(zip(mesh["ids"], mesh["nodes"]))

    def placed(submit: F.Fact, cancel: F.Fact) -> bool:
        want = {submit.fact_id, cancel.fact_id}
        return all(want <= by_id[i].store.record_ids(submit.job_id) for i in true_replicas(submit.job_id, by_id))

    # Stores finish on the slower replicas in the background: wait for them.
    await wait_for(lambda: all(placed(s, c) for s, c in mesh["jobs"]), timeout_s=10.0)
    misplaced = [s.job_id.hex()[:8] for s, c in mesh["jobs"] if not placed(s, c)]
    assert not misplaced, f"{len(misplaced)} of {KEYS} keys are missing from some of their true r closest nodes"


async def test_every_key_reads_back_complete_and_cancelled_from_every_node(mesh):
    nodes, jobs = mesh["nodes"][:NODES], mesh["jobs"]
    sem = asyncio.Semaphore(CONCURRENCY)

    async def read(node: Node, key: bytes):
        async with sem:
            return await node.dht.fetch(key)

    started = time.monotonic()
    plan = [(node, submit, cancel) for submit, cancel in jobs for node in nodes]
    got = await asyncio.gather(*(read(node, submit.job_id) for node, submit, _ in plan))
    elapsed = time.monotonic() - started

    bad = []
    for (node, submit, cancel), (records, answered) in zip(plan, got):
        state = lifecycle.derive(records)
        complete = {submit.fact_id, cancel.fact_id} <= {r.record_id for r in records}
        # Cancelled = the reader saw seals of a quorum of replicas, merged from several replies.
        if not complete or answered < QUORUM or state is None or state.status != lifecycle.CANCELLED:
            bad.append((node.identity.short_id, submit.job_id.hex()[:8], answered, state and state.status))
    assert not bad, f"{len(bad)} of {len(got)} reads were incomplete, e.g. {bad[:3]}"
    assert not [e for e in mesh["log"] if e[0] == "error"], mesh["log"][:5]
    print(f"\n{len(got)} reads in {elapsed:.2f} s")


async def test_requests_to_one_peer_in_one_turn_share_datagrams_and_each_is_answered(mesh):
    """Coalescing over loopback UDP (dht/coalesce.py): what one node asks another in one
    event-loop turn leaves in a few datagrams, every request is answered, and the
    answers, made in one turn too, come back coalesced."""
    a, b = mesh["nodes"][1], mesh["nodes"][2]
    # Each answers the other once: coalescing is only to an address that answered (anti-amplification).
    assert await a.dht.ping(b.dht.address) is not None and await b.dht.ping(a.dht.address) is not None
    names = ("messages_out", "datagrams_out", "bundles_out", "bundles_in")
    sent_before = {n: a.dht.protocol.counters[n] for n in names}
    got_before = {n: b.dht.protocol.counters[n] for n in names}
    asks = 60
    replies = await asyncio.gather(*(
        a.dht.protocol.request(b.dht.address, "ping", [], expect_id=b.identity.node_id, peer_key=b.identity.public_key)
        for _ in range(asks)
    ))
    assert all(r is not None and r.sender_id == b.identity.node_id for r in replies)
    sent = {n: a.dht.protocol.counters[n] - sent_before[n] for n in names}
    got = {n: b.dht.protocol.counters[n] - got_before[n] for n in names}
    # Other traffic of the mesh may share the counters: bounds, not exact figures.
    assert sent["messages_out"] >= asks and sent["datagrams_out"] <= sent["messages_out"] - asks + 2, sent
    assert sent["bundles_out"] >= 1 and got["bundles_in"] >= 1, (sent, got)
    assert got["bundles_out"] >= 1 and got["datagrams_out"] < asks, got
    print(f"\n{asks} pings in {sent['datagrams_out']} datagrams, answered in {got['datagrams_out']}")


async def test_late_joiner_receives_every_key_it_is_now_a_replica_of(mesh):
    nodes, jobs = mesh["nodes"], mesh["jobs"]
    late = start_node(mesh["base"] / "late", 5000, mesh["log"])
    await late.start()
    nodes.append(late)  # the fixture stops it
    await late.join([nodes[0].dht.address])

    ids = [n.identity.node_id for n in nodes]
    before = set(mesh["ids"])
    cancels = {s.job_id: (s, c) for s, c in jobs}
    mine = [key for key in cancels if late.identity.node_id in true_replicas(key, ids)]
    assert mine, "with 200 keys and r=5 of 31 nodes the late joiner is a replica of some"

    def holds(key: bytes) -> bool:
        submit, cancel = cancels[key]
        return {submit.fact_id, cancel.fact_id} <= late.store.record_ids(key)

    # Hand-off: the old replicas meet the late joiner during its join and send
    # it what it lacks of each key it is now a replica of (the stored key, not
    # its hash). It is best effort (a full bucket keeps the newcomer as a
    # replacement only), so republish is the safety net: run it once on every
    # old node for whatever hand-off left out. Republish reads replica sets
    # through a 5 s cache; expire it rather than wait it out.
    await wait_for(lambda: all(holds(k) for k in mine), timeout_s=3.0)
    by_handoff = sum(1 for k in mine if holds(k))
    assert by_handoff > 0, "hand-off delivered nothing"
    if by_handoff < len(mine):
        for node in nodes[:NODES]:
            node.dht.replica_cache_ttl_s = 0.0
        await asyncio.gather(*(n.dht.republish() for n in nodes[:NODES]))
        await wait_for(lambda: all(holds(k) for k in mine), timeout_s=3.0)
    lacking = [k.hex()[:8] for k in mine if not holds(k)]
    assert not lacking, f"hand-off and republish missed {len(lacking)} of {len(mine)} keys: {lacking}"
    print(f"\nlate joiner holds its {len(mine)} keys, {by_handoff} of them by hand-off")
