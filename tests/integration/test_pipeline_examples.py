"""Issue 12's YAML-only examples through the real gateway, real models and Serve.

The spec files of tests/unit/data/examples/ are dropped into the running stack's pipelines
folder (picked up by the gateway's reload, no restart) with a `lost_property` collection of
two reports, one closed. What the small model answers varies; what each assertion checks
does not: the stages that ran, the outputs they published, where the route went for the
label the model gave, and which passages a filtered, hybrid retrieve may cite.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import struct_pb2

from ragrail.embedding.v1 import embedding_pb2, embedding_pb2_grpc
from ragrail.gateway.v1 import gateway_pb2 as pb
from ragrail.gateway.v1 import gateway_pb2_grpc
from ragrail.retrieval.v1 import retrieval_pb2, retrieval_pb2_grpc
from tests.integration.conftest import Stack, patient_generation

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parents[1] / "unit" / "data" / "examples"
REPORTS = {
    "umbrella-open": ("A black umbrella was found on the 8:15 train to Harbour on Monday.", "open"),
    "umbrella-closed": ("A black umbrella from the 8:15 train was collected by its owner.", "closed"),
}
DEFAULT_REPLY = "Thanks for your message; our support team will reply within two working days."
TIMEOUT = 120


def _serve(application: str) -> tuple[tuple[str, str], ...]:
    return (("application", application),)


def add_reports(stack: Stack) -> None:
    """The lost_property collection the example's retrieve stage reads, written through Serve."""
    with grpc.insecure_channel(stack.serve_address) as channel:
        texts = [text for text, _ in REPORTS.values()]
        vectors = embedding_pb2_grpc.EmbeddingServiceStub(channel).Embed(
            embedding_pb2.EmbedRequest(texts=texts), metadata=_serve("embedding"), timeout=60
        ).embeddings
        retrieval = retrieval_pb2_grpc.RetrievalServiceStub(channel)
        retrieval.CreateCollection(
            retrieval_pb2.CreateCollectionRequest(
                collection="lost_property", dimension=len(vectors[0].values),
                distance=retrieval_pb2.DISTANCE_COSINE, keyword_index_fields=["status"],
            ),
            metadata=_serve("retrieval"), timeout=60,
        )
        points = []
        for (doc, (text, status)), vector in zip(REPORTS.items(), vectors, strict=True):
            payload = struct_pb2.Struct()
            payload.update({"document_id": doc, "chunk_index": 0, "text": text, "source": "", "status": status})
            points.append(retrieval_pb2.Point(id=str(uuid.uuid5(uuid.NAMESPACE_URL, doc)),
                                              vector=vector.values, payload=payload))
        retrieval.Upsert(retrieval_pb2.UpsertRequest(collection="lost_property", points=points),
                         metadata=_serve("retrieval"), timeout=60)


def listed(stack: Stack) -> set[str]:
    with grpc.insecure_channel(stack.gateway_address) as channel:
        pipelines = gateway_pb2_grpc.GatewayServiceStub(channel).ListPipelines(pb.ListPipelinesRequest(), timeout=10)
    return {f"{p.name}@{p.version}" for p in pipelines.pipelines}


def wait_for(condition, timeout_s: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "the gateway did not reload the examples in time"
        time.sleep(0.3)


@pytest.fixture(scope="module")
def examples(stack: Stack) -> Iterator[Stack]:
    names = sorted(p.name for p in EXAMPLES.glob("*.yaml"))
    refs = {name.removesuffix(".yaml") for name in names}
    add_reports(stack)
    for name in names:
        (stack.pipelines_dir / name).write_text(patient_generation((EXAMPLES / name).read_text()))
    wait_for(lambda: refs <= listed(stack))
    yield stack
    for name in names:
        (stack.pipelines_dir / name).unlink()
    wait_for(lambda: not refs & listed(stack))  # later tests see the packaged set again


def run(stack: Stack, pipeline: str, query: str) -> pb.RunResponse:
    with grpc.insecure_channel(stack.gateway_address) as channel:
        return gateway_pb2_grpc.GatewayServiceStub(channel).Run(
            pb.RunRequest(pipeline=pipeline, query=query), timeout=TIMEOUT
        )


def test_rag_with_a_rerank_and_a_stricter_output_check(examples: Stack) -> None:
    response = run(examples, "rag@5", "How many days before departure can I get a full refund?")
    stages = [t.stage for t in response.timings]
    assert stages[:4] == ["moderate_input", "embed", "retrieve", "rerank"], stages
    assert len(response.citations) <= 3  # the rerank kept top_n of six
    if response.fallback:  # only the model's label can fail here: no label after a retry
        assert response.failed_stage == "tone", response
        return
    assert {"moderate_output", "moderate_output_strict", "tone"} <= set(stages), stages
    assert response.outputs["tone"] in {"positive", "negative", "neutral"}


def test_summarize_then_sentiment_with_output_moderation(examples: Stack) -> None:
    text = ("The 7:40 to Harbour was cancelled again this morning and nobody told us why. "
            "We waited forty minutes in the rain and I missed my first meeting.")
    response = run(examples, "summarize@1", text)
    stages = [t.stage for t in response.timings]
    if response.fallback:  # labelled, at the stage that gave up (a slow machine, or no label)
        assert response.failed_stage in {"summarize", "moderate_output", "sentiment"}, response
        assert response.failed_stage in stages or response.fallback_reason == pb.FALLBACK_REASON_STAGE_TIMEOUT
        return
    assert stages == ["moderate_input", "summarize", "moderate_output", "sentiment"], stages
    assert response.outputs["summary"]
    assert response.outputs["sentiment"] in {"positive", "negative", "neutral"}


def test_support_is_routed_by_the_models_label(examples: Stack) -> None:
    response = run(examples, "support@1", "I left my black umbrella on the 8:15 train to Harbour.")
    label = response.outputs.get("topic")
    assert label in {"billing", "lost_property", "other"}, response
    # A routed run answers as the routing pipeline; its route output names the target.
    assert response.pipeline == "support", response
    if label == "lost_property":  # the filtered, hybrid retrieve: only the open report may be cited
        assert response.outputs["route"] == "lost_property@1", response
        assert {c.document_id for c in response.citations} <= {"umbrella-open"}, response.citations
    elif label == "billing":
        assert response.outputs["route"] == "summarize@1", response
        assert response.outputs.get("summary") or response.fallback_reason, response
    else:
        assert response.outputs["route"] == "answer", response
        assert response.answer == DEFAULT_REPLY

