"""Durable votes (issue 13, item 7): no 202, grant or seal leaves a node
before the fsync of the write it depends on has returned.

Three in-process nodes over real UDP and real SQLite files (``synchronous=FULL``)
run jobs. Two seams observe them, no private method is patched: each store's
commit listener (``FactStore.add_commit_listener``: called once a commit, and
so its fsync, returned) and each node's transport (``Node.start(bind=...)``:
the datagram socket is wrapped, every datagram the node sends is opened
before it goes). A store reply that hands out a grant or a seal, and a
find_records reply, may carry only records whose commit had returned on the
sending node; a submission is answered (what the 202 reports) only when a
quorum's commits hold it.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

from workmesh.dht.config import DHTConfig
from workmesh.crypto.canonical import canonical_unpack
from workmesh.dht.envelope import REPLY
from workmesh.dht.storage import CommitEvent
from workmesh.node import facts as F
from workmesh.node import lifecycle
from workmesh.node.config import NodeConfig
from workmesh.node.node import Node, bind_udp


async def wait_for(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"{what}: not met within {timeout_s} s"
        await asyncio.sleep(0.02)


class Watch:
    """What one node committed, and what it sent that was not committed yet."""

    def __init__(self) -> None:
        self.committed: set[bytes] = set()
        self.commits = 0
        self.sent = {"grant": 0, "seal": 0, "served": 0}
        self.early: list[str] = []

    def on_commit(self, event: CommitEvent) -> None:
        self.commits += 1
        self.committed.update(rid for _key, rid in event.ids)

    def check(self, data: bytes) -> None:
        # Our own datagram: its fields are read, its signature or MAC needs no check.
        _version, kind, _msg_id, _key, _ts, _target, method, args, _auth = canonical_unpack(data, max_len=65_535)
        if kind != REPLY or not args:
            return
        if method == "store" and len(args) == 3:
            for raw in args[2]:
                fact = F.decode(raw)
                kind = "seal" if fact.kind == F.BALLOT and fact.body.step in (F.VOTE, F.SEAL) else "grant"
                self.sent[kind] += 1
                if fact.fact_id not in self.committed:
                    self.early.append(f"{kind} {fact.fact_id.hex()[:12]} sent before its commit")
        elif method == "find_records" and len(args) >= 3:
            for raw in args[1]:
                self.sent["served"] += 1
                if F.fact_id_of(raw) not in self.committed:
                    self.early.append(f"fact {F.fact_id_of(raw).hex()[:12]} served before its commit")


class SpyTransport:
    def __init__(self, inner, watch: Watch) -> None:
        self._inner = inner
        self._watch = watch

    def sendto(self, data: bytes, addr) -> None:
        self._watch.check(data)
        self._inner.sendto(data, addr)

    def close(self) -> None:
        self._inner.close()

    def get_extra_info(self, name, default=None):
        return self._inner.get_extra_info(name, default)


def spying(watch: Watch):
    inner = bind_udp("127.0.0.1", 0)

    async def bind(protocol):
        address = await inner(protocol)
        protocol.transport = SpyTransport(protocol.transport, watch)
        return address

    return bind


async def test_no_202_grant_or_seal_leaves_a_node_before_its_fsync(tmp_path):
    dht = replace(DHTConfig(), replicas=3, quorum=2)
    nodes, watches = [], []
    for i in range(3):
        watch = Watch()
        node = Node(NodeConfig(data_dir=str(tmp_path / f"n{i}"), dht=dht, workers=2))
        node.store.add_commit_listener(watch.on_commit)
        await node.start(bind=spying(watch))
        nodes.append(node)
        watches.append(watch)
    for node in nodes[1:]:
        await node.join([nodes[0].dht.address])
    await wait_for(lambda: all(len(n.dht.router) == 2 for n in nodes), 10, "full routing tables")
    try:
        ids = []
        for n in range(12):
            view = await nodes[n % 3].submit("echo", {"n": n})
            job_id = bytes.fromhex(view.id)
            # What the 202 reports: a quorum's commits hold the submission.
            holding = [w for w, node in zip(watches, nodes) if _submit_fact_id(node, job_id) in w.committed]
            assert len(holding) >= 2, f"job {n} answered before a quorum committed it"
            ids.append(job_id)
            await nodes[(n + 1) % 3].dht.fetch(job_id)  # reads race the claims, grants and seals
        for job_id in ids:
            assert (await nodes[0].get(job_id, wait_s=15)).status == lifecycle.DONE
        sent = {k: sum(w.sent[k] for w in watches) for k in ("grant", "seal", "served")}
        assert sent["grant"] >= 12 and sent["seal"] >= 12 and sent["served"] > 0, sent
        assert [e for w in watches for e in w.early] == []
        # Group commit: fewer commits than the writes they carried.
        stats = [n.store.statistics() for n in nodes]
        assert sum(s["commits"] for s in stats) < sum(s["committed_ops"] for s in stats)
    finally:
        for node in nodes:
            await node.stop()


def _submit_fact_id(node: Node, job_id: bytes) -> bytes | None:
    for fact in node.store.get(job_id):
        if fact.kind == F.SUBMIT:
            return fact.fact_id
    return job_id  # not held here: the submission's fact id is not its job id, so this never matches
