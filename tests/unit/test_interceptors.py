"""Unit tests for ragrail.common.interceptors (the contract tests send real undecodable bytes)."""

from __future__ import annotations

import logging
from typing import Any

import grpc
import pytest

from ragrail.common.errors import ResourceExhausted, Unauthenticated
from ragrail.common.interceptors import (
    DecodeGuard,
    RateLimitedLog,
    _safe_deserializer,
    _Undecodable,
    refusing_handler,
    wrap_handler,
)
from ragrail.gateway.v1 import gateway_pb2 as pb

BAD_QUERY = pb.RunRequest(pipeline="rag", query="MARK").SerializeToString().replace(b"MARK", b"\xff\xfe\xfd\xfc")


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_rate_limited_log_writes_one_line_per_interval_and_counts_the_rest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    limited = RateLimitedLog(logging.getLogger("test.limited"), 60.0, clock)
    with caplog.at_level(logging.WARNING, logger="test.limited"):
        for now in (0.0, 1.0, 59.9, 60.0, 61.0, 200.0):
            clock.now = now
            limited.warning("bad request from %s", "peer")
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.WARNING, "bad request from peer"),
        (logging.WARNING, "bad request from peer (and 2 more since the last such line)"),
        (logging.WARNING, "bad request from peer (and 1 more since the last such line)"),
    ]


def test_undecodable_unary_request_becomes_a_short_message() -> None:
    decoded = _safe_deserializer(pb.RunRequest.FromString, streaming=False)(BAD_QUERY)
    assert isinstance(decoded, _Undecodable)
    assert decoded.message == "request is not a valid ragrail.gateway.v1.RunRequest: String field had bad UTF-8"
    good = pb.RunRequest(pipeline="rag", query="ok")
    assert _safe_deserializer(pb.RunRequest.FromString, streaming=False)(good.SerializeToString()) == good


def test_an_unknown_deserializer_failure_does_not_leak_its_text() -> None:
    def deserializer(raw: bytes) -> Any:
        raise ValueError("/srv/app/secret.py line 3: internals")

    decoded = _safe_deserializer(deserializer, streaming=False)(b"x")
    assert isinstance(decoded, _Undecodable)
    assert decoded.message == "request is not a valid request message: malformed protobuf"
    with pytest.raises(Exception, match="^request is not a valid request message: malformed protobuf$"):
        _safe_deserializer(deserializer, streaming=True)(b"x")


class Details(grpc.HandlerCallDetails):
    def __init__(self, method: str) -> None:
        self.method = method
        self.invocation_metadata = ()


async def run(request: pb.RunRequest, context: Any) -> pb.RunResponse:
    return pb.RunResponse(answer=request.query)


def sync_run(request: pb.RunRequest, context: Any) -> pb.RunResponse:
    return pb.RunResponse(answer=request.query)


async def test_guard_wraps_async_handlers_once_and_leaves_the_rest() -> None:
    guard = DecodeGuard()
    handler = grpc.unary_unary_rpc_method_handler(
        run, request_deserializer=pb.RunRequest.FromString, response_serializer=pb.RunResponse.SerializeToString
    )
    raw = grpc.unary_unary_rpc_method_handler(run)  # bytes in: nothing to decode
    sync = grpc.unary_unary_rpc_method_handler(sync_run, request_deserializer=pb.RunRequest.FromString)

    async def continuation(details: grpc.HandlerCallDetails) -> Any:
        return {"/svc/Run": handler, "/svc/Raw": raw, "/svc/Sync": sync}.get(details.method)

    guarded = await guard.intercept_service(continuation, Details("/svc/Run"))
    assert guarded is not handler and guarded.response_serializer is handler.response_serializer
    assert isinstance(guarded.request_deserializer(BAD_QUERY), _Undecodable)
    assert await guard.intercept_service(continuation, Details("/svc/Run")) is guarded  # built once
    ok = pb.RunRequest(query="hi")
    assert await guarded.unary_unary(guarded.request_deserializer(ok.SerializeToString()), None) == pb.RunResponse(
        answer="hi"
    )

    assert await guard.intercept_service(continuation, Details("/svc/Raw")) is raw
    assert await guard.intercept_service(continuation, Details("/svc/Sync")) is sync
    assert await guard.intercept_service(continuation, Details("/svc/Unknown")) is None


class Context:
    """The parts of grpc.aio's ServicerContext a refusal uses."""

    def __init__(self) -> None:
        self.aborted: tuple[Any, ...] | None = None

    async def abort(self, code: grpc.StatusCode, details: str, trailing: Any = ()) -> None:
        self.aborted = (code, details, tuple(trailing))
        raise grpc.aio.AbortError()


async def test_a_refusing_handler_never_reads_the_request() -> None:
    unary = grpc.unary_unary_rpc_method_handler(run, request_deserializer=pb.RunRequest.FromString)
    refusal = refusing_handler(unary, ResourceExhausted("full", retry_after_s=1.5))
    # Request-streaming, no deserializer: grpc hands over the unread stream instead of decoding it.
    assert refusal.request_streaming and not refusal.response_streaming
    assert refusal.request_deserializer is None

    class Unread:
        def __aiter__(self) -> Any:
            raise AssertionError("the request was read")

    context = Context()
    with pytest.raises(grpc.aio.AbortError):
        await refusal.stream_unary(Unread(), context)
    assert context.aborted == (grpc.StatusCode.RESOURCE_EXHAUSTED, "full", (("retry-after", "2"),))

    streaming = grpc.unary_stream_rpc_method_handler(run)
    refusal = refusing_handler(streaming, Unauthenticated("no key"))
    assert refusal.request_streaming and refusal.response_streaming
    context = Context()
    with pytest.raises(grpc.aio.AbortError):
        async for _ in refusal.stream_stream(Unread(), context):
            pass
    assert context.aborted == (grpc.StatusCode.UNAUTHENTICATED, "no key", ())


async def test_wrap_handler_keeps_the_kind_and_codecs_and_skips_sync_behaviors() -> None:
    handler = grpc.unary_unary_rpc_method_handler(
        run, request_deserializer=pb.RunRequest.FromString, response_serializer=pb.RunResponse.SerializeToString
    )
    seen: list[str] = []

    def around(behavior: Any) -> Any:
        async def wrapped(request: Any, context: Any) -> Any:
            seen.append("before")
            return await behavior(request, context)

        return wrapped

    wrapped = wrap_handler(handler, around, lambda b: b)
    assert wrapped is not None
    assert wrapped.request_deserializer is handler.request_deserializer
    assert wrapped.response_serializer is handler.response_serializer
    assert await wrapped.unary_unary(pb.RunRequest(query="q"), None) == pb.RunResponse(answer="q")
    assert seen == ["before"]
    assert wrap_handler(grpc.unary_unary_rpc_method_handler(sync_run), around, around) is None
