"""Tracing (ragrail.common.tracing): one connected trace per Run, gateway to services.

A real gateway (grpc.aio, in process) runs the pipelines over fakes, except moderation: that
is the real ModerationServicer with keyword scorers on its own port-0 server, called through
the gateway's real gRPC client. Spans go to an in-memory exporter. The checks: one trace id;
the gateway's server span continues the caller's ``traceparent``; ``ragrail.pipeline.run``
under it with the run's outcome; one span per stage under the run; the moderation service's
server span under the stage span whose call carried the ``traceparent``; retries as events.
Also: the OTEL_* variables switch tracing on (an OTLP export to a real gRPC collector, in a
subprocess) and leave it off by default.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Iterator, Sequence
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
import yaml
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from ragrail.common import tracing
from ragrail.common.config import load_settings
from ragrail.common.errors import Unavailable
from ragrail.common.server import ServiceBinding, create_server
from ragrail.gateway.backends import Backends
from ragrail.gateway.clients import ModerationClient
from ragrail.gateway.server import RunningGateway, start_gateway
from ragrail.gateway.v1 import gateway_pb2 as pb
from ragrail.gateway.v1 import gateway_pb2_grpc
from ragrail.moderation.core import Category, Moderator
from ragrail.moderation.servicer import ModerationServicer
from ragrail.moderation.v1 import moderation_pb2, moderation_pb2_grpc
from tests.unit.fakes import FakeStack

QUESTION = "When does the night train to Bergen leave?"
MODERATION_SERVICE = moderation_pb2.DESCRIPTOR.services_by_name["ModerationService"].full_name
RUN_SERVER_SPAN = "ragrail.gateway.v1.GatewayService/Run"
MODERATE_SERVER_SPAN = f"{MODERATION_SERVICE}/Moderate"


class KeywordScorer:
    """Flags texts containing a keyword; can fail with UNAVAILABLE a number of times first."""

    def __init__(self, keyword: str) -> None:
        self.keyword = keyword
        self.fail_next = 0

    def score(self, texts: Sequence[str]) -> list[float]:
        if self.fail_next:
            self.fail_next -= 1
            raise Unavailable("moderation model is reloading")
        return [0.99 if self.keyword in t else 0.01 for t in texts]


@pytest.fixture
def spans(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    """Tracing on for this test, into memory (the process's global provider is left alone)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "ragrail-test"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(tracing, "_enabled", True)
    monkeypatch.setattr(tracing, "tracer", lambda: provider.get_tracer(tracing.TRACER_NAME))
    yield exporter
    provider.shutdown()


@dataclass
class Traced:
    gateway: RunningGateway
    stub: gateway_pb2_grpc.GatewayServiceStub
    scorers: dict[Category, KeywordScorer]
    fakes: FakeStack


@pytest_asyncio.fixture(loop_scope="session")
async def traced(tmp_path: Path) -> AsyncIterator[Traced]:
    scorers = {category: KeywordScorer("toxicword") for category in Category}
    moderator = Moderator(scorers, {category: 0.5 for category in Category})  # type: ignore[arg-type]
    server, port, _ = create_server(
        "127.0.0.1:0",
        [
            ServiceBinding(
                ModerationServicer(moderator), moderation_pb2_grpc.add_ModerationServiceServicer_to_server,
                MODERATION_SERVICE,
            )
        ],
    )
    await server.start()
    moderation_channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    fakes = FakeStack()
    backends = Backends(
        moderation=ModerationClient(moderation_channel),
        embedding=fakes.embedding,
        retrieval=fakes.retrieval,
        generation=fakes.generation,
    )
    pipelines = tmp_path / "pipelines"
    pipelines.mkdir()
    spec = {"name": "traced", "version": 1, "kind": "rag", "cache": {"ttl_s": 0}}
    (pipelines / "traced@1.yaml").write_text(yaml.safe_dump(spec))
    settings = load_settings(
        None,
        data_dir=str(tmp_path / "data"),
        gateway={"port": 0, "metrics_port": 0, "pipelines_dir": str(pipelines)},
    )
    gateway = await start_gateway(settings, backends_for=lambda spec: backends)
    await fakes.add_texts(settings.gateway.collection, {"night-train.md": QUESTION})
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}")
    yield Traced(gateway, gateway_pb2_grpc.GatewayServiceStub(channel), scorers, fakes)
    await channel.close()
    await gateway.stop(0)
    await moderation_channel.close()
    await server.stop(None)


