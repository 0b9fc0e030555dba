"""The program's entry point: wires a node and its REST API together.

It sits above both layers: ``workmesh.node`` implements the job service and
``workmesh.api`` serves it, and neither imports the other; only this module
knows both. ``workmesh start`` (node/cli.py) hands it the parsed config.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
from collections.abc import Callable, Coroutine
from typing import Any

from workmesh.node.config import NodeConfig

GC_YOUNG_THRESHOLD = 10_000  # allocations between young collections (CPython: 700)


def _tune_gc() -> None:
    """A node allocates many short-lived objects per datagram (envelopes,
    facts, states): CPython's default (a young collection every 700
    allocations) spends about a tenth of a job's CPU in the collector
    (docs/performance.md). Collect less often, and move what start-up built
    (modules, the loaded store) out of the collector's sight for good."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 50, 100)


async def run_node(config: NodeConfig) -> None:
    """Start a node and its API, serve until SIGTERM or SIGINT, then stop both."""
    from workmesh.api.app import create_app, run_api
    from workmesh.node.node import Node

    node = Node(config)
    await node.start()
    app = create_app(node, api_token=config.api_token, max_body_bytes=config.max_body_bytes,
                     rate_limit_per_s=config.rate_limit_per_s, logger=node.log)
    runner = await run_api(app, config.host, config.api_port)
    sockets = [s.getsockname() for site in runner.sites for s in (site._server.sockets if site._server else [])]
    if sockets:
        node.api_address = (config.advertise_host or sockets[0][0], sockets[0][1])
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await node.join()
    _tune_gc()
    node.log.info("node_ready", api=f"{node.api_address[0]}:{node.api_address[1]}" if node.api_address else None,
                  event_loop=loop_name(loop))
    await stop.wait()
    node.log.info("node_stopping")
    await runner.cleanup()
    await node.stop()


def loop_runner(env: dict[str, str] | None = None) -> Callable[[Coroutine[Any, Any, Any]], Any]:
    """``uvloop.run`` where uvloop is installed (a base dependency on Linux),
    ``asyncio.run`` otherwise or when ``WORKMESH_LOOP=asyncio`` asks for it.
    ``/status`` says which loop runs (``event_loop``)."""
    env = os.environ if env is None else env
    if env.get("WORKMESH_LOOP", "auto") != "asyncio":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.run
    return asyncio.run


def loop_name(loop: asyncio.AbstractEventLoop) -> str:
    """``uvloop`` or ``asyncio``: the library whose event loop ``loop`` is."""
    return type(loop).__module__.split(".")[0]


def serve(config: NodeConfig) -> int:
    """Run a node until it is told to stop; ``WORKMESH_PROFILE=path`` writes a cProfile."""
    run = loop_runner()
    profile_path = os.environ.get("WORKMESH_PROFILE")
    if not profile_path:
        run(run_node(config))
        return 0
    import cProfile  # an operator's profile of this node, written at shutdown

    profiler = cProfile.Profile()
    profiler.enable()
    try:
        run(run_node(config))
    finally:
        profiler.disable()
        profiler.dump_stats(f"{profile_path}.{os.getpid()}")
    return 0
