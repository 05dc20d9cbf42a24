"""gRPC face of the gateway: pipeline resolution, deadlines, pipeline metrics, proto conversion.

Authentication, key rate limits, request ids, front-door admission and RPC counts are not here:
``ragrail.gateway.interceptors`` applies them to every RPC before a handler runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from ragrail.common import tracing
from ragrail.common.deadline import Deadline
from ragrail.common.errors import RagrailError, Unavailable
from ragrail.common.grpc_errors import GRPC_CODES, grpc_method, grpc_stream_method
from ragrail.gateway.admission import current_ticket
from ragrail.gateway.auth import Authenticator, Principal
from ragrail.gateway.clients import current_request_id
from ragrail.gateway.feedback import FeedbackStore
from ragrail.gateway.interceptors import Call, current_call, in_process_call
from ragrail.gateway.ingestion import IngestDocument, Ingestor, IngestOutcome
from ragrail.gateway.metrics import GatewayMetrics
from ragrail.gateway.pipeline import AnswerMode, FallbackReason, Pipeline, RunResult
from ragrail.gateway.registry import PipelineRegistry, collection_states
from ragrail.gateway.stages import StageRunner
from ragrail.gateway.v1 import gateway_pb2 as pb
from ragrail.gateway.v1 import gateway_pb2_grpc

log = logging.getLogger(__name__)

_REASONS = {None: pb.FALLBACK_REASON_UNSPECIFIED} | {
    reason: pb.FallbackReason.Value(f"FALLBACK_REASON_{reason.name}") for reason in FallbackReason
}
_MODES: dict[AnswerMode, Any] = {mode: pb.AnswerMode.Value(f"ANSWER_MODE_{mode.name}") for mode in AnswerMode}
INGEST_BUDGET_S = 600.0
# The pipeline label of ingestion's stage timings: no spec can have this name (specs.NAME).
INGEST_METRICS_PIPELINE = "(ingest)"
STATUS_CHECK_S = 2.0  # Status asks the retrieval service about collections for at most this long
FEEDBACK_STORE = "feedback_store"  # its circuit, beside the model services' in Status
# Runs that ended this way tell a latency-steered admission limit to shrink.
OVERLOADED = frozenset({FallbackReason.STAGE_TIMEOUT, FallbackReason.OVERLOAD})


def judge_run(pipeline: Pipeline, result: RunResult, seconds: float) -> None:
    """Tells the query class's latency limit (when there is one) whether this run was slow:
    over its pipeline's target_latency_s, or ended overloaded."""
    ticket = current_ticket.get()
    if ticket is None:
        return
    target = pipeline.spec.admission.target_latency_s
    ticket.slow = result.fallback_reason in OVERLOADED or (target is not None and seconds > target)


@dataclass
class GatewayState:
    """What a reload swaps: the registry. Everything else lives for the process."""

    registry: PipelineRegistry
    runner: StageRunner
    last_reload_error: Callable[[], str] = lambda: ""
    service_statuses: Callable[[], dict[str, Any]] | None = None  # name -> stack.ServiceState


def result_to_pb(result: RunResult, request_id: str) -> pb.RunResponse:
    return pb.RunResponse(
        answer=result.answer,
        citations=[
            pb.Citation(document_id=c.document_id, text=c.text, score=c.score, chunk_index=c.chunk_index)
            for c in result.citations
        ],
        pipeline=result.pipeline,
        pipeline_version=result.version,
        fallback=result.fallback,
        fallback_reason=_REASONS[result.fallback_reason],
        request_id=request_id,
        timings=[pb.StageTiming(stage=s, duration_ms=t * 1000) for s, t in result.timings.items()],
        outputs=result.outputs,
        replace_streamed=result.replace_streamed,
        failed_stage=result.failed_stage,
        cached=result.cached,
        usage=pb.TokenUsage(
            prompt_tokens=result.usage.prompt_tokens, completion_tokens=result.usage.completion_tokens
        ),
        answer_mode=_MODES[result.answer_mode],
    )


