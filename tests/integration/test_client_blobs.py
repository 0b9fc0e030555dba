"""Client.put_blob / get_blob (and the async pair) against real node processes:
streamed both ways, ranged, and carried on at the next node when the first one
given to the client is down."""

from __future__ import annotations

import asyncio
import hashlib
import os

import pytest
from procmesh import ProcMesh, free_port

from workmesh import AsyncClient, Client
from workmesh.client import BlobNotFound

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    with ProcMesh(3, tmp_path_factory.mktemp("blobmesh"), node_args=["--workers", "1"]) as m:
        yield m


def test_the_client_streams_blobs_up_and_down_through_any_node(mesh, tmp_path):
    data = os.urandom(3 * 1024 * 1024 + 17)
    src = tmp_path / "in.bin"
    src.write_bytes(data)
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there: the client must move on
    with Client([dead, mesh.nodes[0].url, mesh.nodes[1].url], timeout=10) as client:
        put = client.put_blob(src)
        assert put["size"] == len(data)
    with Client([dead, mesh.nodes[2].url], timeout=10) as client:
        out = tmp_path / "out.bin"
        assert client.get_blob(put["hash"], out) == len(data)
        assert hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256(data).digest()
        assert client.get_blob(put["hash"], byte_range=(1000, 1999)) == data[1000:2000]
        with pytest.raises(BlobNotFound):
            client.get_blob("00" * 32)


def test_the_async_client_uploads_bytes_and_reads_them_back(mesh):
    data = os.urandom(200_000)

    async def go():
        async with AsyncClient([mesh.nodes[1].url, mesh.nodes[0].url], timeout=10) as client:
            put = await client.put_blob(data)
            return await client.get_blob(put["hash"])

    assert asyncio.run(go()) == data
