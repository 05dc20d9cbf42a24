"""Maps domain errors to gRPC statuses on any servicer context.

Works on a plain ``grpc.aio`` context and on Ray Serve's gRPC context alike: both
offer ``set_code``/``set_details``. The context parameter is named
``grpc_context`` because that is the keyword Ray Serve passes it by. Plain interceptors do not run inside Serve's
proxy, so this is a decorator on each RPC method rather than an interceptor.
"""

from __future__ import annotations

import functools
import math
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from ragrail.common.errors import RagrailError, Status

log = logging.getLogger(__name__)

T = TypeVar("T")

GRPC_CODES: dict[Status, grpc.StatusCode] = {status: grpc.StatusCode[status.value] for status in Status}


def _one_line(message: str, limit: int = 300) -> str:
    line = " ".join(message.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _handle(exc: BaseException, context: Any, rpc_name: str) -> None:
    if context is None:  # called in-process (tests, DeploymentHandle): let it propagate
        raise exc
    if isinstance(exc, RagrailError):
        context.set_code(GRPC_CODES[exc.status])
        context.set_details(_one_line(exc.message))
        retry_after = getattr(exc, "retry_after_s", None)
        if retry_after is not None:
            # Seconds, rounded up: the trailing-metadata twin of HTTP's Retry-After.
            context.set_trailing_metadata((("retry-after", str(max(1, math.ceil(retry_after)))),))
        return
    incident = uuid.uuid4().hex[:12]
    log.exception("unexpected error in %s (incident %s)", rpc_name, incident)
    context.set_code(grpc.StatusCode.INTERNAL)
    context.set_details(f"internal error in {rpc_name} (incident {incident}; see the service log)")


def grpc_method(
    response_type: type[T],
) -> Callable[[Callable[..., Awaitable[T]]], Callable[..., Awaitable[T]]]:
    """Wraps a unary async RPC method: domain errors become statuses, bugs INTERNAL.

    On error an empty ``response_type`` is returned; gRPC sends only the status.
    """

    def decorate(fn: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
        @functools.wraps(fn)
        async def wrapper(self: Any, request: Any, grpc_context: Any = None) -> T:
            try:
                return await fn(self, request, grpc_context)
            except Exception as exc:  # noqa: BLE001 - the point is to catch everything
                _handle(exc, grpc_context, fn.__name__)
                return response_type()

        return wrapper

    return decorate


def grpc_stream_method(
    fn: Callable[..., AsyncIterator[T]],
) -> Callable[..., AsyncIterator[T]]:
    """Wraps a server-streaming async generator the same way as grpc_method."""

    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, grpc_context: Any = None) -> AsyncIterator[Any]:
        try:
            async for item in fn(self, request, grpc_context):
                yield item
        except Exception as exc:  # noqa: BLE001
            _handle(exc, grpc_context, fn.__name__)

    return wrapper
