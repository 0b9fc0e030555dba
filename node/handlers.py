"""Job handlers: the handler kit, the built-ins and the ``workmesh.handlers`` entry points.

A handler is a function of ``(payload, context)``. The context carries the
job id, the attempt number, which is a fencing token (a side effect outside
the mesh can refuse an attempt lower than one it has already seen), and a
logger bound to both. Declare one with the decorator (re-exported as
``workmesh.handler``)::

    @workmesh.handler("resize", cpu=False, max_attempts=5, timeout_seconds=60)
    def resize(payload, ctx):
        ctx.log.info("resizing", width=payload["width"])
        ...

How a handler runs (``docs/handlers.md``):

- a coroutine function runs on the event loop (it must only wait, never compute);
- a plain function runs off the loop: in a thread by default, in a process
  pool with ``cpu=True``; so it may block, and lease renewals go on;
- every kind has its timeout enforced (the job's ``timeout_seconds``, or the
  handler's, or the node's): the attempt ends with an error at the deadline.
  A thread or a process cannot be killed from outside, so a handler that
  ignores the deadline keeps its thread until it returns; its result is dropped;
- raising :class:`PermanentError` fails the job at once, without a retry;
  any other exception fails the attempt, and the job is retried up to its
  ``max_attempts``.

The decorator returns the function itself (marked), so it stays importable
by name, callable in tests and picklable for the process pool. A package adds
handlers with an entry point naming such a function::

    [project.entry-points."workmesh.handlers"]
    resize = "mypkg.jobs:resize"

Built-ins that are cheaper than a thread hop (``echo``, ``fail``) are marked
``inline`` and run on the loop.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

import structlog

HANDLER_ATTRIBUTE = "__workmesh_handler__"


@dataclass(frozen=True, slots=True)
class JobContext:
    """What a handler knows of the job it runs. Picklable (the process pool sends it)."""

    job_id: str
    attempt: int  # fencing token: strictly increases across attempts of a job
    job_type: str = ""
    # Handlers that run on the loop (not cpu=True) also get the node's mesh
    # facility (node/mesh.py: blobs, child jobs) and a callable that gives
    # their worker slot back while they only wait (idempotent).
    mesh: Any = None
    release_slot: Callable[[], None] | None = None

    @property
    def log(self) -> Any:
        """A structlog logger bound to the job id, its type and the attempt."""
        return structlog.get_logger("workmesh.handler").bind(
            job_id=self.job_id, job_type=self.job_type or None, attempt=self.attempt
        )

    @property
    def logger(self) -> Any:
        """The same as :attr:`log`."""
        return self.log


class HandlerError(Exception):
    """Raised by a handler to fail an attempt with a clean message (the job is retried)."""


class PermanentError(HandlerError):
    """Raised by a handler to fail the job for good: no further attempt."""


@dataclass(frozen=True, slots=True)
class Handler:
    name: str
    fn: Callable[..., Any]
    cpu: bool = False  # a plain function runs in the process pool, not a thread
    max_attempts: int | None = None  # this type's default when a submission gives none
    timeout_seconds: float | None = None  # this type's default handler timeout
    inline: bool = field(default=False)  # a plain function cheap enough to run on the loop

    def defaults(self) -> dict:
        out: dict = {}
        if self.max_attempts is not None:
            out["max_attempts"] = self.max_attempts
        if self.timeout_seconds is not None:
            out["timeout_seconds"] = self.timeout_seconds
        return out


def handler(
    name: str, *, cpu: bool = False, max_attempts: int | None = None, timeout_seconds: float | None = None
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Declare a job handler (``@workmesh.handler("name", ...)``); see the module doc."""
    from workmesh import contract

    if not isinstance(name, str) or not 1 <= len(name) <= contract.TYPE_CHARS_MAX:
        raise ValueError(f"a handler's name is 1..{contract.TYPE_CHARS_MAX} characters")
    if max_attempts is not None and not 1 <= max_attempts <= contract.ATTEMPTS_MAX:
        raise ValueError(f"max_attempts must be in 1..{contract.ATTEMPTS_MAX}")
    if timeout_seconds is not None and not 0 < timeout_seconds <= contract.TIMEOUT_MS_MAX / 1000:
        raise ValueError("timeout_seconds must be positive and at most a day")

    def mark(fn: Callable[..., Any]) -> Callable[..., Any]:
        if asyncio.iscoroutinefunction(fn) and cpu:
            raise ValueError(f"{name}: a coroutine handler cannot run in the process pool (cpu=True)")
        setattr(fn, HANDLER_ATTRIBUTE, Handler(name, fn, cpu, max_attempts, timeout_seconds))
        return fn

    return mark


