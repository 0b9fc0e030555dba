"""Virtual time: an asyncio event loop whose clock jumps to the next timer.

The node code waits with ``asyncio.sleep``, ``asyncio.wait_for`` and
``loop.call_later`` and reads ``clock.monotonic()`` for leases. Both must be
the same virtual time, or a lease judged on one clock would expire on the
other. So the simulator runs the whole mesh in :class:`VirtualTimeLoop`, a
stock selector loop with two changes:

* ``time()`` returns a counter instead of ``time.monotonic()``;
* its selector never sleeps: when the loop would block until the next timer,
  the counter jumps there instead. An idle mesh therefore costs no wall time,
  and a run's outcome depends only on the order of callbacks, which asyncio
  keeps deterministic (FIFO ready queue, timers ordered by time, then by
  insertion).

:class:`SimClock` is one node's view of that time: a per-node offset and rate
(drift) for ``monotonic()``, and a wall clock the scenario can step forward
or back, as NTP would.
"""

from __future__ import annotations

import asyncio
import math
import selectors

WALL_EPOCH_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z: wall time at virtual 0
REAL_POLL_EVERY = 512  # busy iterations between two real (non-blocking) polls
TICKS_PER_S = 2**20  # virtual time advances in whole ticks of about 1 us (exact binary fractions)


class SimulationStalled(RuntimeError):
    """Nothing is ready and no timer is scheduled: the simulation can never progress."""


class _VirtualSelector(selectors.BaseSelector):
    """A selector that advances virtual time instead of blocking.

    The loop's self-pipe (signals, ``call_soon_threadsafe``) is still
    registered with a real selector, polled without blocking now and then, so
    Ctrl-C still works.
    """

    def __init__(self, loop: VirtualTimeLoop) -> None:
        self._loop = loop
        self._real = selectors.DefaultSelector()
        self._busy = 0

    def register(self, fileobj, events, data=None):
        return self._real.register(fileobj, events, data)

    def unregister(self, fileobj):
        return self._real.unregister(fileobj)

    def modify(self, fileobj, events, data=None):
        return self._real.modify(fileobj, events, data)

    def get_key(self, fileobj):
        return self._real.get_key(fileobj)

    def get_map(self):
        return self._real.get_map()

    def close(self) -> None:
        self._real.close()

    def select(self, timeout: float | None = None):
        if timeout == 0:
            self._busy += 1
            if self._busy % REAL_POLL_EVERY:
                return []
            return self._real.select(0)
        events = self._real.select(0)
        if events:
            return events
        if timeout is None:
            raise SimulationStalled("no callback is ready and no timer is scheduled")
        self._loop.advance(timeout)
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """A selector event loop on virtual time; never sleeps."""

    def __init__(self) -> None:
        self._virtual_now = 0.0
        super().__init__(_VirtualSelector(self))

    def time(self) -> float:
        return self._virtual_now

    def advance(self, seconds: float) -> None:
        """Jump ``seconds`` ahead, rounded up to a whole tick, and at least one tick.

        Node code computes timeouts on its own clock (offset, drift) and
        sleeps them on the loop's; in floating point the two can disagree by
        an ulp, so a wait "until the offer is due" could wake a hair early
        forever. Whole ticks guarantee every jump makes progress.
        """
        if seconds > 0:
            now_ticks = round(self._virtual_now * TICKS_PER_S)
            ticks = max(now_ticks + 1, math.ceil((self._virtual_now + seconds) * TICKS_PER_S))
            self._virtual_now = ticks / TICKS_PER_S


class SimClock:
    """One node's clock (``dht.protocol.Clock``) on the loop's virtual time.

    ``monotonic() = base + (1 + drift) * loop.time()``: each node starts at its
    own offset and may run slightly fast or slow. ``wall_ms()`` is the shared
    virtual wall time plus this node's offset, which :meth:`step_wall` moves.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, *, base_s: float = 0.0, drift: float = 0.0, wall_offset_ms: int = 0) -> None:
        self._loop = loop
        self.base_s = base_s
        self.drift = drift
        self.wall_offset_ms = wall_offset_ms

    def monotonic(self) -> float:
        return self.base_s + (1.0 + self.drift) * self._loop.time()

    def wall_ms(self) -> int:
        return WALL_EPOCH_MS + int(self._loop.time() * 1000) + self.wall_offset_ms

    def step_wall(self, delta_ms: int) -> None:
        """Step the wall clock by ``delta_ms`` (negative: back); monotonic time is unaffected."""
        self.wall_offset_ms += delta_ms
