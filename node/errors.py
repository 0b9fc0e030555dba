"""The one error hierarchy of the node layer.

The REST layer maps these types to HTTP problem details in one middleware
(``api/errors.py``); the DHT layer counts and drops :class:`InvalidFact` from
peers.
"""


class WorkmeshError(Exception):
    """Base class: ``status`` is the HTTP status the API answers with."""

    status = 500
    title = "Internal error"


class InvalidFact(WorkmeshError):
    """A fact is malformed, wrongly signed, too large, or filed under the wrong key."""

    status = 422
    title = "Invalid fact"


class BadRequest(WorkmeshError):
    status = 400
    title = "Bad request"


class ValidationFailed(WorkmeshError):
    status = 422
    title = "Validation failed"


class UnknownJobType(ValidationFailed):
    title = "Unknown job type"


class IdempotencyKeyReused(ValidationFailed):
    """The same Idempotency-Key came with another request body (IETF httpapi draft: 422)."""

    title = "Idempotency key reused"


class PayloadTooLarge(WorkmeshError):
    status = 413
    title = "Payload too large"


class Unauthorized(WorkmeshError):
    status = 401
    title = "Unauthorized"


class JobNotFound(WorkmeshError):
    status = 404
    title = "Job not found"


class JobGone(JobNotFound):
    """The job was decided and its facts were dropped when its retention passed."""

    status = 410
    title = "Job gone"


class Conflict(WorkmeshError):
    status = 409
    title = "Conflict"


class RateLimited(WorkmeshError):
    status = 429
    title = "Too many requests"

    def __init__(self, detail: str, retry_after_s: float) -> None:
        super().__init__(detail)
        self.retry_after_s = retry_after_s


class HostNotAllowed(WorkmeshError):
    """The request's Host header names no host this node answers to (DNS rebinding)."""

    status = 403
    title = "Host not allowed"


class Overloaded(WorkmeshError):
    """The node holds as many connections or long polls as it serves; retry later."""

    status = 503
    title = "Node overloaded"
    close_connection = True

    def __init__(self, detail: str, retry_after_s: float) -> None:
        super().__init__(detail)
        self.retry_after_s = retry_after_s


class QuorumUnavailable(WorkmeshError):
    """Fewer replicas than the write quorum answered."""

    status = 503
    title = "Replica quorum unavailable"


class NotReady(WorkmeshError):
    status = 503
    title = "Node not ready"


class BlobNotFound(WorkmeshError):
    status = 404
    title = "Blob not found"


class InsufficientStorage(WorkmeshError):
    """A disk budget (this node's, or that of the nodes a blob belongs on) is full."""

    status = 507
    title = "Insufficient storage"
