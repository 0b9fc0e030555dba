"""The OpenAPI 3.1 document of the REST layer, built as a Python dict.

Why a dict and not a hand-written YAML file: PyYAML is not a dependency, the
document depends on the node's configuration (the bearer token rule applies
only when a token is set, and the ``type`` enum lists the job types the mesh
runs), and tests validate every response against the same object the node
serves. ``/openapi.json`` serves :func:`build_spec`; ``/openapi.yaml`` serves
:func:`render_yaml` of it. ``api/openapi.yaml`` is a reference copy (token
required, any job type) regenerated with ``python -m api.openapi``; a test
keeps it in step.

The bounds quoted here are the ones ``api/validation.py`` enforces.
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any

from workmesh.api import blobs as blobs_api
from workmesh.api import validation as v
from workmesh.contract import STATUSES

PROBLEM = "application/problem+json"
JSON = "application/json"
_REF = "#/components/"
_STRING = {"type": "string"}

_STATUS_TEXT = {
    400: "Malformed request: JSON syntax, path, query or header value.",
    401: "Missing or wrong bearer token.",
    403: "The Host header names no host this node answers to (a loopback node answers to its loopback names; "
    "see --allowed-host).",
    404: "No such job (or no such resource).",
    408: "The request body did not arrive in time (10 s by default).",
    405: "Method not allowed on this path (answered by any path; see the Allow header).",
    409: "The job is already terminal.",
    410: "The job was decided and its facts dropped when its retention passed (the node still remembers it).",
    413: "Body larger than the node accepts (64 KiB by default).",
    415: "Content-Type is not JSON.",
    422: "Well-formed JSON with a field of the wrong type or range, an unknown field, an unknown job type, "
    "a payload nested deeper than 32 levels or larger than 8 KiB as canonical JSON, or a number out of range.",
    429: "Too many requests (or open long polls) from this client; retry after the Retry-After seconds.",
    500: "Unexpected server error (logged; the detail reveals nothing).",
    503: "Not enough replicas answered, the node is not ready, or it holds as many connections or long polls "
    "as it serves; retry after the Retry-After seconds.",
}


def _problem(status: int) -> dict:
    resp: dict[str, Any] = {
        "description": _STATUS_TEXT[status],
        "content": {PROBLEM: {"schema": {"$ref": _REF + "schemas/Problem"}}},
    }
    if status in (429, 503):
        resp["headers"] = {"Retry-After": {"$ref": _REF + "headers/RetryAfter"}}
    if status == 401:
        resp["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}}}
    if status == 405:
        resp["headers"] = {"Allow": {"schema": {"type": "string"}}}
    return resp


def _ok(description: str, schema_ref: str, **extra: Any) -> dict:
    return {"description": description, "content": _json_content(schema_ref), **extra}


def _json_content(schema_ref: str) -> dict:
    return {JSON: {"schema": {"$ref": _REF + "schemas/" + schema_ref}}}


def _responses(ok: dict, statuses: tuple[int, ...]) -> dict:
    out = dict(ok)
    for status in statuses:
        out[str(status)] = {"$ref": f"{_REF}responses/Problem{status}"}
    return out


def _schemas(job_types: frozenset[str]) -> dict:
    job_type: dict[str, Any] = {"type": "string", "minLength": 1, "maxLength": v.TYPE_CHARS_MAX}
    if job_types:
        job_type["enum"] = sorted(job_types)
    nullable_str = {"type": ["string", "null"]}
    schemas = {
        "Problem": {
            "type": "object",
            "description": "RFC 9457 problem details.",
            "required": ["type", "title", "status", "detail"],
            "properties": {
                "type": {"type": "string", "description": "A URI: about:blank or urn:workmesh:problem:<name>."},
                "title": {"type": "string"},
                "status": {"type": "integer", "minimum": 400, "maximum": 599},
                "detail": {"type": "string", "description": "Starts with the name of the field at fault."},
            },
        },
        "SubmitRequest": {
            "type": "object",
            "required": ["type", "payload"],
            "additionalProperties": False,
            "properties": {
                "type": {**job_type, "description": "A job type some node of the mesh has a handler for."},
                "payload": {
                    "description": f"Any JSON value (null allowed): at most {v.JSON_DEPTH_MAX} levels deep, "
                    f"{v.PAYLOAD_BYTES_MAX} bytes as canonical JSON, integers within 64 bits."
                },
                "max_attempts": {"type": "integer", "minimum": v.ATTEMPTS_MIN, "maximum": v.ATTEMPTS_MAX},
                "lease_seconds": {"type": "number", "minimum": v.LEASE_S_MIN, "maximum": v.LEASE_S_MAX},
                "timeout_seconds": {"type": "number", "minimum": v.TIMEOUT_S_MIN, "maximum": v.TIMEOUT_S_MAX},
            },
        },
        "SubmitBatch": {
            "type": "array",
            "description": "Several jobs in one request; each item is judged alone (docs/api.md).",
            "minItems": 1,
            "maxItems": v.BATCH_JOBS_MAX,
            "items": {"$ref": _REF + "schemas/BatchItem"},
        },
        "BatchAnswer": {
            "type": "array",
            "description": "One entry per job spec, in order: the job, or the problem that refused it.",
            "items": {"oneOf": [{"$ref": _REF + "schemas/JobView"}, {"$ref": _REF + "schemas/Problem"}]},
        },
        "CancelRequest": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"reason": {"type": "string", "maxLength": v.REASON_CHARS_MAX}},
        },
        "HistoryEntry": {
            "type": "object",
            "description": "One signed fact of the job, with its exact bytes for independent verification.",
            "required": ["kind", "author", "attempt", "ts_ms", "fact_id", "raw_b64"],
            "properties": {
                "kind": {"type": "string", "enum": ["submit", "claim", "renew", "grant", "result", "cancel"]},
                "author": {"type": "string"},
                "attempt": {"type": ["integer", "null"]},
                "ts_ms": {"type": ["integer", "null"]},
                "fact_id": {"type": "string"},
                "raw_b64": {"type": "string"},
            },
        },
        "JobView": {
            "type": "object",
            "required": [
                "id", "type", "status", "attempts", "max_attempts", "result",
                "error", "worker", "submitted_by", "created_ms", "last_error",
            ],
            "additionalProperties": False,
            "properties": {
                "id": {"type": "string", "pattern": "^[0-9a-f]{40}$"},
                "type": {"type": "string"},
                "status": {"type": "string", "enum": list(STATUSES)},
                "attempts": {"type": "integer", "minimum": 0},
                "max_attempts": {"type": "integer", "minimum": v.ATTEMPTS_MIN, "maximum": v.ATTEMPTS_MAX},
                "result": {"description": "The handler's JSON result once done, else null."},
                "error": {**nullable_str, "description": "Why the job failed, once failed."},
                "worker": {**nullable_str, "description": "Node id (hex) of the current or last worker."},
                "submitted_by": {"type": "string", "description": "Key (hex) of the accepting node."},
                "created_ms": {"type": "integer", "minimum": 0},
                "last_error": {**nullable_str, "description": "The latest attempt's error, even if retried."},
                "history": {"type": "array", "items": {"$ref": _REF + "schemas/HistoryEntry"}},
            },
        },
        "JobList": {
            "type": "object",
            "required": ["jobs", "next"],
            "additionalProperties": False,
            "properties": {
                "jobs": {"type": "array", "items": {"$ref": _REF + "schemas/JobView"}},
                "next": {"type": ["string", "null"], "description": "Pass as ?after= for the next page."},
                "nodes_asked": {"type": "integer", "minimum": 1, "description": "scope=mesh: nodes asked, this one included."},
                "nodes_failed": {"type": "integer", "minimum": 0, "description": "scope=mesh: peers that did not answer."},
            },
        },
        "Health": {
            "type": "object",
            "required": ["ok"],
            "properties": {"ok": {"type": "boolean", "const": True}},
        },
        "Status": {"type": "object", "description": "The node's status document (components' statistics)."},
        "OpenAPI": {"type": "object", "required": ["openapi", "info", "paths"]},
    }
    item = dict(schemas["SubmitRequest"])
    item["properties"] = {
        **item["properties"],
        "idempotency_key": {"type": "string", "minLength": 1, "maxLength": v.IDEMPOTENCY_KEY_CHARS_MAX,
                            "pattern": "^[!-~]+$", "description": "This job's own key (default: the header's, /index)."},
    }
    schemas["BatchItem"] = item
    return schemas


def _paths(auth: bool) -> dict:
    write_errors = (400, 401, 403, 408, 413, 415, 422, 429, 500, 503) if auth else (400, 403, 408, 413, 415, 422, 429, 500, 503)
    secured = {"security": [{"bearerAuth": []}]} if auth else {}
    job_id = {"$ref": _REF + "parameters/JobId"}
    return {
        "/jobs": {
            "post": {
                "operationId": "submitJob",
                "summary": "Submit a job; answered once a write quorum of replicas stored it.",
                **secured,
                "parameters": [
                    {"$ref": _REF + "parameters/IdempotencyKey"},
                    {
                        "name": "wait",
                        "in": "query",
                        "description": "Also wait up to this many seconds for the accepted job to turn terminal "
                        "(200 if it did, else 202 with the job as it is).",
                        "schema": {"type": "number", "minimum": 0, "maximum": v.WAIT_S_MAX},
                    },
                ],
                "requestBody": {"required": True, "content": {JSON: {"schema": {"oneOf": [
                    {"$ref": _REF + "schemas/SubmitRequest"}, {"$ref": _REF + "schemas/SubmitBatch"}]}}}},
                "responses": _responses(
                    {
                        "200": _ok("Accepted and already terminal (with `wait`).", "JobView",
                                   headers={"Location": {"$ref": _REF + "headers/JobLocation"}}),
                        "202": {
                            "description": "Accepted: the job, or for an array one entry per job spec, in order.",
                            "headers": {"Location": {"$ref": _REF + "headers/Location"}},
                            "content": {JSON: {"schema": {"oneOf": [
                                {"$ref": _REF + "schemas/JobView"}, {"$ref": _REF + "schemas/BatchAnswer"}]}}},
                        },
                    },
                    write_errors,
                ),
            },
            "get": {
                "operationId": "listJobs",
                "summary": "One page of the jobs this node knows, optionally of one status.",
                "parameters": [
                    {"name": "status", "in": "query", "schema": {"type": "string", "enum": list(STATUSES)}},
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": v.LIST_LIMIT_MAX,
                                   "default": v.LIST_LIMIT_DEFAULT},
                    },
                    {
                        "name": "after",
                        "in": "query",
                        "description": "Opaque cursor from a previous page's `next`.",
                        "schema": {"type": "string", "minLength": 1, "maxLength": v.CURSOR_CHARS_MAX},
                    },
                    {
                        "name": "scope",
                        "in": "query",
                        "description": "`node` (default): the jobs this node holds, accepted or ran. `mesh`: "
                        "also its peers' jobs, merged, one entry per job, in one page (no `after`).",
                        "schema": {"type": "string", "enum": list(v.SCOPES), "default": "node"},
                    },
                ],
                "responses": _responses({"200": _ok("A page of jobs.", "JobList")}, (400, 403, 429, 500, 503)),
            },
        },
        "/jobs/{id}": {
            "get": {
                "operationId": "getJob",
                "summary": "A job's status; from any node.",
                "parameters": [
                    job_id,
                    {
                        "name": "wait",
                        "in": "query",
                        "description": "Long-poll: wait up to this many seconds for the job to turn terminal.",
                        "schema": {"type": "number", "minimum": 0, "maximum": v.WAIT_S_MAX},
                    },
                    {
                        "name": "history",
                        "in": "query",
                        "description": "1 or true: include the job's signed facts.",
                        "schema": {"type": "string", "enum": ["0", "1", "true", "false"]},
                    },
                ],
                "responses": _responses({"200": _ok("The job.", "JobView")}, (400, 403, 404, 410, 429, 500, 503)),
            }
        },
        "/jobs/{id}/cancel": {
            "post": {
                "operationId": "cancelJob",
                "summary": "Cancel a job that is not terminal yet.",
                **secured,
                "parameters": [job_id],
                "requestBody": {"required": False, "content": _json_content("CancelRequest")},
                "responses": _responses({"200": _ok("The job, cancelled.", "JobView")}, (*write_errors, 404, 409, 410)),
            }
        },
        "/status": {
            "get": {
                "operationId": "nodeStatus",
                "summary": "This node's status document.",
                "responses": _responses({"200": _ok("Status.", "Status")}, (403, 429, 500, 503)),
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus text exposition format 0.0.4 (not rate limited).",
                "responses": _responses(
                    {"200": {"description": "Metrics.", "content": {"text/plain": {"schema": {"type": "string"}}}}},
                    (403, 500),
                ),
            }
        },
        "/healthz": {
            "get": {
                "operationId": "health",
                "summary": "Liveness (not rate limited).",
                "responses": _responses({"200": _ok("Alive.", "Health")}, (403,)),
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapiJson",
                "summary": "This document as JSON.",
                "responses": _responses({"200": _ok("OpenAPI 3.1.", "OpenAPI")}, (403, 429, 503)),
            }
        },
        "/openapi.yaml": {
            "get": {
                "operationId": "openapiYaml",
                "summary": "This document as YAML.",
                "responses": _responses(
                    # The schema describes the parsed document, as for JSON (a YAML reader sees an object).
                    {"200": {"description": "OpenAPI 3.1.",
                             "content": {"application/yaml": {"schema": {"$ref": _REF + "schemas/OpenAPI"}}}}},
                    (403, 429, 503),
                ),
            }
        },
    }


def build_spec(*, auth: bool, job_types: frozenset[str] = frozenset()) -> dict:
    """The document a node serves: ``auth`` when it has a token, ``job_types`` its mesh's types."""
    components: dict[str, Any] = {
        "schemas": _schemas(job_types),
        "parameters": {
            "JobId": {
                "name": "id",
                "in": "path",
                "required": True,
                "description": "40 lowercase hex characters (BLAKE2b-160 of the signed submission).",
                "schema": {"type": "string", "pattern": "^[0-9a-f]{40}$"},
            },
            "IdempotencyKey": {
                "name": "Idempotency-Key",
                "in": "header",
                "description": "Passed to the node so a retried submission is recognised.",
                "schema": {"type": "string", "minLength": 1, "maxLength": v.IDEMPOTENCY_KEY_CHARS_MAX,
                           "pattern": "^[!-~]+$"},
            },
        },
        "headers": {
            "Location": {"description": "/jobs/{id} of the new job (not for a batch).", "schema": {"type": "string"}},
            "JobLocation": {"description": "/jobs/{id} of the job.", "required": True, "schema": {"type": "string"}},
            "RetryAfter": {
                "description": "Seconds until a retry may succeed.",
                "schema": {"type": "integer", "minimum": 1},
            },
        },
        "responses": {f"Problem{s}": _problem(s) for s in _STATUS_TEXT},
    }
    if auth:
        components["securitySchemes"] = {"bearerAuth": {"type": "http", "scheme": "bearer"}}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "workmesh node API",
            "version": "1",
            "description": "Submit, inspect and cancel jobs on a peer-to-peer job mesh. Every node serves this API. "
            "Errors are RFC 9457 problem details." + (" Writes (POST) need a bearer token." if auth else ""),
        },
        "paths": {**_paths(auth), **blobs_api.openapi_paths(auth)},
        "components": components,
    }