def document_result_to_pb(o: IngestOutcome) -> pb.DocumentResult:
    """One document of an Ingest call: committed, or failed with its status (nothing of it stored)."""
    if o.error is None:
        return pb.DocumentResult(
            document_id=o.document_id, chunks_stored=o.chunks_stored, chunks_dropped=o.chunks_dropped,
            status=pb.DOCUMENT_STATUS_COMMITTED,
        )
    return pb.DocumentResult(
        document_id=o.document_id, status=pb.DOCUMENT_STATUS_FAILED,
        error=o.error.message, error_code=o.error.status.value,
    )


def replica_info(placement: Any) -> pb.ReplicaInfo:
    """A replica and its node (ragrail.stack.ReplicaPlacement; the gateway itself never imports ray)."""
    node = placement.node
    if node is None:
        return pb.ReplicaInfo(replica_id=placement.replica_id, state=placement.state)
    return pb.ReplicaInfo(
        replica_id=placement.replica_id,
        state=placement.state,
        node_id=node.node_id,
        node_ip=node.ip,
        node_labels=node.labels,
        node_resources={k: v for k, v in node.resources.items() if k in ("CPU", "GPU") or not _ray_internal(k)},
        head=node.head,
    )


def pipeline_info(registry: PipelineRegistry, p: Pipeline) -> pb.PipelineInfo:
    return pb.PipelineInfo(
        name=p.name,
        version=p.version,
        is_default=registry.is_default(p),
        description=p.spec.description,
        stages=list(p.stages),
    )


