"""``workmesh start`` (its flags, its configuration, its event loop) and the node-side commands.

    workmesh start --p2p-port 7001 --api-port 8001 --data-dir ./n1
    workmesh start --p2p-port 7002 --api-port 8002 --data-dir ./n2 --bootstrap 127.0.0.1:7001
    workmesh mesh-key ./mesh.key     # then: workmesh start --mesh-key ./mesh.key ...
    workmesh upload FILE | download HASH -o FILE   (node/cli_blobs.py)

The program's entry point (``workmesh/__main__.py``) adds the client commands
of ``workmesh/commands.py`` (submit, job, cancel, list, ...) to this parser.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
from dataclasses import replace

from workmesh.dht.config import DHTConfig
from workmesh.dht.records import StorageLimits
from workmesh.node import __version__, ballots
from workmesh.node import cli_blobs
from workmesh.node.config import NodeConfig


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


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return int(text)


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
    start.add_argument("--quorum", type=int, help="write quorum (default: ceil((r + F + 1) / 2), a majority when F = 0)")
    start.add_argument("--byzantine", type=int, default=0, metavar="F",
                       help="replicas per job that may lie (default 0): quorums of ceil((r + F + 1) / 2); "
                       "needs r >= 3F + 1 (docs/guarantees.md)")
    start.add_argument("--k", type=int, default=20, help="Kademlia bucket size")
    start.add_argument("--lease-seconds", type=float, default=10.0, help="default lease length of a job")
    start.add_argument("--max-attempts", type=int, default=3, help="default attempts per job")
    start.add_argument("--job-timeout", type=float, default=300.0, help="default handler timeout, seconds")
    start.add_argument("--retention", type=_duration, default="7d", metavar="DURATION",
                       help="drop a decided job's facts this long after this node saw the decision: "
                       "seconds, or 90s, 30m, 12h, 7d (default 7d)")
    start.add_argument("--store-jobs-max", type=_positive, default=StorageLimits().keys_max, metavar="N",
                       help="jobs this node's store holds at most (default 200000); a node holds each in memory, "
                       "about 15 KB per job, and past 90%% of this or another budget drops the oldest decided "
                       "jobs before their retention")
    start.add_argument("--repair-after", type=_duration, default="3m", metavar="DURATION",
                       help="replace a job's placed replica that has not answered this long, through the job's "
                       "consensus (docs/protocol.md): seconds, or 90s, 30m, 12h (default 3m)")
    start.add_argument("--reannounce-max", type=_duration, default="30s", metavar="DURATION",
                       help="a replica re-announces a job no worker took at most this long apart, the wait doubling "
                       "from 10 s (or from this, if shorter): seconds, or 90s, 5m (default 30s)")
    start.add_argument("--rate-limit", type=float,
                       help="REST requests per second per client, for every client, loopback too "
                       "(default: only clients off loopback are limited, see --remote-rate-limit)")
    start.add_argument("--remote-rate-limit", type=float, default=100.0,
                       help="REST requests per second per client off loopback when --rate-limit is unset (0 = none)")
    start.add_argument("--rate-burst", type=int, default=100, help="requests a rate-limited client may burst")
    start.add_argument("--long-polls-max", type=int, default=1000,
                       help="open long polls (?wait=) on this node; more are answered 503 with Retry-After")
    start.add_argument("--long-polls-per-client", type=int, default=100,
                       help="open long polls per rate-limited client; more are answered 429 with Retry-After")
    start.add_argument("--connections-max", type=int, default=4096,
                       help="open HTTP connections; more get 503 with Retry-After (GET /healthz still 200)")
    start.add_argument("--allowed-host", action="append", default=[], metavar="HOST",
                       help="a name the Host header may carry besides the defaults (repeat, or comma-separate; "
                       "'*' = any). Default: localhost, 127.0.0.1 and ::1 on a loopback node; any name on "
                       "other nodes until one is given")
    start.add_argument("--identity-puzzle-bits", type=int, default=0,
                       help="proof of work on node keys: peers whose key solves fewer bits are ignored, "
                       "and a new key for this node solves as many (0 = off; the mesh must agree)")
    start.add_argument("--mesh-key", default=os.environ.get("WORKMESH_MESH_KEY_FILE"), metavar="FILE",
                       help="private mesh: talk only to nodes holding this mesh key (file from "
                       "`workmesh mesh-key`; env WORKMESH_MESH_KEY_FILE); required off loopback unless --open-mesh")
    start.add_argument("--open-mesh", action="store_true",
                       help="allow a node off loopback without a mesh key: any node may join (permissionless)")
    start.add_argument("--contacts-per-prefix-max", type=int, default=0,
                       help="routing-table contacts per /24 or /48 per bucket (0 = no limit; 2 is usual on the internet)")
    start.add_argument("--blob-max-bytes", type=int, default=2**30, help="largest blob accepted, bytes")
    start.add_argument("--blob-disk-budget", type=int, default=10 * 2**30, help="chunk bytes kept on disk at most")
    start.add_argument("--log-format", choices=["auto", "json", "console"], default="auto")
    start.add_argument("--log-level", default="info")

    key = sub.add_parser("mesh-key", help="write a new random mesh key to FILE (mode 0600; never overwrites)")
    key.add_argument("file")

    cli_blobs.add_commands(sub)
    return parser


def config_from_args(args: argparse.Namespace) -> NodeConfig:
    """The node's config; raises ValueError (bad values) or CryptoError (an unreadable mesh key)."""
    byzantine = getattr(args, "byzantine", 0)
    ballots.check_settings(args.replicas, byzantine)
    least = ballots.quorum_size(args.replicas, byzantine)
    quorum = args.quorum or least
    if quorum < least:
        raise ValueError(f"--quorum {quorum} is below ceil((r + F + 1) / 2) = {least} for r = {args.replicas}, F = {byzantine}")
    mesh_keys: tuple[bytes, ...] = ()
    if args.mesh_key:
        from workmesh.crypto.meshkey import load_mesh_keyring

        mesh_keys = load_mesh_keyring(args.mesh_key).keys
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
            DHTConfig(), k=args.k, replicas=args.replicas, quorum=quorum, identity_puzzle_bits=args.identity_puzzle_bits,
            mesh_keys=mesh_keys, contacts_per_prefix_max=args.contacts_per_prefix_max,
        ),
        lease_s=args.lease_seconds,
        max_attempts=args.max_attempts,
        job_timeout_s=args.job_timeout,
        rate_limit_per_s=args.rate_limit,
        retention_s=args.retention,
        store_limits=replace(StorageLimits(), keys_max=args.store_jobs_max),
        repair_after_s=args.repair_after,
        repair_check_s=min(10.0, max(0.5, args.repair_after / 4)),
        reannounce_first_s=min(NodeConfig().reannounce_first_s, args.reannounce_max),
        reannounce_max_s=args.reannounce_max,
        byzantine=byzantine,
        remote_rate_limit_per_s=args.remote_rate_limit,
        rate_burst=args.rate_burst,
        long_polls_max=args.long_polls_max,
        long_polls_per_client_max=args.long_polls_per_client,
        connections_max=args.connections_max,
        allowed_hosts=tuple(h.strip() for given in args.allowed_host for h in given.split(",") if h.strip()),
        log_format=args.log_format,
        log_level=args.log_level,
        blob_bytes_max=args.blob_max_bytes,
        blob_disk_bytes=args.blob_disk_budget,
    )


