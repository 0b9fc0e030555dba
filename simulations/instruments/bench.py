"""workmesh against Celery and Dramatiq on one machine: same jobs, one run, one table.

    python simulations/instruments/bench.py [--jobs N] [--quick] [--json out.json]
                                [--systems celery,dramatiq,workmesh3,workmesh5] [--batch N]

Why it is built this way:
* Every system runs as real subprocesses (Redis, Celery's prefork worker,
  Dramatiq's worker, workmesh nodes), each started in its own session, so a
  system's CPU and memory are sums over its sessions' processes, read from
  /proc/PID/stat while they live. CPU includes reaped children
  (cutime/cstime), so pool workers that exit are still counted. The bench's
  own CPU is reported apart (client CPU, JSON only): it is the client's cost.
* Each baseline gets a fresh Redis (``--save '' --appendonly no``) on a free
  127.0.0.1 port, so one system's memory never shows in another's figures.
* Drain throughput = N / (first enqueue .. last result); latency = sequential
  submit-to-result times at low load; CPU per job = system CPU during the drain
  / N; peak RSS = the largest sum of RSS over the system's processes, sampled
  during that job kind's phases. Each figure is also a ratio to Celery's.
* Every loop is bounded in count and time; every process the bench started is
  killed at the end, on failure and on Ctrl-C.
A system that cannot start (missing package or binary, CLI not built yet) is
listed as skipped with the reason; the others still run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))
import bench_baselines as bb  # noqa: E402
from procmesh import free_port, spawn, workmesh_command  # noqa: E402
from stats import percentile  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
ALL_SYSTEMS = ("celery", "dramatiq", "workmesh3", "workmesh5")
COLUMNS = ("system", "job", "drain/s", "drain xC", "p50 ms", "p50 xC", "p99 ms", "p99 xC",
           "cpu ms/job", "cpu xC", "rss MiB", "rss xC", "pss MiB", "pss xC", "note")
# (figure, its column) pairs that get a ratio to Celery's.
RATIO_OF = (("drain_jobs_per_s", "drain xC"), ("latency_p50_ms", "p50 xC"),
            ("latency_p99_ms", "p99 xC"), ("cpu_ms_per_job", "cpu xC"), ("peak_rss_mib", "rss xC"),
            ("peak_pss_mib", "pss xC"))


# --------------------------------------------------------------------------
# Pure core: figures, ratios, the table.


def split_slots(total: int, nodes: int) -> list[int]:
    """Worker slots per node so the mesh has ``total`` in all (earlier nodes get the rest)."""
    base, extra = divmod(total, nodes)
    return [base + (1 if i < extra else 0) for i in range(nodes)]


def mesh_size(system: str) -> int | None:
    """3 for "workmesh3"; None for a system that is not a workmesh mesh."""
    match = re.fullmatch(r"workmesh(\d+)", system)
    return int(match.group(1)) if match else None


@dataclass
class Row:
    """One system and job kind; figures are None when not measured."""

    system: str
    kind: str
    drain_jobs_per_s: float | None = None
    latency_p50_ms: float | None = None
    latency_p99_ms: float | None = None
    cpu_ms_per_job: float | None = None
    peak_rss_mib: float | None = None
    peak_pss_mib: float | None = None  # shared pages (a forked pool's) counted once, split among their sharers
    client_cpu_ms_per_job: float | None = None
    cpu_settled_ms_per_job: float | None = None  # with --settle-s: the drain's CPU and what followed it
    jobs: int = 0
    jobs_done: int = 0
    jobs_wrong: int = 0
    enqueue_s: float | None = None
    drain_s: float | None = None
    latency_samples: int = 0
    latency_wrong: int = 0
    cost_per_job: dict[str, float] | None = None  # workmesh: crypto ops, datagrams, bytes (from /status)
    note: str = ""


def with_ratios(rows: list[Row]) -> list[dict[str, Any]]:
    """Rows as dicts, each figure also as a ratio to Celery's for the same job kind."""
    celery = {row.kind: row for row in rows if row.system == "celery"}
    out = []
    for row in rows:
        record = asdict(row)
        base = celery.get(row.kind)
        record["ratios_to_celery"] = {
            key: (round(value / ref, 3) if value is not None and ref else None)
            for key, _ in RATIO_OF
            for value, ref in [(getattr(row, key), getattr(base, key) if base else None)]
        }
        out.append(record)
    return out


