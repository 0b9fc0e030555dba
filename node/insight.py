"""What the dashboard shows of a node and of the peers it knows.

Three small parts, each a plain object fed with ``now``:

- :class:`FlowRecorder` counts job transitions per wall-clock second (jobs
  submitted, started, done, failed, as this node's store sees them) and keeps
  the submit-to-terminal times of recent jobs for p50/p95.
- :class:`PeerBook` remembers the peers this node has known (its routing
  table, plus those that left it) with the last answer each gave to a
  ``node_info`` query, and judges liveness from that: a peer is ``alive``
  while it answered within ``LIVENESS_S``, ``gone`` after.
- :class:`NodeInsight` wires both to a running ``Node``: it registers the
  ``node_info`` RPC (a peer's version, API address, slots, busy slots, event
  loop and uptime), listens to the node's status changes, and snapshots the
  routing table and the store budget.

Peers are asked only while somebody looks (the dashboard's event stream or
its nodes endpoint calls :meth:`NodeInsight.refresh_peers`), at most every
``POLL_S``, at most ``PEERS_ASKED_MAX`` at a time: a node nobody watches sends
no extra datagram.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

from workmesh.node import __version__

RPC = "node_info"
LIVENESS_S = 6.0  # a peer that has not answered for this long is shown as gone
POLL_S = 2.0  # peers are asked again at most this often
ASK_TIMEOUT_S = 1.0
PEERS_ASKED_MAX = 64  # peers asked per poll (table members first)
PEERS_KEPT_MAX = 256  # peers remembered, table members or not
FORGET_S = 600.0  # a gone peer that left the routing table is forgotten after this
FLOW_SECONDS = 300  # per-second flow kept for the chart
LATENCIES_MAX = 10_000  # submit-to-terminal samples kept
LATENCY_WINDOW_S = 300.0  # p50/p95 over jobs that ended this recently
FIRST_SEEN_MAX = 100_000  # jobs whose arrival time is remembered (to measure their latency)
FLOW_KINDS = ("submitted", "started", "done", "failed")


def event_loop_name() -> str:
    """``uvloop`` or ``asyncio``: the module of the running loop's class."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return "none"
    return type(loop).__module__.split(".")[0]


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of an ascending list (None when empty)."""
    if not sorted_values:
        return None
    rank = max(1, -(-len(sorted_values) * q // 100))  # ceil(n * q / 100), at least 1
    return sorted_values[int(rank) - 1]


class FlowRecorder:
    """Job transitions per second and submit-to-terminal times, as seen here."""

    def __init__(self, seconds: int = FLOW_SECONDS) -> None:
        self.seconds = seconds
        self._buckets: OrderedDict[int, list[int]] = OrderedDict()
        # job id -> [first seen (monotonic s), counted as started, arrival seen here]
        self._seen: OrderedDict[bytes, list] = OrderedDict()
        self._latencies: deque[tuple[float, float]] = deque(maxlen=LATENCIES_MAX)

    def on_change(self, job_id: bytes, status: str, previous: str, now_s: float, wall_s: float) -> None:
        """A job's status changed here (``previous`` "" = first seen).

        ``now_s`` is the monotonic clock (latencies), ``wall_s`` the wall clock
        (the chart's seconds). A job counts as submitted when first seen, as
        started the first time it is seen running or finished (a replica's
        derived status may step back from running to pending while grants
        arrive: that start is not counted twice), as done or failed when it
        turns so."""
        bucket = self._bucket(int(wall_s))
        seen = self._seen.get(job_id)
        if previous == "" or seen is None:
            seen = self._seen[job_id] = [now_s, False, previous == ""]
            if previous == "":
                bucket[0] += 1
            while len(self._seen) > FIRST_SEEN_MAX:
                self._seen.popitem(last=False)
        if not seen[1] and status in ("running", "done", "failed"):
            seen[1] = True
            bucket[1] += 1
        if status == "done":
            bucket[2] += 1
        elif status == "failed":
            bucket[3] += 1
        if status in ("done", "failed", "cancelled"):
            del self._seen[job_id]
            if seen[2] and previous != "":  # its arrival was seen here: a true submit-to-terminal time
                self._latencies.append((now_s, now_s - seen[0]))

    def _bucket(self, second: int) -> list[int]:
        bucket = self._buckets.get(second)
        if bucket is None:
            bucket = self._buckets[second] = [0, 0, 0, 0]
            while len(self._buckets) > self.seconds + 2:
                self._buckets.popitem(last=False)
        return bucket

    def series(self, wall_s: float, seconds: int | None = None) -> list[list[int]]:
        """``[[second, submitted, started, done, failed], ...]`` for the last
        ``seconds`` complete seconds (zeros included), oldest first."""
        seconds = self.seconds if seconds is None else min(seconds, self.seconds)
        end = int(wall_s)  # the current second is still filling: not shown
        return [[s, *self._buckets.get(s, (0, 0, 0, 0))] for s in range(end - seconds, end)]

    def latency(self, now_s: float) -> dict[str, Any]:
        """p50 and p95 of submit-to-terminal (ms) over jobs that ended in the window."""
        recent = sorted(d for t, d in self._latencies if now_s - t <= LATENCY_WINDOW_S)
        p50, p95 = percentile(recent, 50), percentile(recent, 95)
        return {
            "p50_ms": None if p50 is None else round(p50 * 1000, 1),
            "p95_ms": None if p95 is None else round(p95 * 1000, 1),
            "samples": len(recent),
            "window_s": LATENCY_WINDOW_S,
        }


@dataclass(slots=True)
class Peer:
    contact: Any  # dht.routing.Contact
    first_seen_s: float
    last_answer_s: float | None = None
    info: dict[str, Any] = field(default_factory=dict)
    in_table: bool = True


def liveness(peer: Peer, now_s: float) -> str:
    """``alive`` (answered within LIVENESS_S), ``gone`` (no answer for longer,
    or never in that long) or ``unknown`` (known for less than LIVENESS_S, not asked yet)."""
    if peer.last_answer_s is not None and now_s - peer.last_answer_s <= LIVENESS_S:
        return "alive"
    if now_s - peer.first_seen_s <= LIVENESS_S and peer.last_answer_s is None:
        return "unknown"
    return "gone"


def parse_info(reply: Any) -> dict[str, Any] | None:
    """A ``node_info`` reply: ``[version, api, slots, busy, loop, uptime_ms]``."""
    if not isinstance(reply, list) or len(reply) < 6:
        return None
    version, api, slots, busy, loop, uptime = reply[:6]
    if not (isinstance(version, str) and isinstance(api, str) and isinstance(loop, str)):
        return None
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (slots, busy, uptime)):
        return None
    return {"version": version[:32], "api": api[:64] or None, "slots": slots, "busy": busy,
            "loop": loop[:32], "uptime_seconds": uptime / 1000}


class PeerBook:
    """The peers shown on the dashboard, with liveness from their last answer."""

    def __init__(self) -> None:
        self.peers: OrderedDict[bytes, Peer] = OrderedDict()
        self.polls = 0
        self.asked = 0
        self.answered = 0

    def sync(self, contacts: list[Any], now_s: float) -> None:
        """Take in the routing table's contacts; forget long-gone outsiders."""
        table = {c.id for c in contacts}
        for c in contacts:
            peer = self.peers.get(c.id)
            if peer is None:
                self.peers[c.id] = Peer(c, now_s)
            else:
                peer.contact = c  # the address may have changed
        for peer in self.peers.values():
            peer.in_table = peer.contact.id in table
        for node_id in [i for i, p in self.peers.items()
                        if not p.in_table and now_s - (p.last_answer_s or p.first_seen_s) > FORGET_S]:
            del self.peers[node_id]
        while len(self.peers) > PEERS_KEPT_MAX:
            victim = next((i for i, p in self.peers.items() if not p.in_table), next(iter(self.peers)))
            del self.peers[victim]

    def to_ask(self) -> list[Peer]:
        """Table members first, then the most recently heard of the rest."""
        ranked = sorted(self.peers.values(), key=lambda p: (not p.in_table, -(p.last_answer_s or 0.0)))
        return ranked[:PEERS_ASKED_MAX]

    def answered_by(self, peer: Peer, info: dict[str, Any] | None, now_s: float) -> None:
        peer.last_answer_s = now_s
        self.answered += 1
        if info is not None:
            peer.info = info

    def rows(self, now_s: float) -> list[dict[str, Any]]:
        out = []
        for peer in self.peers.values():
            c = peer.contact
            out.append({
                "node_id": c.id.hex(),
                "address": f"{c.ip}:{c.port}",
                "liveness": liveness(peer, now_s),
                "last_seen_s_ago": None if peer.last_answer_s is None else round(now_s - peer.last_answer_s, 1),
                "in_routing_table": peer.in_table,
                **peer.info,
            })
        return out


class NodeInsight:
    """The dashboard's view into a running node (see the module docstring)."""

    def __init__(self, node: Any) -> None:
        self.node = node
        self.flow = FlowRecorder()
        self.peers = PeerBook()
        self._poll_lock = asyncio.Lock()
        self._last_poll_s: float | None = None
        self.liveness_s = LIVENESS_S
        self.change_listeners: list[Any] = []  # fn(job_id, status, previous): the event stream's
        node.dht.register(RPC, self.rpc_node_info)
        node.status_listeners.append(self._on_status)

    def _now(self) -> float:
        return self.node.clock.monotonic()

    def _on_status(self, job_id: bytes, status: str, previous: str) -> None:
        self.flow.on_change(job_id, status, previous, self._now(), self.node.clock.wall_ms() / 1000)
        for listener in self.change_listeners:
            listener(job_id, status, previous)

    # -- this node ----------------------------------------------------------
    def own_info(self) -> dict[str, Any]:
        node = self.node
        api = node.api_address
        return {
            "node_id": node.identity.node_id.hex(),
            "address": f"{node.dht.address[0]}:{node.dht.address[1]}" if node.dht.address else None,
            "api": f"{api[0]}:{api[1]}" if api else None,
            "version": __version__,
            "loop": event_loop_name(),
            "slots": node.config.workers,
            "busy": node.workers.busy,
            "uptime_seconds": round(self._now() - node.started_at, 3),
            "liveness": "self",
            "last_seen_s_ago": 0.0,
            "in_routing_table": False,
        }

    def rpc_node_info(self, env: Any, addr: tuple[str, int]) -> list:
        info = self.own_info()
        # Integers only: the wire's canonical encoding has no floats.
        return [info["version"], info["api"] or "", info["slots"], info["busy"], info["loop"],
                int(info["uptime_seconds"] * 1000)]

    def store_budget(self) -> dict[str, Any]:
        stats = self.node.store.statistics()
        limits = self.node.store.limits
        return {"bytes": stats["bytes"], "bytes_max": limits.bytes_total_max, "keys": stats["keys"],
                "keys_max": limits.keys_max, "records": stats["records"]}

    def routing_table(self) -> list[dict[str, Any]]:
        """Non-empty buckets: their id range, contacts and replacement cache."""
        router = self.node.dht.router
        own = int.from_bytes(self.node.identity.node_id, "big")
        out = []
        for index, bucket in enumerate(router.buckets):
            if not len(bucket.nodes) and not len(bucket.replacement_nodes):
                continue
            lo, hi = bucket.range
            out.append({
                "index": index,
                "range": [f"{lo:040x}", f"{hi:040x}"],
                "contacts": [
                    {"node_id": c.id.hex(), "address": f"{c.ip}:{c.port}",
                     "distance_bits": (own ^ int.from_bytes(c.id, "big")).bit_length()}
                    for c in bucket.nodes.values()
                ],
                "replacements": len(bucket.replacement_nodes),
            })
        return out

    # -- peers --------------------------------------------------------------
    async def refresh_peers(self) -> None:
        """Ask the known peers for their info, unless that was done within POLL_S."""
        async with self._poll_lock:
            now = self._now()
            if self._last_poll_s is not None and now - self._last_poll_s < POLL_S:
                return
            self._last_poll_s = now
            self.peers.sync(self.node.dht.router.contacts(), now)
            batch = self.peers.to_ask()
            self.peers.polls += 1
            self.peers.asked += len(batch)
            await asyncio.gather(*(self._ask(p) for p in batch))

    async def _ask(self, peer: Peer) -> None:
        dht = self.node.dht
        reply = await dht.call(peer.contact, RPC, [], timeout_s=ASK_TIMEOUT_S)
        if reply is not None:
            self.peers.answered_by(peer, parse_info(reply), self._now())
        elif await dht.call(peer.contact, "ping", [], timeout_s=ASK_TIMEOUT_S) is not None:
            # Alive, but it does not know node_info (an older version).
            self.peers.answered_by(peer, None, self._now())

    # -- jobs ---------------------------------------------------------------
    def search_jobs(self, q: str, status: str | None, limit: int, after: str | None,
                    scan_max: int) -> tuple[list[Any], str | None, int]:
        """Jobs this node indexes, newest first, whose id, worker or submitter
        starts with ``q`` or whose type contains it; after the job ``after``.

        At most ``scan_max`` entries are looked at per call; when that bound
        stops the scan, the cursor resumes after the last one looked at.
        Returns (views, the next page's cursor or None, entries scanned)."""
        from workmesh.node.jobs import view

        after_b = bytes.fromhex(after) if after else None
        out: list[Any] = []
        scanned = 0
        skipping = after_b is not None
        cursor: bytes | None = None
        last: bytes | None = None
        for summary in self.node.index.newest_first():
            if skipping:  # cheap, and not counted: the index itself is bounded
                skipping = summary.job_id != after_b
                continue
            if len(out) == limit:
                cursor = out[-1].job_id  # more may match after the last shown
                break
            if scanned == scan_max:
                cursor = last  # the scan stopped here: the next page goes on from it
                break
            scanned += 1
            last = summary.job_id
            if status is not None and summary.status != status:
                continue
            if q and not self._matches(summary, q):
                continue
            out.append(summary)
        return [view(s.state) for s in out], (cursor.hex() if cursor else None), scanned

    @staticmethod
    def _matches(summary: Any, q: str) -> bool:
        state = summary.state
        ids = [summary.job_id.hex(), state.submit.author_id.hex()]
        if state.worker:
            ids.append(state.worker.hex())
        return any(i.startswith(q) for i in ids) or q in summary.job_type.lower()

    def nodes(self) -> list[dict[str, Any]]:
        return [self.own_info(), *self.peers.rows(self._now())]