def by_name(finished: Sequence[ReadableSpan], name: str) -> list[ReadableSpan]:
    return [s for s in finished if s.name == name]


def one(finished: Sequence[ReadableSpan], name: str) -> ReadableSpan:
    found = by_name(finished, name)
    assert len(found) == 1, (name, [s.name for s in finished])
    return found[0]


def parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


async def test_one_run_is_one_connected_trace(spans: InMemorySpanExporter, traced: Traced) -> None:
    # The caller has a trace of its own: the gateway continues it.
    caller_tracer = tracing.tracer()
    with caller_tracer.start_as_current_span("caller", kind=SpanKind.CLIENT) as caller:
        metadata: list[tuple[str, str]] = []
        tracing.inject_metadata(metadata)
        response = await traced.stub.Run(
            pb.RunRequest(pipeline="traced", query=QUESTION), metadata=tuple(metadata), timeout=10
        )
    assert not response.fallback, response
    finished = spans.get_finished_spans()

    trace_ids = {s.context.trace_id for s in finished}
    assert trace_ids == {caller.get_span_context().trace_id}, [s.name for s in finished]

    server = one(finished, RUN_SERVER_SPAN)
    assert server.kind == SpanKind.SERVER
    assert parent_of(server) == caller.get_span_context().span_id
    assert server.attributes["rpc.method"] == "Run"

    run = one(finished, tracing.PIPELINE_RUN_SPAN)
    assert parent_of(run) == server.context.span_id
    assert run.attributes["ragrail.pipeline"] == "traced"
    assert run.attributes["ragrail.pipeline.version"] == 1
    assert run.attributes["ragrail.outcome"] == "answered"
    assert run.attributes["ragrail.fallback_reason"] == ""
    assert run.attributes["ragrail.request_id"] == response.request_id

    stages = {s.attributes["ragrail.stage"]: s for s in finished if s.name.startswith(tracing.STAGE_SPAN_PREFIX)}
    assert set(stages) == {"moderate_input", "embed", "retrieve", "generate", "moderate_output"}
    for stage in stages.values():
        assert parent_of(stage) == run.context.span_id, stage.name
        assert stage.kind == SpanKind.CLIENT
        assert stage.status.status_code != StatusCode.ERROR
    assert stages["moderate_input"].attributes["ragrail.service"] == "moderation"

    # The real moderation servicer, reached over gRPC: its span hangs under the stage that called it.
    served = by_name(finished, MODERATE_SERVER_SPAN)
    assert len(served) == 2, [s.name for s in finished]
    assert {parent_of(s) for s in served} == {
        stages["moderate_input"].context.span_id,
        stages["moderate_output"].context.span_id,
    }
    for s in served:
        assert s.kind == SpanKind.SERVER
        assert s.attributes["rpc.service"] == MODERATION_SERVICE
        assert s.attributes["rpc.system"] == "grpc"


async def test_a_retried_stage_keeps_its_attempts_as_events(spans: InMemorySpanExporter, traced: Traced) -> None:
    traced.scorers[Category.TOXICITY].fail_next = 1  # the first Moderate call answers UNAVAILABLE
    response = await traced.stub.Run(pb.RunRequest(pipeline="traced", query=QUESTION), timeout=10)
    assert not response.fallback, response
    finished = spans.get_finished_spans()
    assert len({s.context.trace_id for s in finished}) == 1

    stage = next(
        s for s in finished if s.name.startswith(tracing.STAGE_SPAN_PREFIX) and s.attributes["ragrail.stage"] == "moderate_input"
    )
    events = [e.name for e in stage.events]
    assert events == ["attempt failed", "retry"], events
    assert stage.events[0].attributes["exception.type"] == "Unavailable"
    assert stage.events[1].attributes["ragrail.attempt"] == 2
    assert stage.status.status_code != StatusCode.ERROR  # the retry succeeded

    # Both calls reached the service, both under the stage span; the failed one says so.
    calls = [s for s in by_name(finished, MODERATE_SERVER_SPAN) if parent_of(s) == stage.context.span_id]
    assert len(calls) == 2
    codes = sorted(s.attributes["rpc.grpc.status_code"] for s in calls)
    assert codes == [0, 14]  # OK, UNAVAILABLE
    failed = next(s for s in calls if s.attributes["rpc.grpc.status_code"] == 14)
    assert failed.status.status_code == StatusCode.ERROR


