"""Handlers are plain functions: test them without a mesh."""

import pytest

import workmesh
from workmesh_example import handlers


def ctx(attempt=1):
    return workmesh.JobContext("ab" * 20, attempt, "example.test")


def test_wordcount_counts_and_reports_its_attempt():
    assert handlers.wordcount({"text": "a b  c"}, ctx(2)) == {"words": 3, "attempt": 2}


def test_resize_refuses_for_good_what_no_retry_can_fix():
    assert handlers.resize({"width": 10, "height": 4, "scale": 1.5}, ctx()) == {"width": 15, "height": 6}
    with pytest.raises(workmesh.PermanentError):
        handlers.resize({"width": "x"}, ctx())
