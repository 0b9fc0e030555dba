"""A mesh-wide job list: this node's jobs and its peers', merged (``GET /jobs?scope=mesh``).

A node holds the jobs it is a replica of, accepted or ran; no node holds them
all. For a mesh-wide view the node asks its peers for their REST address
(the ``api_address`` RPC over the DHT, answered from ``Node.api_address``),
asks each of them ``GET /jobs`` over HTTP, and merges the pages with its own:
one entry per job id, the most advanced copy winning (``merge``), newest
first. Peers that do not answer in ``PEER_TIMEOUT_S`` are left out and
counted in the answer's ``nodes_failed``; at most ``PEERS_MAX`` peers are asked.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

PEERS_MAX = 64
PEER_TIMEOUT_S = 3.0
_RANK = {"pending": 0, "running": 1, "done": 2, "failed": 2, "cancelled": 2}


def advanced(doc: dict) -> tuple:
    """A job view's progress: terminal beats running beats pending, then attempts."""
    return _RANK.get(doc.get("status"), -1), doc.get("attempts") or 0


def merge(pages: Iterable[Iterable[dict]], limit: int) -> list[dict]:
    """One entry per job id (the most advanced copy), newest first, at most ``limit``."""
    best: dict[str, dict] = {}
    for page in pages:
        for doc in page:
            job_id = doc.get("id")
            if not isinstance(job_id, str):
                continue
            held = best.get(job_id)
            if held is None or advanced(doc) > advanced(held):
                best[job_id] = doc
    ordered = sorted(best.values(), key=lambda d: (-(d.get("created_ms") or 0), d["id"]))
    return ordered[:limit]


def api_url(reply: Any, peer_ip: str | None = None) -> str | None:
    """The base URL in a peer's ``api_address`` reply (``[host, port]``), or None.

    A peer that binds every interface and advertises no address answers
    ``0.0.0.0`` or ``::``: its API is then reached at ``peer_ip``, the address
    its datagrams come from."""
    if not isinstance(reply, list) or len(reply) != 2:
        return None
    host, port = reply
    if not isinstance(host, str) or not isinstance(port, int) or not 0 < port < 65536 or not host or len(host) > 255:
        return None
    if host in ("0.0.0.0", "::", "[::]"):
        if not peer_ip:
            return None
        host = peer_ip
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


async def peer_urls(dht: Any, limit: int = PEERS_MAX) -> list[str]:
    """The REST base URLs of up to ``limit`` contacts, asked over the DHT."""
    contacts = dht.router.contacts()[:limit]
    replies = await asyncio.gather(*(dht.call(c, "api_address", [], timeout_s=PEER_TIMEOUT_S) for c in contacts))
    return [url for url in (api_url(r, c.ip) for c, r in zip(contacts, replies)) if url]


async def fetch_pages(urls: list[str], status: str | None, limit: int) -> tuple[list[list[dict]], int]:
    """Each URL's first ``GET /jobs`` page (node scope); (pages, how many failed)."""
    import aiohttp

    params = {"limit": str(limit)} | ({"status": status} if status else {})
    timeout = aiohttp.ClientTimeout(total=PEER_TIMEOUT_S)

    async def one(session: aiohttp.ClientSession, url: str) -> list[dict] | None:
        try:
            async with session.get(f"{url}/jobs", params=params) as resp:
                if resp.status != 200:
                    return None
                doc = await resp.json()
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
            return None
        jobs = doc.get("jobs") if isinstance(doc, dict) else None
        return [j for j in jobs if isinstance(j, dict)] if isinstance(jobs, list) else None

    if not urls:
        return [], 0
    async with aiohttp.ClientSession(timeout=timeout) as session:
        pages = await asyncio.gather(*(one(session, u) for u in urls))
    return [p for p in pages if p is not None], sum(p is None for p in pages)
