"""Per-client token buckets, bounded: a noisy client slows itself, not the node.

:class:`TokenBuckets` is the pure core: it takes ``now`` as an argument and
never reads a clock, so tests drive it with plain numbers. Each client (the
remote IP) owns a bucket of ``burst`` tokens refilled at ``rate_per_s``; a
request takes one token or is refused with the time until the next one.
At most ``clients_max`` buckets are kept; the least recently seen client is
forgotten first, so a flood of distinct addresses costs bounded memory (a
forgotten client simply starts again with a full bucket).

:func:`api.limits.limits_middleware` is the thin shell: it maps a refusal
to ``node.errors.RateLimited`` (429 with ``Retry-After``, see ``api/errors.py``).
"""

from __future__ import annotations

from collections import OrderedDict

CLIENTS_MAX_DEFAULT = 10_000
# Liveness and scraping must keep working while a client is being throttled.
EXEMPT_PATHS = frozenset({"/healthz", "/metrics"})


class TokenBuckets:
    """A bounded LRU map of client key -> (tokens, last refill time)."""

    def __init__(self, rate_per_s: float, burst: int, *, clients_max: int = CLIENTS_MAX_DEFAULT) -> None:
        if not rate_per_s > 0:
            raise ValueError("rate_per_s must be positive")
        if burst < 1 or clients_max < 1:
            raise ValueError("burst and clients_max must be at least 1")
        self.rate_per_s = float(rate_per_s)
        self.burst = int(burst)
        self.clients_max = clients_max
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self.refused = 0
        self.evicted = 0

    def take(self, client: str, now: float) -> float:
        """Take one token for ``client`` at time ``now`` (seconds, monotonic).

        Returns 0.0 when the request may proceed, else the seconds until the
        client's next token.
        """
        tokens, last = self._buckets.pop(client, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + max(0.0, now - last) * self.rate_per_s)
        if tokens >= 1.0:
            tokens -= 1.0
            wait_s = 0.0
        else:
            wait_s = (1.0 - tokens) / self.rate_per_s
            self.refused += 1
        self._buckets[client] = (tokens, now)
        while len(self._buckets) > self.clients_max:
            self._buckets.popitem(last=False)
            self.evicted += 1
        return wait_s

    def __len__(self) -> int:
        return len(self._buckets)

    def statistics(self) -> dict:
        return {"clients": len(self._buckets), "refused": self.refused, "evicted": self.evicted}
