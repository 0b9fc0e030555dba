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


def _problem(description: str) -> dict:
    return {"description": description, "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}}


def openapi_paths(auth: bool) -> dict:
    """The OpenAPI paths of these routes (``api/openapi.py`` adds them to the document)."""
    secured = {"security": [{"bearerAuth": []}]} if auth else {}
    blob_hash = {
        "name": "hash",
        "in": "path",
        "required": True,
        "description": "64 lowercase hex characters: the SHA-256 of the blob's manifest.",
        "schema": {"type": "string"},
    }
    binary = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
    ref = {
        "type": "object",
        "required": ["hash", "size"],
        "properties": {"hash": {"type": "string", "pattern": "^[0-9a-f]{64}$"}, "size": {"type": "integer", "minimum": 0}},
    }
    upload_errors = {
        "400": _problem("Malformed request."),
        **({"401": _problem("Missing or wrong bearer token.")} if auth else {}),
        "408": _problem("The upload stalled."),
        "413": _problem("Larger than this node's per-blob limit (1 GiB by default)."),
        "429": _problem("Too many requests from this client."),
        "500": _problem("Unexpected server error."),
        "503": _problem("Too few nodes reachable to hold two copies of each chunk."),
        "507": _problem("Past this node's disk budget, or the nodes the chunks belong on are full."),
    }
    return {
        "/blobs": {
            "post": {
                "operationId": "uploadBlob",
                "summary": "Store a blob (streamed); content-addressed chunks replicated in the mesh.",
                **secured,
                "requestBody": {"required": True, "content": binary},
                "responses": {
                    "201": {
                        "description": "Stored.",
                        "headers": {"Location": {"description": "/blobs/{hash}", "schema": {"type": "string"}}},
                        "content": {"application/json": {"schema": ref}},
                    },
                    **upload_errors,
                },
            }
        },
        "/blobs/{hash}": {
            "get": {
                "operationId": "downloadBlob",
                "summary": "A blob's bytes from any node, streamed; one Range (bytes=a-b, a-, -n) answers 206.",
                "parameters": [
                    blob_hash,
                    {"name": "Range", "in": "header", "required": False, "schema": {"type": "string"}},
                ],
                "responses": {
                    "200": {"description": "The blob.", "content": binary},
                    "206": {"description": "The range asked.", "content": binary},
                    "400": _problem("Malformed request."),
                    "404": _problem("No node holds a blob of this hash."),
                    "416": _problem("The range starts past the end."),
                    "429": _problem("Too many requests from this client."),
                    "500": _problem("Unexpected server error."),
                    "503": _problem("Some of the blob's chunks are unreachable now."),
                },
            }
        },
    }


def register(app: web.Application) -> None:
    app.router.add_post("/blobs", upload_blob)
    app.router.add_get("/blobs/{hash}", download_blob)


__all__ = ["register", "BlobNotFound"]
