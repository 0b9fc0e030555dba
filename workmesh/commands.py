"""The client commands of ``workmesh``: talk to any node of a mesh over REST.

    workmesh submit sha256 '{"data": "x", "rounds": 1000}' --wait
    workmesh submit echo @payload.json            # or - for stdin
    workmesh submit image.resize --blob image=photo.jpg '{"sizes": [[64, 64]]}'
    workmesh job ID [--wait [S]] [--history]
    workmesh cancel ID [--reason TEXT]
    workmesh list [--status S] [--all] [--mesh]
    workmesh peers | types | status
    workmesh watch ID [ID ...]
    workmesh completion bash|zsh|tcsh

Every command takes ``--api URL`` (repeatable: the next is tried when one is
refused, times out or answers 503; or ``WORKMESH_API``, comma-separated),
``--token`` (or ``WORKMESH_API_TOKEN``) and ``--output table|json`` (a table
on a terminal, JSON otherwise).

Exit status: 0 the job is done (or the command did what it was asked);
1 the job failed or was cancelled, a wait ended before the job did, or the node
refused the request (not found, conflict); 2 a usage error, a request the node
found malformed or unauthorised, or no node reachable. Errors are one line on
stderr.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from typing import Any

from workmesh.cli_http import DEFAULT_URL, Api, ApiError, Unreachable, problem_line
from workmesh.node import cli_blobs

TERMINAL = frozenset({"done", "failed", "cancelled"})
WAIT_CHUNK_S = 30.0  # one long poll (the API allows up to 60 s); progress is redrawn after each
LIST_PAGE = 500  # the API's largest page
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
USAGE_STATUSES = frozenset({400, 401, 403, 405, 413, 415, 422})
COMMANDS = ("submit", "job", "cancel", "list", "peers", "types", "status", "watch", "completion")
# --blob NAME=FILE (node/cli_blobs.py): upload FILE first, refer to it in the payload.


class UsageError(Exception):
    """Bad input found after parsing (an unreadable payload file, bad JSON)."""


# ----------------------------------------------------------------------------- parsing


def _api_default() -> list[str]:
    env = os.environ.get("WORKMESH_API", "")
    return [u for u in (p.strip() for p in env.split(",")) if u] or [DEFAULT_URL]


def _seconds(text: str) -> float:
    """A wait: seconds >= 0, or ``inf``/``forever`` for no limit."""
    if text.lower() in ("inf", "forever", "none"):
        return math.inf
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected seconds >= 0, got {text!r}")
    return value


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("connection and output")
    group.add_argument("--api", action="append", metavar="URL",
                       help=f"base URL of a node; repeat for failover (env WORKMESH_API, comma-separated; "
                       f"default {DEFAULT_URL})")
    group.add_argument("--token", default=os.environ.get("WORKMESH_API_TOKEN"),
                       help="bearer token for writes (env WORKMESH_API_TOKEN)")
    group.add_argument("--output", "-o", choices=("table", "json"),
                       help="table (default on a terminal) or json (default otherwise)")
    group.add_argument("--http-timeout", type=float, default=30.0, metavar="S",
                       help="seconds to wait for one HTTP answer before trying the next node")
    return common


def _wait_flag(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--wait", type=_seconds, nargs="?", const=math.inf, default=0.0, metavar="S",
                   help=f"wait for {what} to finish: up to S seconds, or without S until it does")


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add the client commands to the ``workmesh`` parser's subcommands."""
    common = _common()

    p = sub.add_parser("submit", parents=[common], help="submit a job",
                       description="Submit a job; print it (with --wait, once it finished).")
    p.add_argument("type", help="job type (see `workmesh types`)")
    p.add_argument("payload", nargs="?", default="{}",
                   help="JSON text, @FILE for a file's JSON, or - for JSON on stdin (default: {})")
    cli_blobs.add_submit_options(p)
    p.add_argument("--max-attempts", type=int, help="attempts before the job fails")
    p.add_argument("--timeout-seconds", type=float, help="handler timeout of each attempt")
    p.add_argument("--lease-seconds", type=float, help="lease length of each attempt")
    p.add_argument("--idempotency-key", help="the same key and payload give the same job (default with several "
                   "--api: a new key, reused when the submit is resent to the next node)")
    _wait_flag(p, "the job")

    p = sub.add_parser("job", parents=[common], help="show a job",
                       description="Show a job; with --history, each signed fact about it.")
    p.add_argument("id")
    _wait_flag(p, "the job")
    p.add_argument("--history", action="store_true", help="list the job's signed facts: kind, signer, attempt, time")

    p = sub.add_parser("cancel", parents=[common], help="cancel a job that has not finished")
    p.add_argument("id")
    p.add_argument("--reason", default="cancelled from the command line")

    p = sub.add_parser("list", parents=[common], help="list jobs",
                       description="List the jobs a node holds, accepted or ran (--mesh: its peers' too).")
    p.add_argument("--status", choices=("pending", "running", "done", "failed", "cancelled"))
    p.add_argument("--limit", type=int, default=100, help="at most this many jobs (default 100)")
    p.add_argument("--all", action="store_true", help="every job the node holds, page after page")
    p.add_argument("--mesh", action="store_true", help="ask the node's peers too and merge, one entry per job")

    sub.add_parser("peers", parents=[common], help="list a node's peers")
    sub.add_parser("types", parents=[common], help="list the job types a node can take")
    sub.add_parser("status", parents=[common], help="show a node's status")

    p = sub.add_parser("watch", parents=[common], help="follow jobs until they finish",
                       description="Follow jobs until every one finished, showing each change.")
    p.add_argument("ids", nargs="+", metavar="ID")
    p.add_argument("--timeout", type=_seconds, default=math.inf, metavar="S",
                   help="give up after S seconds (default: never)")

    p = sub.add_parser("completion", help="print a shell completion script",
                       description="Print a completion script: `source <(workmesh completion bash)`.")
    p.add_argument("shell", choices=("bash", "zsh", "tcsh"))


