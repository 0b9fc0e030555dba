"""REST request durations by route, method and status code, for ``/metrics``.

The middleware sits outside the error middleware, so it sees the code the
client got (a problem document's too). Routes are the router's templates
(``/jobs/{id}``), never raw paths, so a label's values stay few; a request
no route matched is ``unmatched``.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from aiohttp import web

Observe = Callable[[str, str, int, float], None]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def route_of(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


def metrics_middleware(observe: Observe) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        code = 500
        try:
            response = await handler(request)
            code = response.status
            return response
        except web.HTTPException as exc:
            code = exc.status
            raise
        finally:
            observe(route_of(request), request.method, code, time.perf_counter() - started)

    return middleware
