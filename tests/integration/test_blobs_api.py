"""The blob endpoints of one in-process node, served for real over HTTP on 127.0.0.1."""

from __future__ import annotations

import os
from dataclasses import replace

import pytest
from aiohttp.test_utils import TestClient, TestServer

from workmesh.api.app import create_app
from workmesh.node.config import NodeConfig
from workmesh.node.node import Node


@pytest.fixture
async def client(tmp_path):
    config = NodeConfig(data_dir=str(tmp_path / "n"), workers=0, blob_bytes_max=300_000)
    node = Node(replace(config, dht=replace(config.dht, replicas=1, quorum=1)))
    await node.start()
    client = TestClient(TestServer(create_app(node, api_token=None), host="127.0.0.1"))
    await client.start_server()
    yield client
    await client.close()
    await node.stop()


async def test_upload_download_ranges_and_head(client):
    data = os.urandom(200_000)
    resp = await client.post("/blobs", data=data, headers={"Content-Type": "application/octet-stream"})
    assert resp.status == 201
    doc = await resp.json()
    assert doc["size"] == len(data) and resp.headers["Location"] == f"/blobs/{doc['hash']}"
    resp = await client.get(resp.headers["Location"])
    assert resp.status == 200 and await resp.read() == data
    assert resp.headers["Content-Length"] == str(len(data)) and resp.headers["Accept-Ranges"] == "bytes"
    for header, status, span in (
        ("bytes=0-9", 206, slice(0, 10)),
        ("bytes=49000-50000", 206, slice(49000, 50001)),  # across a chunk boundary
        ("bytes=-5", 206, slice(len(data) - 5, None)),
        ("bytes=199990-", 206, slice(199990, None)),
    ):
        resp = await client.get(f"/blobs/{doc['hash']}", headers={"Range": header})
        assert resp.status == status and await resp.read() == data[span]
        assert resp.headers["Content-Range"].endswith(f"/{len(data)}")
    resp = await client.get(f"/blobs/{doc['hash']}", headers={"Range": "bytes=200000-"})
    assert resp.status == 416 and resp.headers["Content-Range"] == f"bytes */{len(data)}"
    resp = await client.head(f"/blobs/{doc['hash']}")
    assert resp.status == 200 and resp.headers["Content-Length"] == str(len(data))


async def test_an_empty_blob_and_unknown_hashes(client):
    resp = await client.post("/blobs", data=b"")
    doc = await resp.json()
    assert resp.status == 201 and doc["size"] == 0
    resp = await client.get(f"/blobs/{doc['hash']}")
    assert resp.status == 200 and await resp.read() == b""
    for name in ("0" * 64, "not-a-hash", "AB" * 32):
        resp = await client.get(f"/blobs/{name}")
        assert resp.status == 404 and resp.content_type == "application/problem+json"
        assert (await resp.json())["status"] == 404


async def test_a_blob_past_the_limit_is_413_and_leaves_nothing(client):
    resp = await client.post("/blobs", data=os.urandom(300_001))
    assert resp.status == 413 and resp.content_type == "application/problem+json"

    async def stream():
        for _ in range(10):
            yield os.urandom(40_000)

    resp = await client.post("/blobs", data=stream())
    assert resp.status == 413
    status = await (await client.get("/status")).json()
    assert status["blobs"]["chunks"] == 0 and status["blobs"]["disk_bytes_used"] == 0
