"""gRPC channels and timed calls that report to locust's ``request`` event.

Every call is reported once, with:

- ``request_type``: ``grpc`` for an answer (or an error), ``fallback`` for a
  canned answer (status OK, ``fallback: true``);
- ``name``: the pipeline reference (``rag@1``) or ``<service>/<Method>``;
  fallbacks get their own name, ``rag@1 [fallback:retrieval_miss]``, and answers
  from the gateway's response cache ``rag@2 [cached]``, so both are visible in
  the report without being failures or skewing the answered latencies;
  an answer that came after the gateway refused the call at first
  (RESOURCE_EXHAUSTED with ``retry-after``) and the user waited and tried again,
  as ragrail-client does, gets `` [retried]`` after its name: its latency
  (the wait included) counts for the pipeline, in a row of its own;
- ``response_time`` in milliseconds and ``response_length`` in bytes (the
  serialized response);
- ``exception``: a ``GrpcCallError("CODE: details")`` for a non-OK status.

Nothing here imports gevent: the locustfile calls
``grpc.experimental.gevent.init_gevent()`` before any channel is created.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc

from ragrail.gateway.v1 import gateway_pb2 as gateway_pb

RETRIED_SUFFIX = " [retried]"

FALLBACK_PREFIX = "FALLBACK_REASON_"
DEFAULT_GATEWAY = "127.0.0.1:50051"
DEFAULT_SERVE = "127.0.0.1:9000"


class GrpcCallError(Exception):
    """A non-OK gRPC status, one line: locust groups failures by this text."""

    def __init__(self, code: str, details: str) -> None:
        first_line = (details or "").strip().splitlines()[0] if (details or "").strip() else ""
        super().__init__(f"{code}: {first_line[:160]}" if first_line else code)
        self.code = code


def target(host: str | None, default: str) -> str:
    """``host:port`` from a locust host, tolerating a ``grpc://`` or ``http://`` prefix."""
    value = (host or default).strip()
    for scheme in ("grpc://", "grpcs://", "http://", "https://"):
        if value.startswith(scheme):
            value = value[len(scheme):]
    return value.rstrip("/")


def open_channel(address: str, ca_file: str | None = None, server_name: str | None = None) -> grpc.Channel:
    """A channel to exactly ``address``: TLS when a CA file is given, plaintext otherwise."""
    options: list[tuple[str, Any]] = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]
    if server_name:
        options.append(("grpc.ssl_target_name_override", server_name))
    if ca_file:
        creds = grpc.ssl_channel_credentials(root_certificates=Path(ca_file).read_bytes())
        return grpc.secure_channel(address, creds, options=options)
    return grpc.insecure_channel(address, options=options)


def fallback_reason(response: gateway_pb.RunResponse) -> str:
    name = gateway_pb.FallbackReason.Name(response.fallback_reason)
    return name[len(FALLBACK_PREFIX):].lower() if name.startswith(FALLBACK_PREFIX) else name.lower()


def classify_run(ref: str, response: gateway_pb.RunResponse) -> tuple[str, str]:
    """(request_type, name) of a pipeline answer."""
    if response.fallback:
        return "fallback", f"{ref} [fallback:{fallback_reason(response) or 'unknown'}]"
    if response.cached:
        return "grpc", f"{ref} [cached]"
    return "grpc", ref


Fire = Callable[..., None]
Sleep = Callable[[float], None]


class Retries:
    """How many times one call was tried again after a refusal (``retrying_refusals``)."""

    def __init__(self) -> None:
        self.count = 0


def refusal_wait(exc: grpc.RpcError, tries: int, max_retries: int, remaining_s: float) -> float | None:
    """Seconds to wait before trying a refused call again, or None to report it as it is.

    The policy of ragrail-client (its ``retry_delay``), so a load test sees what a backend
    using the recommended client sees: only RESOURCE_EXHAUSTED carrying the gateway's
    ``retry-after`` is retried, ``max_retries`` times at most, and only when the wait leaves
    time for the call within its deadline.
    """
    code = exc.code() if hasattr(exc, "code") else None  # type: ignore[attr-defined]
    if code != grpc.StatusCode.RESOURCE_EXHAUSTED or tries >= max_retries:
        return None
    trailers = exc.trailing_metadata() if hasattr(exc, "trailing_metadata") else None  # type: ignore[attr-defined]
    wait = _retry_after(trailers or ())
    if wait is None or wait >= remaining_s:
        return None
    return wait


def retrying_refusals(
    call: Callable[[float], Any], timeout_s: float, max_retries: int, sleep: Sleep, tries: Retries
) -> Any:
    """``call(timeout)`` under one deadline of ``timeout_s`` over every try, retried after the
    gateway's ``retry-after`` when it refused (``refusal_wait``); the last error is raised."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return call(max(0.0, deadline - time.monotonic()))
        except grpc.RpcError as exc:
            wait = refusal_wait(exc, tries.count, max_retries, deadline - time.monotonic())
            if wait is None:
                raise
            tries.count += 1
            sleep(wait)


def _retry_after(metadata: Sequence[tuple[str, Any]]) -> float | None:
    """The gateway's ``retry-after`` trailer in seconds (ragrail.common.errors sends it)."""
    for key, value in metadata:
        if key.lower() == "retry-after":
            try:
                return float(value.decode() if isinstance(value, bytes) else value)
            except ValueError:
                return None
    return None


def timed_call(
    fire: Fire,
    name: str,
    call: Callable[[], Any],
    classify: Callable[[Any], tuple[str, str]] | None = None,
    retries: Retries | None = None,
) -> Any:
    """Runs ``call()``, reports it through ``fire`` (locust's request event) and returns its response.

    Returns None when the call failed (the failure is reported, not raised:
    a locust task should go on to its next iteration). ``retries``: the counter of a
    ``retrying_refusals`` inside ``call``; an answer after a retry is named ``<name> [retried]``.
    """
    start = time.perf_counter()
    try:
        response = call()
    except grpc.RpcError as exc:
        elapsed = (time.perf_counter() - start) * 1000
        code = exc.code().name if hasattr(exc, "code") and exc.code() else "UNKNOWN"  # type: ignore[attr-defined]
        details = exc.details() if hasattr(exc, "details") else str(exc)  # type: ignore[attr-defined]
        fire(request_type="grpc", name=name, response_time=elapsed, response_length=0,
             exception=GrpcCallError(code, details or ""), context={})
        return None
    except Exception as exc:  # a bug or a broken channel: still one failure, not a dead user
        elapsed = (time.perf_counter() - start) * 1000
        fire(request_type="grpc", name=name, response_time=elapsed, response_length=0,
             exception=GrpcCallError(type(exc).__name__, str(exc)), context={})
        return None
    elapsed = (time.perf_counter() - start) * 1000
    request_type, report_name = classify(response) if classify else ("grpc", name)
    if retries is not None and retries.count:
        report_name += RETRIED_SUFFIX
    fire(request_type=request_type, name=report_name, response_time=elapsed,
         response_length=response.ByteSize(), exception=None, context={})
    return response


def auth_metadata(api_key: str | None) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {api_key}"),) if api_key else ()


def serve_metadata(application: str) -> Sequence[tuple[str, str]]:
    """Serve's gRPC proxy picks the application by this metadata key."""
    return (("application", application),)