# ----------------------------------------------------------------------------- output


class Out:
    """Where a command writes: JSON documents, or tables and progress on a terminal."""

    def __init__(self, mode: str | None, stream: Any = None) -> None:
        self.stream = stream or sys.stdout
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.mode = mode or ("table" if self.tty else "json")

    def json(self, doc: Any) -> None:
        self.stream.write(json.dumps(doc, indent=2) + "\n")

    def table(self, columns: list[str], rows: list[list[Any]], title: str | None = None) -> None:
        self.stream.write(render_table(columns, rows, title=title, width=None if self.tty else 10_000))

    def fields(self, pairs: list[tuple[str, Any]], title: str | None = None) -> None:
        self.table(["FIELD", "VALUE"], [[k, v] for k, v in pairs], title=title)

    def progress(self) -> Progress:
        return Progress(self.tty and self.stream is sys.stdout)


def render_table(columns: list[str], rows: list[list[Any]], *, title: str | None = None,
                 width: int | None = None) -> str:
    """A plain table (rich, no colour): what ``--output table`` prints."""
    import io

    from rich import box
    from rich.console import Console
    from rich.table import Table

    table = Table(*columns, box=box.SIMPLE_HEAD, title=title, title_justify="left", show_edge=False,
                  pad_edge=False, header_style="bold")
    for col in table.columns:
        col.no_wrap = True
    for row in rows:
        table.add_row(*("-" if v is None else str(v) for v in row))
    buf = io.StringIO()
    Console(file=buf, width=width or 120, color_system=None, force_terminal=False, no_color=True,
            highlight=False, emoji=False).print(table)
    return "\n".join(line.rstrip() for line in buf.getvalue().splitlines()) + "\n"


class Progress:
    """A spinner with the job's status on a terminal (rich), nothing otherwise."""

    def __init__(self, live: bool) -> None:
        self._status = None
        if live:
            from rich.console import Console

            self._status = Console(stderr=True).status("waiting", spinner="dots")

    def __enter__(self) -> Progress:
        if self._status is not None:
            self._status.__enter__()
        return self

    def update(self, text: str) -> None:
        if self._status is not None:
            self._status.update(text)

    def __exit__(self, *exc: object) -> None:
        if self._status is not None:
            self._status.__exit__(*exc)


def iso_ms(ms: int | None) -> str | None:
    if not ms:
        return None
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def short(node_id: str | None, n: int = 12) -> str | None:
    return node_id[:n] if node_id else None


def _clip(value: Any, n: int = 60) -> str | None:
    if value is None:
        return None
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= n else text[: n - 3] + "..."


