"""The process pool that CPU handlers run in (``node.node.process_pool_runner``):
real forked processes, sized by the cores, not by the worker slots."""

from __future__ import annotations

import asyncio
import os
import time

from workmesh.node.node import process_pool_runner


def _pid_after(delay_s, _ctx):
    time.sleep(delay_s)
    return os.getpid()


async def test_a_node_with_more_slots_than_cores_runs_cpu_handlers_in_one_process_per_core():
    # 16 slots on 2 cores: six CPU jobs at once share two processes (each
    # forked process holds ~40 MiB; more of them than cores adds memory, not speed).
    run, close = process_pool_runner(16, cores=2)
    try:
        pids = await asyncio.wait_for(asyncio.gather(*(run(_pid_after, 0.2, None) for _ in range(6))), 30)
    finally:
        close()
    assert len(set(pids)) == 2
    assert os.getpid() not in pids


async def test_a_node_with_one_slot_still_gets_one_process():
    run, close = process_pool_runner(0, cores=8)
    try:
        pids = await asyncio.wait_for(asyncio.gather(*(run(_pid_after, 0.05, None) for _ in range(3))), 30)
    finally:
        close()
    assert len(set(pids)) == 1
