"""Per-peer limits of the datagram shell: pure, bounded, clock passed in.

* :class:`PeerBuckets`: a token bucket per source address. Datagrams beyond a
  peer's rate are dropped before they are decoded, so a flood from one
  address costs a dict lookup each, not a signature check.
* :class:`ProvenAddresses`: the (address, node id) pairs that answered a
  request we sent to that address, so they receive what is sent there. A
  reply larger than its request goes only to a proven pair (anti-
  amplification: a spoofed source address cannot turn us into an amplifier).

Both forget the least recently used entry first once full, so a flood of
distinct addresses costs bounded memory; a forgotten peer starts again with a
full bucket, or has to prove its address again.

* :class:`Offenders`: sources whose envelopes fail authentication. Each
  failure takes a token from the source's failure bucket; a source with none
  left is shut out for a while: its datagrams are dropped before decoding.

Keys (:func:`source_of`): the source IP, so rotating source ports escapes
nothing, plus (:func:`prefix_of`) its /24 (IPv4) or /48 (IPv6) for a second,
wider bucket. Loopback is the exception: every node of a loopback mesh shares
127.0.0.1, and anyone sending from there is on the machine already, so a
loopback source is its full ``(ip, port)`` and has no prefix bucket.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from typing import Hashable


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def source_of(addr: tuple) -> Hashable:
    """What the per-source limits key on: the IP, or ``(ip, port)`` on loopback."""
    ip = _ip(addr[0])
    if ip is None or ip.is_loopback:
        return (addr[0], addr[1])
    return str(ip)


def prefix_of(addr: tuple) -> str | None:
    """The /24 or /48 the source sits in; None for loopback (and non-IP names)."""
    ip = _ip(addr[0])
    if ip is None or ip.is_loopback:
        return None
    bits = 24 if ip.version == 4 else 48
    return str(ipaddress.ip_network(f"{ip}/{bits}", strict=False))


class SourceKeys:
    """:func:`source_of` and :func:`prefix_of` of an address, memoised: parsing
    an IP costs microseconds, a flood comes from few addresses. Bounded: the
    memo is emptied when full (a flood of distinct addresses then pays the
    parse, nothing more)."""

    def __init__(self, size_max: int = 65_536) -> None:
        self.size_max = size_max
        self._memo: dict[tuple, tuple[Hashable, str | None]] = {}

    def __call__(self, addr: tuple) -> tuple[Hashable, str | None]:
        keys = self._memo.get(addr)
        if keys is None:
            if len(self._memo) >= self.size_max:
                self._memo.clear()
            keys = self._memo[addr] = (source_of(addr), prefix_of(addr))
        return keys


class PeerBuckets:
    def __init__(self, rate_per_s: float, burst: int, size_max: int) -> None:
        if not rate_per_s > 0 or burst < 1 or size_max < 1:
            raise ValueError("rate_per_s, burst and size_max must be positive")
        self.rate_per_s = float(rate_per_s)
        self.burst = float(burst)
        self.size_max = size_max
        self._buckets: OrderedDict[Hashable, tuple[float, float]] = OrderedDict()

    def allow(self, peer: Hashable, now: float) -> bool:
        """Take one token of ``peer`` at ``now`` (seconds, monotonic); False if it has none."""
        tokens, last = self._buckets.pop(peer, (self.burst, now))
        tokens = min(self.burst, tokens + max(0.0, now - last) * self.rate_per_s)
        allowed = tokens >= 1.0
        self._buckets[peer] = (tokens - 1.0 if allowed else tokens, now)
        if len(self._buckets) > self.size_max:
            self._buckets.popitem(last=False)
        return allowed

    def __len__(self) -> int:
        return len(self._buckets)


class ProvenAddresses:
    def __init__(self, size_max: int) -> None:
        self.size_max = size_max
        self._pairs: OrderedDict[tuple[tuple[str, int], bytes], None] = OrderedDict()
        self._per_address: dict[tuple[str, int], int] = {}  # proven pairs at each address

    def add(self, addr: tuple[str, int], node_id: bytes) -> None:
        key = (addr, node_id)
        if key not in self._pairs:
            self._per_address[addr] = self._per_address.get(addr, 0) + 1
        self._pairs[key] = None
        self._pairs.move_to_end(key)
        if len(self._pairs) > self.size_max:
            (old_addr, _), _ = self._pairs.popitem(last=False)
            left = self._per_address[old_addr] - 1
            if left:
                self._per_address[old_addr] = left
            else:
                del self._per_address[old_addr]

    def __contains__(self, pair: tuple[tuple[str, int], bytes]) -> bool:
        return pair in self._pairs

    def has_address(self, addr: tuple[str, int]) -> bool:
        """Has some node answered a request of ours sent to ``addr``?"""
        return addr in self._per_address

    def __len__(self) -> int:
        return len(self._pairs)


class Offenders:
    """Sources that keep failing authentication, shut out for ``shutout_s``.

    A failure takes one token from the source's bucket (``burst`` tokens,
    refilled at ``rate_per_s``); the failure that finds it empty shuts the
    source out. Bounded: least recently charged forgotten first.
    """

    def __init__(self, rate_per_s: float, burst: int, shutout_s: float, size_max: int) -> None:
        self._failures = PeerBuckets(rate_per_s, burst, size_max)
        self.shutout_s = shutout_s
        self.size_max = size_max
        self._until: OrderedDict[Hashable, float] = OrderedDict()
        self.shutouts = 0

    def charge(self, source: Hashable, now: float) -> bool:
        """Count one failure of ``source``; True if that shuts it out."""
        if self._failures.allow(source, now) or self.is_shut_out(source, now):
            return False
        self._until[source] = now + self.shutout_s
        self._until.move_to_end(source)
        if len(self._until) > self.size_max:
            self._until.popitem(last=False)
        self.shutouts += 1
        return True

    def is_shut_out(self, source: Hashable, now: float) -> bool:
        until = self._until.get(source)
        if until is None:
            return False
        if now >= until:
            del self._until[source]
            return False
        return True

    def __len__(self) -> int:
        return len(self._until)
