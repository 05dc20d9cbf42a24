"""Maps domain errors to gRPC statuses on any servicer context.

Works on a plain ``grpc.aio`` context and on Ray Serve's gRPC context alike: both
offer ``set_code``/``set_details``. The context parameter is named
``grpc_context`` because that is the keyword Ray Serve passes it by. Plain interceptors do not run inside Serve's
proxy, so this is a decorator on each RPC method rather than an interceptor.

The same decorators open the RPC's server span (``ragrail.common.tracing.server_span``:
continuing the caller's ``traceparent``, a no-op unless tracing is configured) and name the
RPC for the service metrics (``ragrail.common.service_metrics.current_method``).
"""

from __future__ import annotations

import functools
import math
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from ragrail.common import tracing
from ragrail.common.errors import RagrailError, Status
from ragrail.common.service_metrics import current_method

log = logging.getLogger(__name__)

T = TypeVar("T")

GRPC_CODES: dict[Status, grpc.StatusCode] = {status: grpc.StatusCode[status.value] for status in Status}


def _one_line(message: str, limit: int = 300) -> str:
    line = " ".join(message.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _code_name(exc: BaseException) -> str:
    return exc.status.value if isinstance(exc, RagrailError) else "INTERNAL"


def _trailing_metadata(exc: RagrailError) -> tuple[tuple[str, str], ...]:
    retry_after = getattr(exc, "retry_after_s", None)
    if retry_after is None:
        return ()
    # Seconds, rounded up: the trailing-metadata twin of HTTP's Retry-After.
    return (("retry-after", str(max(1, math.ceil(retry_after)))),)


async def abort(grpc_context: grpc.aio.ServicerContext, exc: RagrailError) -> None:
    """Ends a grpc.aio RPC with ``exc``'s status; for code outside a decorated method (interceptors).

    Never returns: grpc.aio's ``abort`` raises once the status is sent.
    """
    await grpc_context.abort(GRPC_CODES[exc.status], _one_line(exc.message), _trailing_metadata(exc))


def _handle(exc: BaseException, context: Any, rpc_name: str) -> None:
    if context is None:  # called in-process (tests, DeploymentHandle): let it propagate
        raise exc
    if isinstance(exc, RagrailError):
        context.set_code(GRPC_CODES[exc.status])
        context.set_details(_one_line(exc.message))
        trailing = _trailing_metadata(exc)
        if trailing:
            context.set_trailing_metadata(trailing)
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
            method = current_method.set(fn.__name__)
            try:
                with tracing.server_span(self, fn.__name__, grpc_context) as span:
                    try:
                        response = await fn(self, request, grpc_context)
                    except Exception as exc:  # noqa: BLE001 - the point is to catch everything
                        tracing.record_status(span, _code_name(exc), exc)
                        _handle(exc, grpc_context, fn.__name__)
                        return response_type()
                    tracing.record_status(span, "OK")
                    return response
            finally:
                current_method.reset(method)

        return wrapper

    return decorate


def grpc_stream_method(
    fn: Callable[..., AsyncIterator[T]],
) -> Callable[..., AsyncIterator[T]]:
    """Wraps a server-streaming async generator the same way as grpc_method."""

    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, grpc_context: Any = None) -> AsyncIterator[Any]:
        current_method.set(fn.__name__)  # the generator runs in its RPC's own task
        with tracing.server_span(self, fn.__name__, grpc_context) as span:
            try:
                async for item in fn(self, request, grpc_context):
                    yield item
                tracing.record_status(span, "OK")
            except Exception as exc:  # noqa: BLE001
                tracing.record_status(span, _code_name(exc), exc)
                _handle(exc, grpc_context, fn.__name__)

    return wrapper
