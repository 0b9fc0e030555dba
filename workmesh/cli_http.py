"""The HTTP calls of the ``workmesh`` client commands, with failover over several nodes.

A deliberately small transport for ``workmesh/commands.py``: one request at a
time over the standard library, JSON in and out. A refused connection, a
timeout or a ``503`` sends the same request to the next URL given (a submit
carries an ``Idempotency-Key``, so a resend cannot make a second job). Every
failure becomes an ``ApiError`` whose message is one line for a person; the
commands never show a traceback. (When ``workmesh.client.Client`` offers the
same failover, the commands can move onto it: this module is their only
door to the network.)
"""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

DEFAULT_URL = "http://127.0.0.1:8000"
USER_AGENT = "workmesh-cli"
FAILOVER_STATUSES = frozenset({502, 503, 504})


class ApiError(Exception):
    """A request the node answered with a problem, or that reached no node."""

    def __init__(self, message: str, *, status: int | None = None, doc: dict | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.doc = doc or {}


class Unreachable(ApiError):
    """No node answered (refused, timed out, or 503 everywhere)."""


def normalise_url(text: str) -> str:
    text = text.strip().rstrip("/")
    if "://" not in text:
        text = "http://" + text
    parts = urllib.parse.urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"not an http(s) URL: {text!r}")
    return text


def problem_line(status: int, doc: dict) -> str:
    """One line from a problem+json answer (``title: detail``), or the bare status."""
    detail = doc.get("detail") if isinstance(doc, dict) else None
    title = doc.get("title") if isinstance(doc, dict) else None
    text = detail or title or "no detail"
    return f"{status} {title}: {text}" if title and detail else f"{status}: {text}"


class Api:
    """REST calls to the first of ``urls`` that answers."""

    def __init__(self, urls: list[str], token: str | None = None, timeout_s: float = 30.0) -> None:
        if not urls:
            raise ValueError("at least one node URL is needed")
        self.urls = [normalise_url(u) for u in urls]
        self.token = token or None
        self.timeout_s = timeout_s
        self._current = 0

    @property
    def url(self) -> str:
        """The node the last request reached."""
        return self.urls[self._current]

    def request(self, method: str, path: str, body: Any = None, *, query: dict | None = None,
                headers: dict | None = None, timeout_s: float | None = None) -> tuple[int, Any]:
        """(status, decoded JSON) of the first node that answers other than 502-504.

        Raises ``Unreachable`` when none does. Problem answers (4xx, 500) are
        returned, not raised: the caller decides what they mean.
        """
        if query:
            path = f"{path}?{urllib.parse.urlencode({k: v for k, v in query.items() if v is not None})}"
        data = json.dumps(body).encode() if body is not None else None
        failures: list[str] = []
        for step in range(len(self.urls)):
            index = (self._current + step) % len(self.urls)
            url = self.urls[index] + path
            try:
                status, doc = self._once(method, url, data, headers or {}, timeout_s or self.timeout_s)
            except OSError as exc:
                failures.append(f"{self.urls[index]}: {_reason(exc)}")
                continue
            if status in FAILOVER_STATUSES:
                failures.append(f"{self.urls[index]}: {problem_line(status, doc)}")
                continue
            self._current = index
            return status, doc
        raise Unreachable("no node answered (" + "; ".join(failures) + ")")

    def _once(self, method: str, url: str, data: bytes | None, headers: dict, timeout_s: float) -> tuple[int, Any]:
        req = urllib.request.Request(url, data=data, method=method)
        req.add_header("Accept", "application/json")
        req.add_header("User-Agent", USER_AGENT)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        for key, value in headers.items():
            req.add_header(key, value)
        try:
            with urllib.request.urlopen(req, timeout=timeout_s) as resp:
                return resp.status, _decode(resp.read())
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, _decode(exc.read())


def _decode(raw: bytes) -> Any:
    if not raw:
        return {}
    try:
        return json.loads(raw)
    except ValueError:
        return {"detail": raw[:200].decode("utf-8", "replace").strip()}


def _reason(exc: OSError) -> str:
    if isinstance(exc, urllib.error.URLError):
        exc = exc.reason if isinstance(exc.reason, OSError) else exc
        if isinstance(exc, urllib.error.URLError):
            return str(exc.reason)
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return "timed out"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    return exc.strerror or str(exc) if isinstance(exc, OSError) else str(exc)
