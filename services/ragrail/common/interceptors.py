"""Server interceptors that ``ragrail.common.server`` puts on every grpc.aio server it builds.

``DecodeGuard``: a request whose bytes are not a valid message (a string field that is not
UTF-8, a corrupt wire format) is answered INVALID_ARGUMENT ("request is not a valid
<message>: <reason>") before the handler, and so before authentication, runs. Left to
grpc.aio, the generated handler's ``FromString`` raises inside grpc's own dispatch, which
answers UNKNOWN naming protobuf's DecodeError and logs a traceback per request: a log flood
anyone can start without a key. Here a rejection logs one WARNING line, at most one per
``log_interval_s`` (the next line counts those left out).

``refusing_handler``: what an interceptor returns to refuse a call (no key, over capacity)
before its request is read. In grpc.aio an interceptor sees the method and the metadata but not
the call's context, so it cannot abort there; it can only choose the handler. A unary-request
handler would make grpc receive and decode the whole body (up to the message size limit) before
the refusal runs; a request-streaming one is called with the request still unread, so the
refusal costs the bytes already in flight (the HTTP/2 flow-control window), never a decode.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from ragrail.common.errors import InvalidArgument, RagrailError
from ragrail.common.grpc_errors import abort

log = logging.getLogger(__name__)

LOG_INTERVAL_S = 60.0
_REASON_CHARS = 100

# grpc's public constructor for each (request_streaming, response_streaming) kind, and the
# RpcMethodHandler attribute that holds that kind's behavior.
_KINDS: dict[tuple[bool, bool], tuple[Callable[..., grpc.RpcMethodHandler], str]] = {
    (False, False): (grpc.unary_unary_rpc_method_handler, "unary_unary"),
    (False, True): (grpc.unary_stream_rpc_method_handler, "unary_stream"),
    (True, False): (grpc.stream_unary_rpc_method_handler, "stream_unary"),
    (True, True): (grpc.stream_stream_rpc_method_handler, "stream_stream"),
}


def refusing_handler(handler: grpc.RpcMethodHandler, exc: RagrailError) -> grpc.RpcMethodHandler:
    """A handler for ``handler``'s method that answers ``exc``'s status without reading the
    request (see the module doc). The client cannot tell: on the wire a unary request is a
    stream of one message, and the status (with retry-after, if any) is all it gets."""
    if handler.response_streaming:

        async def refuse_stream(requests: Any, context: grpc.aio.ServicerContext) -> AsyncGenerator[Any, None]:
            await abort(context, exc)
            yield  # pragma: no cover - abort raises; the yield makes this a generator

        return grpc.stream_stream_rpc_method_handler(refuse_stream)

    async def refuse(requests: Any, context: grpc.aio.ServicerContext) -> Any:
        await abort(context, exc)

    return grpc.stream_unary_rpc_method_handler(refuse)


def wrap_handler(
    handler: grpc.RpcMethodHandler,
    unary: Callable[[Callable[..., Awaitable[Any]]], Callable[..., Awaitable[Any]]],
    stream: Callable[[Callable[..., AsyncGenerator[Any, None]]], Callable[..., AsyncGenerator[Any, None]]],
) -> grpc.RpcMethodHandler | None:
    """``handler`` with its behavior wrapped: ``unary`` for a coroutine, ``stream`` for an async
    generator; None for a sync behavior (none of ours), which the caller must handle."""
    make, attribute = _KINDS[(handler.request_streaming, handler.response_streaming)]
    behavior = getattr(handler, attribute)
    if inspect.isasyncgenfunction(behavior):
        wrapped: Callable[..., Any] = stream(behavior)
    elif inspect.iscoroutinefunction(behavior):
        wrapped = unary(behavior)
    else:
        return None
    return make(
        wrapped,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


class RateLimitedLog:
    """Logs at most one WARNING per ``interval_s``; the next one says how many were left out."""

    def __init__(
        self, logger: logging.Logger, interval_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._logger = logger
        self._interval_s = interval_s
        self._clock = clock
        self._last: float | None = None
        self._suppressed = 0

    def warning(self, message: str, *args: object) -> None:
        now = self._clock()
        if self._last is not None and now - self._last < self._interval_s:
            self._suppressed += 1
            return
        if self._suppressed:
            message += " (and %d more since the last such line)"
            args = (*args, self._suppressed)
        self._logger.warning(message, *args)
        self._last, self._suppressed = now, 0


class _Undecodable:
    """What a unary request that failed to decode becomes: grpc decodes it before the handler runs."""

    __slots__ = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message


class _UndecodableStreamedRequest(Exception):
    """Raised where a streamed request fails to decode: inside the handler's read."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _message_name(deserializer: Callable[[bytes], Any]) -> str:
    # Generated handlers pass ``Message.FromString``, a classmethod bound to the message class.
    descriptor = getattr(getattr(deserializer, "__self__", None), "DESCRIPTOR", None)
    return getattr(descriptor, "full_name", None) or "request message"


