"""node/watch.py: the registry of clients waiting on jobs.

Each wait leaves no entry behind however it ends; waiters of one job wake
together and share one read per poll interval, which backs off.
"""

from __future__ import annotations

import asyncio

import pytest

from workmesh.node.watch import JobWatch

JOB = b"\x01" * 20
OTHER = b"\x02" * 20


async def test_an_entry_lives_only_while_someone_waits():
    watch = JobWatch()
    with watch.watching(JOB, 0.05, 1.0) as first:
        with watch.watching(JOB, 9.0, 9.0) as second:
            assert first is second and len(watch) == 1
            assert watch.statistics()["waiting"] == 2
            assert second.poll_s == 0.05, "the first waiter of a job sets its schedule"
        assert len(watch) == 1
    assert len(watch) == 0 and watch.statistics()["waiting"] == 0


async def test_a_wait_that_raises_or_is_cancelled_leaves_no_entry():
    watch = JobWatch()
    with pytest.raises(LookupError):
        with watch.watching(JOB, 0.05, 1.0):
            raise LookupError("not found")
    assert len(watch) == 0

    async def waiter() -> None:
        with watch.watching(OTHER, 0.05, 1.0) as entry:
            await watch.wait_changed(entry, asyncio.get_running_loop().time() + 60)

    task = asyncio.create_task(waiter())
    while not len(watch):
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(watch) == 0


async def test_notify_wakes_every_waiter_of_the_job_and_no_other():
    watch = JobWatch()
    loop = asyncio.get_running_loop()
    woke: list[tuple[bytes, bool]] = []

    async def waiter(job_id: bytes) -> None:
        with watch.watching(job_id, 30.0, 30.0) as entry:
            woke.append((job_id, await watch.wait_changed(entry, loop.time() + 0.3)))

    tasks = [asyncio.create_task(waiter(JOB)) for _ in range(5)] + [asyncio.create_task(waiter(OTHER))]
    while watch.statistics()["waiting"] < 6:
        await asyncio.sleep(0)
    watch.notify(JOB)
    watch.notify(b"\x09" * 20)  # nobody waits: nothing happens, nothing is kept
    await asyncio.gather(*tasks)
    assert sorted(woke) == [(JOB, True)] * 5 + [(OTHER, False)]
    assert len(watch) == 0


async def test_waiters_of_one_job_share_one_read():
    watch = JobWatch()
    reads = 0
    release = asyncio.Event()

    async def read() -> str:
        nonlocal reads
        reads += 1
        await release.wait()
        return "running"

    async def waiter() -> str:
        with watch.watching(JOB, 0.05, 1.0) as entry:
            return await watch.refresh(entry, read)

    tasks = [asyncio.create_task(waiter()) for _ in range(100)]
    while watch.statistics()["waiting"] < 100:
        await asyncio.sleep(0)
    release.set()
    assert await asyncio.gather(*tasks) == ["running"] * 100
    assert reads == 1 and watch.counters["reads_shared"] == 99


async def test_when_the_reader_leaves_another_waiter_reads():
    watch = JobWatch()
    started = asyncio.Event()
    calls = 0

    async def read() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            started.set()
            await asyncio.sleep(60)
        return "done"

    async def waiter() -> str:
        with watch.watching(JOB, 0.05, 1.0) as entry:
            return await watch.refresh(entry, read)

    first = asyncio.create_task(waiter())
    await started.wait()
    second = asyncio.create_task(waiter())

    async def joined() -> None:  # the second waiter is in, waiting on the read in flight
        while watch.counters["waits"] < 2:
            await asyncio.sleep(0)

    await asyncio.wait_for(joined(), 5)
    first.cancel()
    assert await asyncio.wait_for(second, 5) == "done"
    assert calls == 2 and len(watch) == 0


async def test_a_failed_read_reaches_every_waiter_and_is_not_left_unretrieved():
    watch = JobWatch()

    async def read() -> str:
        await asyncio.sleep(0.01)
        raise LookupError("gone")

    async def waiter() -> None:
        with watch.watching(JOB, 0.05, 1.0) as entry:
            await watch.refresh(entry, read)

    results = await asyncio.gather(*(waiter() for _ in range(3)), return_exceptions=True)
    assert all(isinstance(r, LookupError) for r in results)
    assert len(watch) == 0


async def test_reads_back_off_to_the_maximum_interval():
    now = [100.0]
    watch = JobWatch(monotonic=lambda: now[0])

    async def read() -> str:
        return "running"

    with watch.watching(JOB, 0.05, 2.0) as entry:
        assert entry.due_at == pytest.approx(100.05)
        gaps = []
        for _ in range(8):
            now[0] = entry.due_at
            assert watch.read_due(entry)
            await watch.refresh(entry, read)
            gaps.append(round(entry.due_at - now[0], 3))
            assert not watch.read_due(entry)
    assert gaps == [0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0, 2.0]


async def test_a_failed_read_is_freed_at_once_not_by_the_collector():
    """A 404 must not leave a reference cycle (exception -> traceback -> frame
    -> future -> exception): under a flood of random ids such cycles pile up
    between collections and the node's memory does not come back."""
    import gc
    import weakref

    class Gone(LookupError):
        pass

    watch = JobWatch()
    refs = []

    async def read() -> str:
        raise Gone("no such job")

    gc.disable()
    try:
        for shared in (1, 3):
            async def waiter() -> None:
                with watch.watching(JOB, 0.05, 1.0) as entry:
                    try:
                        await watch.refresh(entry, read)
                    except Gone as exc:
                        refs.append(weakref.ref(exc))

            await asyncio.gather(*(waiter() for _ in range(shared)))
            assert len(refs) == shared
            assert all(ref() is None for ref in refs), f"the exception of a read shared by {shared} outlived it"
            refs.clear()
    finally:
        gc.enable()