class GatewayServicer(gateway_pb2_grpc.GatewayServiceServicer):
    def __init__(
        self,
        state: GatewayState,
        ingestor: Ingestor,
        metrics: GatewayMetrics,
        auth: Authenticator,
        feedback: FeedbackStore,
    ) -> None:
        self.state = state
        self.ingestor = ingestor
        self.metrics = metrics
        self.auth = auth
        self.feedback = feedback
        state.runner.breaker(FEEDBACK_STORE)  # in Status from the start, beside the model services'

    def _caller(self, grpc_context: Any, method: str) -> Call:
        """The caller the interceptor admitted; for an in-process call (no interceptor), the
        caller its metadata names, authenticated here (fails closed when auth is on)."""
        call = current_call.get()
        if call is None:
            call = in_process_call(self.auth, _metadata(grpc_context), method)
            current_request_id.set(call.request_id)
        return call

    def _admit(
        self, grpc_context: Any, ref: str, session_id: str, method: str
    ) -> tuple[Pipeline, str, Deadline, Principal]:
        call = self._caller(grpc_context, method)
        registry = self.state.registry
        pipeline = registry.resolve(ref, session_id or call.principal.name)
        self.auth.authorize(call.principal, pipeline.name)  # the key's pipeline scope needs the request
        deadline = Deadline.within(pipeline.spec.budget_s, _time_remaining(grpc_context))
        return pipeline, call.request_id, deadline, call.principal

    @grpc_method(pb.RunResponse)
    async def Run(self, request: pb.RunRequest, grpc_context: Any = None) -> pb.RunResponse:
        pipeline, request_id, deadline, principal = self._admit(
            grpc_context, request.pipeline, request.session_id, "Run"
        )
        with self._observe(pipeline, "Run") as observation:
            async with self.state.registry.admission(pipeline).slot(deadline.remaining()):
                started = time.monotonic()
                result = await pipeline.run(request.query, deadline)
                judge_run(pipeline, result, time.monotonic() - started)
            observation.result = result
        await self._remember(request_id, result, principal)
        return result_to_pb(result, request_id)

    @grpc_stream_method
    async def RunStream(
        self, request: pb.RunStreamRequest, grpc_context: Any = None
    ) -> AsyncIterator[pb.RunStreamResponse]:
        pipeline, request_id, deadline, principal = self._admit(
            grpc_context, request.pipeline, request.session_id, "RunStream"
        )
        with self._observe(pipeline, "RunStream") as observation:
            async with self.state.registry.admission(pipeline).slot(deadline.remaining()):
                started = time.monotonic()
                # aclosing: a client that goes away closes the pipeline's stream, which
                # cancels the generation call downstream at once.
                events = pipeline.run_stream(request.query, deadline)
                async with contextlib.aclosing(events):
                    async for event in events:
                        if isinstance(event, str):
                            yield pb.RunStreamResponse(delta=event)
                        else:
                            observation.result = event
                            judge_run(pipeline, event, time.monotonic() - started)
                            await self._remember(request_id, event, principal)
                            yield pb.RunStreamResponse(final=result_to_pb(event, request_id))

    @grpc_method(pb.ListPipelinesResponse)
    async def ListPipelines(
        self, request: pb.ListPipelinesRequest, grpc_context: Any = None
    ) -> pb.ListPipelinesResponse:
        registry = self.state.registry
        return pb.ListPipelinesResponse(pipelines=[pipeline_info(registry, p) for p in registry.all()])

    @grpc_method(pb.IngestResponse)
    async def Ingest(self, request: pb.IngestRequest, grpc_context: Any = None) -> pb.IngestResponse:
        documents = [IngestDocument(d.document_id, d.text, d.source) for d in request.documents]
        deadline = Deadline.within(INGEST_BUDGET_S, _time_remaining(grpc_context))
        outcomes = await self.ingestor.ingest(documents, deadline)
        for o in outcomes:
            self.metrics.ingested_chunks.labels("stored").inc(o.chunks_stored)
            self.metrics.ingested_chunks.labels("dropped").inc(o.chunks_dropped)
            for stage, seconds in o.timings.items():
                self.metrics.stage_duration.labels(INGEST_METRICS_PIPELINE, "", stage).observe(seconds)
        return pb.IngestResponse(documents=[document_result_to_pb(o) for o in outcomes])

    async def _remember(self, request_id: str, result: RunResult, principal: Principal) -> None:
        """Stores which version answered, for a rating sent to any replica. A store that is down
        costs the rating its attribution, never the caller its answer, and past a few failures
        not its time either: its circuit opens and answers go out without waiting on it."""
        breaker = self.state.runner.breaker(FEEDBACK_STORE)
        if not breaker.allow():
            self.metrics.feedback_store_errors.labels("remember_answer_skipped").inc()
            return
        try:
            await self.feedback.remember_answer_async(request_id, result.pipeline, result.version, principal.name)
        except RagrailError as exc:
            breaker.record_failure()
            self.metrics.feedback_store_errors.labels("remember_answer").inc()
            log.warning("answer %s not attributable to %s@%d: %s", request_id, result.pipeline, result.version, exc)
        else:
            breaker.record_success()

    @grpc_method(pb.FeedbackResponse)
    async def Feedback(self, request: pb.FeedbackRequest, grpc_context: Any = None) -> pb.FeedbackResponse:
        principal = self._caller(grpc_context, "Feedback").principal
        try:
            stored = await self.feedback.submit_async(
                request.request_id, principal.name, request.rating, request.comment
            )
        except Unavailable:
            self.metrics.feedback_store_errors.labels("submit").inc()
            raise
        version = str(stored.version or 0)
        self.metrics.feedback.labels(stored.pipeline or "unknown", version, str(request.rating)).inc()
        return pb.FeedbackResponse(matched_request=stored.matched)

    @grpc_method(pb.StatusResponse)
    async def Status(self, request: pb.StatusRequest, grpc_context: Any = None) -> pb.StatusResponse:
        registry = self.state.registry
        services = self.state.service_statuses() if self.state.service_statuses else {}
        check = Deadline.within(STATUS_CHECK_S, _time_remaining(grpc_context))
        collections = await collection_states(registry, max(0.01, check.remaining()))
        return pb.StatusResponse(
            pipelines=[pipeline_info(registry, p) for p in registry.all()],
            routes=[pb.Route(name=n, weights=w) for n, w in sorted(registry.routes.items())],
            circuits=[
                pb.CircuitInfo(service=name, state=b.state.name.lower())
                for name, b in sorted(self.state.runner.breakers.items())
            ],
            services=[
                pb.ServiceInfo(
                    name=n, status=s.status, replicas=s.replicas,
                    replica_nodes=[replica_info(p) for p in getattr(s, "placements", ())],
                )
                for n, s in sorted(services.items())
            ],
            last_reload_error=self.state.last_reload_error(),
            collections=[
                pb.CollectionInfo(
                    service=c.service, name=c.name, state=c.state, points=c.points,
                    pipelines=list(c.pipelines), detail=c.detail,
                )
                for c in collections
            ],
        )

    def _observe(self, pipeline: Pipeline, method: str) -> _Observation:
        return _Observation(self.metrics, pipeline, method)