def _reason(exc: Exception) -> str:
    # upb says "Error parsing message with type 'pkg.Msg': String field had bad UTF-8";
    # only the part after the colon is news to the caller.
    if isinstance(exc, DecodeError):
        _, colon, reason = str(exc).partition("': ")
        reason = " ".join(reason.split())[:_REASON_CHARS] if colon else ""
        if reason:
            return reason
    return "malformed protobuf"


def _safe_deserializer(deserializer: Callable[[bytes], Any], *, streaming: bool) -> Callable[[bytes], Any]:
    name = _message_name(deserializer)

    def deserialize(raw: bytes) -> Any:
        try:
            return deserializer(raw)
        except Exception as exc:  # noqa: BLE001 - whatever the parser raises, the bytes are bad
            message = f"request is not a valid {name}: {_reason(exc)}"
            if streaming:
                raise _UndecodableStreamedRequest(message) from None
            return _Undecodable(message)

    return deserialize


class DecodeGuard(grpc.aio.ServerInterceptor):
    """Turns undecodable requests into INVALID_ARGUMENT with a short message (see the module doc).

    Only async handlers are guarded (every handler of ours is); a sync one is left as grpc built it.
    """

    def __init__(
        self, *, log_interval_s: float = LOG_INTERVAL_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._log = RateLimitedLog(log, log_interval_s, clock)
        # method -> (grpc's handler, its guarded twin): built once per method, not per call.
        self._guarded: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler  # unknown method (UNIMPLEMENTED), or raw bytes: nothing to decode
        method = handler_call_details.method
        known = self._guarded.get(method)
        if known is None or known[0] is not handler:
            known = (handler, self._guard(handler, method))
            self._guarded[method] = known
        return known[1]

    def _guard(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        make, attribute = _KINDS[(handler.request_streaming, handler.response_streaming)]
        behavior = getattr(handler, attribute)
        if inspect.isasyncgenfunction(behavior):
            wrapped: Callable[..., Any] = self._wrap_generator(behavior, method)
        elif inspect.iscoroutinefunction(behavior):
            wrapped = self._wrap_coroutine(behavior, method)
        else:
            return handler
        return make(
            wrapped,
            request_deserializer=_safe_deserializer(
                handler.request_deserializer, streaming=handler.request_streaming
            ),
            response_serializer=handler.response_serializer,
        )

    def _wrap_coroutine(self, behavior: Callable[..., Awaitable[Any]], method: str) -> Callable[..., Awaitable[Any]]:
        async def guarded(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if isinstance(request, _Undecodable):
                await self._reject(request.message, method, context)
            try:
                return await behavior(request, context)
            except _UndecodableStreamedRequest as exc:
                await self._reject(exc.message, method, context)

        return guarded

    def _wrap_generator(
        self, behavior: Callable[..., AsyncGenerator[Any, None]], method: str
    ) -> Callable[..., AsyncGenerator[Any, None]]:
        async def guarded(request: Any, context: grpc.aio.ServicerContext) -> AsyncGenerator[Any, None]:
            if isinstance(request, _Undecodable):
                await self._reject(request.message, method, context)
            try:
                # aclosing: a cancelled call still closes the handler's generator at once.
                async with contextlib.aclosing(behavior(request, context)) as responses:
                    async for response in responses:
                        yield response
            except _UndecodableStreamedRequest as exc:
                await self._reject(exc.message, method, context)

        return guarded

    async def _reject(self, message: str, method: str, context: grpc.aio.ServicerContext) -> None:
        self._log.warning("rejected an undecodable request to %s from %s: %s", method, context.peer(), message)
        await abort(context, InvalidArgument(message))


__all__ = ["DecodeGuard", "RateLimitedLog", "refusing_handler", "wrap_handler"]
