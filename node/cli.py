"""The ``workmesh`` command: start a peer, or talk to one over REST.

    workmesh start --p2p-port 7001 --api-port 8001 --data-dir ./n1
    workmesh start --p2p-port 7002 --api-port 8002 --data-dir ./n2 --bootstrap 127.0.0.1:7001
    workmesh submit --api http://127.0.0.1:8001 sha256 '{"data": "x", "rounds": 1000}' --wait 10
    workmesh job --api http://127.0.0.1:8002 <id>
    workmesh status --api http://127.0.0.1:8003
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import ipaddress
import json
import os
import signal
import sys
import urllib.error
import urllib.request
from dataclasses import replace

from workmesh.dht.config import DHTConfig
from workmesh.node import __version__
from workmesh.node.config import NodeConfig

GC_YOUNG_THRESHOLD = 10_000  # allocations between young collections (CPython: 700)


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def _duration(text: str) -> float:
    from workmesh.node.retention import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="workmesh", description="A peer-to-peer work mesh.")
    parser.add_argument("--version", action="version", version=f"workmesh {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    start = sub.add_parser("start", help="start one node")
    start.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback)")
    start.add_argument("--p2p-port", type=int, default=7000, help="UDP port of the DHT (0 = any)")
    start.add_argument("--api-port", type=int, default=8000, help="TCP port of the REST API (0 = any)")
    start.add_argument("--data-dir", required=True, help="identity, facts and contacts live here")
    start.add_argument("--bootstrap", type=_address, action="append", default=[], metavar="HOST:PORT")
    start.add_argument("--workers", type=int, default=2, help="worker slots (0 = store and route only)")
    start.add_argument("--advertise-host", help="address peers should use to reach this node")
    start.add_argument("--api-token", default=os.environ.get("WORKMESH_API_TOKEN"),
                       help="bearer token for write endpoints (env WORKMESH_API_TOKEN); required off loopback")
    start.add_argument("--replicas", type=int, default=5, help="replicas per job (r)")
    start.add_argument("--quorum", type=int, help="write quorum (default: majority of r)")
    start.add_argument("--k", type=int, default=20, help="Kademlia bucket size")
    start.add_argument("--lease-seconds", type=float, default=10.0, help="default lease length of a job")
    start.add_argument("--max-attempts", type=int, default=3, help="default attempts per job")
    start.add_argument("--job-timeout", type=float, default=300.0, help="default handler timeout, seconds")
    start.add_argument("--retention", type=_duration, default="7d", metavar="DURATION",
                       help="drop a decided job's facts this long after this node saw the decision: "
                       "seconds, or 90s, 30m, 12h, 7d (default 7d)")
    start.add_argument("--rate-limit", type=float, help="REST requests per second per client")
    start.add_argument("--identity-puzzle-bits", type=int, default=0,
                       help="proof of work on node keys: peers whose key solves fewer bits are ignored, "
                       "and a new key for this node solves as many (0 = off; the mesh must agree)")
    start.add_argument("--log-format", choices=["auto", "json", "console"], default="auto")
    start.add_argument("--log-level", default="info")

    for name, help_text in (("submit", "submit a job"), ("job", "show a job"), ("status", "show a node's status")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--api", default="http://127.0.0.1:8000", help="base URL of any node")
        p.add_argument("--token", default=os.environ.get("WORKMESH_API_TOKEN"))
        if name == "submit":
            p.add_argument("type")
            p.add_argument("payload", help="JSON")
            p.add_argument("--max-attempts", type=int)
            p.add_argument("--wait", type=float, default=0.0, help="wait up to this many seconds for the result")
        if name == "job":
            p.add_argument("id")
            p.add_argument("--wait", type=float, default=0.0)
    return parser


def config_from_args(args: argparse.Namespace) -> NodeConfig:
    quorum = args.quorum or args.replicas // 2 + 1
    return NodeConfig(
        host=args.host,
        p2p_port=args.p2p_port,
        api_port=args.api_port,
        advertise_host=args.advertise_host,
        data_dir=args.data_dir,
        bootstrap=tuple(args.bootstrap),
        workers=args.workers,
        api_token=args.api_token,
        dht=replace(
            DHTConfig(), k=args.k, replicas=args.replicas, quorum=quorum, identity_puzzle_bits=args.identity_puzzle_bits
        ),
        lease_s=args.lease_seconds,
        max_attempts=args.max_attempts,
        job_timeout_s=args.job_timeout,
        rate_limit_per_s=args.rate_limit,
        retention_s=args.retention,
        log_format=args.log_format,
        log_level=args.log_level,
    )


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
    node.log.info("node_ready", api=f"{node.api_address[0]}:{node.api_address[1]}" if node.api_address else None)
    await stop.wait()
    node.log.info("node_stopping")
    await runner.cleanup()
    await node.stop()


def _http(method: str, url: str, body: dict | None, token: str | None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def _client(args: argparse.Namespace) -> int:
    base = args.api.rstrip("/")
    if args.command == "status":
        code, doc = _http("GET", f"{base}/status", None, args.token)
    elif args.command == "job":
        code, doc = _http("GET", f"{base}/jobs/{args.id}?wait={args.wait}", None, args.token)
    else:
        body = {"type": args.type, "payload": json.loads(args.payload)}
        if args.max_attempts:
            body["max_attempts"] = args.max_attempts
        wait_s = min(args.wait, 60.0)  # the API's bound on one wait
        code, doc = _http("POST", f"{base}/jobs?wait={wait_s:g}" if wait_s > 0 else f"{base}/jobs", body, args.token)
        if code == 202 and args.wait > wait_s:
            code, doc = _http("GET", f"{base}/jobs/{doc['id']}?wait={min(60.0, args.wait - wait_s):g}", None, args.token)
    print(json.dumps(doc, indent=2))
    return 0 if code < 400 else 1


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command != "start":
        return _client(args)
    if not _is_loopback(args.host) and not args.api_token:
        print("workmesh: a node that binds to a non-loopback address needs --api-token", file=sys.stderr)
        return 2
    try:
        config = config_from_args(args)
    except ValueError as exc:
        print(f"workmesh: {exc}", file=sys.stderr)
        return 2
    from workmesh.node.logs import configure

    configure(config.log_format, config.log_level)
    try:
        import uvloop  # optional: a faster event loop when installed

        run = uvloop.run
    except ImportError:
        run = asyncio.run
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


if __name__ == "__main__":
    sys.exit(main())
