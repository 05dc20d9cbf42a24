"""Tracing through the real stack: one trace per request across the gateway and the Serve replicas.

`ragrail up` runs with ``OTEL_EXPORTER_OTLP_ENDPOINT`` pointing at a real OTLP/gRPC receiver in
this process (its own stack: the shared one runs with tracing off, the default). The gateway and
every Serve replica export their spans there; the checks: the services' spans share the run's
trace id and hang under the gateway's stage spans, so the W3C ``traceparent`` the gateway sends
crossed Ray Serve's gRPC proxy, and each process names itself (``ragrail-<service>``).

This stack runs Serve's Python proxy (``serve.fast_path: false``), so that mode keeps an end-to-end
check too (a ``Run`` answered through it, one trace); the shared and scale stacks run the default
fast path (HAProxy).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import pytest

from ragrail.gateway.v1 import gateway_pb2 as pb
from ragrail.gateway.v1 import gateway_pb2_grpc
from tests.integration.conftest import Stack, running_stack
from tests.unit.sample_questions import ANSWERABLE
from tests.unit.test_tracing import Collector

pytestmark = pytest.mark.integration

SERVICE_SPANS = {
    "ragrail.stage moderate_input": ("ragrail-moderation", "ragrail.moderation.v1.ModerationService/Moderate"),
    "ragrail.stage embed": ("ragrail-embedding", "ragrail.embedding.v1.EmbeddingService/Embed"),
    "ragrail.stage retrieve": ("ragrail-retrieval", "ragrail.retrieval.v1.RetrievalService/Search"),
    "ragrail.stage generate": ("ragrail-generation", "ragrail.generation.v1.GenerationService/Generate"),
    "ragrail.stage moderate_output": ("ragrail-moderation", "ragrail.moderation.v1.ModerationService/Moderate"),
}


@dataclass
class Span:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    attributes: dict[str, object]


def received_spans(collector: Collector) -> list[Span]:
    out = []
    for request in list(collector.received):
        for resource_spans in request.resource_spans:
            resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope in resource_spans.scope_spans:
                for s in scope.spans:
                    attributes = {a.key: getattr(a.value, a.value.WhichOneof("value")) for a in s.attributes}
                    out.append(Span(resource.get("service.name", ""), s.name, s.trace_id.hex(), s.span_id.hex(),
                                    s.parent_span_id.hex(), attributes))
    return out


def _python_proxy(config: dict) -> None:
    config["serve"]["fast_path"] = False


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, Collector]]:
    collector = Collector()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{collector.port}")
        env.setenv("OTEL_BSP_SCHEDULE_DELAY", "200")  # ms: spans reach the receiver quickly
        stacks = running_stack(tmp_path_factory.mktemp("traced-stack"), _python_proxy)
        stack = next(stacks)
    try:
        yield stack, collector
    finally:
        for _ in stacks:  # stops the stack (and checks it stopped cleanly)
            pass
        collector.server.stop(None)


def test_one_run_is_one_trace_across_gateway_and_replicas(traced: tuple[Stack, Collector]) -> None:
    stack, collector = traced
    with grpc.insecure_channel(stack.gateway_address) as channel:
        response = gateway_pb2_grpc.GatewayServiceStub(channel).Run(
            pb.RunRequest(pipeline="rag@1", query=ANSWERABLE[4][0]), timeout=60
        )
    assert not response.fallback, response

    deadline = time.monotonic() + 30
    while True:
        spans = received_spans(collector)
        runs = [s for s in spans if s.name == "ragrail.pipeline.run" and s.attributes.get("ragrail.request_id") == response.request_id]
        trace = [s for s in spans if runs and s.trace_id == runs[0].trace_id]
        served = {(s.service, s.name) for s in trace if s.service != "ragrail-gateway"}
        if runs and set(SERVICE_SPANS.values()) <= served:
            break
        if time.monotonic() > deadline:
            pytest.fail(f"incomplete trace after 30 s: {sorted((s.service, s.name) for s in trace)}")
        time.sleep(0.5)

    [run] = runs
    assert run.service == "ragrail-gateway"
    assert run.attributes["ragrail.pipeline"] == "rag" and run.attributes["ragrail.outcome"] == "answered"
    by_id = {s.span_id: s for s in trace}
    assert by_id[run.parent_id].name == "ragrail.gateway.v1.GatewayService/Run"
    stages = {s.name: s for s in trace if s.name.startswith("ragrail.stage ")}
    assert set(SERVICE_SPANS) <= set(stages)
    for stage_name, (service, span_name) in SERVICE_SPANS.items():
        stage = stages[stage_name]
        assert stage.parent_id == run.span_id, stage_name
        children = [s for s in trace if s.parent_id == stage.span_id]
        assert [(c.service, c.name) for c in children] == [(service, span_name)], (stage_name, children)
