"""The one interface between the REST layer and the node: ``workmesh.contract``.

Kept so ``workmesh.api.service`` still names the contract; the definitions
live in :mod:`workmesh.contract`, which both the node and the API import.
"""

from workmesh.contract import STATUSES, TERMINAL_STATUSES, JobService, JobView

__all__ = ["STATUSES", "TERMINAL_STATUSES", "JobService", "JobView"]
