"""Unit tests for the servicer decorators in ragrail.common.grpc_errors."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from ragrail.common import errors
from ragrail.common.errors import RagrailError, Status
from ragrail.common.grpc_errors import GRPC_CODES, abort, grpc_method, grpc_stream_method

INCIDENT = re.compile(r"incident [0-9a-f]{12}")
SECRET_PATH = "/srv/ragrail/secret_module.py"


class FakeContext:
    """Records what a servicer sets, like grpc.aio's and Ray Serve's contexts allow."""

    def __init__(self) -> None:
        self.codes: list[grpc.StatusCode] = []
        self.details: list[str] = []

    def set_code(self, code: grpc.StatusCode) -> None:
        self.codes.append(code)

    def set_details(self, details: str) -> None:
        self.details.append(details)

    @property
    def code(self) -> grpc.StatusCode | None:
        return self.codes[-1] if self.codes else None


class Response:
    def __init__(self, value: str = "") -> None:
        self.value = value


def _boom() -> None:
    # An unexpected error whose text includes a file path, as tracebacks do.
    raise RuntimeError(f'Traceback (most recent call last):\n  File "{SECRET_PATH}", line 3\nKeyError: x')


class Servicer:
    def __init__(self, exc: BaseException | None = None) -> None:
        self.exc = exc

    @grpc_method(Response)
    async def Unary(self, request: str, grpc_context: Any = None) -> Response:
        if self.exc is not None:
            raise self.exc
        return Response(request.upper())

    @grpc_method(Response)
    async def Buggy(self, request: str, grpc_context: Any = None) -> Response:
        _boom()
        return Response()

    @grpc_stream_method
    async def Stream(self, request: str, grpc_context: Any = None) -> AsyncIterator[Response]:
        yield Response("first")
        if self.exc is not None:
            raise self.exc
        _boom()
        yield Response("never")


DOMAIN_ERRORS = [cls for cls in vars(errors).values() if isinstance(cls, type) and issubclass(cls, RagrailError)]


# What each domain error must reach a client as, written out by hand rather than derived from
# GRPC_CODES (which is built from Status and so agrees with itself by construction). Clients act
# on these codes (retry UNAVAILABLE, back off on RESOURCE_EXHAUSTED, never retry the rest).
INTENDED_CODES = {
    "RagrailError": grpc.StatusCode.INTERNAL,
    "InvalidArgument": grpc.StatusCode.INVALID_ARGUMENT,
    "NotFound": grpc.StatusCode.NOT_FOUND,
    "FailedPrecondition": grpc.StatusCode.FAILED_PRECONDITION,
    "CollectionMissing": grpc.StatusCode.FAILED_PRECONDITION,  # an error state, never a cached "no information"
    "ResourceExhausted": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "Unauthenticated": grpc.StatusCode.UNAUTHENTICATED,
    "PermissionDenied": grpc.StatusCode.PERMISSION_DENIED,
    "Unavailable": grpc.StatusCode.UNAVAILABLE,
    "DeadlineExceeded": grpc.StatusCode.DEADLINE_EXCEEDED,
}


def test_every_domain_error_class_has_its_intended_code() -> None:
    # A new error class fails here until someone decides which code clients see for it.
    assert {cls.__name__ for cls in DOMAIN_ERRORS} == set(INTENDED_CODES)
    for cls in DOMAIN_ERRORS:
        assert GRPC_CODES[cls.status] == INTENDED_CODES[cls.__name__], cls.__name__
    # Every Status a core may raise has a gRPC code with that very name (no KeyError at runtime).
    assert all(GRPC_CODES[s].name == s.value for s in Status)


async def test_success_passes_through_untouched() -> None:
    context = FakeContext()
    response = await Servicer().Unary("hi", context)
    assert response.value == "HI"
    assert context.codes == [] and context.details == []


@pytest.mark.parametrize("cls", DOMAIN_ERRORS, ids=lambda c: c.__name__)
async def test_domain_error_maps_to_its_status_with_one_line_details(cls: type[RagrailError]) -> None:
    context = FakeContext()
    response = await Servicer(cls("bad  input:\n  field   x\tis wrong")).Unary("hi", grpc_context=context)

    assert isinstance(response, Response) and response.value == ""  # empty response; status carries the error
    assert context.code == grpc.StatusCode[cls.status.value]
    assert context.details == ["bad input: field x is wrong"]


async def test_long_details_are_truncated() -> None:
    context = FakeContext()
    await Servicer(errors.InvalidArgument("x" * 1000)).Unary("hi", context)
    [details] = context.details
    assert len(details) <= 300 and details.endswith("…")


async def test_unexpected_error_is_internal_with_incident_and_no_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    context = FakeContext()
    with caplog.at_level(logging.ERROR, logger="ragrail.common.grpc_errors"):
        response = await Servicer().Buggy("hi", context)

    assert response.value == ""
    assert context.code == grpc.StatusCode.INTERNAL
    [details] = context.details
    incident = INCIDENT.search(details)
    assert incident, details
    assert "Buggy" in details
    assert "Traceback" not in details and SECRET_PATH not in details and ".py" not in details
    assert "\n" not in details
    # The full story goes to the service log, under the same incident id.
    assert any(incident.group(0) in r.getMessage() and r.exc_info for r in caplog.records)


async def test_incident_ids_differ() -> None:
    contexts = [FakeContext(), FakeContext()]
    for context in contexts:
        await Servicer().Buggy("hi", context)
    first, second = (INCIDENT.search(c.details[0]).group(0) for c in contexts)  # type: ignore[union-attr]
    assert first != second


async def test_without_context_errors_propagate() -> None:
    with pytest.raises(errors.NotFound, match="nope"):
        await Servicer(errors.NotFound("nope")).Unary("hi")
    with pytest.raises(RuntimeError):
        await Servicer().Buggy("hi", None)


def test_wrapped_method_keeps_its_name() -> None:
    assert Servicer.Unary.__name__ == "Unary"
    assert Servicer.Stream.__name__ == "Stream"


async def test_stream_success_yields_everything() -> None:
    class Ok:
        @grpc_stream_method
        async def Stream(self, request: str, grpc_context: Any = None) -> AsyncIterator[str]:
            for ch in request:
                yield ch

    context = FakeContext()
    assert [item async for item in Ok().Stream("abc", context)] == ["a", "b", "c"]
    assert context.codes == []


async def test_stream_domain_error_after_one_item_sets_status() -> None:
    context = FakeContext()
    items = [r.value async for r in Servicer(errors.Unavailable("down\nnow")).Stream("hi", context)]

    assert items == ["first"]
    assert context.codes == [grpc.StatusCode.UNAVAILABLE]
    assert context.details == ["down now"]


async def test_stream_unexpected_error_after_one_item_is_internal() -> None:
    context = FakeContext()
    items = [r.value async for r in Servicer().Stream("hi", context)]

    assert items == ["first"]
    assert context.codes == [grpc.StatusCode.INTERNAL]
    [details] = context.details
    assert INCIDENT.search(details) and "Stream" in details
    assert "Traceback" not in details and SECRET_PATH not in details and ".py" not in details


async def test_stream_without_context_propagates_after_the_first_item() -> None:
    received: list[str] = []
    with pytest.raises(errors.ResourceExhausted):
        async for r in Servicer(errors.ResourceExhausted("busy")).Stream("hi"):
            received.append(r.value)
    assert received == ["first"]
    received.clear()
    with pytest.raises(RuntimeError):
        async for r in Servicer().Stream("hi", None):
            received.append(r.value)
    assert received == ["first"]


class AbortingContext:
    """grpc.aio's abort: records the status it sends, then raises as grpc.aio does."""

    def __init__(self) -> None:
        self.sent: tuple[grpc.StatusCode, str, tuple[tuple[str, str], ...]] | None = None

    async def abort(self, code: grpc.StatusCode, details: str, trailing_metadata: Any = ()) -> None:
        self.sent = (code, details, tuple(trailing_metadata))
        raise RuntimeError("aborted")  # grpc.aio raises AbortError here


@pytest.mark.parametrize("cls", DOMAIN_ERRORS, ids=lambda cls: cls.__name__)
async def test_abort_sends_each_error_class_with_its_code(cls: type[RagrailError]) -> None:
    context = AbortingContext()
    with pytest.raises(RuntimeError, match="aborted"):
        await abort(context, cls("first line\nsecond line"))
    assert context.sent == (GRPC_CODES[cls.status], "first line second line", ())


async def test_abort_sends_retry_after() -> None:
    context = AbortingContext()
    with pytest.raises(RuntimeError, match="aborted"):
        await abort(context, errors.ResourceExhausted("full", retry_after_s=0.2))
    assert context.sent == (grpc.StatusCode.RESOURCE_EXHAUSTED, "full", (("retry-after", "1"),))
