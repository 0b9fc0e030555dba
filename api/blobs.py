"""REST endpoints for blobs: ``POST /blobs`` and ``GET /blobs/{hash}``.

A thin shell over ``node.blobs.BlobService`` (the node's ``blobs``
attribute): bytes stream from the request into the service and from the
service into the response, never whole in memory. Errors are raised as the
node's typed errors and answered by ``api/errors.py`` like every other.
``register(app)`` adds the routes (``api/app.py`` calls it).
"""

from __future__ import annotations

import asyncio

from aiohttp import web
from workmesh.node.errors import BlobNotFound, NotReady
from workmesh.node.manifest import RangeNotSatisfiable, parse_range

READ_IDLE_S = 30.0  # an upload whose next bytes take longer than this is dropped


def _service(request: web.Request):
    from workmesh.api.app import SERVICE

    blobs = getattr(request.app[SERVICE], "blobs", None)
    if blobs is None:
        raise NotReady("this node keeps no blobs")
    return blobs


async def upload_blob(request: web.Request) -> web.Response:
    from workmesh.api.app import _check_token

    _check_token(request)
    blobs = _service(request)

    async def read(n: int) -> bytes:
        try:
            async with asyncio.timeout(READ_IDLE_S):
                return await request.content.read(n)
        except TimeoutError:
            raise web.HTTPRequestTimeout(reason="the upload stalled") from None

    digest, size = await blobs.upload(read, request.content_length)
    return web.json_response({"hash": digest, "size": size}, status=201, headers={"Location": f"/blobs/{digest}"})


async def download_blob(request: web.Request) -> web.StreamResponse:
    blobs = _service(request)
    digest = request.match_info["hash"]
    manifest = await blobs.manifest(digest)
    size = manifest.size
    headers = {
        "Content-Type": "application/octet-stream",
        "Accept-Ranges": "bytes",
        "ETag": f'"{digest}"',
        "Cache-Control": "public, max-age=31536000, immutable",
    }
    try:
        span = parse_range(request.headers.get("Range"), size)
    except RangeNotSatisfiable:
        raise web.HTTPRequestRangeNotSatisfiable(headers={"Content-Range": f"bytes */{size}"}) from None
    start, end = span if span is not None else (0, size - 1)
    status = 206 if span is not None else 200
    if span is not None:
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    resp = web.StreamResponse(status=status, headers=headers)
    resp.content_length = end - start + 1 if size else 0
    if request.method == "HEAD" or not size:
        await resp.prepare(request)
        await resp.write_eof()
        return resp
    keys = await blobs.data_keys(manifest)
    pieces = blobs.stream(manifest, keys, start, end)
    first = await anext(pieces)  # a blob unreachable now fails before the headers go out
    await resp.prepare(request)
    try:
        await resp.write(first)
        async for piece in pieces:
            await resp.write(piece)
    except (ConnectionError, asyncio.CancelledError):
        raise
    except Exception as exc:  # headers are sent: the only way to say so is a short body
        request.app.logger.warning("blob_stream_broken: %r", exc)
        if request.transport is not None:
            request.transport.close()
        return resp
    finally:
        await pieces.aclose()
    await resp.write_eof()
    return resp


def register(app: web.Application) -> None:
    app.router.add_post("/blobs", upload_blob)
    app.router.add_get("/blobs/{hash}", download_blob)


__all__ = ["register", "BlobNotFound"]
