"""Prometheus metrics built from the node's statistics snapshot.

One collector walks ``Node.status()`` at scrape time, so every counter an
operator sees in ``/status`` is also a metric, with no second bookkeeping.
"""

from __future__ import annotations

import re
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily

_NAME = re.compile(r"[^a-zA-Z0-9_]")


class _StatusCollector:
    def __init__(self, node: Any) -> None:
        self._node = node

    def collect(self):
        status = self._node.status()
        yield GaugeMetricFamily("workmesh_up", "1 while the node serves", value=1)
        yield GaugeMetricFamily("workmesh_uptime_seconds", "Seconds since the node started", value=status["uptime_seconds"])
        yield GaugeMetricFamily("workmesh_peers", "Contacts in the routing table", value=status["peers"])
        jobs = GaugeMetricFamily("workmesh_jobs", "Jobs this node knows, by status", labels=["status"])
        for name, count in status["jobs"].items():
            jobs.add_metric([name], count)
        yield jobs
        for section in ("workers", "dht", "storage", "gossip", "leases", "jobs_api", "crypto"):
            for key, value in status.get(section, {}).items():
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    continue
                name = "workmesh_" + _NAME.sub("_", f"{section}_{key}")
                yield GaugeMetricFamily(name, f"{section} statistic {key}", value=value)


def registry_for(node: Any) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_StatusCollector(node))
    return registry