async def test_a_canned_answer_is_an_outcome_on_the_run_span(spans: InMemorySpanExporter, traced: Traced) -> None:
    response = await traced.stub.Run(pb.RunRequest(pipeline="traced", query=f"{QUESTION} toxicword"), timeout=10)
    assert response.fallback_reason == pb.FALLBACK_REASON_INPUT_FLAGGED
    run = one(spans.get_finished_spans(), tracing.PIPELINE_RUN_SPAN)
    assert run.attributes["ragrail.outcome"] == "fallback"
    assert run.attributes["ragrail.fallback_reason"] == "input_flagged"
    assert run.attributes["ragrail.failed_stage"] == "moderate_input"
    assert run.status.status_code != StatusCode.ERROR  # a canned answer is not a server error


async def test_a_stage_that_fails_for_good_names_its_reason(spans: InMemorySpanExporter, traced: Traced) -> None:
    traced.fakes.generation.faults.unavailable(times=5)
    try:
        response = await traced.stub.Run(pb.RunRequest(pipeline="traced", query=QUESTION), timeout=10)
    finally:
        traced.fakes.generation.faults.clear()
    assert response.fallback_reason == pb.FALLBACK_REASON_BACKEND_UNAVAILABLE
    finished = spans.get_finished_spans()
    generate = next(s for s in finished if s.attributes.get("ragrail.stage") == "generate")
    assert generate.status.status_code == StatusCode.ERROR
    assert generate.attributes["ragrail.fallback_reason"] == "backend_unavailable"
    run = one(finished, tracing.PIPELINE_RUN_SPAN)
    assert run.attributes["ragrail.fallback_reason"] == "backend_unavailable"


async def test_a_streamed_run_is_traced_too(
    spans: InMemorySpanExporter, traced: Traced, caplog: pytest.LogCaptureFixture
) -> None:
    events = [e async for e in traced.stub.RunStream(pb.RunStreamRequest(pipeline="traced", query=QUESTION), timeout=10)]
    assert events[-1].final.answer
    finished = spans.get_finished_spans()
    assert len({s.context.trace_id for s in finished}) == 1
    run = one(finished, tracing.PIPELINE_RUN_SPAN)
    assert run.attributes["rpc.method"] == "RunStream"
    assert run.attributes["ragrail.outcome"] == "answered"
    assert parent_of(one(finished, "ragrail.gateway.v1.GatewayService/RunStream")) is None
    generate = next(s for s in finished if s.attributes.get("ragrail.stage") == "generate")
    assert parent_of(generate) == run.context.span_id
    assert "Failed to detach context" not in caplog.text


async def test_client_mistakes_are_not_server_errors(spans: InMemorySpanExporter, traced: Traced) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await traced.stub.Run(pb.RunRequest(pipeline="traced", query="   "), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finished = spans.get_finished_spans()
    run = one(finished, tracing.PIPELINE_RUN_SPAN)
    assert run.attributes["ragrail.outcome"] == "error"
    assert run.attributes["rpc.grpc.status_code"] == 3
    assert run.status.status_code != StatusCode.ERROR
    server = one(finished, RUN_SERVER_SPAN)
    assert server.attributes["rpc.grpc.status_code"] == 3
    assert server.status.status_code != StatusCode.ERROR


# -- off by default, and the OTEL_* switches ----------------------------------------------------


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, False),
        ({"OTEL_SERVICE_NAME": "x"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4317"}, True),
        ({"OTEL_TRACES_EXPORTER": "console"}, True),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317", "OTEL_SDK_DISABLED": "true"}, False),
    ],
)
def test_tracing_is_requested_only_by_otel_variables(env: dict[str, str], expected: bool) -> None:
    assert tracing.tracing_requested(env) is expected


