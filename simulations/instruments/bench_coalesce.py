"""Coalescing (dht/coalesce.py) A/B on the datagram shell alone: CPU and datagrams per request.

    python simulations/instruments/bench_coalesce.py [--bursts 1,4,16,64] [--rounds 3000] [--repeat 5]
                                                     [--loop uvloop|asyncio]

Two ``RPCProtocol`` endpoints in this process talk over real UDP on loopback.
A round is ``burst`` pings sent by one endpoint to the other in one event-loop
turn, all awaited. Each burst size runs with coalescing on and off
(``DHTConfig.coalesce``), alternating, ``--repeat`` times; the figures are
medians: CPU per request (``time.process_time``: both endpoints, both
directions, the loop), and datagrams per request (both directions). Both
endpoints have answered each other once first, so both directions may
coalesce (to an address that never answered, nothing is coalesced).

It shows where coalescing pays (a burst to one peer) and what it costs a lone
request (one loop turn of delay, one more callback): the node's real mix is in
``bench.py``'s cost table.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from workmesh.crypto.identity import Identity  # noqa: E402
from workmesh.dht.config import DHTConfig  # noqa: E402
from workmesh.dht.envelope import Envelope  # noqa: E402
from workmesh.dht.protocol import RPCProtocol  # noqa: E402


class Clock:
    def monotonic(self) -> float:
        return time.monotonic()

    def wall_ms(self) -> int:
        return int(time.time() * 1000)


async def _answer(env: Envelope, addr) -> list:
    return []


async def endpoint(coalesce: bool) -> tuple[RPCProtocol, tuple[str, int]]:
    loop = asyncio.get_running_loop()
    proto = RPCProtocol(Identity.generate(), DHTConfig(coalesce=coalesce), Clock(), lambda: os.urandom(16),
                        _answer, lambda name, exc: print(f"error in {name}: {exc!r}", file=sys.stderr))
    transport, _ = await loop.create_datagram_endpoint(lambda: proto, local_addr=("127.0.0.1", 0))
    return proto, transport.get_extra_info("sockname")


async def measure(coalesce: bool, burst: int, rounds: int) -> tuple[float, float]:
    """(CPU us per request, datagrams per request) of ``rounds`` bursts."""
    (a, a_addr), (b, b_addr) = await endpoint(coalesce), await endpoint(coalesce)
    try:
        for x, y, y_addr in ((a, b, b_addr), (b, a, a_addr)):  # each proves its address to the other
            assert await x.request(y_addr, "ping", [], expect_id=y.identity.node_id, peer_key=y.identity.public_key)
        before = a.counters["datagrams_out"] + b.counters["datagrams_out"]
        started = time.process_time()
        for _ in range(rounds):
            replies = await asyncio.gather(*(
                a.request(b_addr, "ping", [], expect_id=b.identity.node_id, peer_key=b.identity.public_key)
                for _ in range(burst)
            ))
            if not all(replies):
                raise RuntimeError("a ping was not answered")
        cpu = time.process_time() - started
        datagrams = a.counters["datagrams_out"] + b.counters["datagrams_out"] - before
    finally:
        a.close()
        b.close()
    return cpu / (rounds * burst) * 1e6, datagrams / (rounds * burst)


async def run(args: argparse.Namespace) -> None:
    print(f"loop: {args.loop}; {args.rounds} requests per measurement, {args.repeat} measurements per mode, medians")
    print("burst  off us/req  on us/req  ratio  off dgram/req  on dgram/req")
    for burst in (int(b) for b in args.bursts.split(",")):
        rounds = max(10, args.rounds // burst)
        runs: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
        for i in range(args.repeat):
            for coalesce in ((False, True) if i % 2 == 0 else (True, False)):
                runs[coalesce].append(await measure(coalesce, burst, rounds))
        off, on = ([statistics.median(r[k] for r in runs[c]) for k in (0, 1)] for c in (False, True))
        print(f"{burst:5}  {off[0]:10.1f}  {on[0]:9.1f}  {on[0] / off[0]:5.2f}  {off[1]:13.2f}  {on[1]:12.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bursts", default="1,4,16,64", help="requests per turn, comma-separated")
    parser.add_argument("--rounds", type=int, default=3000, help="requests per measurement")
    parser.add_argument("--repeat", type=int, default=5, help="measurements per mode (alternating)")
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop",
                        help="the event loop (a node runs uvloop where it is installed)")
    args = parser.parse_args()
    if args.loop == "uvloop":
        import uvloop

        uvloop.run(run(args))
    else:
        asyncio.run(run(args))


if __name__ == "__main__":
    main()