def _mesh_key(path: str) -> int:
    from workmesh.crypto.meshkey import write_mesh_key_file

    try:
        write_mesh_key_file(path)
    except FileExistsError:
        print(f"workmesh: {path} exists; a mesh key file is never overwritten", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"workmesh: cannot write {path}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(f"wrote a new mesh key to {path}; give it to every node: workmesh start --mesh-key {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """The node-side commands alone; the ``workmesh`` program
    (``workmesh/__main__.py``) adds the client commands."""
    return run_node_command(cli_blobs.parse_args(build_parser(), argv))


def run_node_command(args: argparse.Namespace) -> int:
    """``start``, ``mesh-key``, ``upload`` or ``download``."""
    if args.command in ("upload", "download"):
        return cli_blobs.run(args)
    if args.command == "mesh-key":
        return _mesh_key(args.file)
    return start(args)


NODE_COMMANDS = frozenset({"start", "mesh-key", "upload", "download"})


def start(args: argparse.Namespace) -> int:
    """``workmesh start``: run a node until SIGTERM or SIGINT."""
    from workmesh.crypto.errors import CryptoError

    if not _is_loopback(args.host) and not args.api_token:
        print("workmesh: a node that binds to a non-loopback address needs --api-token", file=sys.stderr)
        return 2
    if not _is_loopback(args.host) and not args.mesh_key and not args.open_mesh:
        print(
            "workmesh: a node that binds to a non-loopback address needs --mesh-key FILE (a private mesh; "
            "make one with `workmesh mesh-key FILE`) or --open-mesh (anyone may join)",
            file=sys.stderr,
        )
        return 2
    try:
        config = config_from_args(args)
        from workmesh.app import rest_limits  # the entry point above node and api

        rest_limits(config)  # refuse bad REST limits before starting anything
    except (ValueError, CryptoError) as exc:
        print(f"workmesh: {exc}", file=sys.stderr)
        return 2
    from workmesh.node.logs import configure

    configure(config.log_format, config.log_level)
    # The entry point that wires the node and its API sits above both.
    from workmesh.app import serve

    return serve(config)


if __name__ == "__main__":
    sys.exit(main())