async def test_with_tracing_off_a_callers_traceparent_still_passes_through(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tracing, "_enabled", False)
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)  # nothing installed
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"

    class Context:
        def invocation_metadata(self) -> list[tuple[str, str]]:
            return [("traceparent", traceparent), ("application", "x")]

    class GatewayLike(gateway_pb2_grpc.GatewayServiceServicer):
        pass

    with tracing.server_span(GatewayLike(), "Run", Context()) as span:
        assert span is None
        with tracing.stage_span("embed", "embedding") as stage:
            assert not stage.is_recording()
            with tracing.use_span(stage):
                metadata: list[tuple[str, str]] = []
                tracing.inject_metadata(metadata)
    assert ("traceparent", traceparent) in metadata

    # No caller trace and tracing off: nothing is added to the services' metadata.
    metadata = []
    with tracing.server_span(GatewayLike(), "Run", None):
        tracing.inject_metadata(metadata)
    assert metadata == []


def test_rpc_names_come_from_the_generated_base_class() -> None:
    assert tracing.rpc_names(ModerationServicer) == (MODERATION_SERVICE, "moderation")


# A subprocess, because a process installs its global TracerProvider once.
EXPORT_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    from opentelemetry import trace
    from ragrail.common import tracing
    from ragrail.moderation.servicer import ModerationServicer

    class Scorer:
        def score(self, texts):
            return [0.0 for _ in texts]

    async def main():
        from ragrail.moderation.core import Category, Moderator
        from ragrail.moderation.v1 import moderation_pb2 as pb
        servicer = ModerationServicer(Moderator({c: Scorer() for c in Category}, {c: 0.5 for c in Category}))
        await servicer.Moderate(pb.ModerateRequest(texts=["hello"]))
    asyncio.run(main())
    assert tracing.enabled()
    trace.get_tracer_provider().shutdown()  # flushes the batch processor
    """
)


class Collector:
    """A real OTLP/gRPC trace receiver (opentelemetry-proto's service) that keeps what it gets."""

    def __init__(self) -> None:
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

        received = self.received = []

        class Service(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(self, request, context):  # type: ignore[no-untyped-def]
                received.append(request)
                return trace_service_pb2.ExportTraceServiceResponse()

        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Service(), self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def spans(self) -> list[tuple[str, str]]:
        """(service.name, span name) of everything received."""
        out = []
        for request in self.received:
            for resource_spans in request.resource_spans:
                attrs = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                for scope in resource_spans.scope_spans:
                    out += [(attrs.get("service.name", ""), s.name) for s in scope.spans]
        return out


def _run_exporting(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    return subprocess.run(
        [sys.executable, "-c", EXPORT_SCRIPT], env={**clean, **env}, capture_output=True, text=True, timeout=60
    )


def test_otlp_endpoint_turns_tracing_on_and_exports_over_grpc() -> None:
    collector = Collector()
    try:
        result = _run_exporting({"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{collector.port}"})
        assert result.returncode == 0, result.stderr
    finally:
        collector.server.stop(None)
    assert ("ragrail-moderation", MODERATE_SERVER_SPAN) in collector.spans(), collector.spans()


def test_otel_service_name_and_console_exporter(tmp_path: Path) -> None:
    result = _run_exporting({"OTEL_TRACES_EXPORTER": "console", "OTEL_SERVICE_NAME": "moderation-eu"})
    assert result.returncode == 0, result.stderr
    exported = json.loads(result.stdout[result.stdout.index("{") :])
    assert exported["name"] == MODERATE_SERVER_SPAN
    assert exported["resource"]["attributes"]["service.name"] == "moderation-eu"
