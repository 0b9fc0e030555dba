"""The one percentile of the simulations: nearest rank, no interpolation.

Every figure the instruments, the real-mesh checker and the simulator print
(p50, p95, p99 latencies, hops, bytes per node) goes through this function,
so two reports of the same samples agree to the digit.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

D = TypeVar("D")


def percentile(values: Iterable[float], q: float, default: D = None) -> float | D:
    """The nearest-rank ``q``-th percentile (``q`` in 0..100) of ``values``;
    ``default`` when there are none."""
    ranked = sorted(values)
    if not ranked:
        return default
    rank = max(1, min(len(ranked), -(-len(ranked) * q // 100)))  # ceil without float drift
    return ranked[int(rank) - 1]
