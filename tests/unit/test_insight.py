"""node/insight.py: the dashboard's flow counts, percentiles and peer liveness (pure parts)."""

from types import SimpleNamespace

from workmesh.node.insight import (
    FORGET_S,
    LIVENESS_S,
    FlowRecorder,
    PeerBook,
    liveness,
    parse_info,
    percentile,
)


def test_percentile_is_nearest_rank():
    values = sorted(float(v) for v in range(1, 101))
    assert percentile(values, 50) == 50.0
    assert percentile(values, 95) == 95.0
    assert percentile([7.0], 95) == 7.0
    assert percentile([], 50) is None


def test_flow_counts_each_transition_once_per_second():
    flow = FlowRecorder(seconds=10)
    job = b"j" * 20
    flow.on_change(job, "pending", "", 0.0, 100.2)
    flow.on_change(job, "running", "pending", 0.1, 100.3)
    flow.on_change(job, "pending", "running", 0.2, 101.1)  # a replica's view steps back...
    flow.on_change(job, "done", "pending", 0.5, 101.5)  # ...the job was started once
    series = flow.series(103.0, 4)
    assert series == [[99, 0, 0, 0, 0], [100, 1, 1, 0, 0], [101, 0, 0, 1, 0], [102, 0, 0, 0, 0]]
    lat = flow.latency(1.0)
    assert lat["samples"] == 1 and lat["p50_ms"] == 500.0 and lat["p95_ms"] == 500.0


def test_flow_latency_only_for_jobs_whose_arrival_was_seen():
    flow = FlowRecorder()
    a, b = b"a" * 20, b"b" * 20
    flow.on_change(a, "done", "", 0.0, 0.0)  # first seen finished: no latency
    flow.on_change(b, "failed", "running", 1.0, 1.0)  # arrival not seen (e.g. before a restart)
    assert flow.series(1.0, 1) == [[0, 1, 1, 1, 0]]
    assert flow.latency(2.0)["samples"] == 0
    assert flow.latency(2.0)["p50_ms"] is None


def test_flow_latency_window_forgets_old_samples():
    flow = FlowRecorder()
    for i in range(20):
        job = bytes([i]) * 20
        flow.on_change(job, "pending", "", float(i), float(i))
        flow.on_change(job, "done", "pending", i + 0.01 * (i + 1), float(i))
    assert flow.latency(20.0)["samples"] == 20
    assert flow.latency(19.0 + 301)["samples"] == 0


def _contact(n: int):
    return SimpleNamespace(id=bytes([n]) * 20, ip="127.0.0.1", port=7000 + n)


def test_liveness_window():
    book = PeerBook()
    book.sync([_contact(1)], now_s=0.0)
    peer = book.peers[_contact(1).id]
    assert liveness(peer, 1.0) == "unknown"
    assert liveness(peer, LIVENESS_S + 0.1) == "gone"
    book.answered_by(peer, {"version": "x"}, 10.0)
    assert liveness(peer, 10.0 + LIVENESS_S) == "alive"
    assert liveness(peer, 10.0 + LIVENESS_S + 0.1) == "gone"
    row = book.rows(11.0)[0]
    assert row["liveness"] == "alive" and row["version"] == "x" and row["address"] == "127.0.0.1:7001"


def test_peer_book_keeps_gone_peers_until_forgotten():
    book = PeerBook()
    book.sync([_contact(1), _contact(2)], 0.0)
    book.answered_by(book.peers[_contact(2).id], None, 0.0)
    book.sync([_contact(1)], 1.0)  # 2 left the routing table (evicted)
    rows = {r["node_id"][:2]: r for r in book.rows(LIVENESS_S + 1)}
    assert rows["02"]["liveness"] == "gone" and rows["02"]["in_routing_table"] is False
    assert [p.contact.id for p in book.to_ask()][0] == _contact(1).id  # table members first
    book.sync([_contact(1)], FORGET_S + 1)
    assert list(book.peers) == [_contact(1).id]


def test_parse_info_rejects_malformed_replies():
    assert parse_info(["1.0", "127.0.0.1:8000", 2, 1, "uvloop", 1500]) == {
        "version": "1.0", "api": "127.0.0.1:8000", "slots": 2, "busy": 1, "loop": "uvloop", "uptime_seconds": 1.5}
    for bad in (None, [], ["1.0", "", -1, 0, "x", 0], ["1.0", "", 1, 0, "x", True], [1, "", 1, 0, "x", 0], "xxxxxx"):
        assert parse_info(bad) is None


def _insight_over(states):
    """A NodeInsight over a bare index (search touches nothing else)."""
    from workmesh.node.insight import NodeInsight
    from workmesh.node.jobindex import JobIndex

    index = JobIndex(1000, 10.0, 60.0)
    for s in states:
        index.update(s, 0.0, None)
    insight = NodeInsight.__new__(NodeInsight)
    insight.node = SimpleNamespace(index=index)
    return insight


def test_search_pages_newest_first_and_filters():
    from tests.unit.strategies import REPLICAS, WORKERS, placement, quorum_result, seal, submit
    from workmesh.node import lifecycle as L

    jobs = [submit(replicas=3, quorum=2, nonce=bytes([i]) * 16) for i in range(7)]
    states = [L.derive([j]) for j in jobs[:5]]
    for j in jobs[5:]:  # two done, by WORKERS[1]
        res = quorum_result(j, WORKERS[1], 1)
        states.append(L.derive([j, placement(j), res, *(seal(r, j, res) for r in REPLICAS[:2])]))
    assert [s.status for s in states[5:]] == ["done", "done"]
    insight = _insight_over(states)
    newest = [j.job_id.hex() for j in reversed(jobs)]

    page1, nxt, _ = insight.search_jobs("", None, 3, None, 100)
    assert [v.id for v in page1] == newest[:3] and nxt == newest[2]
    page2, nxt, _ = insight.search_jobs("", None, 3, nxt, 100)
    assert [v.id for v in page2] == newest[3:6] and nxt == newest[5]
    page3, nxt, _ = insight.search_jobs("", None, 3, nxt, 100)
    assert [v.id for v in page3] == newest[6:] and nxt is None

    done, _, _ = insight.search_jobs("", "done", 10, None, 100)
    assert {v.id for v in done} == set(newest[:2])
    by_worker, _, _ = insight.search_jobs(WORKERS[1].node_id.hex()[:8], None, 10, None, 100)
    assert {v.id for v in by_worker} == set(newest[:2])
    by_id, _, _ = insight.search_jobs(newest[4][:10], None, 10, None, 100)
    assert [v.id for v in by_id] == [newest[4]]
    assert len(insight.search_jobs("echo", None, 10, None, 100)[0]) == 7  # by type
    few, nxt, scanned = insight.search_jobs("done", None, 10, None, 4)  # the scan is bounded...
    assert few == [] and scanned == 4 and nxt == newest[3]
    rest, nxt, scanned = insight.search_jobs("done", None, 10, nxt, 4)  # ...and resumes where it stopped
    assert rest == [] and scanned == 3 and nxt is None
    assert insight.search_jobs("", None, 7, None, 7)[1] is None  # exactly a full page: no next
