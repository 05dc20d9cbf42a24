"""Ingest over real gRPC: per-document results on partial failure (issue 11)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio

from ragrail.gateway.v1 import gateway_pb2 as pb
from tests.contract.gateway_fixtures import COLLECTION, GatewayFactory, spec

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest_asyncio.fixture(loop_scope="session")
async def gateways(tmp_path: Path) -> AsyncIterator[GatewayFactory]:
    factory = GatewayFactory(tmp_path)
    yield factory
    await factory.close()


def documents(n: int) -> list[pb.Document]:
    return [pb.Document(document_id=f"d{i}.md", text=f"Document number {i} talks about trains.") for i in range(1, n + 1)]


async def test_a_failed_document_is_reported_and_the_others_commit(gateways: GatewayFactory) -> None:
    h = await gateways([spec("rag")])
    h.stack.retrieval.faults.succeed(1).unavailable(2)  # the second document's commit fails, its retry too

    response = await h.stub().Ingest(pb.IngestRequest(documents=documents(3)), timeout=5)

    statuses = [(d.document_id, d.status, d.error_code) for d in response.documents]
    assert statuses == [
        ("d1.md", pb.DOCUMENT_STATUS_COMMITTED, ""),
        ("d2.md", pb.DOCUMENT_STATUS_FAILED, "UNAVAILABLE"),
        ("d3.md", pb.DOCUMENT_STATUS_COMMITTED, ""),
    ]
    failed = response.documents[1]
    assert failed.chunks_stored == 0 and "backend is down" in failed.error
    assert "Traceback" not in failed.error
    stored = {p["document_id"] for p in h.stack.retrieval.payloads(COLLECTION)}
    assert {"d1.md", "d3.md"} <= stored and "d2.md" not in stored


async def test_when_every_document_fails_the_call_fails(gateways: GatewayFactory) -> None:
    h = await gateways([spec("rag")])
    h.stack.retrieval.faults.unavailable()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await h.stub().Ingest(pb.IngestRequest(documents=documents(2)), timeout=5)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


# -- one stage-call path: ingestion shares the pipelines' circuits (issue 12) -----------------


async def test_ingest_failures_open_the_circuit_queries_see_and_then_ingests_fail_fast(
    gateways: GatewayFactory,
) -> None:
    h = await gateways([spec("rag")], gateway={"resilience": {"failure_threshold": 2, "cooldown_s": 60}})
    stub = h.stub()
    retrieval = h.stack.retrieval
    retrieval.faults.unavailable()  # the commit and its retry

    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Ingest(pb.IngestRequest(documents=documents(1)), timeout=5)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE

    retrieval.faults.clear()
    status = await stub.Status(pb.StatusRequest(), timeout=5)
    assert {c.service: c.state for c in status.circuits}["retrieval"] == "open"
    searches = len(retrieval.searches)
    answer = await stub.Run(pb.RunRequest(pipeline="rag", query="What is the capital of France?"), timeout=5)
    assert answer.fallback_reason == pb.FALLBACK_REASON_BACKEND_UNAVAILABLE and answer.failed_stage == "retrieve"
    assert len(retrieval.searches) == searches  # the open circuit answered

    retrieval.faults.hang()  # a hung service: an ingest that called it would wait its deadline out
    moderated = h.stack.moderation.faults.attempts
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Ingest(pb.IngestRequest(documents=documents(1)), timeout=5)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "circuit for retrieval is open" in (info.value.details() or "")
    assert h.stack.moderation.faults.attempts == moderated and retrieval.faults.hanging == 0
    retrieval.faults.clear()
    retrieval.faults.release()


async def test_a_commit_that_fails_once_is_retried_and_timed(gateways: GatewayFactory) -> None:
    h = await gateways([spec("rag")])
    before = h.stack.retrieval.faults.attempts  # (the gateway's start-up count)
    h.stack.retrieval.faults.unavailable(1)

    response = await h.stub().Ingest(pb.IngestRequest(documents=documents(1)), timeout=5)

    assert [d.status for d in response.documents] == [pb.DOCUMENT_STATUS_COMMITTED]
    assert h.stack.retrieval.faults.attempts - before == 2  # the commit and its retry
    for stage in ("ingest_moderate", "ingest_embed", "ingest_stage", "ingest_commit"):
        labels = {"pipeline": "(ingest)", "version": "", "stage": stage}
        assert h.sample("ragrail_gateway_stage_duration_seconds_count", labels) == 1, stage