def job_fields(doc: dict) -> list[tuple[str, Any]]:
    return [
        ("id", doc.get("id")), ("type", doc.get("type")), ("status", doc.get("status")),
        ("attempts", f"{doc.get('attempts')}/{doc.get('max_attempts')}"), ("worker", doc.get("worker")),
        ("submitted_by", doc.get("submitted_by")), ("created", iso_ms(doc.get("created_ms"))),
        ("result", _clip(doc.get("result"), 200)), ("error", doc.get("error")), ("last_error", doc.get("last_error")),
    ]


def history_rows(history: list[dict]) -> list[list[Any]]:
    """One row per signed fact: kind (grant action or result outcome), signer, attempt, time."""
    rows = []
    for f in history:
        kind = f.get("kind")
        detail = f.get("action") or f.get("outcome")
        rows.append([f"{kind}/{detail}" if detail else kind, short(f.get("author"), 16), f.get("attempt"),
                     iso_ms(f.get("ts_ms")), short(f.get("fact_id"), 16)])
    return rows


JOB_COLUMNS = ["ID", "TYPE", "STATUS", "ATTEMPTS", "WORKER", "CREATED"]


def job_row(doc: dict) -> list[Any]:
    return [doc.get("id"), doc.get("type"), doc.get("status"), f"{doc.get('attempts')}/{doc.get('max_attempts')}",
            short(doc.get("worker")), iso_ms(doc.get("created_ms"))]


def exit_for(doc: dict) -> int:
    """0 unless the job failed or was cancelled."""
    return EXIT_FAILED if doc.get("status") in ("failed", "cancelled") else EXIT_OK


# ----------------------------------------------------------------------------- commands


def _check(status: int, doc: Any, ok: tuple[int, ...] = (200,)) -> Any:
    if status not in ok:
        raise ApiError(problem_line(status, doc if isinstance(doc, dict) else {}), status=status,
                       doc=doc if isinstance(doc, dict) else None)
    return doc


def read_payload(text: str, stdin: Any = None) -> Any:
    """JSON from ``text``, from the file ``@PATH``, or from stdin for ``-``."""
    source = "payload"
    if text == "-":
        raw, source = (stdin or sys.stdin).read(), "stdin"
    elif text.startswith("@"):
        path = text[1:]
        try:
            with open(path, encoding="utf-8") as fh:
                raw = fh.read()
        except OSError as exc:
            raise UsageError(f"payload file {path}: {exc.strerror or exc}") from None
        source = path
    else:
        raw = text
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise UsageError(f"{source} is not JSON: {exc}") from None


def wait_for(api: Api, job_id: str, wait_s: float, progress: Progress, *, first: dict | None = None) -> dict:
    """Long-poll the job until it is terminal or ``wait_s`` passed (inf: no limit)."""
    started = time.monotonic()
    doc = first
    while True:
        if doc is not None:
            elapsed = time.monotonic() - started
            progress.update(f"job {job_id[:12]}: {doc.get('status')} (attempt {doc.get('attempts')}), "
                            f"{elapsed:.0f} s, via {api.url}")
            if doc.get("status") in TERMINAL or elapsed >= wait_s:
                return doc
        left = wait_s - (time.monotonic() - started)
        chunk = max(0.0, min(WAIT_CHUNK_S, left))
        status, got = api.request("GET", f"/jobs/{job_id}", query={"wait": f"{chunk:g}"},
                                  timeout_s=chunk + api.timeout_s)
        doc = _check(status, got)


def cmd_submit(api: Api, args: argparse.Namespace, out: Out) -> int:
    payload = read_payload(args.payload)
    if args.blob:  # upload each --blob file first and refer to it in the payload
        from workmesh.blobs_client import BlobError

        try:
            payload = cli_blobs.attach_blobs(payload, args.blob, api.url, args.token)
        except (BlobError, OSError) as exc:
            raise ApiError(f"--blob: {exc}") from None
    body: dict[str, Any] = {"type": args.type, "payload": payload}
    for field in ("max_attempts", "timeout_seconds", "lease_seconds"):
        if getattr(args, field) is not None:
            body[field] = getattr(args, field)
    # A key makes a resend to the next node safe; with one node there is no
    # resend, and a keyless submit lets the node claim the job as it places it.
    key = args.idempotency_key or (uuid.uuid4().hex if len(api.urls) > 1 else None)
    first_wait = min(args.wait, WAIT_CHUNK_S)
    with out.progress() as progress:
        progress.update(f"submitting {args.type} to {api.url}")
        status, doc = api.request("POST", "/jobs", body, headers={"Idempotency-Key": key} if key else None,
                                  query={"wait": f"{first_wait:g}"} if first_wait > 0 else None,
                                  timeout_s=first_wait + api.timeout_s)
        doc = _check(status, doc, ok=(200, 201, 202))
        if args.wait > 0:
            doc = wait_for(api, doc["id"], args.wait, progress, first=doc)
    return _show_job(doc, out, waited=args.wait)


