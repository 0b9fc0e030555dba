"""Only members act: an attacker with a valid identity, but without the mesh
key (private mesh) or without the API token (open mesh), tries to cancel,
claim, renew, file a forged result and inject a job. Every attempt fails and
is counted. Real UDP on loopback, nodes in-process.

On the code before issue 14 the same attacker cancelled the job through the
submitter's ``cancel_job`` RPC and got lease grants for its claim.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import replace

import pytest

from workmesh.crypto.identity import Identity
from workmesh.crypto.meshkey import MeshKeyring, new_mesh_key
from workmesh.node import facts as F
from workmesh.node import lifecycle
from workmesh.node.config import NodeConfig
from workmesh.node.errors import QuorumUnavailable
from workmesh.node.node import Node
from tests.integration.test_dht_adversarial import RawPeer

TOKEN = "operator-secret"
SHORT_S = 0.4


@pytest.fixture
async def mesh(tmp_path, request):
    mode = request.param
    key = new_mesh_key()
    nodes: list[Node] = []
    for i in range(3):
        config = NodeConfig(data_dir=str(tmp_path / f"n{i}"), workers=0, reannounce_first_s=3600.0,
                            api_token=TOKEN if mode == "open" else None)
        dht = replace(config.dht, replicas=3, quorum=2, mesh_keys=(key,) if mode == "private" else ())
        node = Node(replace(config, dht=dht))
        await node.start()
        nodes.append(node)
    for node in nodes[1:]:
        await node.dht.bootstrap([nodes[0].dht.address])
    yield mode, nodes
    for node in nodes:
        await node.stop()


def now_ms() -> int:
    return int(time.time() * 1000)


def refusals(nodes: list[Node], mode: str) -> int:
    """What the members counted against the attacker."""
    key = "unauthorized" if mode == "open" else "not_member"
    return sum(n.dht.protocol.dropped.get(key, 0) for n in nodes)


@pytest.mark.parametrize("mesh", ["open", "private"], indirect=True)
async def test_an_attacker_without_the_token_or_mesh_key_can_do_nothing(mesh):
    mode, nodes = mesh
    submitter = nodes[0]
    view = await submitter.submit("echo", {"x": 1})
    job_id = bytes.fromhex(view.id)
    state = submitter.jobs.derive_local(job_id) or await submitter.jobs.read_state(job_id)
    replicas = [n for n in nodes if n.identity.node_id in state.replicas]
    assert len(replicas) == 3
    attacker = Identity.generate()
    async with RawPeer(attacker) as peer:
        before = refusals(nodes, mode)

        async def ask(node: Node, method: str, args: list):
            return await peer.request(node, method, args, timeout_s=SHORT_S)

        async def store_everywhere(facts: list[F.Fact]) -> list:
            return await asyncio.gather(*(ask(n, "store", [job_id, [f.raw for f in facts]]) for n in replicas))

        attempts = 0
        # 1. cancel through the submitter
        assert await ask(submitter, "cancel_job", [job_id, "mine now"]) is None
        attempts += 1
        # 2. claim attempt 1, hoping for lease grants
        claim = F.sign(attacker, F.CLAIM, F.Claim(job_id, 1, now_ms()))
        answers = await store_everywhere([state.submit, claim])
        attempts += len(replicas)
        grants = [g for a in answers if a is not None for g in a.args[2]]
        assert grants == [] and all(a is None for a in answers)
        # 3. renew that (never granted) lease, far past any timeout
        renew = F.sign(attacker, F.RENEW, F.Renew(job_id, 1, now_ms() + 10**9))
        assert all(a is None for a in await store_everywhere([renew]))
        attempts += len(replicas)
        # 4. a forged ok result
        forged = F.sign(attacker, F.RESULT, F.Result(job_id, 1, F.OK, b'{"pwned":true}', (), now_ms()))
        assert all(a is None for a in await store_everywhere([forged]))
        attempts += len(replicas)
        # 5. inject a job of its own: store it, then announce it
        body = F.Submit("echo", b'{"evil":1}', 1, 10_000, 60_000, 3, 2, os.urandom(16), now_ms())
        submit = F.sign(attacker, F.SUBMIT, body)
        subject = b"".join(n.identity.node_id for n in nodes)
        place = F.sign(attacker, F.GRANT, F.Grant(submit.job_id, F.PLACE, 0, subject, now_ms()))
        injected = await asyncio.gather(*(ask(n, "store", [submit.job_id, [submit.raw, place.raw]]) for n in nodes))
        assert all(a is None for a in injected)
        attempts += len(nodes)
        # ...or several keys at once (store_many is an acting method too)
        both = [[submit.job_id, [submit.raw, place.raw]], [job_id, [claim.raw]]]
        assert all(a is None for a in await asyncio.gather(*(ask(n, "store_many", both) for n in nodes)))
        attempts += len(nodes)
        announced = await asyncio.gather(
            *(ask(n, "announce", [submit.job_id, "echo", 3, os.urandom(8), [submit.raw, place.raw]]) for n in nodes)
        )
        assert all(a is None for a in announced)
        attempts += len(nodes)

        counted = refusals(nodes, mode) - before
        print(f"{mode} mesh: {attempts} attempts by a stranger key, {counted} counted as refused")
        assert counted >= attempts
        for n in nodes:
            assert n.store.get(submit.job_id) == []
            assert not {f.author for f in n.store.get(job_id)} - {n.identity.public_key for n in nodes}
        if mode == "open":
            stats = submitter.dht.protocol.counters
            assert stats["unauthorized_cancel_job"] == 1 and stats["unauthorized_store"] >= 4
            assert stats["unauthorized_store_many"] == 1
    after = await submitter.jobs.read_state(job_id)
    assert after.status == lifecycle.PENDING and after.worker is None
    # The operator (through the REST path, token checked there) still can cancel.
    other = nodes[1] if nodes[1].identity.node_id != submitter.identity.node_id else nodes[2]
    cancelled = await other.cancel(job_id, "operator")
    assert cancelled.status == lifecycle.CANCELLED


@pytest.mark.parametrize("mesh", ["open"], indirect=True)
async def test_a_node_without_the_token_routes_but_never_becomes_a_contact(mesh, tmp_path):
    _, nodes = mesh
    config = NodeConfig(data_dir=str(tmp_path / "outsider"), workers=1, reannounce_first_s=3600.0)
    outsider = Node(replace(config, dht=replace(config.dht, replicas=3, quorum=2)))
    await outsider.start()
    try:
        # The members answer its pings and lookups (it learns them)...
        assert await outsider.dht.bootstrap([nodes[0].dht.address]) >= 1
        # ...but they ignore its replies, so it never enters their tables.
        for n in nodes:
            await n.dht.bootstrap([outsider.dht.address])
            assert n.dht.router.get(outsider.identity.node_id) is None
        assert sum(n.dht.protocol.dropped.get("unauthorized_reply", 0) for n in nodes) >= 3
        # A job it accepts can be stored on no member: its submit fails.
        with pytest.raises(QuorumUnavailable):
            await outsider.submit("echo", {"from": "outsider"})
        assert sum(n.dht.protocol.counters.get("unauthorized_store", 0) for n in nodes) >= 1
        # The members still run their own jobs among themselves.
        view = await nodes[1].submit("echo", {"ok": 1})
        assert view.status == "pending"
    finally:
        await outsider.stop()
