"""The soak's short form (issue 13, items 6 and 7): three real nodes with a
short retention under sustained load for about 45 s, four and a half
retentions of 10 s (simulations/soak.py; the long form runs 30 minutes with
--retention 60s). Jobs acknowledged in its first 5 s are past their
retention plus the soak's 30 s margin when it ends: those are read back."""

from __future__ import annotations

import pytest

from soak import run_soak


@pytest.mark.slow
def test_a_short_soak_loses_nothing_and_drops_what_is_past_its_retention(tmp_path):
    report = run_soak(tmp_path, duration_s=45.0, retention="10s", retention_s=10.0, concurrency=4, sample_s=10.0, log=lambda line: None)
    assert report["jobs_acked"] > 50, report
    assert report["jobs_not_found_done"] == 0, report["not_found_last_reads"]
    assert report["store_within_budget"]
    # Every node dropped decided jobs, and what it holds is less than what ran.
    final = report["samples"][-1]
    for i in range(3):
        assert final[f"n{i}"]["jobs_dropped"] > 0, final
        assert final[f"n{i}"]["keys"] < report["jobs_acked"], final
    # A job past its retention reads 404 or 410 on every node, as problem+json.
    assert report["old_job_reads"], report
    for entry in report["old_job_reads"]:
        code, content_type = entry.split(" ", 1)
        assert code in ("404", "410") and content_type == "application/problem+json", report["old_job_reads"]
