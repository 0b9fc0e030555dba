"""The in-memory datagram network: seeded latency, loss, duplication, reordering, partitions.

A node's ``RPCProtocol`` is an ``asyncio.DatagramProtocol``; production gives
it a UDP transport, the simulator a :class:`SimTransport` whose ``sendto``
hands the datagram to :class:`SimNetwork`. The network decides, from its own
seeded ``random.Random``, whether the datagram is lost, duplicated, and how
long each copy travels, then schedules
``protocol.datagram_received(data, src)`` with ``loop.call_later``. Latency is
drawn per copy, so datagrams overtake each other (reordering) as on a real
network.

Faults the scenarios drive:

* ``partition(groups)``: nodes in different groups cannot reach each other
  (nodes named in no group form one more group); ``heal()`` ends it;
* ``set_link(a, b, up)``: one link down or up, both directions;
* ``detach(addr)``: a crashed node; datagrams in flight to it are dropped on
  arrival.

Every decision is taken at send time, in the order the node code sends, so
the same seed gives the same deliveries. Bytes are counted per address, in
and out, for the per-node bandwidth figures.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

Addr = tuple[str, int]


@dataclass(frozen=True, slots=True)
class LinkModel:
    """How datagrams travel; every probability is per datagram."""

    latency_ms_min: float = 1.0
    latency_ms_max: float = 20.0  # uniform between min and max: copies overtake each other
    loss: float = 0.0
    duplicate: float = 0.0
    # A datagram that is reordered is held back by up to this much more.
    reorder: float = 0.0
    reorder_ms_max: float = 50.0


class SimTransport:
    """What ``RPCProtocol`` sees as its transport: ``sendto`` and ``close``."""

    def __init__(self, network: SimNetwork, addr: Addr) -> None:
        self._network = network
        self._addr = addr
        self._closed = False

    def sendto(self, data: bytes, addr: Addr) -> None:
        if not self._closed:
            self._network.send(self._addr, addr, data)

    def close(self) -> None:
        self._closed = True
        self._network.detach(self._addr)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._addr if name == "sockname" else default


class SimNetwork:
    def __init__(self, loop: asyncio.AbstractEventLoop, rng: random.Random, model: LinkModel = LinkModel()) -> None:
        self._loop = loop
        self._rng = rng
        self.model = model
        self._endpoints: dict[Addr, asyncio.DatagramProtocol] = {}
        self._group: dict[Addr, int] = {}
        self._down: set[frozenset[Addr]] = set()
        self.bytes_out: Counter[Addr] = Counter()
        self.bytes_in: Counter[Addr] = Counter()
        self.counters: Counter[str] = Counter()

    # -- endpoints ----------------------------------------------------------
    def bind(self, addr: Addr) -> Callable[[asyncio.DatagramProtocol], Any]:
        """The ``bind`` argument of ``Node.start``: attach the node's protocol at ``addr``."""

        async def bind(protocol: asyncio.DatagramProtocol) -> Addr:
            if addr in self._endpoints:
                raise OSError(f"address {addr} already in use")
            self._endpoints[addr] = protocol
            protocol.connection_made(SimTransport(self, addr))
            return addr

        return bind

    def detach(self, addr: Addr) -> None:
        """The node at ``addr`` is gone: it sends and receives nothing from now on."""
        self._endpoints.pop(addr, None)

    def attached(self, addr: Addr) -> bool:
        return addr in self._endpoints

    # -- faults -------------------------------------------------------------
    def partition(self, groups: Iterable[Iterable[Addr]]) -> None:
        self._group = {addr: i + 1 for i, group in enumerate(groups) for addr in group}

    def set_link(self, a: Addr, b: Addr, up: bool) -> None:
        (self._down.discard if up else self._down.add)(frozenset((a, b)))

    def heal(self, model: LinkModel | None = None) -> None:
        """End every partition and link failure; optionally change the link model."""
        self._group = {}
        self._down.clear()
        if model is not None:
            self.model = model

    @property
    def faulty(self) -> bool:
        """True while some partition or link failure is in force."""
        return bool(self._group or self._down)

    def reachable(self, a: Addr, b: Addr) -> bool:
        return self._group.get(a, 0) == self._group.get(b, 0) and (not self._down or frozenset((a, b)) not in self._down)

    # -- datagrams ----------------------------------------------------------
    def send(self, src: Addr, dst: Addr, data: bytes) -> None:
        self.counters["sent"] += 1
        self.bytes_out[src] += len(data)
        if src not in self._endpoints:
            self.counters["dropped_sender_gone"] += 1
            return
        if not self.reachable(src, dst):
            self.counters["dropped_partition"] += 1
            return
        m, rng = self.model, self._rng
        if m.loss and rng.random() < m.loss:
            self.counters["dropped_loss"] += 1
            return
        copies = 2 if m.duplicate and rng.random() < m.duplicate else 1
        if copies == 2:
            self.counters["duplicated"] += 1
        for _ in range(copies):
            delay_ms = rng.uniform(m.latency_ms_min, m.latency_ms_max)
            if m.reorder and rng.random() < m.reorder:
                self.counters["reordered"] += 1
                delay_ms += rng.uniform(0.0, m.reorder_ms_max)
            self._loop.call_later(delay_ms / 1000.0, self._deliver, src, dst, data)

    def _deliver(self, src: Addr, dst: Addr, data: bytes) -> None:
        protocol = self._endpoints.get(dst)
        if protocol is None:
            self.counters["dropped_no_endpoint"] += 1
            return
        self.counters["delivered"] += 1
        self.bytes_in[dst] += len(data)
        protocol.datagram_received(data, src)
