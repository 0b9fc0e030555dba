"""Request parsing and validation for the REST layer. Pure: no aiohttp, no I/O.

Every function takes plain data (bytes, strings, a mapping of query values)
and either returns typed values or raises ``node.errors.BadRequest`` (400: the
request itself is malformed: JSON syntax, path or query values, headers) or
``ValidationFailed`` (422: well-formed JSON whose fields have the wrong type
or range). Details always start with the name of the field at fault, so a
client can tell what to fix. Bounds come from ``node.facts`` so the API never
accepts what a signed submit fact would refuse.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from workmesh.node.errors import BadRequest, UnknownJobType, ValidationFailed, WorkmeshError

from workmesh import contract as C
from workmesh.contract import STATUSES

# The limits are the contract's (workmesh/contract.py), named here in the
# units requests use.
JSON_DEPTH_MAX = C.JSON_DEPTH_MAX  # nesting levels allowed inside ``payload``
INT_MIN, INT_MAX = -(2**63), 2**63 - 1  # integers any worker language can hold
ATTEMPTS_MIN, ATTEMPTS_MAX = 1, C.ATTEMPTS_MAX
LEASE_S_MIN, LEASE_S_MAX = C.LEASE_MS_MIN / 1000, C.LEASE_MS_MAX / 1000
TIMEOUT_S_MIN, TIMEOUT_S_MAX = 0.001, C.TIMEOUT_MS_MAX / 1000
TYPE_CHARS_MAX = C.TYPE_CHARS_MAX
REASON_CHARS_MAX = C.REASON_CHARS_MAX
PAYLOAD_BYTES_MAX = C.PAYLOAD_BYTES_MAX
IDEMPOTENCY_KEY_CHARS_MAX = C.IDEMPOTENCY_KEY_CHARS_MAX
CURSOR_CHARS_MAX = C.CURSOR_CHARS_MAX
WAIT_S_MAX = C.WAIT_S_MAX
LIST_LIMIT_DEFAULT, LIST_LIMIT_MAX = C.LIST_LIMIT_DEFAULT, C.LIST_LIMIT_MAX
BATCH_JOBS_MAX = C.BATCH_JOBS_MAX

SUBMIT_FIELDS = frozenset({"type", "payload", "max_attempts", "lease_seconds", "timeout_seconds"})
CANCEL_FIELDS = frozenset({"reason"})

_JOB_ID = re.compile(r"[0-9a-f]{40}")
_VISIBLE_ASCII = re.compile(r"[\x21-\x7e]+")
_DECIMAL = re.compile(r"[0-9]+(\.[0-9]+)?([eE][+-]?[0-9]+)?")  # JSON's number syntax, unsigned
_SURROGATE = re.compile(r"[\ud800-\udfff]")


@dataclass(frozen=True, slots=True)
class SubmitRequest:
    job_type: str
    payload: Any
    max_attempts: int | None
    lease_seconds: float | None
    timeout_seconds: float | None


class _NumberOutOfRange(Exception):
    """Raised from json's number hooks; turned into a 422 naming the field."""


# --------------------------------------------------------------------------
# JSON bodies


def _parse_int(text: str) -> int:
    if len(text) > 20:  # guards int() against quadratic work on huge literals
        raise _NumberOutOfRange
    value = int(text)
    if not INT_MIN <= value <= INT_MAX:
        raise _NumberOutOfRange
    return value


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400 parses as inf, which JSON cannot carry back
        raise _NumberOutOfRange
    return value


def _refuse_constant(name: str) -> Any:
    raise BadRequest(f"body: {name} is not JSON")


def _check_tree(doc: Any, field: str) -> None:
    """Refuse nesting past the limit and lone surrogates, walking without recursion.

    Lone surrogates are valid JSON escapes but cannot be encoded as UTF-8, so
    they would fail later, deep in the node. The body object itself is level
    0, so ``payload`` may nest ``JSON_DEPTH_MAX`` levels.
    """
    stack: list[tuple[Any, int]] = [(doc, 0)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, str):
            if _SURROGATE.search(value):
                raise ValidationFailed(f"{field}: strings must be valid Unicode (no lone surrogates)")
        elif isinstance(value, (dict, list)):
            if depth > JSON_DEPTH_MAX:
                raise ValidationFailed(f"{field}: nested deeper than {JSON_DEPTH_MAX} levels")
            items = [*value.keys(), *value.values()] if isinstance(value, dict) else value
            stack.extend((item, depth + 1) for item in items)


