"""Merging several nodes' job pages into one mesh-wide list."""

from __future__ import annotations

from workmesh.node import meshview


def job(i, status="pending", attempts=0, created=0):
    return {"id": f"{i:040x}", "status": status, "attempts": attempts, "created_ms": created}


def test_one_entry_per_job_the_most_advanced_copy_wins():
    a = [job(1, "running", 1, 10), job(2, "pending", 0, 20)]
    b = [job(1, "done", 1, 10), job(3, "failed", 3, 30)]
    c = [job(2, "pending", 0, 20), job(1, "running", 1, 10)]
    merged = meshview.merge([a, b, c], 100)
    assert [j["id"] for j in merged] == [job(3)["id"], job(2)["id"], job(1)["id"]]  # newest first
    assert {j["id"]: j["status"] for j in merged}[job(1)["id"]] == "done"
    assert len({j["id"] for j in merged}) == len(merged)


def test_limit_and_junk_entries():
    pages = [[job(i, created=i) for i in range(10)], [{"no": "id"}, job(3, created=3)]]
    merged = meshview.merge(pages, 4)
    assert [j["created_ms"] for j in merged] == [9, 8, 7, 6]


def test_api_url_of_a_peer_reply():
    assert meshview.api_url(["127.0.0.1", 8000]) == "http://127.0.0.1:8000"
    assert meshview.api_url(["::1", 8000]) == "http://[::1]:8000"
    assert meshview.api_url(["0.0.0.0", 8000], "10.0.0.7") == "http://10.0.0.7:8000"
    assert meshview.api_url(["0.0.0.0", 8000]) is None
    for bad in ([], None, ["h", 0], ["h", "80"], [1, 2], ["h", 70000]):
        assert meshview.api_url(bad) is None