def _fmt(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


_DIGITS = {"drain_jobs_per_s": 0, "latency_p50_ms": 2, "latency_p99_ms": 2, "cpu_ms_per_job": 3, "peak_rss_mib": 1,
           "peak_pss_mib": 1}


def format_table(records: list[dict[str, Any]]) -> str:
    """A fixed-width table with every column of COLUMNS, one line per record."""
    body = []
    for rec in records:
        cells = [rec["system"], rec["kind"]]
        for key, _ in RATIO_OF:
            cells += [_fmt(rec[key], _DIGITS[key]), _fmt(rec["ratios_to_celery"][key], 2)]
        body.append(cells + [rec["note"]])
    widths = [max([len(col)] + [len(r[i]) for r in body]) for i, col in enumerate(COLUMNS)]
    widths[-1] = len(COLUMNS[-1])
    numeric = range(2, len(COLUMNS) - 1)
    out = ["  ".join(col.rjust(w) if i in numeric else col.ljust(w)
                     for i, (col, w) in enumerate(zip(COLUMNS, widths))),
           "  ".join("-" * w for w in widths)]
    for r in body:
        out.append("  ".join(cell.rjust(w) if i in numeric else cell.ljust(w)
                             for i, (cell, w) in enumerate(zip(r, widths))).rstrip())
    return "\n".join(out)


COST_COLUMNS = (("signatures", "sign"), ("facts_signed", "facts signed"), ("verifications", "verify"),
                ("facts_verified", "facts verified"), ("verify_cache_hits", "cached"),
                ("macs", "macs"), ("messages_out", "messages"), ("datagrams_out", "datagrams"), ("bytes_out", "bytes"),
                ("store_added", "facts stored"), ("store_writes", "sqlite commits"),
                ("reannounced", "reannounced"), ("timeouts", "rpc timeouts"))


def format_costs(records: list[dict[str, Any]]) -> str:
    """workmesh's cost per job (summed over the mesh's nodes), one line per measured row."""
    header = ["system", "job"] + [title for _, title in COST_COLUMNS]
    body = [[rec["system"], rec["kind"]] + [_fmt(rec["cost_per_job"].get(key), 1) for key, _ in COST_COLUMNS]
            for rec in records if rec["cost_per_job"]]
    widths = [max(len(h), *(len(r[i]) for r in body)) for i, h in enumerate(header)]
    lines = ["cost per job, all nodes together (crypto operations, datagrams, bytes sent, storage, re-announcements, RPC timeouts)",
             "  ".join(h.rjust(w) if i > 1 else h.ljust(w) for i, (h, w) in enumerate(zip(header, widths)))]
    lines += ["  ".join(c.rjust(w) if i > 1 else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in body]
    return "\n".join(lines)


def machine_info(cores: int) -> dict[str, Any]:
    """What the figures were measured on: CPU model, cores, Python, load when the run began."""
    cpu = "unknown cpu"
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "cores": cores, "python": platform.python_version(), "platform": platform.platform(),
            "load_average_start": os.getloadavg()}


# --------------------------------------------------------------------------
# Process accounting from /proc (Linux).


def parse_stat(text: str) -> tuple[int, int, int]:
    """(session id, CPU ticks incl. reaped children, RSS pages) from /proc/PID/stat text."""
    fields = text[text.rindex(")") + 2:].split()  # fields[0] is field 3 (state)
    ticks = sum(int(fields[i]) for i in (11, 12, 13, 14))  # utime stime cutime cstime
    return int(fields[3]), ticks, int(fields[21])


def session_usage(sessions: set[int]) -> tuple[float, int]:
    """(CPU seconds, RSS bytes) summed over every live process of ``sessions``."""
    ticks = pages = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as fh:
                session, cpu, rss = parse_stat(fh.read())
        except (OSError, ValueError, IndexError):
            continue  # the process exited while we looked
        if session in sessions:
            ticks, pages = ticks + cpu, pages + rss
    return ticks / CLK_TCK, pages * PAGE_BYTES


def session_pss(sessions: set[int]) -> int:
    """PSS bytes summed over every live process of ``sessions``: a page shared
    by n processes (a forked worker pool's, Celery's and workmesh's alike)
    counts 1/n in each, where RSS counts it whole in every one."""
    total_kb = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as fh:
                if parse_stat(fh.read())[0] not in sessions:
                    continue
            with open(f"/proc/{entry.name}/smaps_rollup") as fh:
                total_kb += next((int(line.split()[1]) for line in fh if line.startswith("Pss:")), 0)
        except (OSError, ValueError, IndexError, StopIteration):
            continue  # the process exited while we looked
    return total_kb * 1024


class PeakRss:
    """Samples the summed RSS of some sessions in a thread; ``stop()`` returns the peak."""

    def __init__(self, sessions: set[int], interval_s: float = 0.25) -> None:
        self._sessions, self._interval_s = sessions, interval_s
        self._stop = threading.Event()
        self.peak_bytes = session_usage(sessions)[1]
        self.peak_pss_bytes = session_pss(sessions)
        self._thread = threading.Thread(target=self._run, name="peak-rss", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            self.peak_bytes = max(self.peak_bytes, session_usage(self._sessions)[1])
            self.peak_pss_bytes = max(self.peak_pss_bytes, session_pss(self._sessions))

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(timeout=5)
        self.peak_pss_bytes = max(self.peak_pss_bytes, session_pss(self._sessions))
        return max(self.peak_bytes, session_usage(self._sessions)[1])


def client_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# --------------------------------------------------------------------------
# Processes: every one started in its own session, all killed at the end.


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log_path: Path

    @property
    def session(self) -> int:
        return self.popen.pid

    def tail(self, lines: int = 6) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(text[-lines:])


class Launcher:
    """Starts subprocesses (logs to files) and kills them, by process group, at the end."""

    def __init__(self, logdir: Path) -> None:
        self._logdir = logdir
        self._procs: list[Proc] = []

    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Proc:
        log_path = self._logdir / f"{name}-{len(self._procs)}.log"
        popen = spawn(argv, log_path, env=env, cwd=REPO)
        proc = Proc(name, popen, log_path)
        self._procs.append(proc)
        return proc

    def stop(self, procs: list[Proc], grace_s: float = 5.0) -> None:
        """SIGTERM each process group, wait up to ``grace_s``, then SIGKILL what is left."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for proc in procs:
                try:
                    os.killpg(proc.popen.pid, sig)
                except (ProcessLookupError, PermissionError):
                    pass
            deadline = time.monotonic() + grace_s
            for proc in procs:
                try:
                    proc.popen.wait(timeout=max(0.01, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass
        self._procs = [p for p in self._procs if p not in procs]

    def stop_all(self) -> None:
        self.stop(list(self._procs))


def start_redis(launcher: Launcher, workdir: Path, deadline_s: float = 10.0) -> tuple[Proc, str]:
    """A fresh redis-server on a free 127.0.0.1 port; returns it and its base URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise bb.BaselineUnavailable("redis-server not found on PATH")
    port = free_port()
    proc = launcher.spawn("redis", [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                                    "--appendonly", "no", "--dir", str(workdir), "--loglevel", "warning"])
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc.popen.poll() is not None:
            raise bb.BaselineUnavailable(f"redis-server exited: {proc.tail()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as conn:
                conn.sendall(b"PING\r\n")
                if conn.recv(16).startswith(b"+PONG"):
                    return proc, f"redis://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.05)
    raise bb.BaselineUnavailable("redis-server did not answer PING in time")


# --------------------------------------------------------------------------
# workmesh: N nodes as subprocesses, loaded over HTTP with aiohttp.

WORKMESH_TYPES = {"noop": "echo", "sha256": "sha256"}
# /status counters that make up a job's cost: (section, names).
COST_COUNTERS = {"crypto": ("signatures", "facts_signed", "verifications", "facts_verified", "verify_cache_hits", "macs"),
                 "dht": ("messages_out", "datagrams_out", "bytes_out", "store_added", "store_writes", "timeouts"),
                 "gossip": ("reannounced",)}
TERMINAL = {"done", "failed", "cancelled"}
PEER_KEYS = ("peers", "peer_count", "known_peers", "contacts", "routing_table_size")


def peer_count(status: dict[str, Any]) -> int | None:
    """The number of peers a /status document reports, if it reports one we recognise."""
    for key in PEER_KEYS:
        value = status.get(key)
        if isinstance(value, bool):
            continue
        if isinstance(value, int):
            return value
        if isinstance(value, list | dict):
            return len(value)
    return None


def _get_json(url: str, timeout_s: float = 2.0) -> dict[str, Any] | None:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:  # noqa: S310 - 127.0.0.1 only
            return json.loads(resp.read() or b"{}") if resp.status == 200 else None
    except (OSError, ValueError):
        return None


class _JobFailed(Exception):
    """One workmesh job did not end done with the right result; the text says why."""


class WorkmeshDriver:
    """A mesh of ``nodes`` workmesh nodes on 127.0.0.1 with ``slots`` worker slots in all."""

    requires = ("aiohttp",)

    def __init__(
        self, nodes: int, launcher: Launcher, workdir: Path, slots: int, in_flight: int = 64, batch: int = 1
    ) -> None:
        self._nodes, self._launcher, self._workdir = nodes, launcher, workdir
        self._batch = batch
        self.slots = split_slots(slots, nodes)
        self._in_flight = in_flight
        self._urls: list[str] = []

    def _wait_ready(self, proc: Proc, url: str, deadline_s: float) -> None:
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            if proc.popen.poll() is not None:
                raise bb.BaselineUnavailable(
                    f"workmesh {proc.name} exited with code {proc.popen.returncode}: {proc.tail(3)}")
            if _get_json(f"{url}/healthz", timeout_s=1.0) is not None:
                return
            time.sleep(0.1)
        raise bb.BaselineUnavailable(f"workmesh {proc.name}: /healthz not ready in {deadline_s:.0f} s")

    def start(self) -> list[Proc]:
        if missing := bb.missing_modules(*self.requires):
            raise bb.BaselineUnavailable(f"python package(s) missing: {', '.join(missing)}")
        command, procs, bootstrap = workmesh_command(), [], []
        for i, workers in enumerate(self.slots):
            p2p, api = free_port(), free_port()
            data_dir = self._workdir / f"node{i}"
            data_dir.mkdir(parents=True, exist_ok=True)
            argv = command + ["start", "--host", "127.0.0.1", "--p2p-port", str(p2p), "--api-port", str(api),
                              "--data-dir", str(data_dir), "--workers", str(workers),
                              "--log-level", os.environ.get("WM_BENCH_LOG", "warning")] + bootstrap
            procs.append(self._launcher.spawn(f"node{i}", argv, dict(os.environ)))
            self._urls.append(f"http://127.0.0.1:{api}")
            if i == 0:  # the others bootstrap from node 0, so it must be up first
                self._wait_ready(procs[0], self._urls[0], 30.0)
                bootstrap = ["--bootstrap", f"127.0.0.1:{p2p}"]
        for proc, url in zip(procs, self._urls):
            self._wait_ready(proc, url, 30.0)
        self._wait_peers(deadline_s=30.0)
        return procs

    def _wait_peers(self, deadline_s: float) -> None:
        """Wait until every node reports n-1 peers, when /status says how many it has."""
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            counts = [peer_count(_get_json(f"{url}/status") or {}) for url in self._urls]
            if any(c is None for c in counts) or min(counts) >= self._nodes - 1:
                return
            time.sleep(0.2)

    def info(self) -> dict[str, Any]:
        return {"workers_per_node": self.slots, "status": [_get_json(f"{url}/status") for url in self._urls]}

    def counters(self) -> dict[str, float]:
        """The mesh's cost counters (summed over nodes) from each node's /status."""
        total: dict[str, float] = {}
        for url in self._urls:
            doc = _get_json(f"{url}/status") or {}
            for section, names in COST_COUNTERS.items():
                for name in names:
                    value = (doc.get(section) or {}).get(name)
                    if isinstance(value, int | float) and not isinstance(value, bool):
                        total[f"{section}.{name}"] = total.get(f"{section}.{name}", 0) + value
        return total

    # -- load, in asyncio -------------------------------------------------

    async def _submit(self, http: Any, url: str, kind: str, index: int, wait_s: int = 0) -> dict[str, Any]:
        """Submit job ``index``; with ``wait_s``, in the same request wait up to
        that long for its result (200 when terminal, else 202)."""
        body = {"type": WORKMESH_TYPES[kind], "payload": bb.job_payload(kind, index)}
        params = {"wait": str(wait_s)} if wait_s > 0 else None
        async with http.post(f"{url}/jobs", json=body, params=params) as resp:
            if resp.status not in (200, 202):
                raise _JobFailed(f"submit answered {resp.status}: {(await resp.text())[:80]}")
            return await resp.json()

    async def _submit_many(self, http: Any, url: str, kind: str, indices: range) -> list[dict[str, Any]]:
        """Submit jobs ``indices`` in one ``POST /jobs`` (a JSON array); one entry per job, in order."""
        body = [{"type": WORKMESH_TYPES[kind], "payload": bb.job_payload(kind, i)} for i in indices]
        async with http.post(f"{url}/jobs", json=body) as resp:
            if resp.status != 202:
                raise _JobFailed(f"batch submit answered {resp.status}: {(await resp.text())[:80]}")
            entries = await resp.json()
        if not isinstance(entries, list) or len(entries) != len(indices):
            raise _JobFailed("batch submit answered no entry per job")
        return entries

    async def _result(self, http: Any, url: str, job_id: str, end: float) -> dict[str, Any]:
        """Long-poll ``GET /jobs/{id}?wait=`` until the job is terminal or ``end`` passes."""
        while (remaining := end - time.monotonic()) > 0:
            wait_s = max(1, min(10, int(remaining)))
            asked = time.monotonic()
            async with http.get(f"{url}/jobs/{job_id}", params={"wait": str(wait_s)}) as resp:
                doc = await resp.json() if resp.status == 200 else {}
            if doc.get("status") in TERMINAL:
                return doc
            if time.monotonic() - asked < 0.05:  # the server did not hold the request: do not spin
                await asyncio.sleep(0.02)
        raise _JobFailed("no result by the deadline")

    async def _run_one(self, http: Any, kind: str, index: int, end: float, job_id: str | None = None) -> None:
        """Submit job ``index`` (unless ``job_id`` is given) and wait for its right result."""
        import aiohttp

        url = self._urls[index % len(self._urls)]
        try:
            doc = {}
            if job_id is None:  # a client that waits submits and waits in one request
                doc = await self._submit(http, url, kind, index, wait_s=max(1, min(10, int(end - time.monotonic()))))
                job_id = doc["id"]
            if doc.get("status") not in TERMINAL:
                doc = await self._result(http, url, job_id, end)
        except (aiohttp.ClientError, asyncio.TimeoutError, KeyError, ValueError) as exc:
            raise _JobFailed(f"{type(exc).__name__}: {str(exc)[:60]}") from exc
        if doc["status"] != "done":
            raise _JobFailed(f"job {doc['status']}: {str(doc.get('error'))[:60]}")
        if not bb.result_ok(kind, bb.job_payload(kind, index), doc.get("result")):
            raise _JobFailed(f"wrong result {str(doc.get('result'))[:40]}")

    def _session(self) -> Any:
        import aiohttp

        return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=self._in_flight),
                                     timeout=aiohttp.ClientTimeout(total=30))

    async def _drain(self, kind: str, count: int, deadline_s: float) -> bb.DrainOutcome:
        """Submit all ``count`` jobs (``in_flight`` at a time), then collect every result."""
        import aiohttp

        failures: Counter[str] = Counter()
        async with self._session() as http:
            started = time.monotonic()
            end = started + deadline_s
            ids: list[str | None] = [None] * count
            todo = iter(range(count))

            async def batch_submitter() -> None:
                for first in todo:  # each batch's first index
                    chunk = range(first, min(count, first + self._batch))
                    if time.monotonic() >= end:
                        failures["not submitted by the deadline"] += len(chunk)
                        continue
                    try:
                        entries = await self._submit_many(http, self._urls[first // self._batch % len(self._urls)], kind, chunk)
                    except _JobFailed as exc:
                        failures[str(exc)] += len(chunk)
                        continue
                    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
                        failures[f"submit {type(exc).__name__}"] += len(chunk)
                        continue
                    for i, entry in zip(chunk, entries, strict=True):
                        if isinstance(entry, dict) and "id" in entry:
                            ids[i] = entry["id"]
                        else:
                            failures[f"batch item refused: {str(entry)[:60]}"] += 1

            async def submitter() -> None:
                for i in todo:
                    if time.monotonic() >= end:
                        failures["not submitted by the deadline"] += 1
                        continue
                    try:
                        ids[i] = (await self._submit(http, self._urls[i % len(self._urls)], kind, i))["id"]
                    except _JobFailed as exc:
                        failures[str(exc)] += 1
                    except (aiohttp.ClientError, asyncio.TimeoutError, KeyError, ValueError) as exc:
                        failures[f"submit {type(exc).__name__}"] += 1

            async def collector() -> None:
                for i in todo:
                    if ids[i] is not None:
                        try:
                            await self._run_one(http, kind, i, end, job_id=ids[i])
                        except _JobFailed as exc:
                            failures[str(exc)] += 1

            for worker in (batch_submitter if self._batch > 1 else submitter, collector):
                todo = iter(range(0, count, self._batch) if worker is batch_submitter else range(count))
                async with asyncio.TaskGroup() as group:
                    for _ in range(self._in_flight):
                        group.create_task(worker())
                if worker is not collector:
                    enqueue_s = time.monotonic() - started
        lost = sum(failures.values())
        return bb.DrainOutcome(count - lost, lost, enqueue_s, dict(failures.most_common(3)))

    async def _latency(self, kind: str, samples: int, deadline_s: float) -> bb.LatencyOutcome:
        """Sequential jobs; one lost (LATENCY_JOB_TIMEOUT_S) is counted and the series goes on."""
        async with self._session() as http:
            end = time.monotonic() + deadline_s
            times: list[float] = []
            lost, failure = 0, ""
            for i in range(samples):
                if time.monotonic() >= end:
                    break
                t0 = time.perf_counter()
                try:
                    await self._run_one(http, kind, i, min(end, time.monotonic() + bb.LATENCY_JOB_TIMEOUT_S))
                except _JobFailed as exc:
                    lost, failure = lost + 1, failure or str(exc)
                    continue
                times.append(time.perf_counter() - t0)
            return bb.LatencyOutcome(times, lost, failure)

    def drain(self, kind: str, count: int, deadline_s: float) -> bb.DrainOutcome:
        return asyncio.run(self._drain(kind, count, deadline_s))

    def latency(self, kind: str, samples: int, deadline_s: float) -> bb.LatencyOutcome:
        return asyncio.run(self._latency(kind, samples, deadline_s))

    def close(self) -> None:
        """Nothing to close: each load phase owns its HTTP session."""


# --------------------------------------------------------------------------
# Orchestration.


@dataclass
class Settings:
    jobs: int
    latency_samples: int
    drain_timeout_s: float
    latency_timeout_s: float
    slots: int
    kinds: tuple[str, ...] = tuple(bb.JOB_KINDS)
    batch: int = 1  # workmesh drains: jobs per POST /jobs (an array when above 1)
    settle_s: float = 0.0  # also count the CPU spent this long after the drain (deferred work)


def _warm_up(driver: Any, procs: list[Proc]) -> None:
    """Jobs of each kind must come back before anything is measured (losses are measured later)."""
    for kind in bb.JOB_KINDS:
        if not (out := driver.latency(kind, 3, 60.0)).samples_s:
            logs = "; ".join(f"{p.name}: {p.tail(2)}" for p in procs if p.tail(2))
            raise bb.BaselineUnavailable(f"warm-up {kind} jobs did not come back: {out.failure or 'wrong result'}"
                                         f" ({logs or 'no log output'})")


def _measure(driver: Any, row: Row, sessions: set[int], cfg: Settings) -> None:
    counters = getattr(driver, "counters", None)
    before = counters() if counters else None
    peak = PeakRss(sessions)
    try:
        lat = driver.latency(row.kind, cfg.latency_samples, cfg.latency_timeout_s)
        cpu0, client0, t0 = session_usage(sessions)[0], client_cpu_s(), time.monotonic()
        out = driver.drain(row.kind, cfg.jobs, cfg.drain_timeout_s)
        row.drain_s = time.monotonic() - t0
        cpu_s, client_s = session_usage(sessions)[0] - cpu0, client_cpu_s() - client0
        if cfg.settle_s > 0 and out.done:
            # Work a system defers past the last result (workmesh: republishing
            # what the writes left to one replica) is work the job caused.
            time.sleep(min(cfg.settle_s, 600.0))
            row.cpu_settled_ms_per_job = 1000 * (session_usage(sessions)[0] - cpu0) / out.done
    finally:
        row.peak_rss_mib = peak.stop() / 2**20
        row.peak_pss_mib = peak.peak_pss_bytes / 2**20
    row.jobs_done, row.jobs_wrong, row.enqueue_s = out.done, out.wrong, out.enqueue_s
    if before is not None and (jobs := out.done + len(lat.samples_s)):
        after = counters()
        row.cost_per_job = {key.split(".", 1)[1]: round((after.get(key, 0) - before.get(key, 0)) / jobs, 2)
                            for key in after}
    row.drain_jobs_per_s = out.done / row.drain_s if out.done else None
    row.cpu_ms_per_job = 1000 * cpu_s / out.done if out.done else None
    row.client_cpu_ms_per_job = 1000 * client_s / out.done if out.done else None
    row.latency_samples, row.latency_wrong = len(lat.samples_s), lat.wrong
    row.latency_p50_ms = (p := percentile(lat.samples_s, 50)) and 1000 * p
    row.latency_p99_ms = (p := percentile(lat.samples_s, 99)) and 1000 * p
    notes = []
    if out.done < cfg.jobs:
        notes.append(f"drain incomplete: {out.done}/{cfg.jobs} in {row.drain_s:.0f} s")
    if out.wrong:
        notes.append(f"{out.wrong} wrong/lost ({'; '.join(f'{n}x {why}' for why, n in out.failures.items())})")
    if lat.wrong or len(lat.samples_s) < cfg.latency_samples:
        notes.append(f"latency {len(lat.samples_s)}/{cfg.latency_samples} samples, {lat.wrong} lost"
                     + (f" ({lat.failure})" if lat.failure else ""))
    row.note = "; ".join(notes)


def _start(system: str, cfg: Settings, launcher: Launcher, workdir: Path) -> tuple[Any, list[Proc]]:
    """A fresh instance of ``system``: its driver and every process it started."""
    procs: list[Proc] = []
    if system in ("celery", "dramatiq"):
        if missing := bb.missing_modules(system, "redis"):
            raise bb.BaselineUnavailable(f"python package(s) missing: {', '.join(missing)}")
        redis, url = start_redis(launcher, workdir)
        procs.append(redis)
        driver = (bb.CeleryDriver if system == "celery" else bb.DramatiqDriver)(url, launcher.spawn)
    elif nodes := mesh_size(system):
        driver = WorkmeshDriver(nodes, launcher, Path(tempfile.mkdtemp(prefix=system, dir=workdir)), cfg.slots,
                                batch=cfg.batch)
    else:
        raise bb.BaselineUnavailable(f"unknown system (choose from {', '.join(ALL_SYSTEMS)})")
    try:
        return driver, procs + driver.start()
    except BaseException:
        driver.close()
        raise


def run_system(system: str, cfg: Settings, launcher: Launcher, workdir: Path) -> tuple[list[Row], dict[str, Any]]:
    """Measure each job kind on a fresh instance of ``system``, stopped afterwards.

    A fresh instance per kind, so a backlog one kind left behind (a drain that
    timed out) never shows in the next kind's figures.
    """
    rows = [Row(system, kind, jobs=cfg.jobs) for kind in cfg.kinds]
    info: dict[str, Any] = {}
    for row in rows:
        if row is not rows[0] and rows[0].note.startswith("skipped:"):
            row.note = rows[0].note
            continue
        driver = None
        try:
            driver, procs = _start(system, cfg, launcher, workdir)
            sessions = {p.session for p in procs}
            info[row.kind] = {"sessions": sorted(sessions)}
            _warm_up(driver, procs)
            print(f"   {system} {row.kind}: latency x{cfg.latency_samples}, drain x{cfg.jobs}",
                  file=sys.stderr, flush=True)
            _measure(driver, row, sessions, cfg)
            info[row.kind].update(driver.info() if hasattr(driver, "info") else {})
        except bb.BaselineUnavailable as exc:
            row.note = f"skipped: {exc}"
            print(f"   {system} {row.kind} skipped: {exc}", file=sys.stderr, flush=True)
        except Exception as exc:  # noqa: BLE001 - one system's crash must not cost the others' figures
            row.note = f"failed: {type(exc).__name__}: {str(exc)[:120]}"
            print(f"   {system} {row.kind} {row.note}", file=sys.stderr, flush=True)
        finally:
            if driver is not None:
                driver.close()
            launcher.stop_all()
    return rows, info


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=None, help="jobs per drain (default 10000; 200 with --quick)")
    parser.add_argument("--latency-samples", type=int, default=None,
                        help="sequential jobs for latency (default 200; 20 with --quick)")
    parser.add_argument("--quick", action="store_true", help="a short run: 200 jobs per drain, 20 latency samples")
    parser.add_argument("--smoke", action="store_true", help="the smallest run, as CI runs it: 20 jobs, 5 samples")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--kinds", default=",".join(bb.JOB_KINDS), help="comma-separated job kinds (noop, sha256)")
    parser.add_argument("--systems", default=",".join(ALL_SYSTEMS), help="comma-separated list")
    parser.add_argument("--drain-timeout-s", type=float, default=None, help="bound on one drain (default 300)")
    parser.add_argument("--batch", type=int, default=1, choices=range(1, 101), metavar="1..100",
                        help="workmesh drains submit this many jobs per POST /jobs (a JSON array above 1)")
    parser.add_argument("--slots-per-core", type=int, default=8,
                        help="workmesh worker slots per core (8: as many in all as Dramatiq's threads)")
    parser.add_argument("--settle-s", type=float, default=0.0,
                        help="also report CPU per job counted until this long after the drain (work deferred past it)")
    parser.add_argument("--keep-workdir", action="store_true", help="keep logs and node data dirs")
    args = parser.parse_args(argv)
    args.jobs = args.jobs or (20 if args.smoke else 200 if args.quick else 10_000)
    args.latency_samples = args.latency_samples or (5 if args.smoke else 20 if args.quick else 200)
    args.drain_timeout_s = args.drain_timeout_s or (60.0 if args.quick or args.smoke else 300.0)
    args.systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    args.kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip())
    if not args.kinds or any(k not in bb.JOB_KINDS for k in args.kinds):
        parser.error(f"--kinds: choose from {', '.join(bb.JOB_KINDS)}")
    if args.jobs <= 0 or args.latency_samples <= 0:
        parser.error("--jobs and --latency-samples must be positive")
    return args


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cores = os.cpu_count() or 1
    cfg = Settings(args.jobs, args.latency_samples, args.drain_timeout_s,
                   latency_timeout_s=max(30.0, 2.0 * args.latency_samples), slots=args.slots_per_core * cores,
                   kinds=args.kinds, batch=args.batch, settle_s=args.settle_s)
    signal.signal(signal.SIGTERM, _interrupt)
    machine = machine_info(cores)
    workdir = Path(tempfile.mkdtemp(prefix="workmesh-bench-"))
    launcher = Launcher(workdir)
    rows: list[Row] = []
    infos: dict[str, Any] = {}
    interrupted = False
    try:
        for system in args.systems:
            print(f"== {system}", file=sys.stderr, flush=True)
            system_rows, infos[system] = run_system(system, cfg, launcher, workdir)
            rows += system_rows
    except KeyboardInterrupt:
        interrupted = True
        print("interrupted: stopping every process the bench started", file=sys.stderr)
    finally:
        launcher.stop_all()
        if args.keep_workdir:
            print(f"logs and data kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    records = with_ratios(rows)
    machine["load_average_end"] = os.getloadavg()
    print(f"machine: {machine['cpu']}, {cores} cores, python {machine['python']}; load average at start "
          f"{machine['load_average_start'][0]:.2f}, at end {machine['load_average_end'][0]:.2f}")
    print(f"jobs per drain: {cfg.jobs}; latency samples: {cfg.latency_samples}; "
          f"workmesh worker slots in all: {cfg.slots}; xC = ratio to celery")
    print(format_table(records))
    if any(rec["cost_per_job"] for rec in records):
        print()
        print(format_costs(records))
    if cfg.settle_s > 0:
        print()
        print(f"cpu ms/job counted until {cfg.settle_s:g} s after the drain (work deferred past the last result)")
        for rec in records:
            print(f"{rec['system']:<10} {rec['kind']:<6} {_fmt(rec['cpu_ms_per_job'], 3):>8} -> "
                  f"{_fmt(rec['cpu_settled_ms_per_job'], 3):>8}")
    if args.json:
        doc = {"settings": asdict(cfg), "interrupted": interrupted, "info": infos, "rows": records,
               "machine": machine}
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
