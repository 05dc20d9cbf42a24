"""What every gateway RPC gets before its handler runs: one grpc.aio server interceptor.

For each call, in this order, from the method name and metadata alone (the request is not read
yet, see ``ragrail.common.interceptors.refusing_handler``):

1. authentication (``authorization: Bearer <key>``) and the method's key scope (Ingest needs
   ``ingest``); per-pipeline scopes need the request, so the Run handlers check them;
2. a quick capacity check: all RPCs (``admission.max_concurrent_rpcs``) and the method's
   admission class (``query`` or ``ingest``) — a refusal here is RESOURCE_EXHAUSTED with
   retry-after, before anything is decoded;
3. the key's rate limit (one token per RPC; RESOURCE_EXHAUSTED with retry-after).

What gRPC Python allows: an interceptor sees only the method and the metadata, and cannot abort
there; it can return a handler that aborts without reading the request (see
``refusing_handler``). grpc's own ``maximum_concurrent_rpcs`` (set in ragrail.gateway.server
above ours) refuses even earlier, before any interceptor, but counts health checks too and sends
no retry-after: it is the backstop, this is the policy. The message size limit
(``max_message_bytes``) is grpc core's, applied while a message is received.

Then, around the handler: a request id (``x-request-id`` or a new one) and the caller, current
for the handler (``current_call``) and for the backend clients; the admission slots held; the
``ragrail_gateway_rpcs_total{method,code}`` count and the in-flight gauge; and error mapping for
anything a handler lets escape (a clean status, never UNKNOWN with a traceback). The handlers'
``grpc_method`` decorators still open the RPC's span and map their own errors, because they also
serve in-process callers that no interceptor sees.

Every method is covered unless ``policies`` marks it public: a new RPC needs a key by default.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc

from ragrail.common.config import AdmissionClassSettings, GatewayAdmissionSettings
from ragrail.common.errors import RagrailError, Unavailable
from ragrail.common.grpc_errors import abort
from ragrail.common.interceptors import refusing_handler, wrap_handler
from ragrail.gateway.admission import Admission, LatencyLimit, current_ticket
from ragrail.gateway.auth import Authenticator, Principal
from ragrail.gateway.clients import current_request_id
from ragrail.gateway.metrics import GatewayMetrics

log = logging.getLogger(__name__)

REQUEST_ID_CHARS = 128


@dataclass(frozen=True)
class MethodPolicy:
    """How the interceptor treats one method; unlisted methods get ``MethodPolicy()``."""

    public: bool = False  # no key, no rate limit, no admission: health checks and reflection only
    ingest_scope: bool = False  # the key must grant ``ingest``
    admission: str | None = None  # "query" or "ingest": a class with its own slots and queue


PUBLIC = MethodPolicy(public=True)


@dataclass(frozen=True)
class Call:
    """The caller of the current RPC, as the interceptor established it."""

    principal: Principal
    request_id: str
    method: str


current_call: contextvars.ContextVar[Call | None] = contextvars.ContextVar("gateway_call", default=None)


def _limit_of(admission: Admission) -> float:
    return float(admission.limit)


def class_admission(name: str, settings: AdmissionClassSettings, retry_after_s: float) -> Admission:
    limit = (
        LatencyLimit(settings.max_in_flight, floor=settings.min_in_flight) if settings.min_in_flight else None
    )
    return Admission(
        name, settings.max_in_flight, settings.max_queue, retry_after_s, what="the gateway's class", latency_limit=limit
    )


class GatewayInterceptor(grpc.aio.ServerInterceptor):
    def __init__(
        self,
        auth: Authenticator,
        policies: Mapping[str, MethodPolicy],
        limits: GatewayAdmissionSettings,
        metrics: GatewayMetrics,
    ) -> None:
        self.auth = auth
        self.policies = dict(policies)
        retry = limits.retry_after_s
        self.rpcs = Admission("RPCs", limits.max_concurrent_rpcs, 0, retry, what="the gateway's")
        self.classes = {
            name: (class_admission(name, c, retry), c.max_wait_s)
            for name, c in (("query", limits.query), ("ingest", limits.ingest))
        }
        for name, (admission, _) in self.classes.items():
            metrics.admission_limit.labels(name).set_function(functools.partial(_limit_of, admission))
        unknown = {p.admission for p in self.policies.values() if p.admission} - set(self.classes)
        if unknown:
            raise ValueError(f"unknown admission classes in method policies: {sorted(unknown)}")
        self.metrics = metrics
        self.calls = metrics.rpcs
        self.draining = False  # set by the gateway's stop(): new calls are refused, calls in flight finish

    def policy(self, method: str) -> MethodPolicy:
        return self.policies.get(method, MethodPolicy())

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        policy = self.policy(details.method)
        if handler is None or policy.public:
            return handler  # unknown method: UNIMPLEMENTED, which reveals nothing
        name = _short(details.method)
        metadata = _text_metadata(details.invocation_metadata)
        try:
            if self.draining:
                raise Unavailable("the gateway is shutting down; retry (another replica, or this one once restarted)")
            principal = self._admit(policy, metadata)
        except RagrailError as exc:
            self.calls.labels(name, exc.status.value).inc()
            return refusing_handler(handler, exc)
        call = Call(principal, _request_id(metadata), name)
        wrapped = wrap_handler(
            handler,
            lambda behavior: self._unary(behavior, call, policy),
            lambda behavior: self._stream(behavior, call, policy),
        )
        if wrapped is None:  # a sync handler would run outside every bound: refuse it loudly
            return refusing_handler(handler, RagrailError(f"{name} has a synchronous handler"))
        return wrapped

    def _admit(self, policy: MethodPolicy, metadata: tuple[tuple[str, str], ...]) -> Principal:
        principal = self.auth.authenticate(metadata)
        if policy.ingest_scope:
            self.auth.authorize_ingest(principal)
        # Capacity before the rate limit: a call refused for capacity costs its key no token.
        if self.rpcs.full:
            raise self.rpcs.refusal()
        if policy.admission and self.classes[policy.admission][0].full:
            raise self.classes[policy.admission][0].refusal()
        self.auth.admit(principal)
        return principal

    @contextlib.asynccontextmanager
    async def _slots(self, policy: MethodPolicy, context: Any) -> AsyncIterator[None]:
        """The slots a call holds while its handler runs: one of all RPCs, one of its class."""
        async with self.rpcs.slot(0.0):
            if not policy.admission:
                yield
                return
            admission, max_wait_s = self.classes[policy.admission]
            remaining = context.time_remaining() if context is not None else None
            wait_s = max_wait_s if remaining is None else min(max_wait_s, remaining)
            async with admission.slot(wait_s) as ticket:
                current_ticket.set(ticket)  # the servicer judges the run it admits
                yield

    def _unary(
        self, behavior: Callable[..., Awaitable[Any]], call: Call, policy: MethodPolicy
    ) -> Callable[..., Awaitable[Any]]:
        async def intercepted(request: Any, context: grpc.aio.ServicerContext) -> Any:
            token = current_call.set(call)
            current_request_id.set(call.request_id)
            try:
                with self._counted(call.method, context):
                    async with self._slots(policy, context):
                        return await behavior(request, context)
            except (grpc.aio.AbortError, asyncio.CancelledError):
                raise
            except Exception as exc:  # noqa: BLE001 - whatever escapes becomes a clean status
                await abort(context, _clean(exc, call.method))
            finally:
                current_call.reset(token)

        return intercepted

    def _stream(
        self, behavior: Callable[..., AsyncGenerator[Any, None]], call: Call, policy: MethodPolicy
    ) -> Callable[..., AsyncGenerator[Any, None]]:
        async def intercepted(request: Any, context: grpc.aio.ServicerContext) -> AsyncGenerator[Any, None]:
            # Set, not reset: the generator may be closed from another context; the task ends with it.
            current_call.set(call)
            current_request_id.set(call.request_id)
            try:
                with self._counted(call.method, context):
                    async with self._slots(policy, context):
                        async with contextlib.aclosing(behavior(request, context)) as responses:
                            async for response in responses:
                                yield response
            except (grpc.aio.AbortError, asyncio.CancelledError, GeneratorExit):
                raise
            except Exception as exc:  # noqa: BLE001
                await abort(context, _clean(exc, call.method))

        return intercepted

    @contextlib.contextmanager
    def _counted(self, method: str, context: Any) -> Any:
        self.metrics.in_flight.labels(method).inc()
        code = "UNKNOWN"
        try:
            yield
            code = _code_of(context)
        except RagrailError as exc:
            code = exc.status.value
            raise
        except (asyncio.CancelledError, GeneratorExit):
            code = "CANCELLED"
            raise
        except grpc.aio.AbortError:
            code = _code_of(context)
            raise
        except Exception:
            code = "INTERNAL"
            raise
        finally:
            self.metrics.in_flight.labels(method).dec()
            self.calls.labels(method, code).inc()


def _clean(exc: Exception, method: str) -> RagrailError:
    if isinstance(exc, RagrailError):
        return exc
    incident = uuid.uuid4().hex[:12]
    log.error("unexpected error in %s (incident %s)", method, incident, exc_info=exc)
    return RagrailError(f"internal error in {method} (incident {incident}; see the gateway log)")


def _code_of(context: Any) -> str:
    code = context.code() if context is not None else None
    return code.name if isinstance(code, grpc.StatusCode) else "OK"


def _short(method: str) -> str:
    return method.rsplit("/", 1)[-1]


def _text_metadata(metadata: Iterable[tuple[str, Any]] | None) -> tuple[tuple[str, str], ...]:
    return tuple((k, v) for k, v in (metadata or ()) if isinstance(v, str))


def _request_id(metadata: Iterable[tuple[str, str]]) -> str:
    for key, value in metadata:
        if key.lower() == "x-request-id" and value:
            return value[:REQUEST_ID_CHARS]
    return uuid.uuid4().hex


def in_process_call(auth: Authenticator, metadata: Iterable[tuple[str, Any]], method: str) -> Call:
    """The caller of a handler invoked without the interceptor (in-process tests, tools).

    Fails closed: with auth on, the metadata must still carry a valid key.
    """
    pairs = _text_metadata(metadata)
    return Call(auth.authenticate(pairs), _request_id(pairs), method)


__all__ = ["PUBLIC", "Call", "GatewayInterceptor", "MethodPolicy", "current_call", "in_process_call"]

