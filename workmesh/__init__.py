"""workmesh: a peer-to-peer job mesh.

The import name ``workmesh`` holds the whole program: ``workmesh.node``,
``workmesh.dht``, ``workmesh.crypto`` and ``workmesh.api`` (the repository
keeps them as the top-level folders ``node/``, ``dht/``, ``crypto/`` and
``api/``; ``pyproject.toml`` maps them under this package).

For users, this package offers:

- the client: ``Client`` and ``AsyncClient`` (``workmesh.client``, docs/client.md),
  ``Job``, and one exception type per problem type (``WorkmeshError`` is their base);
- the handler kit: ``@workmesh.handler(...)``, ``PermanentError``,
  ``HandlerError`` and ``JobContext`` (docs/handlers.md).

Names are loaded on first use, so a node does not import the HTTP client and
a client does not import the node.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_CLIENT_NAMES = (
    "Client", "AsyncClient", "Job", "Page", "NotFound", "WorkmeshError", "ProblemError", "ConnectionFailed", "WaitTimeout",
    "BadRequest", "Unauthorized", "JobNotFound", "Conflict", "PayloadTooLarge", "UnsupportedMediaType",
    "RequestTimeout", "ValidationFailed", "UnknownJobType", "IdempotencyKeyReused", "InvalidFact",
    "RateLimited", "QuorumUnavailable", "NotReady", "ServerError", "MethodNotAllowed", "BlobNotFound",
    "InsufficientStorage",
)
_KIT_NAMES = ("handler", "PermanentError", "HandlerError", "JobContext")

__all__ = [*_CLIENT_NAMES, *_KIT_NAMES, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _CLIENT_NAMES:
        return getattr(importlib.import_module("workmesh.client"), name)
    if name in _KIT_NAMES:
        return getattr(importlib.import_module("workmesh.node.handlers"), name)
    raise AttributeError(f"module 'workmesh' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
