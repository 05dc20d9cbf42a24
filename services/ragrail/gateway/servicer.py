"""gRPC face of the gateway: request ids, deadlines, metrics, proto conversion."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from ragrail.common.deadline import Deadline
from ragrail.common.errors import NotFound, RagrailError, require
from ragrail.common.grpc_errors import GRPC_CODES, grpc_method, grpc_stream_method
from ragrail.gateway.clients import current_request_id
from ragrail.gateway.ingestion import IngestDocument, Ingestor
from ragrail.gateway.metrics import GatewayMetrics
from ragrail.gateway.pipeline import STAGES, FallbackReason, RagPipeline, RunResult
from ragrail.gateway.v1 import gateway_pb2 as pb
from ragrail.gateway.v1 import gateway_pb2_grpc

log = logging.getLogger(__name__)

_REASONS = {
    None: pb.FALLBACK_REASON_UNSPECIFIED,
    FallbackReason.INPUT_FLAGGED: pb.FALLBACK_REASON_INPUT_FLAGGED,
    FallbackReason.OUTPUT_FLAGGED: pb.FALLBACK_REASON_OUTPUT_FLAGGED,
    FallbackReason.RETRIEVAL_MISS: pb.FALLBACK_REASON_RETRIEVAL_MISS,
}
INGEST_BUDGET_S = 600.0


class PipelineRegistry:
    """Pipelines by name and version; a bare name means the default version."""

    def __init__(self, pipelines: list[RagPipeline]) -> None:
        self._by_key = {(p.name, p.version): p for p in pipelines}
        self._default: dict[str, RagPipeline] = {}
        for p in pipelines:  # the highest version is the default
            if p.name not in self._default or p.version > self._default[p.name].version:
                self._default[p.name] = p

    def all(self) -> list[RagPipeline]:
        return sorted(self._by_key.values(), key=lambda p: (p.name, p.version))

    def is_default(self, pipeline: RagPipeline) -> bool:
        return self._default.get(pipeline.name) is pipeline

    def resolve(self, ref: str) -> RagPipeline:
        ref = ref.strip()
        require(bool(ref), "pipeline must not be empty (e.g. \"rag\" or \"rag@1\")")
        name, at, version = ref.partition("@")
        if not at:
            if name not in self._default:
                raise NotFound(f"unknown pipeline {name!r}; known: {', '.join(sorted(self._default))}")
            return self._default[name]
        require(version.isascii() and version.isdigit(), f"pipeline version must be a number, got {version!r}")
        found = self._by_key.get((name, int(version)))
        if found is None:
            raise NotFound(f"unknown pipeline version {ref!r}")
        return found


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
    )


class GatewayServicer(gateway_pb2_grpc.GatewayServiceServicer):
    def __init__(self, registry: PipelineRegistry, ingestor: Ingestor, metrics: GatewayMetrics) -> None:
        self.registry = registry
        self.ingestor = ingestor
        self.metrics = metrics

    @grpc_method(pb.RunResponse)
    async def Run(self, request: pb.RunRequest, grpc_context: Any = None) -> pb.RunResponse:
        pipeline = self.registry.resolve(request.pipeline)
        request_id = _start_request(grpc_context)
        deadline = Deadline.within(pipeline.spec.budget_s, _time_remaining(grpc_context))
        with self._observe(pipeline, "Run") as record:
            result = await pipeline.run(request.query, deadline)
            record(result)
        return result_to_pb(result, request_id)

    @grpc_stream_method
    async def RunStream(
        self, request: pb.RunStreamRequest, grpc_context: Any = None
    ) -> AsyncIterator[pb.RunStreamResponse]:
        pipeline = self.registry.resolve(request.pipeline)
        request_id = _start_request(grpc_context)
        deadline = Deadline.within(pipeline.spec.budget_s, _time_remaining(grpc_context))
        with self._observe(pipeline, "RunStream") as record:
            async for event in pipeline.run_stream(request.query, deadline):
                if isinstance(event, str):
                    yield pb.RunStreamResponse(delta=event)
                else:
                    record(event)
                    yield pb.RunStreamResponse(final=result_to_pb(event, request_id))

    @grpc_method(pb.ListPipelinesResponse)
    async def ListPipelines(
        self, request: pb.ListPipelinesRequest, grpc_context: Any = None
    ) -> pb.ListPipelinesResponse:
        return pb.ListPipelinesResponse(
            pipelines=[
                pb.PipelineInfo(
                    name=p.name,
                    version=p.version,
                    is_default=self.registry.is_default(p),
                    description=p.spec.description,
                    stages=list(STAGES),
                )
                for p in self.registry.all()
            ]
        )

    @grpc_method(pb.IngestResponse)
    async def Ingest(self, request: pb.IngestRequest, grpc_context: Any = None) -> pb.IngestResponse:
        _start_request(grpc_context)
        documents = [IngestDocument(d.document_id, d.text, d.source) for d in request.documents]
        deadline = Deadline.within(INGEST_BUDGET_S, _time_remaining(grpc_context))
        outcomes = await self.ingestor.ingest(documents, deadline)
        for o in outcomes:
            self.metrics.ingested_chunks.labels("stored").inc(o.chunks_stored)
            self.metrics.ingested_chunks.labels("dropped").inc(o.chunks_dropped)
        return pb.IngestResponse(
            documents=[
                pb.DocumentResult(
                    document_id=o.document_id, chunks_stored=o.chunks_stored, chunks_dropped=o.chunks_dropped
                )
                for o in outcomes
            ]
        )

    def _observe(self, pipeline: RagPipeline, method: str) -> "_Observation":
        return _Observation(self.metrics, pipeline, method)


class _Observation:
    """Counts one request: outcome, code, latency, per-stage timings, fallbacks."""

    def __init__(self, metrics: GatewayMetrics, pipeline: RagPipeline, method: str) -> None:
        self.metrics = metrics
        self.labels = (pipeline.name, str(pipeline.version))
        self.method = method
        self.result: RunResult | None = None

    def __enter__(self) -> Any:
        self.start = time.perf_counter()
        self.metrics.in_flight.labels(self.method).inc()
        return self._record

    def _record(self, result: RunResult) -> None:
        self.result = result

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        self.metrics.in_flight.labels(self.method).dec()
        elapsed = time.perf_counter() - self.start
        if exc is not None:
            code = GRPC_CODES[exc.status].name if isinstance(exc, RagrailError) else "INTERNAL"
            if isinstance(exc, GeneratorExit | asyncio.CancelledError):
                code = "CANCELLED"
            self.metrics.requests.labels(*self.labels, "error", code).inc()
            self.metrics.request_duration.labels(*self.labels, "error").observe(elapsed)
            return
        result = self.result
        outcome = "fallback" if result is not None and result.fallback else "answered"
        self.metrics.requests.labels(*self.labels, outcome, "OK").inc()
        self.metrics.request_duration.labels(*self.labels, outcome).observe(elapsed)
        if result is None:
            return
        for stage, seconds in result.timings.items():
            self.metrics.stage_duration.labels(*self.labels, stage).observe(seconds)
        if result.fallback_reason is not None:
            self.metrics.fallbacks.labels(*self.labels, result.fallback_reason.value).inc()


def _start_request(grpc_context: Any) -> str:
    request_id = _metadata_value(grpc_context, "x-request-id") or uuid.uuid4().hex
    current_request_id.set(request_id)
    if grpc_context is not None:
        grpc_context.set_trailing_metadata((("x-request-id", request_id),))
    return request_id


def _metadata_value(grpc_context: Any, key: str) -> str | None:
    if grpc_context is None:
        return None
    for k, v in grpc_context.invocation_metadata() or ():
        if k == key:
            return str(v)[:128]
    return None


def _time_remaining(grpc_context: Any) -> float | None:
    return grpc_context.time_remaining() if grpc_context is not None else None

