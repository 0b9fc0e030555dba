"""Example job handlers, one per part of the handler kit (docs/handlers.md).

Each is a plain function of ``(payload, ctx)`` declared with
``@workmesh.handler``; the package's entry points (pyproject.toml) name them
so that a node that has the package installed runs these job types.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time

import workmesh

log = logging.getLogger(__name__)  # stdlib logging: rendered like the node's own events


@workmesh.handler("example.wordcount", max_attempts=2, timeout_seconds=30)
def wordcount(payload, ctx):
    """``{"text": str}`` -> ``{"words": n, "attempt": a}``."""
    if not isinstance(payload, dict) or not isinstance(payload.get("text"), str):
        raise workmesh.PermanentError('wordcount needs {"text": str}')
    words = len(payload["text"].split())
    ctx.log.info("counted", words=words)  # bound to the job id and attempt
    return {"words": words, "attempt": ctx.attempt}


@workmesh.handler("example.resize", max_attempts=5)
def resize(payload, ctx):
    """``{"width": w, "height": h, "scale": s}`` -> the scaled size.

    A request no retry can fix fails the job at once: PermanentError.
    """
    try:
        width, height, scale = int(payload["width"]), int(payload["height"]), float(payload["scale"])
    except (KeyError, TypeError, ValueError) as exc:
        raise workmesh.PermanentError(f"bad resize request: {exc!r}") from None
    if width <= 0 or height <= 0 or scale <= 0:
        raise workmesh.PermanentError("width, height and scale must be positive")
    return {"width": round(width * scale), "height": round(height * scale)}


@workmesh.handler("example.nap", timeout_seconds=60)
def nap(payload, ctx):
    """``{"seconds": s}``: blocks its thread for s seconds (time.sleep), then answers.

    It runs in a thread, so the node's event loop keeps renewing the job's
    lease while it sleeps; past the job's timeout the attempt fails.
    """
    seconds = float(payload.get("seconds", 1)) if isinstance(payload, dict) else 1.0
    started = time.monotonic()
    time.sleep(seconds)
    return {"slept": round(time.monotonic() - started, 3), "attempt": ctx.attempt}


@workmesh.handler("example.checksum", cpu=True, timeout_seconds=120)
def checksum(payload, ctx):
    """``{"data": str, "rounds": n}``: BLAKE2b n times, in the node's process pool."""
    digest = str(payload["data"]).encode()
    for _ in range(int(payload.get("rounds", 1))):
        digest = hashlib.blake2b(digest).digest()
    return {"blake2b": digest.hex()}


@workmesh.handler("example.fetch", timeout_seconds=10)
async def fetch(payload, ctx):
    """An ``async def`` handler runs on the event loop: it may only wait, never compute."""
    log.info("fetching %s for job %s", payload, ctx.job_id)
    await asyncio.sleep(float(payload.get("delay", 0)) if isinstance(payload, dict) else 0)
    return {"fetched": payload}
