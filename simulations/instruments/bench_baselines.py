"""The two baselines of simulations/instruments/bench.py: Celery and Dramatiq, each on Redis.

Why this module exists: the benchmark compares workmesh with the brokers people
would otherwise use, so the baselines must run the *same* jobs the way their
users run them: Celery with a Redis broker and Redis result backend and a
2-process prefork pool, Dramatiq with a Redis broker, the Redis results
middleware and 2 worker processes. Both are started as real worker
subprocesses through the injected ``spawn`` callable (the bench owns every
process and kills them all at the end), and driven from the bench process with
each library's own client API, so enqueue and result costs are the ones a user
pays.

The same module is imported three ways: by the bench (drivers), by
``celery -A bench_baselines:celery_app worker`` and by
``dramatiq bench_baselines:dramatiq_broker``. The workers find Redis through the
``BENCH_REDIS_URL`` environment variable; neither library is required to
import this module, so the bench can report a missing one as skipped.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SHA256_ROUNDS = 1_000
SHA256_DATA = "x"
JOB_KINDS = ("noop", "sha256")
REDIS_URL_ENV = "BENCH_REDIS_URL"
SIM_DIR = Path(__file__).resolve().parent

# Redis databases, so the two baselines never read each other's keys.
_CELERY_BROKER_DB, _CELERY_RESULT_DB = 0, 1
_DRAMATIQ_BROKER_DB, _DRAMATIQ_RESULT_DB = 2, 3


# --------------------------------------------------------------------------
# The jobs: identical for every system.


def sha256_rounds(data: str, rounds: int = SHA256_ROUNDS) -> str:
    """Hash the UTF-8 bytes of ``data`` ``rounds`` times; return the last hex digest."""
    digest = data.encode("utf-8")
    for _ in range(rounds):
        digest = hashlib.sha256(digest).digest()
    return digest.hex()


EXPECTED_SHA256 = sha256_rounds(SHA256_DATA)


def job_payload(kind: str, index: int) -> dict[str, Any]:
    """The payload of job ``index`` of ``kind``, as workmesh receives it too."""
    if kind == "noop":
        return {"i": index}
    if kind == "sha256":
        return {"data": SHA256_DATA, "rounds": SHA256_ROUNDS}
    raise ValueError(f"unknown job kind {kind!r}")


def result_ok(kind: str, payload: dict[str, Any], result: Any) -> bool:
    """Whether ``result`` is the right answer; lenient about a wrapping object.

    workmesh may return the digest bare or inside an object such as
    ``{"digest": ...}``; the echo job may return its payload bare or wrapped.
    """
    want: Any = payload if kind == "noop" else EXPECTED_SHA256
    if result == want:
        return True
    if isinstance(result, dict):
        return any(value == want for value in result.values())
    return False


def run_job(kind: str, payload: dict[str, Any]) -> Any:
    """What a worker does with one job: echo the payload, or hash."""
    if kind == "noop":
        return payload
    return sha256_rounds(payload["data"], payload["rounds"])


def missing_modules(*names: str) -> list[str]:
    """The modules of ``names`` this interpreter cannot import."""
    return [name for name in names if importlib.util.find_spec(name) is None]


# --------------------------------------------------------------------------
# Worker-side definitions, created at import when the library is present.


def _make_celery_app(base_url: str) -> Any:
    import celery

    app = celery.Celery("bench_baselines")
    app.conf.update(
        broker_url=f"{base_url}/{_CELERY_BROKER_DB}",
        result_backend=f"{base_url}/{_CELERY_RESULT_DB}",
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )

    @app.task(name="bench.noop")
    def noop(payload: dict[str, Any]) -> Any:
        return run_job("noop", payload)

    @app.task(name="bench.sha256")
    def sha256(payload: dict[str, Any]) -> Any:
        return run_job("sha256", payload)

    app.bench_tasks = {"noop": noop, "sha256": sha256}
    return app


def _make_dramatiq_broker(base_url: str) -> Any:
    import dramatiq
    from dramatiq.brokers.redis import RedisBroker
    from dramatiq.results import Results
    from dramatiq.results.backends.redis import RedisBackend

    broker = RedisBroker(url=f"{base_url}/{_DRAMATIQ_BROKER_DB}")
    backend = RedisBackend(url=f"{base_url}/{_DRAMATIQ_RESULT_DB}")
    broker.add_middleware(Results(backend=backend))

    def noop(payload: dict[str, Any]) -> Any:
        return run_job("noop", payload)

    def sha256(payload: dict[str, Any]) -> Any:
        return run_job("sha256", payload)

    actors = {
        kind: dramatiq.actor(fn, actor_name=f"bench_{kind}", broker=broker, store_results=True, max_retries=0)
        for kind, fn in (("noop", noop), ("sha256", sha256))
    }
    broker.bench_actors = actors
    broker.bench_backend = backend
    return broker


_BASE_URL = os.environ.get(REDIS_URL_ENV)
celery_app = _make_celery_app(_BASE_URL) if _BASE_URL and not missing_modules("celery") else None
dramatiq_broker = _make_dramatiq_broker(_BASE_URL) if _BASE_URL and not missing_modules("dramatiq") else None


# --------------------------------------------------------------------------
# Drivers: start the workers, push jobs, collect results.

Spawn = Callable[[str, list[str], dict[str, str]], Any]


class BaselineUnavailable(RuntimeError):
    """The baseline cannot run here (library missing, worker did not start)."""


@dataclass
class DrainOutcome:
    """What one drain achieved: jobs with a right result, wrong ones, enqueue time."""

    done: int
    wrong: int
    enqueue_s: float
    failures: dict[str, int] = field(default_factory=dict)  # the commonest reasons, with counts


@dataclass
class LatencyOutcome:
    """Submit-to-result times (seconds) of sequential jobs, and wrong or lost ones."""

    samples_s: list[float]
    wrong: int
    failure: str = ""  # why the series stopped early, if it did


LATENCY_JOB_TIMEOUT_S = 30.0  # one sequential job that takes longer counts as lost


def sequential_latency(one: Callable[[int, float], bool], samples: int, deadline_s: float) -> LatencyOutcome:
    """Time ``samples`` jobs one after another; ``one(i, timeout_s)`` runs job i.

    A job that fails to come back within LATENCY_JOB_TIMEOUT_S is counted and
    the series goes on, until ``samples`` jobs or the deadline.
    """
    started = time.monotonic()
    times: list[float] = []
    wrong, failure = 0, ""
    for i in range(samples):
        remaining = deadline_s - (time.monotonic() - started)
        if remaining <= 0:
            break
        t0 = time.perf_counter()
        try:
            ok = one(i, min(remaining, LATENCY_JOB_TIMEOUT_S))
        except Exception as exc:  # noqa: BLE001 - a lost job is counted, whatever the library raised
            ok, failure = False, failure or f"{type(exc).__name__}: {str(exc)[:80]}"
        if ok:
            times.append(time.perf_counter() - t0)
        else:
            wrong += 1
    return LatencyOutcome(times, wrong, failure)


def _outcome(count: int, done: int, wrong: int, enqueue_s: float) -> DrainOutcome:
    """A drain's outcome where every job not done is counted as wrong or lost."""
    reasons = {"wrong result": wrong, "no result by the deadline": count - done - wrong}
    return DrainOutcome(done, count - done, enqueue_s, {why: n for why, n in reasons.items() if n})