def _show_job(doc: dict, out: Out, *, waited: float = 0.0, history: bool = False) -> int:
    if out.mode == "json":
        out.json(doc)
    else:
        out.fields(job_fields(doc))
        if history:
            out.table(["KIND", "SIGNER", "ATTEMPT", "TIME", "FACT"], history_rows(doc.get("history") or []),
                      title="signed facts")
    if waited > 0 and doc.get("status") not in TERMINAL:
        print(f"workmesh: job {doc.get('id')} is still {doc.get('status')} after {waited:g} s", file=sys.stderr)
        return EXIT_FAILED
    return exit_for(doc)


def cmd_job(api: Api, args: argparse.Namespace, out: Out) -> int:
    query = {"history": "true"} if args.history else None
    doc = _check(*api.request("GET", f"/jobs/{args.id}", query=query))
    if args.wait > 0 and doc.get("status") not in TERMINAL:
        with out.progress() as progress:
            doc = wait_for(api, args.id, args.wait, progress, first=doc)
        if args.history:
            doc = _check(*api.request("GET", f"/jobs/{args.id}", query=query))
    return _show_job(doc, out, waited=args.wait, history=args.history)


def cmd_cancel(api: Api, args: argparse.Namespace, out: Out) -> int:
    doc = _check(*api.request("POST", f"/jobs/{args.id}/cancel", {"reason": args.reason}))
    if out.mode == "json":
        out.json(doc)
    else:
        out.fields(job_fields(doc))
    return EXIT_OK if doc.get("status") == "cancelled" else EXIT_FAILED


def list_pages(api: Api, status: str | None, limit: int, every: bool) -> Iterator[dict]:
    after = None
    shown = 0
    while True:
        page = min(LIST_PAGE, limit - shown) if not every else LIST_PAGE
        doc = _check(*api.request("GET", "/jobs", query={"status": status, "limit": str(page), "after": after}))
        for job in doc.get("jobs", []):
            yield job
            shown += 1
        after = doc.get("next")
        if not after or (not every and shown >= limit):
            return


def cmd_list(api: Api, args: argparse.Namespace, out: Out) -> int:
    if not 1 <= args.limit <= 100_000:
        raise UsageError("--limit: must be in 1..100000")
    extra: dict[str, Any] = {}
    if args.mesh:
        doc = _check(*api.request("GET", "/jobs", query={"scope": "mesh", "status": args.status,
                                                         "limit": str(min(args.limit, LIST_PAGE))}))
        jobs = doc.get("jobs", [])
        extra = {k: doc[k] for k in ("nodes_asked", "nodes_failed") if k in doc}
    else:
        jobs = list(list_pages(api, args.status, args.limit, args.all))
    if out.mode == "json":
        out.json({"jobs": jobs, **extra})
    else:
        title = f"{len(jobs)} jobs" + (f" from {extra['nodes_asked']} nodes" if extra else "")
        out.table(JOB_COLUMNS, [job_row(j) for j in jobs], title=title)
    return EXIT_OK


def _status(api: Api) -> dict:
    return _check(*api.request("GET", "/status"))


def cmd_peers(api: Api, args: argparse.Namespace, out: Out) -> int:
    doc = _status(api)
    peers = doc.get("peer_list", [])
    if out.mode == "json":
        out.json({"node_id": doc.get("node_id"), "peers": peers})
    else:
        out.table(["NODE ID", "ADDRESS"], [[p.get("node_id"), p.get("address")] for p in peers],
                  title=f"{doc.get('peers', len(peers))} peers of {short(doc.get('node_id'))}")
    return EXIT_OK


def job_types(api: Api) -> list[str]:
    doc = _status(api)
    if isinstance(doc.get("job_types"), list):
        return sorted(doc["job_types"])
    spec = _check(*api.request("GET", "/openapi.json"))
    prop = spec.get("components", {}).get("schemas", {}).get("SubmitRequest", {}).get("properties", {}).get("type", {})
    return sorted(prop.get("enum", []))


