"""The retrieval service over gRPC: collection management, and a Qdrant that is not there.

The common round trip lives in test_services_contract.py; here are DeleteCollection,
payload index fields, and the UNAVAILABLE mapping of every RPC when the configured
Qdrant server cannot be reached or does not answer.
"""

from __future__ import annotations

import math
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import grpc
import pytest
import pytest_asyncio

from ragrail.common.errors import CollectionMissing, Unavailable
from ragrail.common.server import ServiceBinding
from ragrail.gateway.clients import RetrievalClient
from ragrail.retrieval.core import VectorStore
from ragrail.retrieval.servicer import RetrievalServicer
from ragrail.retrieval.v1 import retrieval_pb2 as pb
from ragrail.retrieval.v1 import retrieval_pb2_grpc

pytestmark = pytest.mark.asyncio(loop_scope="session")

SERVICE = pb.DESCRIPTOR.services_by_name["RetrievalService"].full_name


def uid(n: int) -> str:
    return str(uuid.UUID(int=n))


def assert_clean_error(err: grpc.aio.AioRpcError, code: grpc.StatusCode, *fragments: str) -> None:
    assert err.code() == code, f"{err.code()}: {err.details()}"
    details = err.details() or ""
    assert details and "\n" not in details and "Traceback" not in details, details
    for fragment in fragments:
        assert fragment in details, details


async def serve(grpc_server: Any, store: VectorStore) -> retrieval_pb2_grpc.RetrievalServiceStub:
    binding = ServiceBinding(RetrievalServicer(store), retrieval_pb2_grpc.add_RetrievalServiceServicer_to_server, SERVICE)
    running = await grpc_server([binding])
    return retrieval_pb2_grpc.RetrievalServiceStub(running.channel)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def retrieval(grpc_server: Any, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Any]:
    store = VectorStore(path=str(tmp_path_factory.mktemp("qdrant")), max_top_k=10)
    yield await serve(grpc_server, store)
    store.close()


# -- collection management ---------------------------------------------------------


async def test_delete_collection_drops_it(retrieval: Any) -> None:
    await retrieval.CreateCollection(pb.CreateCollectionRequest(collection="dropme", dimension=2))
    await retrieval.Upsert(pb.UpsertRequest(collection="dropme", points=[pb.Point(id=uid(1), vector=[1.0, 0.0])]))
    assert await retrieval.DeleteCollection(pb.DeleteCollectionRequest(collection="dropme")) == pb.DeleteCollectionResponse()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await retrieval.DescribeCollection(pb.DescribeCollectionRequest(collection="dropme"))
    assert_clean_error(info.value, grpc.StatusCode.NOT_FOUND, "collection dropme does not exist")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await retrieval.Search(pb.SearchRequest(collection="dropme", vector=[1.0, 0.0], top_k=1))
    # The gateway's client tells a missing collection by this text (Serve's proxy says NOT_FOUND too).
    assert_clean_error(info.value, grpc.StatusCode.NOT_FOUND, "collection dropme does not exist")
    # Re-created with another dimension: nothing of the old one is left.
    created = await retrieval.CreateCollection(pb.CreateCollectionRequest(collection="dropme", dimension=3))
    assert created.created
    info_ = await retrieval.DescribeCollection(pb.DescribeCollectionRequest(collection="dropme"))
    assert (info_.dimension, info_.points_count) == (3, 0)


async def test_deleting_a_missing_collection_is_not_found(retrieval: Any) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await retrieval.DeleteCollection(pb.DeleteCollectionRequest(collection="never-was"))
    assert_clean_error(info.value, grpc.StatusCode.NOT_FOUND, "collection never-was does not exist")


async def test_deleting_a_badly_named_collection_is_invalid(retrieval: Any) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await retrieval.DeleteCollection(pb.DeleteCollectionRequest(collection="a b"))
    assert_clean_error(info.value, grpc.StatusCode.INVALID_ARGUMENT, "invalid collection name")


async def test_index_fields_are_kept_by_the_embedded_engine(retrieval: Any) -> None:
    request = pb.CreateCollectionRequest(
        collection="indexed",
        dimension=2,
        keyword_index_fields=["document_id"],
        integer_index_fields=["chunk_index"],
        float_index_fields=["price"],
    )
    assert (await retrieval.CreateCollection(request)).created
    described = await retrieval.DescribeCollection(pb.DescribeCollectionRequest(collection="indexed"))
    # The embedded engine keeps payload indexes as a server does (local mode would keep none).
    assert dict(described.payload_indexes) == {"document_id": "keyword", "chunk_index": "integer", "price": "float"}
    # The gateway's stale-chunk delete: keyword and integer range together.
    points = [
        pb.Point(id=uid(i), vector=[1.0, float(i)], payload={"document_id": "d", "chunk_index": i}) for i in range(4)
    ]
    await retrieval.Upsert(pb.UpsertRequest(collection="indexed", points=points))
    await retrieval.Delete(
        pb.DeleteRequest(
            collection="indexed",
            filter=pb.Filter(
                must=[
                    pb.Condition(key="document_id", keyword="d"),
                    pb.Condition(key="chunk_index", range=pb.Range(gte=2)),
                ]
            ),
        )
    )
    described = await retrieval.DescribeCollection(pb.DescribeCollectionRequest(collection="indexed"))
    assert described.points_count == 2


