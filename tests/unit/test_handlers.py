"""The handler kit: the decorator, the registry, and where and how long a handler runs."""

import asyncio
import threading
import time

import pytest

import workmesh
from workmesh.crypto.identity import Identity
from workmesh.node import facts as F
from workmesh.node.handlers import BUILTINS, Handler, JobContext, Registry, as_handler
from workmesh.node.leases import LeaseRules
from workmesh.node.worker import WorkerPool


@workmesh.handler("kit.sum", max_attempts=4, timeout_seconds=9)
def add(payload, ctx):
    return sum(payload)


def test_the_decorator_keeps_the_function_and_declares_the_handler():
    assert add([1, 2], JobContext("ab" * 20, 1)) == 3  # still a plain function
    h = as_handler(add, "entry-point-name")
    assert h == Handler("kit.sum", add, False, 4, 9)
    registry = Registry((h,), load_entry_points=False)
    assert registry.names == {"kit.sum"} and registry.defaults_for("kit.sum") == {"max_attempts": 4, "timeout_seconds": 9}
    assert registry.defaults_for("other") == {}
    assert as_handler(len, "plain") == Handler("plain", len)
    with pytest.raises(ValueError):
        workmesh.handler("x" * 65)
    with pytest.raises(ValueError):
        workmesh.handler("cpu-coroutine", cpu=True)(asyncio.sleep)
    assert issubclass(workmesh.PermanentError, workmesh.HandlerError)


def test_the_context_logger_is_bound_to_the_job():
    ctx = JobContext("ab" * 20, 3, "kit.sum")
    bound = ctx.log._context if hasattr(ctx.log, "_context") else ctx.log.bind()._context
    assert bound["job_id"] == "ab" * 20 and bound["attempt"] == 3 and bound["job_type"] == "kit.sum"


def pool() -> WorkerPool:
    async def no_cpu(fn, payload, ctx):
        raise AssertionError("not a cpu handler")

    return WorkerPool(Identity.from_seed(bytes(32)), None, Registry(BUILTINS, load_entry_points=False), slots=2,
                      rules=LeaseRules(), monotonic=time.monotonic, wall_ms=lambda: 0, run_cpu=no_cpu, runnable_max=10)


async def test_a_sync_handler_runs_off_the_loop_and_the_loop_keeps_turning():
    workers = pool()
    loop_thread = threading.get_ident()
    ticks = 0

    def blocking(payload, ctx):
        time.sleep(0.3)
        return threading.get_ident()

    async def ticker():
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    t = asyncio.ensure_future(ticker())
    kind, ran_in = await workers._call(Handler("b", blocking), None, JobContext("ab" * 20, 1), 5)
    t.cancel()
    assert kind == F.OK and ran_in != loop_thread
    assert ticks >= 10  # the loop went on (renewals would have) while the handler slept
    workers.stop()


async def test_a_sync_handler_past_its_timeout_ends_the_attempt_at_the_deadline():
    workers = pool()
    started = time.monotonic()
    kind, data = await workers._call(Handler("slow", lambda p, c: time.sleep(2)), None, JobContext("ab" * 20, 1), 0.2)
    assert kind == F.ERROR and data == {"error": "timed out after 0.2 s"}
    assert time.monotonic() - started < 1.0 and workers.counters["timeouts"] == 1
    workers.stop()


async def test_a_permanent_error_is_marked_final_and_other_errors_are_not():
    workers = pool()

    def permanent(payload, ctx):
        raise workmesh.PermanentError("never")

    def transient(payload, ctx):
        raise RuntimeError("maybe later")

    kind, data = await workers._call(Handler("p", permanent), None, JobContext("ab" * 20, 1), 5)
    assert (kind, data) == (F.ERROR, {"error": "never", "permanent": True})
    assert F.is_permanent_error(kind, F.canonical_json(data))
    kind, data = await workers._call(Handler("t", transient), None, JobContext("ab" * 20, 1), 5)
    assert data == {"error": "RuntimeError: maybe later"} and not F.is_permanent_error(kind, F.canonical_json(data))
    # The word in a message is not the mark.
    assert not F.is_permanent_error(F.ERROR, F.canonical_json({"error": '"permanent":true'}))
    workers.stop()


def test_a_permanent_error_result_is_final_at_its_first_attempt():
    from workmesh.node import lifecycle

    submitter, worker, replica = (Identity.from_seed(bytes([i]) * 32) for i in (1, 2, 3))
    submit = F.sign(submitter, F.SUBMIT, F.Submit("kit.sum", b"1", 3, 10_000, 60_000, 1, 1, bytes(16), 1))
    grant = F.sign(replica, F.GRANT, F.Grant(submit.job_id, F.LEASE, 1, worker.node_id, 1))

    def result(data):
        return F.sign(worker, F.RESULT, F.Result(submit.job_id, 1, F.ERROR, F.canonical_json(data), (grant,), 2))

    assert lifecycle.is_final_result(submit, result({"error": "never", "permanent": True}))
    assert not lifecycle.is_final_result(submit, result({"error": "again"}))
