"""Job handlers: the built-ins and the ``workmesh.handlers`` entry-point group.

A handler is a function of ``(payload, context)`` where ``context`` carries the
job id and the attempt number, which is a fencing token: a side effect
outside the mesh can refuse an attempt lower than one it has already seen.

Handlers marked ``cpu=True`` run in a process pool, off the event loop;
coroutine handlers run on the loop (they must only wait, never compute);
plain functions with ``cpu=False`` are declared cheap and run on the loop
directly (``echo``, ``fail``): a pool round trip would cost more than they do.

A third-party package adds handlers with an entry point::

    [project.entry-points."workmesh.handlers"]
    resize = "mypkg.jobs:resize"          # a function, or a Handler instance
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

import structlog


@dataclass(frozen=True, slots=True)
class JobContext:
    job_id: str
    attempt: int  # fencing token: strictly increases across attempts of a job
    # Handlers that run on the loop (not cpu=True) also get the node's mesh
    # facility (node/mesh.py: blobs, child jobs) and a callable that gives
    # their worker slot back while they only wait (idempotent).
    mesh: Any = None
    release_slot: Callable[[], None] | None = None


class HandlerError(Exception):
    """Raised by a handler to fail an attempt with a clean message."""


@dataclass(frozen=True, slots=True)
class Handler:
    name: str
    fn: Callable[..., Any]
    cpu: bool = False


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
    Handler("echo", echo),
    Handler("sleep", sleep),
    Handler("sha256", sha256, cpu=True),
    Handler("fail", fail),
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
            self.add(obj if isinstance(obj, Handler) else Handler(ep.name, obj))

    def add(self, handler: Handler) -> None:
        self._handlers[handler.name] = handler

    def get(self, name: str) -> Handler | None:
        return self._handlers.get(name)

    @property
    def names(self) -> frozenset[str]:
        return frozenset(self._handlers)