def parse_json_body(raw: bytes, field: str = "payload") -> Any:
    """Decode a request body as strict UTF-8 JSON within the nesting and number bounds.

    ``field`` names the part of the body that may hold arbitrary JSON, for
    the detail of a 422.
    """
    if not raw.strip():
        raise BadRequest("body: empty, expected a JSON object")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("body: not valid UTF-8") from None
    try:
        doc = json.loads(text, parse_int=_parse_int, parse_float=_parse_float, parse_constant=_refuse_constant)
    except _NumberOutOfRange:
        raise ValidationFailed(
            f"{field}: number out of range (integers must fit in 64 bits, floats must be finite)"
        ) from None
    except json.JSONDecodeError as exc:
        raise BadRequest(f"body: malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        # The C parser counts its nesting against the recursion limit (1000
        # by default) and raises cleanly, so a body of 60,000 '[' costs
        # microseconds; anything that deep is far past JSON_DEPTH_MAX.
        raise ValidationFailed(f"{field}: nested deeper than {JSON_DEPTH_MAX} levels") from None
    except ValueError:
        raise BadRequest("body: malformed JSON") from None
    _check_tree(doc, field)
    return doc


def _object(doc: Any, allowed: frozenset[str]) -> dict:
    if not isinstance(doc, dict):
        raise ValidationFailed("body: must be a JSON object")
    for key in doc:
        if key not in allowed:
            shown = key if len(key) <= 64 else key[:64] + "..."
            raise ValidationFailed(f"{shown}: unknown field (allowed: {', '.join(sorted(allowed))})")
    return doc


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _optional_number(doc: dict, field: str, lo: float, hi: float) -> float | None:
    if field not in doc:
        return None
    v = doc[field]
    if not _is_number(v) or not lo <= v <= hi:
        raise ValidationFailed(f"{field}: must be a number in {lo:g}..{hi:g}")
    return float(v)


def parse_submit(doc: Any, job_types: frozenset[str]) -> SubmitRequest:
    """Validate a ``POST /jobs`` body against the bounds of a submit fact."""
    doc = _object(doc, SUBMIT_FIELDS)
    if "type" not in doc:
        raise ValidationFailed("type: required")
    job_type = doc["type"]
    if not isinstance(job_type, str) or not 1 <= len(job_type) <= TYPE_CHARS_MAX:
        raise ValidationFailed(f"type: must be a string of 1..{TYPE_CHARS_MAX} characters")
    if job_type not in job_types:
        known = sorted(job_types)
        listed = ", ".join(known[:20]) + (", ..." if len(known) > 20 else "")
        raise UnknownJobType(f"type: unknown job type {job_type!r} (known: {listed or 'none'})")
    if "payload" not in doc:
        raise ValidationFailed("payload: required (may be null)")
    payload = doc["payload"]
    size = len(json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode())
    if size > PAYLOAD_BYTES_MAX:
        raise ValidationFailed(f"payload: {size} bytes as canonical JSON, at most {PAYLOAD_BYTES_MAX}")
    max_attempts = doc.get("max_attempts")
    if "max_attempts" in doc and (
        not isinstance(max_attempts, int)
        or isinstance(max_attempts, bool)
        or not ATTEMPTS_MIN <= max_attempts <= ATTEMPTS_MAX
    ):
        raise ValidationFailed(f"max_attempts: must be an integer in {ATTEMPTS_MIN}..{ATTEMPTS_MAX}")
    return SubmitRequest(
        job_type=job_type,
        payload=payload,
        max_attempts=max_attempts,
        lease_seconds=_optional_number(doc, "lease_seconds", LEASE_S_MIN, LEASE_S_MAX),
        timeout_seconds=_optional_number(doc, "timeout_seconds", TIMEOUT_S_MIN, TIMEOUT_S_MAX),
    )


@dataclass(frozen=True, slots=True)
class BatchItem:
    """One job spec of a ``POST /jobs`` array: the request, or why it is refused."""

    request: SubmitRequest | None
    idempotency_key: str | None
    error: WorkmeshError | None


BATCH_ITEM_FIELDS = SUBMIT_FIELDS | {"idempotency_key"}


def parse_batch(doc: Any, job_types: frozenset[str], key: str | None) -> list[BatchItem]:
    """Validate a ``POST /jobs`` array item by item: one bad item does not sink the others.

    An item may carry its own ``idempotency_key``; otherwise, with the
    request's ``Idempotency-Key`` K, item i is keyed ``K/i``, so the same
    batch sent again (to any node) is the same jobs.
    """
    if not isinstance(doc, list) or not 1 <= len(doc) <= BATCH_JOBS_MAX:
        raise ValidationFailed(f"body: a batch is an array of 1..{BATCH_JOBS_MAX} job specs")
    items = []
    for i, spec in enumerate(doc):
        try:
            item_key = key if key is None else f"{key}/{i}"
            if isinstance(spec, dict) and "idempotency_key" in spec:
                given = spec["idempotency_key"]
                if not isinstance(given, str):
                    raise ValidationFailed("idempotency_key: must be a string")
                item_key = parse_idempotency_key(given)
                spec = {k: v for k, v in spec.items() if k != "idempotency_key"}
            items.append(BatchItem(parse_submit(_object(spec, BATCH_ITEM_FIELDS), job_types), item_key, None))
        except WorkmeshError as exc:
            items.append(BatchItem(None, None, exc))
    return items


def parse_cancel(raw: bytes) -> str:
    """The reason of a ``POST /jobs/{id}/cancel``; the body is optional."""
    if not raw.strip():
        return ""
    doc = _object(parse_json_body(raw, "body"), CANCEL_FIELDS)
    reason = doc.get("reason", "")
    if not isinstance(reason, str) or len(reason) > REASON_CHARS_MAX:
        raise ValidationFailed(f"reason: must be a string of at most {REASON_CHARS_MAX} characters")
    return reason


# --------------------------------------------------------------------------
# Path, query and headers


def parse_job_id(text: str) -> bytes:
    """A job id is 40 lowercase hex characters (BLAKE2b-160 of the submit fact)."""
    if not _JOB_ID.fullmatch(text):
        raise BadRequest("id: must be 40 lowercase hexadecimal characters")
    return bytes.fromhex(text)


def parse_idempotency_key(value: str | None) -> str | None:
    if value is None:
        return None
    if len(value) > IDEMPOTENCY_KEY_CHARS_MAX or not _VISIBLE_ASCII.fullmatch(value):
        raise BadRequest(
            f"Idempotency-Key: must be 1..{IDEMPOTENCY_KEY_CHARS_MAX} visible ASCII characters"
        )
    return value


def _one(query: Mapping[str, str], name: str) -> str | None:
    getall = getattr(query, "getall", None)
    values = getall(name, []) if getall else ([query[name]] if name in query else [])
    if len(values) > 1:
        raise BadRequest(f"{name}: given more than once")
    return values[0] if values else None


def parse_wait(query: Mapping[str, str]) -> float:
    """``?wait=SECONDS`` (0..60) of ``GET /jobs/{id}`` and ``POST /jobs``; 0 when absent."""
    wait_s = 0.0
    text = _one(query, "wait")
    if text is not None:
        wait_s = float(text) if _DECIMAL.fullmatch(text) else math.nan
        if not 0.0 <= wait_s <= WAIT_S_MAX:
            raise BadRequest(f"wait: must be a number of seconds in 0..{WAIT_S_MAX:g}")
    return wait_s


def parse_get_query(query: Mapping[str, str]) -> tuple[float, bool]:
    """``?wait=SECONDS`` (0..60) and ``?history=1`` of ``GET /jobs/{id}``."""
    wait_s = parse_wait(query)
    history = False
    text = _one(query, "history")
    if text is not None:
        if text not in ("0", "1", "true", "false"):
            raise BadRequest("history: must be 0, 1, true or false")
        history = text in ("1", "true")
    return wait_s, history


def parse_list_query(query: Mapping[str, str]) -> tuple[str | None, int, str | None]:
    """``?status=&limit=&after=`` of ``GET /jobs``."""
    status = _one(query, "status")
    if status is not None and status not in STATUSES:
        raise BadRequest(f"status: must be one of {', '.join(STATUSES)}")
    limit = LIST_LIMIT_DEFAULT
    text = _one(query, "limit")
    if text is not None:
        if not text.isascii() or not text.isdigit() or len(text) > 4 or not 1 <= int(text) <= LIST_LIMIT_MAX:
            raise BadRequest(f"limit: must be an integer in 1..{LIST_LIMIT_MAX}")
        limit = int(text)
    after = _one(query, "after")
    if after is not None and (not after or len(after) > CURSOR_CHARS_MAX or _SURROGATE.search(after)):
        raise BadRequest(f"after: must be a cursor of 1..{CURSOR_CHARS_MAX} characters")
    return status, limit, after


SCOPES = ("node", "mesh")


def parse_scope(query: Mapping[str, str]) -> str:
    """``?scope=node|mesh`` of ``GET /jobs``: this node's jobs (default) or the mesh's."""
    scope = _one(query, "scope") or "node"
    if scope not in SCOPES:
        raise BadRequest(f"scope: must be one of {', '.join(SCOPES)}")
    return scope
