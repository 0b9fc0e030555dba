"""REST limits with defaults: which hosts, how fast, how many at once.

Every node answers a request only when:

1. its ``Host`` header names this node (DNS rebinding: a web page whose name
   resolves to 127.0.0.1 must not reach a loopback node from a browser). A
   node bound to loopback accepts its loopback names by default; ``hosts``
   replaces that list, ``*`` turns the check off. Refused with ``403``.
2. its client (the remote IP) has a token in its bucket. Clients off loopback
   have a bucket by default (``remote_rate_per_s``); loopback clients only when
   the operator set ``rate_per_s`` (local load tests and benchmarks are not
   throttled by default). Refused with ``429`` and ``Retry-After``.
3. it is not a long poll (``?wait=`` > 0) beyond the node's cap of open long
   polls (``503``) or beyond its client's share of them (``429``, for the
   clients that are rate limited), each with ``Retry-After``.

Beyond those, :class:`ConnectionCap` bounds the open connections themselves:
past ``connections_max`` a new connection gets a canned ``503`` with
``Retry-After`` (or ``200`` for ``GET /healthz``, so liveness answers at any
load) and is closed, before aiohttp spends anything on it.

``/healthz`` and ``/metrics`` are never rate limited nor capped. Errors are
raised as ``node.errors`` types; ``api/errors.py`` writes them.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import math
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from aiohttp import web
from workmesh.node.errors import HostNotAllowed, Overloaded, RateLimited

from workmesh.api.ratelimit import EXEMPT_PATHS, TokenBuckets

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Names a loopback node answers to unless told otherwise (any port).
LOOPBACK_HOSTS: tuple[str, ...] = ("localhost", "127.0.0.1", "::1")
ANY_HOST = "*"
# Seconds a client refused by a cap is told to wait.
CAP_RETRY_AFTER_S = 1.0


@dataclass(frozen=True, slots=True)
class RestLimits:
    """The REST layer's limits; every default is what ``workmesh start`` uses."""

    # Requests per second per client for every client, loopback too; None:
    # only clients off loopback are limited, at remote_rate_per_s.
    rate_per_s: float | None = None
    # Requests per second per client off loopback when rate_per_s is unset; 0: none.
    remote_rate_per_s: float = 100.0
    # Tokens a client's bucket holds (its burst).
    rate_burst: int = 100
    # Open long polls (?wait= > 0) on this node at once; more get 503.
    long_polls_max: int = 1000
    # ...and per rate-limited client; more get 429.
    long_polls_per_client_max: int = 100
    # Open HTTP connections at once; more get a canned 503 and are closed.
    connections_max: int = 4096
    # Host names (or addresses) the Host header may carry, any port; "*"
    # alone: any. Empty: no check (a node bound off loopback, by default).
    hosts: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.rate_per_s is not None and not self.rate_per_s > 0:
            raise ValueError("rate_per_s must be positive")
        if self.remote_rate_per_s < 0 or self.rate_burst < 1:
            raise ValueError("remote_rate_per_s must be >= 0 and rate_burst >= 1")
        if min(self.long_polls_max, self.long_polls_per_client_max, self.connections_max) < 1:
            raise ValueError("long_polls_max, long_polls_per_client_max and connections_max must be at least 1")


def default_hosts(bind_host: str, advertise_host: str | None = None) -> tuple[str, ...]:
    """The names a node bound to ``bind_host`` answers to by default: its
    loopback names when it is bound to loopback, else no check."""
    if not is_loopback(bind_host):
        return ()
    extra = [h for h in (bind_host, advertise_host) if h]
    return tuple(dict.fromkeys([*LOOPBACK_HOSTS, *extra]))


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]").split("%")[0]).is_loopback
    except ValueError:
        return False


def host_name(header: str) -> str:
    """The name in a Host header, without port or brackets, lowercased:
    ``[::1]:8000`` -> ``::1``, ``LocalHost.:80`` -> ``localhost``."""
    header = header.strip()
    if header.startswith("["):
        name = header[1 : header.find("]")] if "]" in header else header[1:]
    elif header.count(":") == 1:
        name = header.rpartition(":")[0]
    else:
        name = header
    return name.lower().rstrip(".")


class HostCheck:
    """Pure: is a Host header one of ours?"""

    def __init__(self, hosts: Iterable[str]) -> None:
        names = {host_name(h) for h in hosts}
        self.any = ANY_HOST in names or not names
        self.names = frozenset(names - {ANY_HOST})

    def allows(self, header: str | None) -> bool:
        # No Host header at all (HTTP/1.0): not a browser, nothing to rebind.
        return self.any or header is None or host_name(header) in self.names


def wait_of(request: web.Request) -> float:
    """The long poll a request asks for (seconds), 0 if none or unreadable
    (the handler then answers the malformed value)."""
    text = request.query.get("wait")
    if text is None or request.path not in ("/jobs",) and not request.path.startswith("/jobs/"):
        return 0.0
    try:
        wait_s = float(text)
    except ValueError:
        return 0.0
    return wait_s if math.isfinite(wait_s) and wait_s > 0 else 0.0