class _Observation:
    """Counts one request (outcome, code, latency, per-stage timings, fallbacks) and holds
    its ``ragrail.pipeline.run`` span, current while the pipeline runs."""

    def __init__(self, metrics: GatewayMetrics, pipeline: Pipeline, method: str) -> None:
        self.metrics = metrics
        self.labels = (pipeline.name, str(pipeline.version))
        self.method = method
        self.result: RunResult | None = None
        self._span_scope = tracing.pipeline_run_span(pipeline.name, pipeline.version, method)

    def __enter__(self) -> _Observation:
        self.start = time.perf_counter()  # (the in-flight gauge is the interceptor's, for every RPC)
        self.span = self._span_scope.__enter__()
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        try:
            self._count(exc)
        finally:
            result = self.result
            outcome, code = _outcome(exc, result)
            tracing.record_run(
                self.span,
                outcome=outcome,
                code=code,
                fallback_reason=result.fallback_reason.value if result and result.fallback_reason else "",
                failed_stage=result.failed_stage if result else "",
                cached=bool(result and result.cached),
                request_id=current_request_id.get(),
                exc=exc,
            )
            self._span_scope.__exit__(exc_type, exc, tb)

    def _count(self, exc: BaseException | None) -> None:
        elapsed = time.perf_counter() - self.start
        if exc is not None:
            _, code = _outcome(exc, None)
            self.metrics.requests.labels(*self.labels, "error", code).inc()
            self.metrics.request_duration.labels(*self.labels, "error").observe(elapsed)
            return
        result = self.result
        if result is None:  # a stream abandoned before its final event
            self.metrics.requests.labels(*self.labels, "error", "CANCELLED").inc()
            return
        outcome = "fallback" if result.fallback else "answered"
        self.metrics.requests.labels(*self.labels, outcome, "OK").inc()
        self.metrics.request_duration.labels(*self.labels, outcome).observe(elapsed)
        for stage, seconds in result.timings.items():
            self.metrics.stage_duration.labels(*self.labels, stage).observe(seconds)
        if result.fallback_reason is not None:
            self.metrics.fallbacks.labels(*self.labels, result.fallback_reason.value).inc()
        self.metrics.answer_modes.labels(*self.labels, result.answer_mode.value).inc()
        for category in result.moderation_flags:
            self.metrics.moderation_flags.labels(*self.labels, result.failed_stage, category).inc()
        if result.citations:
            self.metrics.retrieval_best_score.labels(*self.labels).observe(max(c.score for c in result.citations))
        if result.cached:
            self.metrics.cache_hits.labels(*self.labels).inc()
        self.metrics.tokens.labels(*self.labels, "prompt").inc(result.usage.prompt_tokens)
        self.metrics.tokens.labels(*self.labels, "completion").inc(result.usage.completion_tokens)


def _outcome(exc: BaseException | None, result: RunResult | None) -> tuple[str, str]:
    """(outcome, gRPC code name) of a finished request."""
    if exc is not None:
        if isinstance(exc, GeneratorExit | asyncio.CancelledError):
            return "error", "CANCELLED"
        return "error", GRPC_CODES[exc.status].name if isinstance(exc, RagrailError) else "INTERNAL"
    if result is None:  # a stream abandoned before its final event
        return "error", "CANCELLED"
    return ("fallback" if result.fallback else "answered"), "OK"


def _metadata(grpc_context: Any) -> tuple[tuple[str, str], ...]:
    if grpc_context is None:
        return ()
    return tuple((k, v) for k, v in (grpc_context.invocation_metadata() or ()) if isinstance(v, str))


def _time_remaining(grpc_context: Any) -> float | None:
    return grpc_context.time_remaining() if grpc_context is not None else None



def _ray_internal(resource: str) -> bool:
    """node:<ip>, node:__internal_head__, memory, object_store_memory: not what placement asks for."""
    return resource.startswith("node:") or resource in ("memory", "object_store_memory")
