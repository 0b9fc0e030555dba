"""The Dockerfile builds an image whose node serves and runs a job (where docker works)."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from procmesh import free_port, http, wait_until

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
# A build that fails for one of these reasons says the machine cannot reach a
# registry for the base image; that is a skip, not a failure of the Dockerfile.
OFFLINE = re.compile(r"pull access denied|failed to resolve|no such host|dial tcp|TLS handshake|i/o timeout|"
                     r"failed to do request|connection refused|network is unreachable", re.I)


def docker_unavailable() -> str | None:
    if shutil.which("docker") is None:
        return "docker is not installed"
    proc = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["docker info failed"])[-1]
        return f"no docker daemon: {last}"
    return None


@pytest.fixture(scope="module")
def image():
    reason = docker_unavailable()
    if reason:
        pytest.skip(reason)
    tag = f"workmesh-test:{uuid.uuid4().hex[:8]}"
    proc = subprocess.run(["docker", "build", "-t", tag, str(ROOT)], capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        if OFFLINE.search(proc.stdout + proc.stderr):
            pytest.skip("docker cannot fetch the base image here: " + (proc.stderr.strip().splitlines() or [""])[-1])
        pytest.fail("docker build failed:\n" + (proc.stdout + proc.stderr)[-3000:])
    yield tag
    subprocess.run(["docker", "rmi", "-f", tag], capture_output=True, timeout=120)


def test_the_image_serves_a_node_that_runs_a_job(image, tmp_path):
    port = free_port()
    name = f"workmesh-test-{uuid.uuid4().hex[:8]}"
    from workmesh.crypto.meshkey import write_mesh_key_file

    key = tmp_path / "mesh.key"
    write_mesh_key_file(str(key))
    key.chmod(0o644)  # readable by the container's unprivileged user
    run = subprocess.run(["docker", "run", "-d", "--rm", "--name", name, "-e", "WORKMESH_API_TOKEN=t0ken",
                          "-v", f"{key}:/run/secrets/mesh_key:ro",
                          "-p", f"127.0.0.1:{port}:8000", image], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    try:
        url = f"http://127.0.0.1:{port}"

        def ready():
            try:
                return http("GET", f"{url}/healthz", timeout_s=2)[0] == 200
            except OSError:
                return False

        wait_until(ready, 60, "the container's /healthz")
        assert http("POST", f"{url}/jobs", {"type": "echo", "payload": 1})[0] == 401  # 0.0.0.0 needs the token
        code, doc = http("POST", f"{url}/jobs?wait=30", {"type": "echo", "payload": {"in": "docker"}},
                         headers={"Authorization": "Bearer t0ken"})
        assert code == 200 and doc["result"] == {"in": "docker"}, doc
    finally:
        started = time.monotonic()
        subprocess.run(["docker", "stop", "-t", "20", name], capture_output=True, timeout=60)
        assert time.monotonic() - started < 25  # SIGTERM stops the node cleanly, no SIGKILL after the grace
