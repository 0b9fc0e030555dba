"""The one place errors become HTTP responses: RFC 9457 problem details.

Handlers raise ``node.errors.WorkmeshError`` subclasses (each carries the
``status`` and ``title`` to answer with) or aiohttp's HTTP exceptions (the
router's 404/405, the body reader's 413). :func:`error_middleware` turns every
one of them into an ``application/problem+json`` body
``{"type", "title", "status", "detail"}``. Anything else is a bug: it is
logged with its traceback and answered with a bare 500 whose detail reveals
nothing of the internals.
"""

from __future__ import annotations

import math
import re
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

from aiohttp import web
from workmesh.node.errors import RateLimited, Unauthorized, WorkmeshError

PROBLEM_CONTENT_TYPE = "application/problem+json"
PROBLEM_TYPE_PREFIX = "urn:workmesh:problem:"
DETAIL_CHARS_MAX = 512  # a detail quotes client input at most this far
_INTERNAL_DETAIL = "The server hit an unexpected condition; the error was logged."

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _slug(name: str) -> str:
    """``JobNotFound`` -> ``job-not-found``: a stable problem type per error class."""
    return re.sub(r"(?<!^)(?=[A-Z])", "-", name).lower()


def problem_response(
    status: int,
    detail: str,
    *,
    title: str | None = None,
    type_: str = "about:blank",
    headers: dict[str, str] | None = None,
) -> web.Response:
    """A problem+json response. With type ``about:blank`` the title is the status phrase."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    if len(detail) > DETAIL_CHARS_MAX:
        detail = detail[:DETAIL_CHARS_MAX] + "..."
    body: dict[str, Any] = {"type": type_, "title": title or phrase, "status": status, "detail": detail}
    return web.json_response(body, status=status, headers=headers, content_type=PROBLEM_CONTENT_TYPE)


def problem_document(exc: WorkmeshError) -> dict[str, Any]:
    """The problem details of ``exc`` as a JSON object (the body :func:`error_middleware`
    answers with; also one failed entry of a batch answer)."""
    status = exc.status
    detail = _INTERNAL_DETAIL if status >= 500 and status != 503 else (str(exc) or exc.title)
    if len(detail) > DETAIL_CHARS_MAX:
        detail = detail[:DETAIL_CHARS_MAX] + "..."
    return {"type": PROBLEM_TYPE_PREFIX + _slug(type(exc).__name__), "title": exc.title, "status": status, "detail": detail}


def _from_workmesh(exc: WorkmeshError) -> web.Response:
    headers: dict[str, str] = {}
    if isinstance(exc, RateLimited):
        headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after_s)))
    if isinstance(exc, Unauthorized):
        headers["WWW-Authenticate"] = 'Bearer realm="workmesh"'
    status = exc.status
    # A bare WorkmeshError (status 500) is a node bug: do not echo its message.
    detail = _INTERNAL_DETAIL if status >= 500 and status not in (503, 507) else (str(exc) or exc.title)
    return problem_response(
        status, detail, title=exc.title, type_=PROBLEM_TYPE_PREFIX + _slug(type(exc).__name__), headers=headers
    )


def _from_http(exc: web.HTTPException) -> web.Response:
    headers: dict[str, str] = {}
    for name in ("Allow", "Retry-After", "WWW-Authenticate", "Content-Range"):
        if name in exc.headers:
            headers[name] = exc.headers[name]
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        detail = f"body: {exc.text or 'larger than this node accepts'}"
    elif isinstance(exc, web.HTTPNotFound):
        detail = "no such resource"
    elif isinstance(exc, web.HTTPMethodNotAllowed):
        detail = f"method not allowed here; allowed: {headers.get('Allow', '')}"
    else:
        detail = exc.reason
    return problem_response(exc.status, detail, headers=headers)


def error_middleware(logger: Any) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    """Build the middleware; ``logger`` is a structlog logger used for unexpected errors."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            response = await handler(request)
        except WorkmeshError as exc:
            if exc.status >= 500 and exc.status not in (503, 507):  # a node bug, not a client's or the mesh's state
                logger.exception("api.unhandled_error", method=request.method, path=request.path)
            return _from_workmesh(exc)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return _from_http(exc)
        except Exception:
            logger.exception("api.unhandled_error", method=request.method, path=request.path)
            return problem_response(500, _INTERNAL_DETAIL)
        if isinstance(response, web.HTTPException) and response.status >= 400:
            return _from_http(response)  # a handler returned an error instead of raising it
        return response

    return middleware