def as_handler(obj: Any, name: str) -> Handler:
    """A Handler from what an entry point names: a Handler, a decorated function or a plain one."""
    if isinstance(obj, Handler):
        return obj
    declared = getattr(obj, HANDLER_ATTRIBUTE, None)
    if isinstance(declared, Handler):
        return declared
    if not callable(obj):
        raise TypeError(f"entry point {name!r} names neither a function nor a Handler")
    return Handler(name, obj)


def echo(payload: Any, ctx: JobContext) -> Any:
    """The result is the payload."""
    return payload


async def sleep(payload: Any, ctx: JobContext) -> dict:
    """``{"seconds": s}`` -> ``{"slept": s}`` after waiting s seconds."""
    if not isinstance(payload, dict) or not isinstance(payload.get("seconds"), (int, float)):
        raise HandlerError('sleep needs {"seconds": number}')
    seconds = payload["seconds"]
    if not 0 <= seconds <= 3600:
        raise HandlerError("seconds must be between 0 and 3600")
    await asyncio.sleep(seconds)
    return {"slept": seconds}


def sha256(payload: Any, ctx: JobContext) -> dict:
    """``{"data": str, "rounds": n}``: SHA-256 applied n times to the UTF-8 bytes of data."""
    if not isinstance(payload, dict) or not isinstance(payload.get("data"), str):
        raise HandlerError('sha256 needs {"data": str, "rounds": int}')
    rounds = payload.get("rounds", 1)
    if not isinstance(rounds, int) or isinstance(rounds, bool) or not 1 <= rounds <= 10_000_000:
        raise HandlerError("rounds must be an integer from 1 to 10,000,000")
    digest = payload["data"].encode()
    for _ in range(rounds):
        digest = hashlib.sha256(digest).digest()
    return {"digest": digest.hex()}


def fail(payload: Any, ctx: JobContext) -> Any:
    """Always fails with the payload's ``message`` (for testing retries)."""
    message = payload.get("message") if isinstance(payload, dict) else None
    raise HandlerError(str(message or "failed on purpose"))


BUILTINS = (
    Handler("echo", echo, inline=True),
    Handler("sleep", sleep),
    Handler("sha256", sha256, cpu=True),
    Handler("fail", fail, inline=True),
)


class Registry:
    def __init__(self, handlers: tuple[Handler, ...] = BUILTINS, *, load_entry_points: bool = True) -> None:
        self._handlers: dict[str, Handler] = {h.name: h for h in handlers}
        if load_entry_points:
            self._load_entry_points()

    def _load_entry_points(self) -> None:
        log = structlog.get_logger()
        for ep in entry_points(group="workmesh.handlers"):
            try:
                obj = ep.load()
            except Exception as exc:  # a broken plugin must not stop the node
                log.error("handler_load_failed", handler=ep.name, error=repr(exc))
                continue
            try:
                self.add(as_handler(obj, ep.name))
            except TypeError as exc:
                log.error("handler_load_failed", handler=ep.name, error=str(exc))

    def add(self, handler: Handler) -> None:
        self._handlers[handler.name] = handler

    def get(self, name: str) -> Handler | None:
        return self._handlers.get(name)

    def defaults_for(self, name: str) -> dict:
        """The job defaults a handler declares (``max_attempts``, ``timeout_seconds``); {} if none."""
        handler = self._handlers.get(name)
        return handler.defaults() if handler is not None else {}

    @property
    def names(self) -> frozenset[str]:
        return frozenset(self._handlers)
