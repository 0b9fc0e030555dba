"""The REST layer every workmesh node serves (aiohttp).

It depends only on :class:`workmesh.contract.JobService`; see ``docs/api.md``.
Names are re-exported lazily so ``python -m api.openapi`` runs cleanly.
"""

from typing import Any

__all__ = ["JobService", "JobView", "create_app", "run_api"]


def __getattr__(name: str) -> Any:
    if name in ("create_app", "run_api"):
        from workmesh.api import app

        return getattr(app, name)
    if name in ("JobService", "JobView"):
        from workmesh.api import service

        return getattr(service, name)
    raise AttributeError(f"module 'api' has no attribute {name!r}")