def _worker_env(base_url: str) -> dict[str, str]:
    env = dict(os.environ)
    env[REDIS_URL_ENV] = base_url
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SIM_DIR), env.get("PYTHONPATH", "")]))
    return env


class CeleryDriver:
    """Celery: Redis broker and result backend, ``worker --concurrency 2 --pool prefork``."""

    name = "celery"
    requires = ("celery", "redis")

    def __init__(self, base_url: str, spawn: Spawn, processes: int = 2) -> None:
        self._base_url = base_url
        self._spawn = spawn
        self._processes = processes
        self._app: Any = None

    def start(self) -> list[Any]:
        """Start the worker and return its process (its session holds the pool)."""
        if missing := missing_modules(*self.requires):
            raise BaselineUnavailable(f"python package(s) missing: {', '.join(missing)}")
        self._app = _make_celery_app(self._base_url)
        argv = [sys.executable, "-m", "celery", "-A", "bench_baselines:celery_app", "worker",
                "--concurrency", str(self._processes), "--pool", "prefork", "--loglevel", "WARNING",
                "--without-gossip", "--without-mingle", "--without-heartbeat"]
        return [self._spawn("celery-worker", argv, _worker_env(self._base_url))]

    def drain(self, kind: str, count: int, deadline_s: float) -> DrainOutcome:
        from celery.exceptions import TimeoutError as CeleryTimeout
        from celery.result import ResultSet

        task = self._app.bench_tasks[kind]
        started = time.monotonic()
        handles = [task.delay(job_payload(kind, i)) for i in range(count)]
        enqueue_s = time.monotonic() - started
        payloads = {h.id: job_payload(kind, i) for i, h in enumerate(handles)}
        tally = {"done": 0, "wrong": 0}

        def on_result(task_id: str, value: Any) -> None:
            tally["done" if result_ok(kind, payloads[task_id], value) else "wrong"] += 1

        try:
            ResultSet(handles, app=self._app).join_native(
                timeout=max(0.1, deadline_s - (time.monotonic() - started)),
                propagate=False, callback=on_result)
        except CeleryTimeout:
            pass
        return _outcome(count, tally["done"], tally["wrong"], enqueue_s)

    def latency(self, kind: str, samples: int, deadline_s: float) -> LatencyOutcome:
        def one(index: int, timeout_s: float) -> bool:
            payload = job_payload(kind, index)
            value = self._app.bench_tasks[kind].delay(payload).get(timeout=timeout_s, propagate=False)
            return result_ok(kind, payload, value)

        return sequential_latency(one, samples, deadline_s)

    def close(self) -> None:
        if self._app is not None:
            self._app.close()


