"""The `workmesh` client commands against real nodes: every command, every exit status.

Two nodes with one replica per job, so a job node A accepted (and ran) is often
held only by node B: A's own list and counts must still show it.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from prometheus_client.parser import text_string_to_metric_families
from procmesh import ProcMesh, free_port, http, wait_until, workmesh_command

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    m = ProcMesh(2, tmp_path_factory.mktemp("climesh"), node_args=["--replicas", "1", "--lease-seconds", "3"])
    m.start()
    yield m
    m.stop()


def wm(*args: str, api: list[str] | None = None, stdin: str | None = None, env: dict | None = None,
       timeout_s: float = 90.0) -> subprocess.CompletedProcess:
    argv = [*workmesh_command(), *args]
    for url in api or []:
        argv += ["--api", url]
    full_env = {k: v for k, v in os.environ.items() if k not in ("WORKMESH_API", "WORKMESH_API_TOKEN")}
    full_env.update(env or {})
    return subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=timeout_s, env=full_env)


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_submit_and_wait_exits_0_with_json_off_a_terminal(mesh):
    a = mesh.nodes[0]
    proc = wm("submit", "echo", '{"hello": 1}', "--wait", api=[a.url])
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["status"] == "done" and doc["result"] == {"hello": 1}


def test_a_failed_job_exits_1(mesh):
    proc = wm("submit", "fail", "{}", "--max-attempts", "1", "--wait", "60", api=[mesh.nodes[0].url])
    assert proc.returncode == 1, proc.stderr
    assert json.loads(proc.stdout)["status"] == "failed"


def test_payload_from_stdin_and_from_a_file(mesh, tmp_path):
    url = mesh.nodes[1].url
    proc = wm("submit", "echo", "-", "--wait", api=[url], stdin='{"from": "stdin"}')
    assert proc.returncode == 0 and json.loads(proc.stdout)["result"] == {"from": "stdin"}
    (tmp_path / "payload.json").write_text('{"from": "file"}')
    proc = wm("submit", "echo", f"@{tmp_path / 'payload.json'}", "--wait", api=[url])
    assert proc.returncode == 0 and json.loads(proc.stdout)["result"] == {"from": "file"}
    proc = wm("submit", "echo", "@/nonexistent/payload.json", api=[url])
    assert proc.returncode == 2 and "payload file" in one_line_error(proc)


def test_job_history_shows_each_signed_fact(mesh):
    a, b = mesh.nodes
    job = json.loads(wm("submit", "echo", "[1]", "--wait", api=[a.url]).stdout)
    proc = wm("job", job["id"], "--history", api=[b.url])
    assert proc.returncode == 0, proc.stderr
    history = json.loads(proc.stdout)["history"]
    kinds = {f["kind"] for f in history}
    assert {"submit", "claim", "result"} <= kinds
    for fact in history:
        assert len(fact["author"]) == 40 and isinstance(fact["attempt"], int) and fact["ts_ms"] >= 0
    table = wm("job", job["id"], "--history", "--output", "table", api=[b.url])
    assert table.returncode == 0
    assert "signed facts" in table.stdout and "KIND" in table.stdout and "SIGNER" in table.stdout
    assert "result/ok" in table.stdout


def test_cancel_then_watch_and_job_exit_1(mesh):
    a, b = mesh.nodes
    job = json.loads(wm("submit", "sleep", '{"seconds": 60}', api=[a.url]).stdout)
    proc = wm("cancel", job["id"], "--reason", "test", api=[b.url])
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["status"] == "cancelled"
    again = wm("cancel", job["id"], api=[a.url])
    assert again.returncode == 1 and "already" in one_line_error(again)
    assert wm("job", job["id"], api=[a.url]).returncode == 1
    watched = wm("watch", job["id"], api=[a.url])
    assert watched.returncode == 1 and '"cancelled"' in watched.stdout


def test_watch_follows_jobs_until_done(mesh):
    a = mesh.nodes[0]
    ids = [json.loads(wm("submit", "sleep", '{"seconds": 1}', api=[a.url]).stdout)["id"] for _ in range(2)]
    proc = wm("watch", *ids, api=[a.url])
    assert proc.returncode == 0, proc.stderr
    last = {}
    for line in proc.stdout.splitlines():
        doc = json.loads(line)
        last[doc["id"]] = doc["status"]
    assert last == {i: "done" for i in ids}


def test_a_wait_that_ends_before_the_job_exits_1(mesh):
    proc = wm("submit", "sleep", '{"seconds": 30}', "--wait", "1", api=[mesh.nodes[0].url])
    assert proc.returncode == 1
    assert "still" in one_line_error(proc)


def test_a_node_lists_and_counts_the_jobs_it_accepted_even_when_another_holds_them(mesh):
    a, b = mesh.nodes
    ids = [json.loads(wm("submit", "echo", json.dumps(i), "--wait", api=[a.url]).stdout)["id"] for i in range(10)]
    held_by_b = {j["id"] for j in json.loads(wm("list", "--all", api=[b.url]).stdout)["jobs"]}
    # r = 1: B is the only replica of some of them (all on A: 1 in 1024).
    assert held_by_b & set(ids)
    listed = {j["id"]: j["status"] for j in json.loads(wm("list", "--all", api=[a.url]).stdout)["jobs"]}
    assert all(listed.get(i) == "done" for i in ids), {i: listed.get(i) for i in ids}
    code, status = http("GET", f"{a.url}/status")
    assert code == 200 and status["jobs"]["done"] >= len(ids)
    mine = json.loads(wm("list", "--status", "done", "--limit", "500", api=[a.url]).stdout)["jobs"]
    assert set(ids) <= {j["id"] for j in mine}


def test_list_mesh_merges_every_node_without_duplicates(mesh):
    a, b = mesh.nodes
    ids = {json.loads(wm("submit", "echo", json.dumps(f"m{i}"), "--wait", api=[url]).stdout)["id"]
           for i, url in enumerate([a.url, b.url] * 3)}
    proc = wm("list", "--mesh", "--limit", "500", api=[a.url])
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    got = [j["id"] for j in doc["jobs"]]
    assert len(got) == len(set(got))
    assert ids <= set(got)
    assert doc["nodes_asked"] == 2 and doc["nodes_failed"] == 0
    code, rest = http("GET", f"{b.url}/jobs?scope=mesh&limit=500")
    assert code == 200 and ids <= {j["id"] for j in rest["jobs"]}
    assert http("GET", f"{b.url}/jobs?scope=galaxy")[0] == 400


def test_peers_types_and_status(mesh):
    a, b = mesh.nodes
    peers = wm("peers", api=[a.url])
    assert peers.returncode == 0 and b.node_id in {p["node_id"] for p in json.loads(peers.stdout)["peers"]}
    types = wm("types", api=[a.url])
    assert types.returncode == 0 and {"echo", "sha256", "sleep", "fail"} <= set(json.loads(types.stdout)["types"])
    status = wm("status", api=[a.url])
    assert status.returncode == 0 and json.loads(status.stdout)["node_id"] == a.node_id
    table = wm("status", "-o", "table", api=[a.url])
    assert table.returncode == 0 and a.node_id in table.stdout and "jobs done" in table.stdout


def test_unreachable_nodes_exit_2_with_one_line(mesh):
    dead = f"http://127.0.0.1:{free_port()}"
    proc = wm("status", api=[dead])
    assert proc.returncode == 2
    assert "no node answered" in one_line_error(proc) and "refused" in proc.stderr


def test_failover_to_the_next_api_and_the_environment_variable(mesh):
    dead = f"http://127.0.0.1:{free_port()}"
    proc = wm("submit", "echo", '"over"', "--wait", api=[dead, mesh.nodes[1].url])
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["result"] == "over"
    proc = wm("status", env={"WORKMESH_API": f"{dead},{mesh.nodes[0].url}"})
    assert proc.returncode == 0 and json.loads(proc.stdout)["node_id"] == mesh.nodes[0].node_id


def test_usage_errors_and_refusals_exit_2(mesh):
    url = mesh.nodes[0].url
    assert wm("submit", api=[url]).returncode == 2
    bad_json = wm("submit", "echo", "{oops", api=[url])
    assert bad_json.returncode == 2 and "not JSON" in one_line_error(bad_json)
    unknown = wm("submit", "no-such-type", "{}", api=[url])
    assert unknown.returncode == 2 and "422" in one_line_error(unknown)
    missing = wm("job", "0" * 40, api=[url])
    assert missing.returncode == 1 and "404" in one_line_error(missing)


def test_completion_script(mesh):
    proc = wm("completion", "bash")
    assert proc.returncode == 0 and "submit" in proc.stdout and "--api" in proc.stdout


def test_metrics_parse_and_follow_the_conventions(mesh):
    families = {}
    for node in mesh.nodes:
        text = http_text(f"{node.url}/metrics")
        for family in text_string_to_metric_families(text):
            families.setdefault(family.name, []).append(family)
            for sample in family.samples:
                if family.type == "counter":
                    assert sample.name.endswith("_total"), sample.name
                elif family.type == "gauge":
                    assert not sample.name.endswith("_total"), sample.name
                if any(w in family.name for w in ("dropped", "rejected", "refused")):
                    assert "reason" in sample.labels, sample.name
    runs = [s for f in families["workmesh_job_run_seconds"] for s in f.samples
            if s.name.endswith("_count") and s.labels.get("type") == "echo"]
    assert sum(s.value for s in runs) >= 1
    assert any(s.name.endswith("_count") for f in families["workmesh_job_submit_to_terminal_seconds"] for s in f.samples)
    http_counts = {(s.labels["route"], s.labels["method"], s.labels["code"])
                   for f in families["workmesh_http_request_duration_seconds"] for s in f.samples
                   if s.name.endswith("_count")}
    assert ("/jobs", "POST", "200") in http_counts or ("/jobs", "POST", "202") in http_counts
    assert ("/status", "GET", "200") in http_counts


def http_text(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.read().decode()


def test_a_wait_carries_on_at_the_next_node_when_the_first_dies(tmp_path):
    """`submit --wait` with two --api: the node being long-polled is killed,
    the wait goes on at the other, and the job still ends done (exit 0)."""
    with ProcMesh(3, tmp_path / "mesh", node_args=["--lease-seconds", "2"]) as m:
        a, b, _ = m.nodes
        argv = [*workmesh_command(), "submit", "sleep", '{"seconds": 2}', "--wait", "--api", a.url, "--api", b.url]
        env = {k: v for k, v in os.environ.items() if k != "WORKMESH_API"}
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        try:
            def accepted():
                code, doc = http("GET", f"{b.url}/jobs?limit=10")
                return code == 200 and doc["jobs"]

            wait_until(accepted, 30, "the job at node B")
            a.kill()
            out, err = proc.communicate(timeout=90)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 0, err
        assert json.loads(out)["status"] == "done"