def cmd_types(api: Api, args: argparse.Namespace, out: Out) -> int:
    types = job_types(api)
    if out.mode == "json":
        out.json({"types": types})
    else:
        out.table(["TYPE"], [[t] for t in types])
    return EXIT_OK


def cmd_status(api: Api, args: argparse.Namespace, out: Out) -> int:
    doc = _status(api)
    if out.mode == "json":
        out.json(doc)
        return EXIT_OK
    jobs = doc.get("jobs", {})
    workers = doc.get("workers", {})
    repl = doc.get("replication", {})
    out.fields([
        ("node_id", doc.get("node_id")), ("version", doc.get("version")), ("api", doc.get("api")),
        ("p2p", doc.get("p2p")), ("peers", doc.get("peers")), ("uptime_seconds", doc.get("uptime_seconds")),
        ("workers", f"{workers.get('busy')}/{workers.get('slots')} busy"),
        ("replication", f"r={repl.get('replicas')} quorum={repl.get('quorum')} k={repl.get('k')}"),
        *((f"jobs {k}", v) for k, v in jobs.items()),
    ])
    return EXIT_OK


def cmd_watch(api: Api, args: argparse.Namespace, out: Out) -> int:
    started = time.monotonic()
    last: dict[str, dict] = {}
    pending = list(dict.fromkeys(args.ids))

    def poll(job_id: str, wait_s: float) -> None:
        doc = _check(*api.request("GET", f"/jobs/{job_id}", query={"wait": f"{wait_s:g}"},
                                  timeout_s=wait_s + api.timeout_s))
        before = last.get(job_id)
        if before is None or (before.get("status"), before.get("attempts")) != (doc.get("status"), doc.get("attempts")):
            _event(out, doc)
        last[job_id] = doc

    with out.progress() as progress:
        while pending:
            left = args.timeout - (time.monotonic() - started)
            if left <= 0:
                break
            if len(pending) == 1:  # one job: a long poll
                poll(pending[0], min(WAIT_CHUNK_S, left))
            else:  # several: one round of reads a second
                for job_id in pending:
                    poll(job_id, 0.0)
            pending = [j for j in pending if last[j].get("status") not in TERMINAL]
            progress.update(f"{len(last) - len(pending)}/{len(last)} finished, "
                            f"{time.monotonic() - started:.0f} s, via {api.url}")
            if len(pending) > 1:
                time.sleep(max(0.0, min(1.0, args.timeout - (time.monotonic() - started))))
    if pending:
        print(f"workmesh: {len(pending)} jobs still unfinished after {args.timeout:g} s", file=sys.stderr)
        return EXIT_FAILED
    return max((exit_for(d) for d in last.values()), default=EXIT_OK)


def _event(out: Out, doc: dict) -> None:
    now = datetime.now(timezone.utc).strftime("%H:%M:%S")
    if out.mode == "json":
        out.stream.write(json.dumps(doc) + "\n")  # one line per change: JSON lines
    else:
        out.stream.write(f"{now}  {doc.get('id')}  {doc.get('status'):<9}  attempt {doc.get('attempts')}"
                         f"{'  worker ' + short(doc['worker']) if doc.get('worker') else ''}\n")
    out.stream.flush()


def cmd_completion(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    import shtab

    sys.stdout.write(shtab.complete(parser, shell=args.shell))
    return EXIT_OK


HANDLERS: dict[str, Callable[[Api, argparse.Namespace, Out], int]] = {
    "submit": cmd_submit, "job": cmd_job, "cancel": cmd_cancel, "list": cmd_list, "peers": cmd_peers,
    "types": cmd_types, "status": cmd_status, "watch": cmd_watch,
}


def run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """Run a client command; every failure ends as one line on stderr and an exit status."""
    if args.command == "completion":
        return cmd_completion(parser, args)
    try:
        api = Api(args.api or _api_default(), token=args.token, timeout_s=args.http_timeout)
        return HANDLERS[args.command](api, args, Out(args.output))
    except (UsageError, ValueError) as exc:
        return fail(str(exc), EXIT_USAGE)
    except Unreachable as exc:
        return fail(str(exc), EXIT_USAGE)
    except ApiError as exc:
        return fail(str(exc), EXIT_USAGE if exc.status in USAGE_STATUSES else EXIT_FAILED)
    except KeyboardInterrupt:
        return fail("interrupted", 130)
    except BrokenPipeError:
        return EXIT_OK


def fail(message: str, code: int) -> int:
    print(f"workmesh: {message}", file=sys.stderr)
    return code
