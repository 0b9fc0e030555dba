"""node/tasks.py and Node.stop: every task a node starts is its own, and a
stopped node leaves none of them running (a handler mid-run included)."""

from __future__ import annotations

import asyncio

from workmesh.crypto.identity import Identity
from workmesh.node.config import NodeConfig
from workmesh.node.handlers import BUILTINS, Handler, Registry
from workmesh.node.node import Node, bind_udp
from workmesh.node.tasks import TaskSet


async def _inline(fn, payload, ctx):
    return fn(payload, ctx)


def _pending_others() -> list[str]:
    me = asyncio.current_task()
    return sorted(f"{t.get_name()}: {t.get_coro()!r}" for t in asyncio.all_tasks() if t is not me and not t.done())


async def test_a_stopped_node_leaves_no_task_running_not_even_a_handler_mid_run(tmp_path) -> None:
    started = asyncio.Event()

    async def forever(payload, ctx):
        started.set()
        await asyncio.Event().wait()

    registry = Registry((*BUILTINS, Handler("forever", forever)), load_entry_points=False)
    node = Node(
        NodeConfig(data_dir=str(tmp_path), workers=1),
        identity=Identity.from_seed(b"t" * 32),
        run_cpu=_inline,
        registry=registry,
        in_memory=True,
    )
    before = set(asyncio.all_tasks())
    await node.start(bind=bind_udp("127.0.0.1", 0))
    await node.join([])
    await node.submit("forever", {})
    async with asyncio.timeout(10):
        await started.wait()
    assert node.workers.busy == 1 and len(node.tasks) > 0

    await node.stop()

    assert len(node.tasks) == 0
    assert _pending_others() == sorted(f"{t.get_name()}: {t.get_coro()!r}" for t in before if not t.done() and t is not asyncio.current_task())


async def test_a_failing_task_is_reported_and_the_others_go_on() -> None:
    errors: list[tuple[str, str]] = []
    tasks = TaskSet(lambda name, exc: errors.append((name, str(exc))))

    async def fail() -> None:
        raise ValueError("boom")

    forever = tasks.spawn(asyncio.Event().wait(), "service")
    failed = tasks.spawn(fail(), "fails")
    await asyncio.wait([failed])  # the set's own callback ran first: the failure is reported
    assert errors == [("fails", "boom")] and not forever.done()
    await tasks.stop()
    assert forever.cancelled() and len(tasks) == 0


async def test_a_task_spawned_once_stopping_never_runs() -> None:
    tasks = TaskSet(lambda name, exc: None)
    ran = []

    async def late() -> None:
        ran.append(1)

    await tasks.stop()
    future = tasks.spawn(late(), "late")
    assert future.cancelled() and len(tasks) == 0
    await asyncio.sleep(0)
    assert ran == []
