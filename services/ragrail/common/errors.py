"""Domain errors that carry a status, without importing grpc.

Service cores raise these; servicers translate them to gRPC statuses
(see ``ragrail.common.grpc_errors``). Anything else that escapes a core is a bug
and reaches the client as INTERNAL with a request id, never a traceback.
"""

from __future__ import annotations

import enum


class Status(enum.Enum):
    """The subset of gRPC status codes the cores use, by name."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    NOT_FOUND = "NOT_FOUND"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    UNAVAILABLE = "UNAVAILABLE"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    CANCELLED = "CANCELLED"
    INTERNAL = "INTERNAL"


class RagrailError(Exception):
    """An error with a status and a one-line message meant for the caller."""

    status: Status = Status.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(RagrailError):
    status = Status.INVALID_ARGUMENT


class NotFound(RagrailError):
    status = Status.NOT_FOUND


class FailedPrecondition(RagrailError):
    status = Status.FAILED_PRECONDITION


class CollectionMissing(FailedPrecondition):
    """A retrieval collection that does not exist (never ingested into, or deleted).

    Not a miss: "no information" would be untrue, and a cached copy would outlive the fix.
    """

    def __init__(self, message: str, collection: str = "") -> None:
        super().__init__(message)
        self.collection = collection

    @classmethod
    def named(cls, collection: str) -> CollectionMissing:
        return cls(f"collection {collection!r} does not exist; ingest documents first", collection)


class ResourceExhausted(RagrailError):
    """Too much load; ``retry_after_s`` tells the caller when to come back."""

    status = Status.RESOURCE_EXHAUSTED

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Unauthenticated(RagrailError):
    status = Status.UNAUTHENTICATED


class PermissionDenied(RagrailError):
    status = Status.PERMISSION_DENIED


class Unavailable(RagrailError):
    status = Status.UNAVAILABLE


class DeadlineExceeded(RagrailError):
    status = Status.DEADLINE_EXCEEDED


def require(condition: bool, message: str) -> None:
    """Raises InvalidArgument(message) unless condition holds."""
    if not condition:
        raise InvalidArgument(message)