async def test_a_field_asked_as_two_index_types_is_invalid(retrieval: Any) -> None:
    request = pb.CreateCollectionRequest(
        collection="twotypes", dimension=2, keyword_index_fields=["x"], integer_index_fields=["x"]
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await retrieval.CreateCollection(request)
    assert_clean_error(info.value, grpc.StatusCode.INVALID_ARGUMENT, "indexed as both keyword and integer")


@pytest.mark.parametrize("number", [math.inf, -math.inf, math.nan])
async def test_a_payload_number_json_cannot_hold_is_invalid(retrieval: Any, number: float) -> None:
    # Found by tests/contract/test_fuzz.py: json_format raised ValueError, answered INTERNAL.
    await retrieval.CreateCollection(pb.CreateCollectionRequest(collection="nonfinite", dimension=2))
    point = pb.Point(id=uid(1), vector=[1.0, 0.0], payload={"doc": {"scores": [1.0, number]}})
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await retrieval.Upsert(pb.UpsertRequest(collection="nonfinite", points=[point]))
    assert_clean_error(info.value, grpc.StatusCode.INVALID_ARGUMENT, "payload.doc.scores[1]", "must be finite")
    # Integral numbers still come back as ints, and a Value with no kind is null.
    point = pb.Point(id=uid(2), vector=[1.0, 0.0], payload={"n": 3.0, "x": 2.5})
    point.payload.fields["empty"].Clear()
    assert (await retrieval.Upsert(pb.UpsertRequest(collection="nonfinite", points=[point]))).upserted == 1
    hits = await retrieval.Search(pb.SearchRequest(collection="nonfinite", vector=[1.0, 0.0], top_k=1))
    assert dict(hits.points[0].payload) == {"n": 3, "x": 2.5, "empty": None}


@pytest.mark.parametrize(
    ("request_", "fragment"),
    [
        (pb.DeleteRequest(collection="nonfinite", ids=[uid(1)] * 513), "at most 512 ids"),
        (pb.DeleteRequest(collection="nonfinite", filter=pb.Filter(must=[pb.Condition(key="k", keyword="v")] * 65)), "filter.must: at most 64"),
        (
            pb.SearchRequest(collection="nonfinite", vector=[1.0, 0.0], top_k=1, filter=pb.Filter(should=[pb.Condition(key="k", keyword="v")] * 65)),
            "filter.should: at most 64",
        ),
        (
            pb.SearchRequest(
                collection="nonfinite", vector=[1.0, 0.0], top_k=1,
                filter=pb.Filter(must_not=[pb.Condition(key="k", any=pb.MatchAny(values=["v"] * 1025))]),
            ),
            "at most 1024 match-any values",
        ),
        (pb.SearchRequest(collection="nonfinite", vector=[1.0, 0.0], top_k=1, payload_fields=["k"] * 65), "at most 64 payload_fields"),
    ],
    ids=["delete ids", "delete filter", "search filter", "match-any", "payload fields"],
)
async def test_unbounded_work_is_refused_before_qdrant(retrieval: Any, request_: Any, fragment: str) -> None:
    # Found by tests/contract/test_fuzz.py: 100,000 ids and 20,000 conditions held Qdrant's one
    # thread for over 40 s, past the caller's deadline, with every other call queued behind.
    await retrieval.CreateCollection(pb.CreateCollectionRequest(collection="nonfinite", dimension=2))
    rpc = retrieval.Delete if isinstance(request_, pb.DeleteRequest) else retrieval.Search
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await rpc(request_)
    assert_clean_error(info.value, grpc.StatusCode.INVALID_ARGUMENT, fragment)


# -- Qdrant not there ----------------------------------------------------------------


MATCH = pb.Filter(must=[pb.Condition(key="lang", keyword="en")])
EVERY_RPC: dict[str, Callable[[Any], Any]] = {
    "CreateCollection": lambda s: s.CreateCollection(
        pb.CreateCollectionRequest(collection="docs", dimension=2, keyword_index_fields=["lang"])
    ),
    "DescribeCollection": lambda s: s.DescribeCollection(pb.DescribeCollectionRequest(collection="docs")),
    "DeleteCollection": lambda s: s.DeleteCollection(pb.DeleteCollectionRequest(collection="docs")),
    "Upsert": lambda s: s.Upsert(pb.UpsertRequest(collection="docs", points=[pb.Point(id=uid(1), vector=[1.0, 0.0])])),
    "Search": lambda s: s.Search(pb.SearchRequest(collection="docs", vector=[1.0, 0.0], top_k=1, filter=MATCH)),
    "Delete by ids": lambda s: s.Delete(pb.DeleteRequest(collection="docs", ids=[uid(1)])),
    "Delete by filter": lambda s: s.Delete(pb.DeleteRequest(collection="docs", filter=MATCH)),
    "CommitDocument": lambda s: s.CommitDocument(
        pb.CommitDocumentRequest(collection="docs", document_id="a.md", version="v1", expected_points=1)
    ),
    "DiscardDocumentVersion": lambda s: s.DiscardDocumentVersion(
        pb.DiscardDocumentVersionRequest(collection="docs", document_id="a.md", version="v1")
    ),
}


async def test_every_rpc_is_covered() -> None:
    rpcs = {m.name for m in pb.DESCRIPTOR.services_by_name["RetrievalService"].methods}
    assert rpcs == {name.split(" ")[0] for name in EVERY_RPC}


def remote_store(url: str, grpc_port: int, prefer_grpc: bool) -> VectorStore:
    before = set(threading.enumerate())
    store = VectorStore(url=url, grpc_port=grpc_port, prefer_grpc=prefer_grpc, timeout_s=1)
    for thread in set(threading.enumerate()) - before:  # the client's version check: let it warn here
        thread.join(timeout=5)
    return store


@pytest.mark.filterwarnings("ignore:Failed to obtain server version")
@pytest.mark.parametrize(("prefer_grpc", "where"), [(True, "gRPC 127.0.0.1:1"), (False, "http://127.0.0.1:1")])
async def test_an_unreachable_qdrant_makes_every_rpc_unavailable(
    grpc_server: Any, prefer_grpc: bool, where: str
) -> None:
    store = remote_store("http://127.0.0.1:1", 1, prefer_grpc)
    try:
        stub = await serve(grpc_server, store)
        for name, call in EVERY_RPC.items():
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await call(stub)
            assert_clean_error(info.value, grpc.StatusCode.UNAVAILABLE, f"Qdrant is unavailable ({where}): cannot connect")
    finally:
        store.close()


@pytest.fixture
def silent_port() -> Iterator[int]:
    """Accepts connections (the kernel's backlog) and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield sock.getsockname()[1]


@pytest.mark.filterwarnings("ignore:Failed to obtain server version")
@pytest.mark.parametrize("prefer_grpc", [True, False])
async def test_a_silent_qdrant_is_unavailable_within_the_timeout(
    grpc_server: Any, silent_port: int, prefer_grpc: bool
) -> None:
    store = remote_store(f"http://127.0.0.1:{silent_port}", silent_port, prefer_grpc)
    try:
        stub = await serve(grpc_server, store)
        start = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Search(pb.SearchRequest(collection="docs", vector=[1.0, 0.0], top_k=1))
        assert_clean_error(info.value, grpc.StatusCode.UNAVAILABLE, "no answer within 1s")
        assert time.monotonic() - start < 3
    finally:
        store.close()


# -- the gateway's client ------------------------------------------------------------


async def test_the_gateway_client_says_a_missing_collection_is_missing(
    grpc_server: Any, tmp_path_factory: pytest.TempPathFactory
) -> None:
    store = VectorStore(path=str(tmp_path_factory.mktemp("qdrant-client")), max_top_k=10)
    try:
        binding = ServiceBinding(RetrievalServicer(store), retrieval_pb2_grpc.add_RetrievalServiceServicer_to_server, SERVICE)
        client = RetrievalClient((await grpc_server([binding])).channel)
        missing = "collection 'never-was' does not exist; ingest documents first"
        with pytest.raises(CollectionMissing, match=missing):
            await client.search("never-was", [1.0, 0.0], 1, -1.0, 5.0)
        with pytest.raises(CollectionMissing, match=missing):
            await client.count("never-was", 5.0)
        assert await client.ensure_collection("now-is", 2, 5.0)
        assert await client.search("now-is", [1.0, 0.0], 1, -1.0, 5.0) == []  # empty: a miss, no error
        assert await client.count("now-is", 5.0) == 0
    finally:
        store.close()


class NoSuchServeApp(retrieval_pb2_grpc.RetrievalServiceServicer):
    """Answers as Ray Serve's gRPC proxy does for an application that is not deployed."""

    async def _not_found(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(
            grpc.StatusCode.NOT_FOUND,
            "Application 'retrieval' not found. Ping /ray.serve.RayServeAPIService/ListApplications "
            "for available applications.",
        )

    Search = DescribeCollection = _not_found


async def test_the_gateway_client_says_a_missing_serve_app_is_unavailable(grpc_server: Any) -> None:
    binding = ServiceBinding(NoSuchServeApp(), retrieval_pb2_grpc.add_RetrievalServiceServicer_to_server, SERVICE)
    client = RetrievalClient((await grpc_server([binding])).channel)
    with pytest.raises(Unavailable, match="unavailable"):
        await client.search("documents", [1.0, 0.0], 1, -1.0, 5.0)
    with pytest.raises(Unavailable, match="unavailable"):
        await client.count("documents", 5.0)
