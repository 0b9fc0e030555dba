"""A node restarted on the same data directory is the same node.

Same identity (and so the same node id: peers and replica sets do not move),
same facts (re-verified from SQLite), the same contacts (it can rejoin without
a bootstrap address), and a private key file nobody else can read.
"""

from __future__ import annotations

import asyncio
import sqlite3
import stat
import time

from workmesh.crypto.identity import KEY_FILE, Identity
from workmesh.node import facts as F
from workmesh.node.config import NodeConfig
from workmesh.node.node import Node


def config(path) -> NodeConfig:
    return NodeConfig(data_dir=str(path), workers=0, reannounce_first_s=3600.0)


def make_job(author: Identity, n: int) -> tuple[F.Fact, F.Fact]:
    body = F.Submit("echo", b'{"n":%d}' % n, 1, 10_000, 60_000, 3, 2, n.to_bytes(16, "big"), 1_700_000_000_000)
    submit = F.sign(author, F.SUBMIT, body)
    return submit, F.sign(author, F.CANCEL, F.Cancel(submit.job_id, "stop", 1_700_000_000_001))


async def wait_for(predicate, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not met before the deadline"
        await asyncio.sleep(0.01)


async def start_mesh(tmp_path, count: int) -> list[Node]:
    nodes = []
    for i in range(count):
        node = Node(config(tmp_path / f"n{i}"))
        await node.start()
        nodes.append(node)
    for node in nodes[1:]:
        await node.join([nodes[0].dht.address])
    # Peers that contacted a node are added once they answer its ping-back.
    await wait_for(lambda: all(len(n.dht.router) == count - 1 for n in nodes))
    return nodes


async def test_restart_keeps_identity_facts_and_contacts(tmp_path):
    nodes = await start_mesh(tmp_path, 4)
    victim = nodes[1]
    try:
        author = Identity.from_seed(b"\x71" * 32)
        jobs = [make_job(author, n) for n in range(5)]
        for submit, cancel in jobs:
            outcome = await nodes[0].dht.store(submit.job_id, [submit, cancel], replicas=3, quorum=2)
            assert outcome.stored_on >= 2
        node_id, held = victim.identity.node_id, {k: victim.store.record_ids(k) for k in victim.store.keys()}
        assert held, "the victim is a replica of some of the 5 jobs (3 replicas of 4 nodes)"
        contacts = {c.id for c in victim.dht.router.contacts()}
        assert contacts == {n.identity.node_id for n in nodes} - {node_id}
        await victim.stop()

        key_file = tmp_path / "n1" / KEY_FILE
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600

        again = Node(config(tmp_path / "n1"))
        await again.start()
        nodes[1] = again
        assert again.identity.node_id == node_id
        assert {k: again.store.record_ids(k) for k in again.store.keys()} == held
        for key, ids in held.items():
            assert {f.fact_id for f in again.store.get(key)} == ids
        # Contacts come back from disk before any join.
        assert {c.id for c in again.dht.router.contacts()} == contacts
        # ...so it rejoins with no bootstrap address, and reads through the mesh.
        assert await again.join([]) >= 3
        for submit, cancel in jobs:
            records, answered = await again.dht.fetch(submit.job_id)
            assert {submit.fact_id, cancel.fact_id} <= {r.record_id for r in records}
            assert answered >= 2
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    finally:
        for node in nodes:
            await node.stop()


async def test_a_record_tampered_on_disk_is_not_served_after_restart(tmp_path):
    node = Node(config(tmp_path / "solo"))
    await node.start()
    author = Identity.from_seed(b"\x72" * 32)
    submit, cancel = make_job(author, 1)
    outcome = await node.dht.store(submit.job_id, [submit, cancel])
    assert outcome.stored_on == 1
    await node.stop()

    db = sqlite3.connect(tmp_path / "solo" / "store.sqlite")
    raw = cancel.raw[:-1] + bytes([cancel.raw[-1] ^ 1])  # break the cancel's signature
    assert db.execute("UPDATE records SET raw = ? WHERE record_id = ?", (raw, cancel.fact_id)).rowcount == 1
    db.commit()
    db.close()

    node = Node(config(tmp_path / "solo"))
    await node.start()
    try:
        ids = node.store.record_ids(submit.job_id)
        assert submit.fact_id in ids and cancel.fact_id not in ids
        assert node.store.statistics()["load_rejected"] == 1
    finally:
        await node.stop()