# --------------------------------------------------------------------------
# A small YAML emitter: block style, every scalar written as JSON (a JSON
# string is a valid YAML double-quoted scalar), keys quoted unless plainly safe.

_PLAIN_KEY = re.compile(r"[A-Za-z_$][A-Za-z0-9_$.-]*")
_YAML_WORDS = frozenset({"y", "n", "yes", "no", "on", "off", "true", "false", "null"})


def _key(k: str) -> str:
    plain = _PLAIN_KEY.fullmatch(k) and k.lower() not in _YAML_WORDS
    return k if plain else json.dumps(k)


def _emit(value: Any, indent: int, out: list[str]) -> None:
    pad = " " * indent
    if isinstance(value, dict):
        for k, item in value.items():
            if isinstance(item, (dict, list)) and item:
                out.append(f"{pad}{_key(str(k))}:")
                _emit(item, indent + 2, out)
            else:
                out.append(f"{pad}{_key(str(k))}: {_scalar(item)}")
    else:
        for item in value:
            if isinstance(item, (dict, list)) and item:
                start = len(out)
                _emit(item, indent + 2, out)
                out[start] = f"{pad}- {out[start][indent + 2:]}"
            else:
                out.append(f"{pad}- {_scalar(item)}")


def _scalar(value: Any) -> str:
    if isinstance(value, dict):
        return "{}"
    if isinstance(value, list):
        return "[]"
    return json.dumps(value)


def render_yaml(spec: dict) -> str:
    out: list[str] = []
    _emit(spec, 0, out)
    return "\n".join(out) + "\n"


REFERENCE_HEADER = (
    "# Generated by `python -m api.openapi > api/openapi.yaml`: the reference copy (token required,\n"
    "# any job type). Each node serves its own at /openapi.yaml and /openapi.json.\n"
)


if __name__ == "__main__":
    sys.stdout.write(REFERENCE_HEADER + render_yaml(build_spec(auth=True)))
