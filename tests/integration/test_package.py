"""The package as a user gets it: the wheel alone in a fresh venv, a real mesh, the client, a plugin.

One module-scoped fixture builds the workmesh wheel and the example plugin's
wheel (examples/workmesh-example-plugin), installs nothing but those two
(and their dependencies) into a fresh venv, and starts three nodes from that
venv's ``workmesh`` command. The client code that must prove the wheel runs
in the fresh venv's python; the plugin tests drive that mesh with this
checkout's client. The failover test kills a node, so it runs last.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
import venv
from pathlib import Path

import pytest

import workmesh
from procmesh import ProcMesh

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
PLUGIN = ROOT / "examples" / "workmesh-example-plugin"
INSTALL_TIMEOUT_S = 600


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S, **kw)
    assert out.returncode == 0, f"{cmd}: {out.returncode}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


def _run_together(cmds: list[list[str]]) -> None:
    """Run ``cmds`` at once (each as :func:`_run` would); all must succeed."""
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for cmd in cmds]
    try:
        for cmd, proc in zip(cmds, procs):
            stdout, stderr = proc.communicate(timeout=INSTALL_TIMEOUT_S)
            assert proc.returncode == 0, f"{cmd}: {proc.returncode}\n{stdout[-3000:]}\n{stderr[-3000:]}"
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("package")
    wheels = base / "wheels"
    # The two wheels build at once, each in its own isolated build environment.
    _run_together([[sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(src)]
                   for src in (ROOT, PLUGIN)])
    built = sorted(wheels.glob("*.whl"))
    assert [w.name.split("-")[0] for w in built] == ["workmesh", "workmesh_example_plugin"], built
    env_dir = base / "venv"
    # A bare venv (no ensurepip, which costs seconds): this checkout's pip
    # installs into it (--python), the wheels and their dependencies only.
    venv.EnvBuilder(with_pip=False).create(env_dir)
    _run([sys.executable, "-m", "pip", "--python", str(env_dir / "bin" / "python"), "install", "-q", *map(str, built)])
    return env_dir


@pytest.fixture(scope="module")
def mesh(fresh_venv, tmp_path_factory):
    m = ProcMesh(3, tmp_path_factory.mktemp("pkgmesh"), node_args=["--workers", "2"],
                 command=[str(fresh_venv / "bin" / "workmesh")])
    m.start()
    yield m
    m.stop()


def venv_python(env_dir: Path, code: str, *args: str) -> dict:
    """Run ``code`` in the fresh venv's python (outside this checkout); its last stdout line is JSON."""
    out = _run([str(env_dir / "bin" / "python"), "-c", textwrap.dedent(code), *args], cwd=env_dir,
               env={k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")})
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_wheel_installs_the_one_import_name_workmesh(fresh_venv):
    found = venv_python(fresh_venv, """
        import importlib.metadata as md, importlib.util, json
        dist = md.distribution("workmesh")
        tops = sorted({f.parts[0] for f in dist.files if f.suffix == ".py"})
        print(json.dumps({"tops": tops, "shadowing": [n for n in ("node", "api", "dht", "crypto")
                                                     if importlib.util.find_spec(n) is not None]}))
    """)
    assert found == {"tops": ["workmesh"], "shadowing": []}
    # python -m workmesh is the command line.
    out = _run([str(fresh_venv / "bin" / "python"), "-m", "workmesh", "--version"], cwd=fresh_venv)
    assert out.stdout.strip() == f"workmesh {workmesh.__version__}"


def test_a_fresh_venv_client_submits_waits_and_reads(fresh_venv, mesh):
    urls = [n.url for n in mesh.nodes]
    got = venv_python(fresh_venv, """
        import json, sys
        from workmesh import Client, AsyncClient, Job, JobNotFound
        client = Client(sys.argv[1:], token=None, timeout=10)
        job = client.submit("echo", {"hello": "mesh"}, max_attempts=2)
        done = client.wait(job.id, timeout=30)
        read = client.get(job.id)
        try:
            client.get("00" * 20)
            missing = None
        except JobNotFound as exc:
            missing = exc.status
        print(json.dumps({"id": job.id, "submitted": job.status, "done": done.status, "result": read.result,
                          "same": read.id == job.id, "attempts": read.attempts, "missing": missing,
                          "loop": client.status()["event_loop"]}))
    """, *urls)
    assert got["submitted"] in ("pending", "running", "done") and got["done"] == "done"
    assert got["result"] == {"hello": "mesh"} and got["same"] and got["attempts"] == 1
    assert got["missing"] == 404
    assert got["loop"] == "uvloop"  # a base dependency on Linux: the node runs on it


def test_the_same_key_and_body_through_three_nodes_is_one_job_and_another_body_is_refused(mesh):
    key = f"order-{uuid.uuid4()}"
    ids = set()
    for node in mesh.nodes:
        with workmesh.Client([node.url]) as client:
            ids.add(client.submit("echo", {"order": 7}, idempotency_key=key).id)
    assert len(ids) == 1
    with workmesh.Client([mesh.nodes[2].url]) as client, pytest.raises(workmesh.IdempotencyKeyReused) as info:
        client.submit("echo", {"order": 8}, idempotency_key=key)
    assert info.value.status == 422 and ids.pop() in info.value.detail


def test_the_example_plugin_runs_its_jobs_in_the_mesh(mesh):
    with workmesh.Client([n.url for n in mesh.nodes]) as client:
        status = client.status()
        jobs = client.submit_many([
            {"type": "example.wordcount", "payload": {"text": "one two three"}},
            {"type": "example.checksum", "payload": {"data": "x", "rounds": 3}},
            {"type": "example.fetch", "payload": {"delay": 0.1}},
            {"type": "example.nope", "payload": 1},
        ])
        assert [type(j).__name__ for j in jobs] == ["Job", "Job", "Job", "UnknownJobType"]
        done = [client.wait(j.id, timeout=30) for j in jobs[:3]]
    assert [j.status for j in done] == ["done"] * 3, done
    assert done[0].result == {"words": 3, "attempt": 1} and done[0].max_attempts == 2  # the handler's default
    assert len(done[1].result["blake2b"]) == 128
    assert done[2].result == {"fetched": {"delay": 0.1}}
    assert status["node_id"]
    # The handlers' logs are the nodes' JSON lines: ctx.log bound to the job,
    # and the plugin's stdlib logging through the same renderer.
    lines = [json.loads(line) for n in mesh.nodes for line in n.log_path.read_text().splitlines()
             if line.startswith("{")]
    counted = [e for e in lines if e.get("event") == "counted"]
    assert counted and counted[0]["job_id"] == done[0].id and counted[0]["attempt"] == 1 and counted[0]["words"] == 3
    fetching = [e for e in lines if e.get("logger") == "workmesh_example.handlers"]
    assert fetching and done[2].id in fetching[0]["event"] and fetching[0]["level"] == "info"


def test_a_sleeping_sync_handler_keeps_its_lease_and_its_timeout_is_enforced(mesh):
    with workmesh.Client([n.url for n in mesh.nodes]) as client:
        # A 1 s lease goes stale after 1.27 s of silence: a handler blocking
        # the loop for 3 s would lose it, and another attempt would run.
        slept = client.submit("example.nap", {"seconds": 3}, lease_seconds=1, max_attempts=3)
        started = time.monotonic()
        late = client.submit("example.nap", {"seconds": 8}, timeout_seconds=1, max_attempts=1, lease_seconds=2)
        slept, late = client.wait(slept.id, timeout=30), client.wait(late.id, timeout=30)
        late_s = time.monotonic() - started
    assert slept.status == "done" and slept.attempts == 1 and slept.result["attempt"] == 1, slept
    assert slept.result["slept"] >= 3
    assert late.status == "failed" and late.error == "timed out after 1 s", late
    assert late_s < 7, f"the 1 s timeout ended the job only after {late_s:.1f} s"


def test_a_permanent_error_fails_the_job_after_one_attempt(mesh):
    with workmesh.Client([n.url for n in mesh.nodes]) as client:
        job = client.submit("example.resize", {"width": "wide"}, max_attempts=4)
        job = client.wait(job.id, timeout=30)
    assert job.status == "failed" and job.attempts == 1 and job.max_attempts == 4
    assert job.error.startswith("bad resize request")


async def test_the_async_client_submits_lists_cancels_and_waits_against_the_mesh(mesh):
    async with workmesh.AsyncClient([n.url for n in mesh.nodes]) as client:
        long = await client.submit("sleep", {"seconds": 30}, max_attempts=1)
        quick = await client.submit("echo", {"n": 1})
        assert (await client.wait(quick.id, timeout=30)).result == {"n": 1}
        listed = [job.id async for page in client.list() for job in page]
        cancelled = await client.cancel(long.id, reason="no longer needed")
        final = await client.wait(long.id, timeout=10)
        with pytest.raises(workmesh.Conflict):
            await client.cancel(quick.id)
    assert {quick.id, long.id} <= set(listed)  # in a 3-node mesh every node holds every job
    assert cancelled.status == final.status == "cancelled"


def test_killing_the_first_node_given_the_client_still_submits_and_waits_through_the_others(fresh_venv, mesh):
    first = mesh.nodes[0]
    got = venv_python(fresh_venv, """
        import json, os, signal, sys, threading, time
        from workmesh import Client
        client = Client(sys.argv[2:], timeout=5)
        # A 2 s lease: the job, likely running on the first node, is taken over
        # soon after the kill (the default 10 s lease would only add waiting).
        job = client.submit("sleep", {"seconds": 1.5}, lease_seconds=2)
        # The first node dies while the client long-polls it: the wait carries on elsewhere.
        killer = threading.Timer(0.5, os.kill, (int(sys.argv[1]), signal.SIGKILL))
        killer.start()
        started = time.monotonic()
        during = client.wait(job.id, timeout=40)
        waited = time.monotonic() - started
        killer.join()
        after = client.wait(client.submit("echo", {"after": "kill"}).id, timeout=30)
        print(json.dumps({"during": during.status, "waited": waited, "after": after.status,
                          "result": after.result, "node": client.status()["api"]}))
    """, str(first.proc.pid), *[n.url for n in mesh.nodes])
    first.proc.wait(timeout=10)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(first.proc.pid, signal.SIGKILL)  # what the node's group still holds: its CPU pool
    assert got["during"] == "done" and got["waited"] > 0.5
    assert got["after"] == "done" and got["result"] == {"after": "kill"}
    assert got["node"] != f"127.0.0.1:{first.api_port}"
