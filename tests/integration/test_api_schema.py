"""schemathesis against the OpenAPI document a real node serves about itself.

One real ``workmesh start`` process (``--replicas 1``, so submissions reach
their quorum and run on its one worker) serves ``/openapi.json``; schemathesis
loads that very document and, for every operation, sends requests generated
from it: positive (valid by the schema) and negative (invalid on purpose),
with the bearer token so writes are exercised. No answer may be a 5xx, and
every answer must be documented: status code, content type, headers and body
schema.
"""

from __future__ import annotations

import json
import time
import urllib.request

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from procmesh import ProcMesh

TOKEN = "schema-token"
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance]
EXAMPLES_PER_OPERATION = 25
WAIT_S_CAP = 0.2  # a generated ?wait= on a pending job must not stall the run


@pytest.fixture(scope="module")
def node_url(tmp_path_factory):
    mesh = ProcMesh(1, tmp_path_factory.mktemp("schema"),
                    node_args=["--replicas", "1", "--workers", "1", "--api-token", TOKEN])
    with mesh:
        yield mesh.nodes[0].url


@pytest.fixture(scope="module")
def schema(node_url):
    with urllib.request.urlopen(f"{node_url}/openapi.json", timeout=10) as resp:
        return schemathesis.openapi.from_dict(json.load(resp))


def _cap_wait(case) -> None:
    if case.query and "wait" in case.query:
        try:
            if float(case.query["wait"]) > WAIT_S_CAP:
                case.query["wait"] = WAIT_S_CAP
        except (TypeError, ValueError):
            pass  # an invalid value: the node answers 400 at once


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=lambda m: m.value)
def test_every_operation_answers_within_its_documented_schema(node_url, schema, mode):
    session = requests.Session()
    headers = {"Authorization": f"Bearer {TOKEN}"}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 8, [op.label for op in operations]
    statuses: dict[str, set[int]] = {}
    skipped: list[str] = []
    rejected: list = []
    started = time.monotonic()
    for operation in operations:
        seen = statuses.setdefault(operation.label, set())

        @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy(generation_mode=mode))
        def run(case):
            _cap_wait(case)
            response = case.call(base_url=node_url, session=session, headers=headers, timeout=10)
            seen.add(response.status_code)
            if mode is GenerationMode.POSITIVE and response.status_code >= 400 and len(rejected) < 6:
                rejected.append((operation.label, case.query, case.body, response.text[:200]))
            case.validate_response(response, checks=CHECKS, headers=headers)

        try:
            run()
        except Unsatisfiable:
            # Negative mode needs something to break: operations without parameters or body have none.
            assert mode is GenerationMode.NEGATIVE and not seen, operation.label
            skipped.append(operation.label)
    elapsed = time.monotonic() - started
    print(f"{mode.value}: {len(operations)} operations in {elapsed:.1f}s, statuses {statuses}, nothing to break in {skipped}")
    for r in rejected:
        print("valid by the schema, refused:", r)
    if mode is GenerationMode.POSITIVE:
        # Positive control: valid submissions were accepted and reads of real routes succeeded.
        assert 202 in statuses["POST /jobs"], statuses
        assert 200 in statuses["GET /status"], statuses
    else:
        assert any(s >= 400 for s in statuses["POST /jobs"]), statuses
