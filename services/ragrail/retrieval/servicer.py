"""gRPC face of the retrieval service: converts protos, nothing else."""

from __future__ import annotations

import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from google.protobuf import struct_pb2

from ragrail.common.errors import InvalidArgument, require
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


# Bounds on what one request may ask Qdrant to do. Found by tests/contract/test_fuzz.py: a
# Delete of 100,000 ids with 20,000 filter conditions held the (single, for the embedded
# engine) Qdrant thread for over 40 s, long after its caller's 30 s deadline, and every other
# call queued behind it. Checked here while ragrail.retrieval.core is being rewritten; they
# belong next to its max_batch_size once that lands.
MAX_FILTER_CONDITIONS = 64  # per clause (must, should, must_not)
MAX_MATCH_ANY_VALUES = 1024
MAX_PAYLOAD_FIELDS = 64
MAX_QUERY_TEXT_CHARS = 4096


def condition_from_pb(c: pb.Condition) -> Condition:
    which = c.WhichOneof("match")
    if which is None:
        raise InvalidArgument(f"condition on {c.key!r} has no match")
    if which == "any":
        require(
            len(c.any.values) <= MAX_MATCH_ANY_VALUES,
            f"condition on {c.key!r}: at most {MAX_MATCH_ANY_VALUES} match-any values, got {len(c.any.values)}",
        )
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
    for clause in ("must", "should", "must_not"):
        count = len(getattr(f, clause))
        require(
            count <= MAX_FILTER_CONDITIONS,
            f"filter.{clause}: at most {MAX_FILTER_CONDITIONS} conditions, got {count}",
        )
    return Filter(
        must=tuple(condition_from_pb(c) for c in f.must),
        should=tuple(condition_from_pb(c) for c in f.should),
        must_not=tuple(condition_from_pb(c) for c in f.must_not),
    )


def struct_to_dict(s: struct_pb2.Struct, where: str = "payload") -> dict[str, Any]:
    """A Struct as plain JSON-like Python values; InvalidArgument for a number JSON cannot hold.

    Struct carries every number as a double: integral ones come back as ints, or integer
    match conditions never match payloads sent over gRPC. NaN and the infinities are refused
    here (``json_format.MessageToDict`` raised ValueError on them, which reached the caller
    as INTERNAL: found by tests/contract/test_fuzz.py).
    """
    return {key: _from_value(value, f"{where}.{key}") for key, value in s.fields.items()}


def _from_value(value: struct_pb2.Value, where: str) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        number = value.number_value
        if not math.isfinite(number):
            raise InvalidArgument(f"{where} is {number}; payload numbers must be finite")
        return int(number) if number.is_integer() and abs(number) <= 2**53 else number
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "struct_value":
        return struct_to_dict(value.struct_value, where)
    if kind == "list_value":
        return [_from_value(v, f"{where}[{i}]") for i, v in enumerate(value.list_value.values)]
    return None  # null_value, or a Value with no kind set


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
            lexical=info.lexical,
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
        require(
            len(request.payload_fields) <= MAX_PAYLOAD_FIELDS,
            f"at most {MAX_PAYLOAD_FIELDS} payload_fields, got {len(request.payload_fields)}",
        )
        threshold = request.score_threshold if request.HasField("score_threshold") else None
        require(
            len(request.query_text) <= MAX_QUERY_TEXT_CHARS,
            f"query_text has {len(request.query_text)} characters; the limit is {MAX_QUERY_TEXT_CHARS}",
        )
        hits = await self._run(
            lambda: self._store.search(
                request.collection,
                list(request.vector),
                top_k=request.top_k,
                score_threshold=threshold,
                filter=query_filter,
                payload_fields=list(request.payload_fields),
                query_text=request.query_text or None,
            )
        )
        return pb.SearchResponse(
            points=[pb.ScoredPoint(id=h.id, score=h.score, payload=dict_to_struct(h.payload)) for h in hits]
        )

    @grpc_method(pb.DeleteResponse)
    async def Delete(self, request: pb.DeleteRequest, grpc_context: Any = None) -> pb.DeleteResponse:
        query_filter = filter_from_pb(request.filter)
        limit = self._store.max_batch_size
        require(len(request.ids) <= limit, f"at most {limit} ids per call, got {len(request.ids)}")
        await self._run(lambda: self._store.delete(request.collection, list(request.ids), query_filter))
        return pb.DeleteResponse()

    @grpc_method(pb.CommitDocumentResponse)
    async def CommitDocument(
        self, request: pb.CommitDocumentRequest, grpc_context: Any = None
    ) -> pb.CommitDocumentResponse:
        replaced = await self._run(
            lambda: self._store.commit_document(
                request.collection, request.document_id, request.version, request.expected_points
            )
        )
        return pb.CommitDocumentResponse(replaced_points=replaced)

    @grpc_method(pb.DiscardDocumentVersionResponse)
    async def DiscardDocumentVersion(
        self, request: pb.DiscardDocumentVersionRequest, grpc_context: Any = None
    ) -> pb.DiscardDocumentVersionResponse:
        await self._run(lambda: self._store.discard_version(request.collection, request.document_id, request.version))
        return pb.DiscardDocumentVersionResponse()
