"""OpenTelemetry tracing: off by default, configured by the standard ``OTEL_*`` variables.

A process exports spans only when asked to: ``OTEL_TRACES_EXPORTER`` names an exporter
(``otlp``, ``console``; ``none`` turns tracing off) or an OTLP endpoint is set
(``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``); ``OTEL_SDK_DISABLED=true``
wins over both. The OTLP exporter speaks gRPC (``OTEL_EXPORTER_OTLP_PROTOCOL=grpc``, the
default) and reads its own variables (endpoint, headers, certificate, timeout, compression);
sampling follows ``OTEL_TRACES_SAMPLER``/``OTEL_TRACES_SAMPLER_ARG`` (default: parent-based,
always on) and batching ``OTEL_BSP_*``. ``service.name`` is ``ragrail-<service>`` per process
(``ragrail-gateway``, ``ragrail-generation``...) unless ``OTEL_SERVICE_NAME`` is set;
``OTEL_RESOURCE_ATTRIBUTES`` adds to it.

Each process configures itself lazily, on its first RPC: the server span of every servicer
method (:func:`server_span`, applied by ``ragrail.common.grpc_errors``) names the process
after its gRPC package, so the Serve replicas need no setup code. Call
:func:`configure_tracing` to do it earlier.

One trace covers a request end to end:

- the gateway's server span ``ragrail.gateway.v1.GatewayService/Run`` (continuing the
  caller's ``traceparent`` if it sent one);
- ``ragrail.pipeline.run`` with the pipeline, version, outcome and fallback reason;
- one span per stage (``ragrail.stage moderate_input``...), retries as events on it;
- the stage's gRPC call carries W3C ``traceparent`` metadata (:func:`inject_metadata`),
  which Ray Serve's proxy passes to the replica untouched;
- the service's server span (``ragrail.moderation.v1.ModerationService/Moderate``),
  child of the stage span.

With tracing off, incoming ``traceparent`` still passes through the gateway to the
services, so a caller's trace stays connected wherever tracing is on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any, TypeVar

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

log = logging.getLogger(__name__)
T = TypeVar("T")

TRACER_NAME = "ragrail"
PIPELINE_RUN_SPAN = "ragrail.pipeline.run"
STAGE_SPAN_PREFIX = "ragrail.stage "
# gRPC status codes that are the server's fault (OpenTelemetry's semantic conventions for
# gRPC server spans); the others (INVALID_ARGUMENT, NOT_FOUND...) leave the span unset.
SERVER_ERROR_CODES = frozenset({"UNKNOWN", "DEADLINE_EXCEEDED", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS"})
_GRPC_CODE_NUMBERS = {
    "OK": 0, "CANCELLED": 1, "UNKNOWN": 2, "INVALID_ARGUMENT": 3, "DEADLINE_EXCEEDED": 4, "NOT_FOUND": 5,
    "ALREADY_EXISTS": 6, "PERMISSION_DENIED": 7, "RESOURCE_EXHAUSTED": 8, "FAILED_PRECONDITION": 9,
    "ABORTED": 10, "OUT_OF_RANGE": 11, "UNIMPLEMENTED": 12, "INTERNAL": 13, "UNAVAILABLE": 14,
    "DATA_LOSS": 15, "UNAUTHENTICATED": 16,
}
_PROPAGATION_KEYS = ("traceparent", "tracestate", "baggage")

_lock = threading.Lock()
_enabled: bool | None = None  # None: not decided yet in this process


# -- configuration -------------------------------------------------------------------------


def tracing_requested(env: Mapping[str, str] | None = None) -> bool:
    """Whether the OTEL_* variables ask this process to export spans."""
    env = os.environ if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = [e.strip().lower() for e in env.get("OTEL_TRACES_EXPORTER", "").split(",") if e.strip()]
    if exporters:
        return any(e != "none" for e in exporters)
    return bool(env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def configure_tracing(service: str, env: Mapping[str, str] | None = None) -> bool:
    """Installs this process's TracerProvider once, if the environment asks; True when tracing is on.

    ``service`` is the short name (``gateway``, ``embedding``...): the resource's
    ``service.name`` becomes ``ragrail-<service>`` unless OTEL_SERVICE_NAME is set. A provider
    installed by someone else (a test, an auto-instrumentation agent) is kept and counts as on.
    """
    global _enabled
    if _enabled is not None:
        return _enabled
    with _lock:
        if _enabled is not None:
            return _enabled
        env = os.environ if env is None else env
        if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
            _enabled = True  # already configured in this process
        elif not tracing_requested(env):
            _enabled = False
        else:
            _enabled = _install_provider(service, env)
        return _enabled


def _install_provider(service: str, env: Mapping[str, str]) -> bool:
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    name = service if service.startswith("ragrail") else f"ragrail-{service}"
    attributes = {} if env.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: name}
    provider = TracerProvider(resource=Resource.create(attributes))
    exporters = _exporters(env)
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    log.info(
        "tracing on: service.name=%s, exporters=%s",
        provider.resource.attributes.get(SERVICE_NAME),
        ", ".join(type(e).__name__ for e in exporters) or "none",
    )
    return True


def _exporters(env: Mapping[str, str]) -> list[Any]:
    names = [e.strip().lower() for e in env.get("OTEL_TRACES_EXPORTER", "otlp").split(",") if e.strip()]
    exporters: list[Any] = []
    for name in names:
        if name == "none":
            continue
        if name == "console":
            from opentelemetry.sdk.trace.export import ConsoleSpanExporter

            exporters.append(ConsoleSpanExporter())
        elif name == "otlp":
            protocol = (
                env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "grpc"
            ).strip().lower()
            if protocol == "grpc":
                from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

                exporters.append(OTLPSpanExporter())  # endpoint, headers, TLS... from OTEL_EXPORTER_OTLP_*
            else:
                try:
                    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[import-not-found]
                        OTLPSpanExporter as HttpSpanExporter,
                    )
                except ImportError:
                    log.error(
                        "OTLP protocol %r needs opentelemetry-exporter-otlp-proto-http (not installed); "
                        "use OTEL_EXPORTER_OTLP_PROTOCOL=grpc", protocol,
                    )
                    continue
                exporters.append(HttpSpanExporter())
        else:
            log.error("OTEL_TRACES_EXPORTER=%s is not supported here (otlp, console or none)", name)
    return exporters


def enabled() -> bool:
    """True once this process has decided to record spans."""
    return bool(_enabled)


_tracer: trace.Tracer | None = None


def tracer() -> trace.Tracer:
    """The ragrail tracer (a proxy until a provider is installed, then the provider's)."""
    global _tracer
    if _tracer is None:
        _tracer = trace.get_tracer(TRACER_NAME)
    return _tracer


# -- propagation ---------------------------------------------------------------------------


def inject_metadata(pairs: list[tuple[str, str]]) -> None:
    """Appends ``traceparent`` (and ``tracestate``/``baggage``) of the current span to gRPC metadata."""
    if not _enabled and not trace.get_current_span().get_span_context().is_valid:
        return  # tracing off and no caller's trace to pass on
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    pairs.extend((key.lower(), value) for key, value in carrier.items())


def extract_metadata(grpc_context: Any) -> otel_context.Context | None:
    """The trace context a caller sent (W3C ``traceparent``), or None when it sent none.

    Works on grpc.aio's context and on Ray Serve's ``RayServegRPCContext`` (which keeps
    the original metadata, ``traceparent`` included).
    """
    if grpc_context is None:
        return None
    get_metadata = getattr(grpc_context, "invocation_metadata", None)
    if get_metadata is None:
        return None
    carrier = {}
    for key, value in get_metadata() or ():
        if key in _PROPAGATION_KEYS and isinstance(value, str):
            carrier[key] = value
    if "traceparent" not in carrier:
        return None
    return propagate.extract(carrier)


# -- spans ----------------------------------------------------------------------------------


def rpc_names(servicer_class: type) -> tuple[str, str]:
    """(full gRPC service name, short service name) of a servicer class, from its generated base.

    ``ModerationServicer`` subclasses ``ragrail.moderation.v1.moderation_pb2_grpc.ModerationServiceServicer``:
    ("ragrail.moderation.v1.ModerationService", "moderation").
    """
    cached = _RPC_NAMES.get(servicer_class)
    if cached is not None:
        return cached
    names = (servicer_class.__qualname__, servicer_class.__module__.split(".")[-2] if "." in servicer_class.__module__ else "")
    for base in servicer_class.__mro__:
        if base.__module__.endswith("_pb2_grpc") and base.__name__.endswith("Servicer"):
            package = base.__module__.rsplit(".", 1)[0]  # ragrail.moderation.v1
            parts = package.split(".")
            short = parts[1] if len(parts) >= 2 and parts[0] == "ragrail" else parts[-1]
            names = (f"{package}.{base.__name__.removesuffix('Servicer')}", short)
            break
    _RPC_NAMES[servicer_class] = names
    return names


_RPC_NAMES: dict[type, tuple[str, str]] = {}


@contextlib.contextmanager
def server_span(servicer: Any, method: str, grpc_context: Any) -> Iterator[Span | None]:
    """The span of one RPC inside a servicer, continuing the caller's ``traceparent``.

    Yields None when tracing is off (the caller's context is still made current, so the
    gateway passes it on to the services).
    """
    full_service, short = rpc_names(type(servicer))
    parent = extract_metadata(grpc_context)
    if not configure_tracing(short or "service"):
        if parent is None:
            yield None
            return
        token = otel_context.attach(parent)
        try:
            yield None
        finally:
            _detach(token)
        return
    attributes = {"rpc.system": "grpc", "rpc.service": full_service, "rpc.method": method}
    with tracer().start_as_current_span(
        f"{full_service}/{method}", context=parent, kind=SpanKind.SERVER, attributes=attributes
    ) as span:
        yield span


def record_status(span: Span | None, code: str, exc: BaseException | None = None) -> None:
    """Sets ``rpc.grpc.status_code``; server-side failures mark the span as an error."""
    if span is None or not span.is_recording():
        return
    span.set_attribute("rpc.grpc.status_code", _GRPC_CODE_NUMBERS.get(code, 2))
    if code in SERVER_ERROR_CODES:
        if exc is not None:
            span.record_exception(exc)
        span.set_status(Status(StatusCode.ERROR, f"{code}: {exc}" if exc is not None else code))


@contextlib.contextmanager
def pipeline_run_span(pipeline: str, version: int, method: str) -> Iterator[Span]:
    """``ragrail.pipeline.run``: current while the pipeline runs, so stage spans are its children."""
    if not _enabled:  # off: the current (possibly remote) span stays current
        yield trace.get_current_span()
        return
    attributes = {"ragrail.pipeline": pipeline, "ragrail.pipeline.version": version, "rpc.method": method}
    with tracer().start_as_current_span(
        PIPELINE_RUN_SPAN,
        kind=SpanKind.INTERNAL,
        attributes=attributes,
        record_exception=False,  # record_run decides: a caller's mistake is not the server's error
        set_status_on_exception=False,
    ) as span:
        yield span


def record_run(
    span: Span,
    *,
    outcome: str,
    code: str = "OK",
    fallback_reason: str = "",
    failed_stage: str = "",
    cached: bool = False,
    request_id: str = "",
    exc: BaseException | None = None,
) -> None:
    """What a pipeline run ended with, on its span (outcome: answered, fallback or error)."""
    if not span.is_recording():
        return
    span.set_attributes(
        {
            "ragrail.outcome": outcome,
            "ragrail.fallback_reason": fallback_reason,
            "ragrail.failed_stage": failed_stage,
            "ragrail.cached": cached,
            "rpc.grpc.status_code": _GRPC_CODE_NUMBERS.get(code, 2),
        }
    )
    if request_id:
        span.set_attribute("ragrail.request_id", request_id)
    if outcome == "error" and code in SERVER_ERROR_CODES:
        if exc is not None:
            span.record_exception(exc)
        span.set_status(Status(StatusCode.ERROR, code))


def start_stage_span(stage: str, service: str) -> Span:
    """A stage's span (kind CLIENT: its gRPC calls are the services' server spans' parents).

    Not made current: use :func:`use_span` around the calls it covers, and end it with
    :func:`end_stage_span`.
    """
    if not _enabled:
        # Off: the current (possibly remote) parent, unchanged, so the call's metadata
        # still passes the caller's trace context on.
        return trace.get_current_span()
    return tracer().start_span(
        STAGE_SPAN_PREFIX + stage,
        kind=SpanKind.CLIENT,
        attributes={
            "ragrail.stage": stage,
            "ragrail.service": service,
            "peer.service": service,
            "rpc.system": "grpc",
        },
    )


def use_span(span: Span) -> contextlib.AbstractContextManager[Span]:
    """Makes ``span`` current without ending it on exit."""
    return trace.use_span(span, end_on_exit=False, record_exception=False, set_status_on_exception=False)


def stage_attempt_failed(span: Span, attempt: int, exc: BaseException) -> None:
    """One failed call of a stage, as an event (the stage runner may retry after it)."""
    if span.is_recording():
        span.add_event(
            "attempt failed",
            {"ragrail.attempt": attempt, "exception.type": type(exc).__name__, "exception.message": str(exc)[:300]},
        )


def stage_retry(span: Span, attempt: int, timeout_s: float) -> None:
    if span.is_recording():
        span.add_event("retry", {"ragrail.attempt": attempt, "ragrail.timeout_s": round(timeout_s, 4)})


def end_stage_span(span: Span, exc: BaseException | None = None) -> None:
    """Ends a stage span; a failure that turns into a canned answer names its reason."""
    if not span.is_recording():
        return
    if isinstance(exc, GeneratorExit | asyncio.CancelledError):
        span.set_attribute("ragrail.cancelled", True)  # the caller went away: not a failure
    elif exc is not None:
        reason = getattr(exc, "reason", "")
        if reason:
            span.set_attribute("ragrail.fallback_reason", reason)
        span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"[:300]))
    span.end()


def _detach(token: object) -> None:
    # A stream closed from another task cannot reset its context; that is harmless.
    with contextlib.suppress(ValueError, RuntimeError):
        otel_context._RUNTIME_CONTEXT.detach(token)  # type: ignore[attr-defined, arg-type]


@contextlib.contextmanager
def stage_span(stage: str, service: str) -> Iterator[Span]:
    """A stage's span for the block (not current: :func:`traced_attempts` makes it current
    around each call), ended with the failure that left the block, if any."""
    span = start_stage_span(stage, service)
    try:
        yield span
    except BaseException as exc:
        end_stage_span(span, exc)
        raise
    end_stage_span(span)


def traced_attempts(span: Span, fn: Callable[[float], Awaitable[T]]) -> Callable[[float], Awaitable[T]]:
    """Wraps a stage's call so each attempt runs inside ``span``; failed attempts and
    retries become events on it."""
    if not _enabled:
        return fn  # off: the current span is already the parent to pass on
    attempts = 0

    async def attempt(timeout: float) -> T:
        nonlocal attempts
        attempts += 1
        if attempts > 1:
            stage_retry(span, attempts, timeout)
        with use_span(span):
            try:
                return await fn(timeout)
            except Exception as exc:
                stage_attempt_failed(span, attempts, exc)
                raise

    return attempt
