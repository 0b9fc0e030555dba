"""Blob transfers for Python clients: ``put_blob`` and ``get_blob``, streamed.

Plain functions of a node's base URL (standard library only), so any client
can offer them; ``workmesh.client.Client`` exposes them as methods. Neither
holds a blob in memory: uploads read the source in ``BLOCK_BYTES`` blocks,
downloads write each block as it arrives. ``progress(done, total)`` is called
as bytes move (``total`` may be None when unknown).

    from workmesh.blobs_client import put_blob, get_blob
    doc = put_blob("http://127.0.0.1:8000", "photo.jpg")   # {"hash": ..., "size": ...}
    get_blob("http://127.0.0.1:8001", doc["hash"], "copy.jpg")
    get_blob(url, h, "part.bin", byte_range=(0, 1023))     # the first KiB
"""

from __future__ import annotations

import http.client
import io
import json
import os
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator
from typing import IO, Any

BLOCK_BYTES = 256 * 1024
Progress = Callable[[int, "int | None"], None]


class BlobError(Exception):
    """The node answered with an error (``status`` and the problem document)."""

    def __init__(self, status: int, problem: dict) -> None:
        super().__init__(f"{status}: {problem.get('detail') or problem.get('title') or problem}")
        self.status = status
        self.problem = problem


def _connection(base_url: str, timeout_s: float) -> tuple[http.client.HTTPConnection, str]:
    url = urllib.parse.urlsplit(base_url.rstrip("/"))
    cls = http.client.HTTPSConnection if url.scheme == "https" else http.client.HTTPConnection
    return cls(url.hostname, url.port, timeout=timeout_s, blocksize=BLOCK_BYTES), url.path


def _problem(resp: http.client.HTTPResponse) -> BlobError:
    raw = resp.read()
    try:
        doc = json.loads(raw) if raw else {}
    except ValueError:
        doc = {"detail": raw[:200].decode(errors="replace")}
    return BlobError(resp.status, doc)


class _Counting(io.RawIOBase):
    def __init__(self, source: IO[bytes], total: int | None, progress: Progress | None) -> None:
        self.source, self.total, self.progress, self.done = source, total, progress, 0

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        data = self.source.read(n if n and n > 0 else BLOCK_BYTES)
        self.done += len(data)
        if self.progress is not None:
            self.progress(self.done, self.total)
        return data


def put_blob(
    base_url: str,
    source: str | os.PathLike | bytes | IO[bytes],
    *,
    token: str | None = None,
    progress: Progress | None = None,
    timeout_s: float = 600.0,
) -> dict:
    """Upload a file (path), bytes or binary file object; the node's ``{"hash", "size"}``."""
    opened = None
    if isinstance(source, (bytes, bytearray)):
        stream: IO[bytes] = io.BytesIO(source)
        total: int | None = len(source)
    elif isinstance(source, (str, os.PathLike)):
        stream = opened = open(source, "rb")
        total = os.fstat(stream.fileno()).st_size
    else:
        stream = source
        try:
            total = os.fstat(stream.fileno()).st_size - stream.tell()
        except (AttributeError, OSError, io.UnsupportedOperation):
            total = None
    conn, prefix = _connection(base_url, timeout_s)
    try:
        headers = {"Content-Type": "application/octet-stream"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        body = _Counting(stream, total, progress)
        if total is not None:
            headers["Content-Length"] = str(total)
        else:
            headers["Transfer-Encoding"] = "chunked"
        conn.request("POST", f"{prefix}/blobs", body=body, headers=headers, encode_chunked=total is None)
        resp = conn.getresponse()
        if resp.status != 201:
            raise _problem(resp)
        return json.loads(resp.read())
    finally:
        conn.close()
        if opened is not None:
            opened.close()


def iter_blob(
    base_url: str, digest: str, *, byte_range: tuple[int, int] | None = None, timeout_s: float = 600.0
) -> Iterator[bytes]:
    """The blob's bytes (or bytes ``start..end`` inclusive) block by block."""
    conn, prefix = _connection(base_url, timeout_s)
    try:
        headers = {"Range": f"bytes={byte_range[0]}-{byte_range[1]}"} if byte_range else {}
        conn.request("GET", f"{prefix}/blobs/{digest}", headers=headers)
        resp = conn.getresponse()
        if resp.status not in (200, 206):
            raise _problem(resp)
        length = resp.getheader("Content-Length")
        yield int(length) if length is not None else -1  # first item: the length (see get_blob)
        while block := resp.read(BLOCK_BYTES):
            yield block
    finally:
        conn.close()


def get_blob(
    base_url: str,
    digest: str,
    dest: str | os.PathLike | IO[bytes] | None = None,
    *,
    byte_range: tuple[int, int] | None = None,
    progress: Progress | None = None,
    timeout_s: float = 600.0,
) -> int | bytes:
    """Download a blob into ``dest`` (a path, written whole or not at all, or a
    binary file object): the byte count. Without ``dest``: the bytes."""
    blocks = iter_blob(base_url, digest, byte_range=byte_range, timeout_s=timeout_s)
    length = next(blocks)
    total = length if length >= 0 else None
    if dest is None:
        out = bytearray()
        for block in blocks:
            out += block
            if progress is not None:
                progress(len(out), total)
        return bytes(out)
    tmp = None
    if isinstance(dest, (str, os.PathLike)):
        tmp = f"{os.fspath(dest)}.part"
        sink: IO[bytes] = open(tmp, "wb")
    else:
        sink = dest
    done = 0
    try:
        for block in blocks:
            sink.write(block)
            done += len(block)
            if progress is not None:
                progress(done, total)
        if total is not None and done != total:
            raise BlobError(502, {"detail": f"the node sent {done} of {total} bytes"})
    except BaseException:
        if tmp is not None:
            sink.close()
            os.unlink(tmp)
        raise
    if tmp is not None:
        sink.close()
        os.replace(tmp, dest)
    return done


class ProgressBar:
    """A one-line progress bar on a terminal (``stream`` must be a tty; else silent)."""

    def __init__(self, label: str, stream: Any = None) -> None:
        self.label = label
        self.stream = stream or sys.stderr
        self.enabled = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.started = time.monotonic()
        self._last = 0.0

    def __call__(self, done: int, total: int | None) -> None:
        now = time.monotonic()
        if not self.enabled or (now - self._last < 0.1 and done != total):
            return
        self._last = now
        rate = done / max(now - self.started, 1e-6) / 2**20
        if total:
            filled = int(30 * done / total)
            bar = "#" * filled + "-" * (30 - filled)
            text = f"\r{self.label} [{bar}] {100 * done / total:5.1f}% {done / 2**20:8.1f} MiB {rate:6.1f} MiB/s"
        else:
            text = f"\r{self.label} {done / 2**20:8.1f} MiB {rate:6.1f} MiB/s"
        self.stream.write(text)
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()
