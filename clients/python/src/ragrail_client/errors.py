"""The errors a call can raise: one class per gRPC status the gateway uses.

Fallbacks are not errors (they are answers with ``fallback=True``); these are the caller's own
mistakes (INVALID_ARGUMENT, NOT_FOUND, ...), refusals (UNAUTHENTICATED, PERMISSION_DENIED,
RESOURCE_EXHAUSTED) and transport failures (UNAVAILABLE, DEADLINE_EXCEEDED).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, Optional

import grpc

RETRY_AFTER = "retry-after"


class RagrailError(Exception):
    """A call ended with a gRPC status other than OK.

    ``code`` is the status, ``details`` the gateway's one-line message, ``trailing_metadata``
    what came with it, ``retry_after_s`` the server's ``retry-after`` (seconds) when it sent one.
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        details: str,
        trailing_metadata: tuple[tuple[str, str], ...] = (),
    ) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details
        self.trailing_metadata = trailing_metadata
        self.retry_after_s = retry_after(trailing_metadata)


class InvalidArgument(RagrailError):
    """The request itself is wrong (empty or oversize query, bad document); do not retry."""


class NotFound(RagrailError):
    """Unknown pipeline or version."""


class FailedPrecondition(RagrailError):
    """The pipeline cannot run yet (e.g. its retrieval collection does not exist)."""


class Unauthenticated(RagrailError):
    """Missing or wrong API key."""


class PermissionDenied(RagrailError):
    """The key may not call this pipeline (or Ingest)."""


class ResourceExhausted(RagrailError):
    """Rate limit or full admission queue; ``retry_after_s`` says when to come back."""


class Unavailable(RagrailError):
    """The gateway could not be reached (after the channel's own retries)."""


class DeadlineExceeded(RagrailError):
    """The call's deadline passed before an answer."""


class Cancelled(RagrailError):
    """The call was cancelled (by the caller, or the server shutting down)."""


class InternalError(RagrailError):
    """A server-side bug (INTERNAL, UNKNOWN, ...): the details name an incident id to look up."""


_BY_CODE: dict[grpc.StatusCode, type[RagrailError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.CANCELLED: Cancelled,
}


def retry_after(metadata: Iterable[tuple[str, Any]]) -> Optional[float]:
    """The ``retry-after`` value in seconds, or None when absent or not a number."""
    for key, value in metadata:
        if key.lower() == RETRY_AFTER:
            try:
                seconds = float(value.decode() if isinstance(value, bytes) else value)
            except ValueError:
                return None
            return seconds if math.isfinite(seconds) and seconds >= 0 else None
    return None


def _metadata(raw: Any) -> tuple[tuple[str, str], ...]:
    items = []
    for item in raw or ():
        key, value = item[0], item[1]  # sync: _Metadatum; aio: plain (key, value) pairs
        items.append((key, value.decode(errors="replace") if isinstance(value, bytes) else str(value)))
    return tuple(items)


def from_rpc_error(exc: grpc.RpcError) -> RagrailError:
    """The typed error for a sync or grpc.aio ``RpcError``."""
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = (exc.details() if hasattr(exc, "details") else None) or ""
    trailing = _metadata(exc.trailing_metadata() if hasattr(exc, "trailing_metadata") else ())
    return _BY_CODE.get(code, InternalError)(code, details, trailing)