class RequestLimits:
    """The state behind the middleware: buckets, open long polls, counters."""

    def __init__(self, limits: RestLimits, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self.clock = clock
        self.hosts = HostCheck(limits.hosts)
        rate = limits.rate_per_s or limits.remote_rate_per_s
        self.buckets = TokenBuckets(rate, limits.rate_burst) if rate else None
        self.long_polls = 0
        self._polls_by_client: dict[str, int] = {}
        self.connection_cap: ConnectionCap | None = None  # set by api.app.run_api
        self.counters = {"host_refused": 0, "rate_refused": 0, "long_polls_refused": 0,
                         "client_long_polls_refused": 0, "long_polls_max_seen": 0}

    def limited(self, client: str | None) -> bool:
        """Whether ``client`` has a rate limit: every client when rate_per_s is
        set, else those off loopback (when remote_rate_per_s is not 0)."""
        if self.buckets is None:
            return False
        return self.limits.rate_per_s is not None or not is_loopback(client)

    def check_host(self, header: str | None) -> None:
        if not self.hosts.allows(header):
            self.counters["host_refused"] += 1
            raise HostNotAllowed(f"Host {host_name(header or '')[:64]!r} is not a name of this node")

    def take(self, client: str) -> None:
        assert self.buckets is not None
        wait_s = self.buckets.take(client, self.clock())
        if wait_s > 0.0:
            self.counters["rate_refused"] += 1
            raise RateLimited(f"rate limit of {self.buckets.rate_per_s:g} requests/s exceeded", wait_s)

    def open_poll(self, client: str, limited: bool) -> None:
        """Count a long poll in, or refuse it."""
        if self.long_polls >= self.limits.long_polls_max:
            self.counters["long_polls_refused"] += 1
            raise Overloaded(f"this node holds {self.limits.long_polls_max} long polls already", CAP_RETRY_AFTER_S)
        mine = self._polls_by_client.get(client, 0)
        if limited and mine >= self.limits.long_polls_per_client_max:
            self.counters["client_long_polls_refused"] += 1
            raise RateLimited(
                f"at most {self.limits.long_polls_per_client_max} open long polls per client", CAP_RETRY_AFTER_S
            )
        self._polls_by_client[client] = mine + 1
        self.long_polls += 1
        self.counters["long_polls_max_seen"] = max(self.counters["long_polls_max_seen"], self.long_polls)

    def close_poll(self, client: str) -> None:
        self.long_polls -= 1
        left = self._polls_by_client.pop(client, 1) - 1
        if left > 0:
            self._polls_by_client[client] = left

    def statistics(self) -> dict:
        return {
            "long_polls": self.long_polls,
            **self.counters,
            **(self.connection_cap.statistics() if self.connection_cap is not None else {}),
            **({f"rate_{k}": v for k, v in self.buckets.statistics().items()} if self.buckets else {}),
        }


def limits_middleware(state: RequestLimits) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    """Host check, rate limit and long-poll caps, before any handler work."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        state.check_host(request.headers.get("Host"))
        if request.path in EXEMPT_PATHS:
            return await handler(request)
        client = request.remote or "unknown"
        limited = state.limited(client)
        if limited:
            state.take(client)
        if wait_of(request) <= 0:
            return await handler(request)
        state.open_poll(client, limited)
        try:
            return await handler(request)
        finally:
            state.close_poll(client)

    return middleware


# --------------------------------------------------------------------------- connections


def _canned(status: int, body: dict, retry_after_s: float | None) -> bytes:
    data = json.dumps(body).encode()
    ctype = "application/problem+json" if status >= 400 else "application/json"
    head = [f"HTTP/1.1 {status} {'OK' if status == 200 else 'Service Unavailable'}",
            f"Content-Type: {ctype}", f"Content-Length: {len(data)}", "Connection: close"]
    if retry_after_s is not None:
        head.append(f"Retry-After: {max(1, math.ceil(retry_after_s))}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + data


_FULL = _canned(
    503,
    {"type": "urn:workmesh:problem:overloaded", "title": "Node overloaded", "status": 503,
     "detail": "this node holds as many connections as it serves; retry later"},
    CAP_RETRY_AFTER_S,
)
_HEALTHY = _canned(200, {"ok": True}, None)
_HEAD_BYTES_MAX = 8192
_HEAD_WAIT_S = 2.0


class _Refusal(asyncio.Protocol):
    """A connection past the cap: read the request head (so the answer is not
    lost to a reset), answer 503, or 200 to ``GET /healthz``, and close."""

    def __init__(self) -> None:
        self._buf = b""
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self._transport = transport
        self._timer = asyncio.get_running_loop().call_later(_HEAD_WAIT_S, self._answer)

    def data_received(self, data: bytes) -> None:
        self._buf += data
        if b"\r\n\r\n" in self._buf or len(self._buf) >= _HEAD_BYTES_MAX:
            self._answer()

    def _answer(self) -> None:
        if self._transport is None or self._transport.is_closing():
            return
        line = self._buf.split(b"\r\n", 1)[0].split(b" ")
        healthz = len(line) >= 2 and line[0] == b"GET" and line[1].split(b"?")[0] == b"/healthz"
        self._transport.write(_HEALTHY if healthz else _FULL)
        self._transport.close()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._transport = None


class ConnectionCap:
    """A protocol factory around aiohttp's server: past ``connections_max``
    open connections, a new one is answered by :class:`_Refusal`."""

    def __init__(self, server: web.Server, connections_max: int) -> None:
        self.server = server
        self.connections_max = connections_max
        self.refused = 0

    def statistics(self) -> dict:
        return {"connections": len(self.server.connections), "connections_refused": self.refused}

    def __call__(self) -> asyncio.Protocol:
        if len(self.server.connections) >= self.connections_max:
            self.refused += 1
            return _Refusal()
        return self.server()


class CappedTCPSite(web.BaseSite):
    """``web.TCPSite`` whose connections go through a :class:`ConnectionCap`."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int, *, connections_max: int,
                 backlog: int = 1024) -> None:
        super().__init__(runner, backlog=backlog)
        self._host, self._port = host, port
        self.cap: ConnectionCap | None = None
        self._connections_max = connections_max

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        self.cap = ConnectionCap(server, self._connections_max)
        self._server = await asyncio.get_running_loop().create_server(
            self.cap, self._host, self._port, backlog=self._backlog, reuse_address=True
        )
