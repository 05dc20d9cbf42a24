"""gRPC face of the retrieval service: converts protos, nothing else."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from google.protobuf import json_format, struct_pb2

from ragrail.common.errors import InvalidArgument
from ragrail.common.grpc_errors import grpc_method
from ragrail.common.service_metrics import service_metrics
from ragrail.retrieval.core import Condition, Distance, Filter, Point, Range, VectorStore
from ragrail.retrieval.v1 import retrieval_pb2 as pb
from ragrail.retrieval.v1 import retrieval_pb2_grpc

T = TypeVar("T")

_DISTANCES = {
    pb.DISTANCE_UNSPECIFIED: Distance.COSINE,
    pb.DISTANCE_COSINE: Distance.COSINE,
    pb.DISTANCE_DOT: Distance.DOT,
    pb.DISTANCE_EUCLID: Distance.EUCLID,
}
_DISTANCES_PB = {Distance.COSINE: pb.DISTANCE_COSINE, Distance.DOT: pb.DISTANCE_DOT, Distance.EUCLID: pb.DISTANCE_EUCLID}


def condition_from_pb(c: pb.Condition) -> Condition:
    which = c.WhichOneof("match")
    if which is None:
        raise InvalidArgument(f"condition on {c.key!r} has no match")
    if which == "any":
        return Condition(c.key, any_of=tuple(c.any.values))
    if which == "range":
        r = c.range
        return Condition(
            c.key,
            range=Range(
                gt=r.gt if r.HasField("gt") else None,
                gte=r.gte if r.HasField("gte") else None,
                lt=r.lt if r.HasField("lt") else None,
                lte=r.lte if r.HasField("lte") else None,
            ),
        )
    return Condition(c.key, **{which: getattr(c, which)})


def filter_from_pb(f: pb.Filter) -> Filter:
    return Filter(
        must=tuple(condition_from_pb(c) for c in f.must),
        should=tuple(condition_from_pb(c) for c in f.should),
        must_not=tuple(condition_from_pb(c) for c in f.must_not),
    )


def struct_to_dict(s: struct_pb2.Struct) -> dict[str, Any]:
    # Struct carries every number as a double: give integral ones back as ints,
    # or integer match conditions never match payloads sent over gRPC.
    return _integral_to_int(json_format.MessageToDict(s))


def _integral_to_int(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer() and abs(value) <= 2**53:
        return int(value)
    if isinstance(value, dict):
        return {k: _integral_to_int(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_integral_to_int(v) for v in value]
    return value


def dict_to_struct(d: dict[str, Any]) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(d)
    return s


class RetrievalServicer(retrieval_pb2_grpc.RetrievalServiceServicer):
    def __init__(self, store: VectorStore) -> None:
        self._store = store
        # Embedded Qdrant is not safe for concurrent use: one thread owns it.
        self._executor = ThreadPoolExecutor(
            max_workers=1 if store.embedded else 8, thread_name_prefix="qdrant"
        )

    async def _run(self, fn: Callable[[], T]) -> T:
        return await service_metrics("retrieval").run_in_executor(self._executor, fn)  # Qdrant latency, queue wait

    @grpc_method(pb.CreateCollectionResponse)
    async def CreateCollection(
        self, request: pb.CreateCollectionRequest, grpc_context: Any = None
    ) -> pb.CreateCollectionResponse:
        created = await self._run(
            lambda: self._store.ensure_collection(
                request.collection,
                request.dimension,
                _DISTANCES.get(request.distance, Distance.COSINE),
                keyword_index_fields=list(request.keyword_index_fields),
                integer_index_fields=list(request.integer_index_fields),
                float_index_fields=list(request.float_index_fields),
            )
        )
        return pb.CreateCollectionResponse(created=created)

    @grpc_method(pb.DescribeCollectionResponse)
    async def DescribeCollection(
        self, request: pb.DescribeCollectionRequest, grpc_context: Any = None
    ) -> pb.DescribeCollectionResponse:
        info = await self._run(lambda: self._store.describe(request.collection))
        return pb.DescribeCollectionResponse(
            dimension=info.dimension,
            distance=_DISTANCES_PB[info.distance],
            points_count=info.points_count,
            payload_indexes=info.payload_indexes,
        )

    @grpc_method(pb.DeleteCollectionResponse)
    async def DeleteCollection(
        self, request: pb.DeleteCollectionRequest, grpc_context: Any = None
    ) -> pb.DeleteCollectionResponse:
        await self._run(lambda: self._store.delete_collection(request.collection))
        return pb.DeleteCollectionResponse()

    @grpc_method(pb.UpsertResponse)
    async def Upsert(self, request: pb.UpsertRequest, grpc_context: Any = None) -> pb.UpsertResponse:
        points = [Point(p.id, list(p.vector), struct_to_dict(p.payload)) for p in request.points]
        count = await self._run(lambda: self._store.upsert(request.collection, points))
        return pb.UpsertResponse(upserted=count)

    @grpc_method(pb.SearchResponse)
    async def Search(self, request: pb.SearchRequest, grpc_context: Any = None) -> pb.SearchResponse:
        query_filter = filter_from_pb(request.filter)
        threshold = request.score_threshold if request.HasField("score_threshold") else None
        hits = await self._run(
            lambda: self._store.search(
                request.collection,
                list(request.vector),
                top_k=request.top_k,
                score_threshold=threshold,
                filter=query_filter,
                payload_fields=list(request.payload_fields),
            )
        )
        return pb.SearchResponse(
            points=[pb.ScoredPoint(id=h.id, score=h.score, payload=dict_to_struct(h.payload)) for h in hits]
        )

    @grpc_method(pb.DeleteResponse)
    async def Delete(self, request: pb.DeleteRequest, grpc_context: Any = None) -> pb.DeleteResponse:
        query_filter = filter_from_pb(request.filter)
        await self._run(lambda: self._store.delete(request.collection, list(request.ids), query_filter))
        return pb.DeleteResponse()
