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

Keys are full ``(ip, port)`` addresses, not IPs: peers of a loopback mesh, or
behind one NAT, share an IP. A source that rotates ports gets a bucket per
port; the routing table's per-prefix limit is what bounds its influence.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Hashable


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

    def add(self, addr: tuple[str, int], node_id: bytes) -> None:
        key = (addr, node_id)
        self._pairs[key] = None
        self._pairs.move_to_end(key)
        if len(self._pairs) > self.size_max:
            self._pairs.popitem(last=False)

    def __contains__(self, pair: tuple[tuple[str, int], bytes]) -> bool:
        return pair in self._pairs

    def __len__(self) -> int:
        return len(self._pairs)