class DramatiqDriver:
    """Dramatiq: Redis broker, Redis results middleware, 2 worker processes."""

    name = "dramatiq"
    requires = ("dramatiq", "redis")

    def __init__(self, base_url: str, spawn: Spawn, processes: int = 2, threads: int = 8) -> None:
        self._base_url = base_url
        self._spawn = spawn
        self._processes = processes
        self._threads = threads
        self._broker: Any = None

    def start(self) -> list[Any]:
        if missing := missing_modules(*self.requires):
            raise BaselineUnavailable(f"python package(s) missing: {', '.join(missing)}")
        self._broker = _make_dramatiq_broker(self._base_url)
        argv = [sys.executable, "-m", "dramatiq", "bench_baselines:dramatiq_broker",
                "--processes", str(self._processes), "--threads", str(self._threads),
                "--path", str(SIM_DIR), "--worker-shutdown-timeout", "2000"]
        return [self._spawn("dramatiq-worker", argv, _worker_env(self._base_url))]

    def _get(self, message: Any, timeout_s: float) -> Any:
        # The Redis backend waits in whole seconds; below one it would not block.
        timeout_ms = max(1_000, int(timeout_s * 1000))
        return message.get_result(backend=self._broker.bench_backend, block=True, timeout=timeout_ms)

    def drain(self, kind: str, count: int, deadline_s: float) -> DrainOutcome:
        from dramatiq.results import ResultError

        actor = self._broker.bench_actors[kind]
        started = time.monotonic()
        messages = [actor.send(job_payload(kind, i)) for i in range(count)]
        enqueue_s = time.monotonic() - started
        done = wrong = 0
        for i, message in enumerate(messages):
            remaining = deadline_s - (time.monotonic() - started)
            if remaining <= 0:
                break
            try:
                value = self._get(message, remaining)
            except ResultError:  # timeout, or the actor raised
                break
            if result_ok(kind, job_payload(kind, i), value):
                done += 1
            else:
                wrong += 1
        return _outcome(count, done, wrong, enqueue_s)

    def latency(self, kind: str, samples: int, deadline_s: float) -> LatencyOutcome:
        def one(index: int, timeout_s: float) -> bool:
            payload = job_payload(kind, index)
            message = self._broker.bench_actors[kind].send(payload)
            return result_ok(kind, payload, self._get(message, timeout_s))

        return sequential_latency(one, samples, deadline_s)

    def close(self) -> None:
        if self._broker is not None:
            self._broker.close()
