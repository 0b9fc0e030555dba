"""Republish syncs what changed, and every held key once per full interval,
not every held key every round (real UDP and SQLite, in-process nodes).

Before, each node sent each held key's other replicas a sync round trip every
``republish_interval_s`` (60 s): for decided jobs, which never change, that
was the whole of an idle mesh's traffic, and it grew with the jobs held (0.05
of a core for three nodes holding 12,000 jobs, and a round no longer fits its
minute near the store's budget of 200,000 keys).
"""

from __future__ import annotations

import asyncio

from tests.integration.test_job_facts import three_replicas
from tests.integration.test_read_costs import wait_for
from workmesh.dht.config import DHTConfig
from workmesh.dht.upkeep import republish_round

INTERVAL_S = 0.25
FULL_S = 2.5  # ten rounds
JOBS = 40


def three_nodes(tmp_path):
    dht = DHTConfig(replicas=3, quorum=2, republish_interval_s=INTERVAL_S, republish_full_interval_s=FULL_S)
    return three_replicas(tmp_path, workers_on_first=4, dht=dht)


async def test_an_idle_node_syncs_each_held_key_about_once_per_full_interval_not_every_round(tmp_path):
    async with three_nodes(tmp_path) as nodes:
        for i in range(JOBS):
            view = await nodes[0].submit("echo", {"i": i})
            assert (await nodes[0].get(bytes.fromhex(view.id), wait_s=20.0)).status == "done"
        node = nodes[1]
        held = len(node.store.keys())
        assert held == JOBS
        # Let the rounds that carry the jobs' last writes to every replica pass
        # (changed keys go every round), then watch one full interval.
        keys = node.store.keys()
        await wait_for(lambda: all(len({frozenset(n.store.record_ids(k)) for n in nodes}) == 1 for k in keys),
                       15.0, "every replica holds every record")
        await asyncio.sleep(2 * INTERVAL_S)
        sent0, keys0 = node.dht.protocol.counters["messages_out"], node.dht.stats["republished_keys"]
        loop = asyncio.get_running_loop()
        started = loop.time()
        await wait_for(lambda: node.dht.stats["republished_keys"] - keys0 >= held, 4 * FULL_S, "every key synced once")
        took = loop.time() - started
        sent = node.dht.protocol.counters["messages_out"] - sent0
        # A slice per round: every key once took about the full interval, not one round.
        assert took >= 0.6 * FULL_S, took
        # A sync round trip per key and other replica (2), and a few pings; the
        # old code sent 2 x 40 = 80 in every round, about 800 in a full interval.
        assert sent <= 3 * 2 * held, sent


def test_a_round_takes_what_changed_and_a_slice_of_the_rest_and_every_key_within_the_full_interval():
    held = [bytes([i]) for i in range(25)]
    covered: set[bytes] = set()
    cursor = 0
    for _ in range(10):  # share 0.1: ten rounds make the full interval
        keys, cursor = republish_round([], held, cursor, 0.1)
        assert len(keys) == 3  # ceil(2.5)
        covered |= set(keys)
    assert covered == set(held)
    keys, cursor = republish_round([held[7], b"new"], held, 24, 0.1)
    assert keys == [held[7], b"new", held[24], held[0], held[1]]  # changed first, then the slice, wrapping
    assert cursor == 2
    assert republish_round([b"a"], [], 5, 0.1) == ([b"a"], 0)


class _Store:
    """The store's side of republish: held keys, and which changed since a mark."""

    def __init__(self, keys: list[bytes]) -> None:
        self._keys = keys
        self.changed: list[bytes] = []

    def keys(self) -> list[bytes]:
        return list(self._keys)

    def has(self, key: bytes) -> bool:
        return key in self._keys

    def get(self, key: bytes) -> list:
        return []

    def change_mark(self) -> int:
        return 0

    def changed_since(self, mark: int) -> list[bytes]:
        out, self.changed = self.changed, []
        return out


class _Contacts:
    def __init__(self, me, others) -> None:
        self.node, self._all = me, [me, *others]

    async def replicas_for(self, key: bytes) -> list:
        return self._all


async def test_a_key_a_replica_did_not_answer_for_goes_again_next_round_not_only_with_the_slice():
    # A replica that is down (restarting) misses the round that carried a
    # change; the key goes again in the next round, while unchanged keys wait
    # for the slice (here: a full interval of an hour, so never in this test).
    from workmesh.dht.routing import Contact
    from workmesh.dht.upkeep import Upkeep

    me, peer = Contact(b"\x01" * 20, "127.0.0.1", 1, b""), Contact(b"\x02" * 20, "127.0.0.1", 2, b"")
    keys = [bytes([i]) * 20 for i in range(100)]
    store = _Store(keys)
    store.changed = [keys[5]]
    down = {"answers": False}
    synced: list[tuple[int, bytes]] = []
    rounds = {"n": 0}

    async def sync_to(contact, key):
        synced.append((rounds["n"], key))
        return 0 if down["answers"] else None

    def end_of_round():
        rounds["n"] += 1
        down["answers"] = rounds["n"] >= 2  # back after two rounds

    config = DHTConfig(republish_interval_s=0.01, republish_full_interval_s=3600.0)
    upkeep = Upkeep(config, store, None, _Contacts(me, [peer]), sync_to, end_of_round, {"republished_keys": 0,
                                                                                          "republished_records": 0})
    task = asyncio.ensure_future(upkeep.republish_loop())
    try:
        await wait_for(lambda: rounds["n"] >= 4, 10.0, "four republish rounds")
    finally:
        task.cancel()
    by_round = {}
    for n, key in synced:
        by_round.setdefault(n, []).append(key)
    # keys[5] goes in every round until the replica answers (round 2), then
    # no more; so do the keys of each round's slice (1 of 100, at 0.01 /
    # 3600) that it missed while down. Once it answers, a round is its slice.
    assert [keys[5] in by_round.get(n, []) for n in range(4)] == [True, True, True, False]
    assert [len(by_round[n]) for n in range(4)] == [2, 3, 4, 1]
