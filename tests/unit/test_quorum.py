"""Quorum gathering without a server: when dht.quorum.gather_quorum stops
waiting for replicas, and what it reports for those it did not hear."""

from __future__ import annotations

import asyncio
import os

import pytest

from workmesh.dht.quorum import gather_quorum
from workmesh.dht.routing import Contact

MISSING = "missing"


class Replicas:
    """Contacts that answer ``("ok", id)`` after their own delay, or raise."""

    def __init__(self, *delays: float | Exception | asyncio.Event) -> None:
        self.contacts = [Contact(os.urandom(20), "127.0.0.1", 500 + i, b"k" * 32) for i in range(len(delays))]
        self.delays = {c.id: d for c, d in zip(self.contacts, delays)}
        self.tasks: set[asyncio.Task] = set()

    def spawn(self, coro, name: str) -> asyncio.Task:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        return task

    async def call(self, contact: Contact):
        delay = self.delays[contact.id]
        if isinstance(delay, Exception):
            await asyncio.sleep(0.002)
            raise delay
        if isinstance(delay, asyncio.Event):  # answers once the test sets it
            await delay.wait()
        else:
            await asyncio.sleep(delay)
        return ("ok", contact.id)

    async def gather(self, quorum: int, *, grace_max_s: float = 3600.0, **kw) -> dict[bytes, object]:
        return await asyncio.wait_for(
            gather_quorum(
                self.contacts, self.call, quorum, lambda a: a != MISSING, MISSING,
                spawn=self.spawn, grace_max_s=grace_max_s, **kw,
            ),
            timeout=5,
        )

    def heard(self, answers: dict[bytes, object]) -> list[int]:
        """Indexes of the contacts whose answer counted."""
        return [i for i, c in enumerate(self.contacts) if answers[c.id] != MISSING]


@pytest.fixture
async def replicas_of():
    made: list[Replicas] = []

    def make(*delays: float | Exception | asyncio.Event) -> Replicas:
        made.append(Replicas(*delays))
        return made[-1]

    yield make
    for r in made:  # the calls left running, as a server's protocol would on close
        for task in r.tasks:
            task.cancel()


async def test_after_the_quorum_a_replica_within_the_grace_still_counts(replicas_of):
    r = replicas_of(0.005, 0.005, 0.02, 60)
    answers = await r.gather(2, grace_s=0.5)
    assert r.heard(answers) == [0, 1, 2]  # the 60 s one is left behind, still running
    assert answers[r.contacts[3].id] == MISSING
    assert any(not t.done() for t in r.tasks)


async def test_the_adaptive_grace_is_the_time_the_quorum_took_not_the_cap(replicas_of):
    r = replicas_of(0.005, 0.005, 60)
    loop = asyncio.get_running_loop()
    started = loop.time()
    answers = await r.gather(2, grace_max_s=3600.0)
    assert r.heard(answers) == [0, 1]
    assert loop.time() - started < 2.0


async def test_no_grace_returns_at_the_quorum(replicas_of):
    r = replicas_of(0.005, 0.005, 0.2)
    answers = await r.gather(2, grace_s=0.0)
    assert r.heard(answers) == [0, 1]


async def test_on_quorum_is_called_once_with_the_answers_so_far(replicas_of):
    r = replicas_of(0.005, 0.01, 0.05)
    seen: list[dict] = []
    answers = await r.gather(2, grace_s=1.0, on_quorum=lambda so_far: seen.append(dict(so_far)))
    a, b, c = r.contacts
    assert seen == [{a.id: ("ok", a.id), b.id: ("ok", b.id)}]
    assert r.heard(answers) == [0, 1, 2]


async def test_when_all_answer_nothing_waits_out_the_grace(replicas_of):
    last = asyncio.Event()  # the third answers only after the quorum: on a busy machine
    r = replicas_of(0.002, 0.004, last)  # timed delays could all land in one wake-up
    seen: list[dict] = []

    def on_quorum(so_far: dict) -> None:
        seen.append(dict(so_far))
        last.set()

    answers = await r.gather(2, grace_s=3600.0, on_quorum=on_quorum)  # well inside wait_for's 5 s
    assert r.heard(answers) == [0, 1, 2]
    assert len(seen) == 1


async def test_a_call_that_raises_counts_as_missing_not_toward_the_quorum(replicas_of):
    r = replicas_of(RuntimeError("lost"), 0.005, 0.03)
    answers = await r.gather(2, grace_s=0.0)
    assert answers[r.contacts[0].id] == MISSING
    assert r.heard(answers) == [1, 2]  # the quorum waited for the third replica
