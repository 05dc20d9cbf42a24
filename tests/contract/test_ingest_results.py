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
