"""Results and payloads are strict JSON: NaN and Infinity never pass (issue 14, finding 5)."""

from __future__ import annotations

import math

import pytest

from workmesh.node import facts as F
from workmesh.node.errors import InvalidFact
from workmesh.node.worker import strict_json_outcome
from tests.unit.strategies import REPLICAS, WORKERS, lease, submit

W0 = WORKERS[0]
JOB = submit()


@pytest.mark.parametrize("bad", [b"NaN", b'{"x":Infinity}', b"[-Infinity]", b'{"a":[1,NaN]}'])
def test_a_result_holding_nan_or_infinity_fails_validation(bad):
    # Signed by hand as a peer would (sign() itself may refuse such data first).
    fact = _sign_raw_result(bad)
    with pytest.raises(InvalidFact):
        F.decode(fact, key=JOB.job_id)


def _sign_raw_result(data_json: bytes) -> bytes:
    from tests.unit.strategies import signed_raw

    body = [JOB.job_id, 1, F.OK, data_json, [lease(REPLICAS[0], JOB, 1, W0).raw], 5]
    return signed_raw(W0, F.RESULT, body)


def test_a_valid_result_signed_by_hand_decodes():
    """Positive control of the hand signing above."""
    assert F.decode(_sign_raw_result(b'{"x":1.5}'), key=JOB.job_id).body.data == {"x": 1.5}


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, {"a": [1, math.nan]}])
def test_a_handlers_nan_becomes_an_error_result_with_a_clear_message(value):
    kind, data = strict_json_outcome(value)
    assert kind == F.ERROR and "NaN or Infinity" in data["error"]


def test_a_finite_result_stays_ok():
    assert strict_json_outcome({"x": 1.5, "y": [1, "a", None]}) == (F.OK, {"x": 1.5, "y": [1, "a", None]})
