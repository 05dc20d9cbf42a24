"""The gateway's backends over gRPC, through Ray Serve's gRPC proxy.

Serve routes a call to an application by the ``application`` metadata key.
Every call carries the caller's remaining time as its deadline, so a slow
service cannot outlive the request that needed it.
"""

from __future__ import annotations

import contextvars
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import grpc

from ragrail.common import tracing
from ragrail.common.errors import (
    CollectionMissing,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    RagrailError,
    ResourceExhausted,
    Unavailable,
)
from ragrail.embedding.v1 import embedding_pb2, embedding_pb2_grpc
from ragrail.gateway.backends import (
    Backends,
    ChatTurn,
    Generated,
    GenerationParams,
    ModerationOutcome,
    Passage,
    StoredChunk,
    TokenUsage,
)
from ragrail.generation.v1 import generation_pb2, generation_pb2_grpc
from ragrail.moderation.v1 import moderation_pb2, moderation_pb2_grpc
from ragrail.retrieval.servicer import MAX_QUERY_TEXT_CHARS, dict_to_struct, struct_to_dict
from ragrail.retrieval.v1 import retrieval_pb2, retrieval_pb2_grpc

# Set per request by the gateway servicer; forwarded so Serve's logs carry it.
current_request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")

_CATEGORIES = {
    "toxicity": moderation_pb2.CATEGORY_TOXICITY,
    "prompt_injection": moderation_pb2.CATEGORY_PROMPT_INJECTION,
    "pii": moderation_pb2.CATEGORY_PII,
}
_CATEGORY_NAMES = {v: k for k, v in _CATEGORIES.items()}
_ROLES = {
    "system": generation_pb2.ROLE_SYSTEM,
    "user": generation_pb2.ROLE_USER,
    "assistant": generation_pb2.ROLE_ASSISTANT,
}


def _metadata(application: str) -> tuple[tuple[str, str], ...]:
    request_id = current_request_id.get()
    pairs = [("application", application)]
    if request_id:
        pairs.append(("request_id", request_id))
    tracing.inject_metadata(pairs)  # W3C traceparent of the current stage span (Serve's proxy passes it on)
    return tuple(pairs)


def map_rpc_error(service: str, error: grpc.aio.AioRpcError) -> RagrailError:
    """A backend's failure, as the gateway's caller should see it (one line, no traceback)."""
    code = error.code()
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return DeadlineExceeded(f"deadline exceeded waiting for the {service} service")
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidArgument(f"{service}: {error.details()}")
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return ResourceExhausted(f"the {service} service is overloaded; retry later")
    return Unavailable(f"the {service} service is unavailable ({code.name})")


class _Client:
    application = ""  # the Serve application; a pipeline spec may point elsewhere

    def __init__(self, channel: grpc.aio.Channel, application: str | None = None) -> None:
        self.channel = channel
        if application:
            self.application = application

    async def _call(self, method: object, request: object, timeout: float) -> object:
        try:
            return await method(request, timeout=timeout, metadata=_metadata(self.application))  # type: ignore[operator]
        except grpc.aio.AioRpcError as error:
            raise map_rpc_error(self.application, error) from None


class ModerationClient(_Client):
    application = "moderation"

    def __init__(self, channel: grpc.aio.Channel, application: str | None = None) -> None:
        super().__init__(channel, application)
        self.stub = moderation_pb2_grpc.ModerationServiceStub(channel)

    async def moderate(
        self, texts: Sequence[str], categories: Sequence[str], timeout: float
    ) -> list[ModerationOutcome]:
        request = moderation_pb2.ModerateRequest(
            texts=list(texts), categories=[_CATEGORIES[c] for c in categories]
        )
        response = await self._call(self.stub.Moderate, request, timeout)
        return [
            ModerationOutcome(r.flagged, tuple(_CATEGORY_NAMES[c] for c in r.flagged_categories))
            for r in response.results  # type: ignore[attr-defined]
        ]


class EmbeddingClient(_Client):
    application = "embedding"

    def __init__(self, channel: grpc.aio.Channel, application: str | None = None) -> None:
        super().__init__(channel, application)
        self.stub = embedding_pb2_grpc.EmbeddingServiceStub(channel)

    async def embed(self, texts: Sequence[str], timeout: float) -> list[list[float]]:
        response = await self._call(self.stub.Embed, embedding_pb2.EmbedRequest(texts=list(texts)), timeout)
        return [list(e.values) for e in response.embeddings]  # type: ignore[attr-defined]

    async def chunk(self, text: str, max_tokens: int, overlap_tokens: int, timeout: float) -> list[str]:
        """``text`` split by the embedding service in its model's tokens, each chunk's text
        led by its heading path; the chunks fit the model's window."""
        request = embedding_pb2.ChunkRequest(text=text, max_tokens=max_tokens, overlap_tokens=overlap_tokens)
        response = await self._call(self.stub.Chunk, request, timeout)
        return [c.text for c in response.chunks]  # type: ignore[attr-defined]


class RetrievalClient(_Client):
    application = "retrieval"

    def __init__(self, channel: grpc.aio.Channel, application: str | None = None) -> None:
        super().__init__(channel, application)
        self.stub = retrieval_pb2_grpc.RetrievalServiceStub(channel)

    async def ensure_collection(self, collection: str, dimension: int, timeout: float) -> bool:
        request = retrieval_pb2.CreateCollectionRequest(
            collection=collection,
            dimension=dimension,
            distance=retrieval_pb2.DISTANCE_COSINE,
            keyword_index_fields=["document_id"],
            integer_index_fields=["chunk_index"],  # delete_stale_chunks ranges over it
        )
        response = await self._call(self.stub.CreateCollection, request, timeout)
        return bool(response.created)  # type: ignore[attr-defined]

    async def count(self, collection: str, timeout: float) -> int:
        request = retrieval_pb2.DescribeCollectionRequest(collection=collection)
        response = await self._read(self.stub.DescribeCollection, request, timeout, collection)
        return int(response.points_count)  # type: ignore[attr-defined]

    async def _read(self, method: object, request: object, timeout: float, collection: str) -> object:
        """``_call``, except that a missing collection raises CollectionMissing.

        The retrieval service says NOT_FOUND "collection … does not exist"; Serve's proxy
        says NOT_FOUND too, for a missing application, and that is an outage, not a
        missing collection.
        """
        try:
            return await method(request, timeout=timeout, metadata=_metadata(self.application))  # type: ignore[operator]
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND and "does not exist" in (error.details() or ""):
                raise CollectionMissing.named(collection) from None
            raise map_rpc_error(self.application, error) from None

    async def search(
        self,
        collection: str,
        vector: Sequence[float],
        top_k: int,
        threshold: float,
        timeout: float,
        filters: Mapping[str, Any] | None = None,
        query_text: str | None = None,
    ) -> list[Passage]:
        """Passages over ``threshold``; with ``query_text``, ranked hybrid (dense + BM25)."""
        request = retrieval_pb2.SearchRequest(
            collection=collection,
            vector=list(vector),
            top_k=top_k,
            score_threshold=threshold,
            payload_fields=["document_id", "text", "chunk_index"],
            query_text=(query_text or "")[:MAX_QUERY_TEXT_CHARS],
        )
        if filters:
            request.filter.CopyFrom(retrieval_pb2.Filter(must=[_condition(k, v) for k, v in filters.items()]))
        response = await self._read(self.stub.Search, request, timeout, collection)
        passages = []
        for point in response.points:  # type: ignore[attr-defined]
            payload = struct_to_dict(point.payload)
            passages.append(
                Passage(
                    document_id=str(payload.get("document_id", "")),
                    text=str(payload.get("text", "")),
                    score=point.score,
                    chunk_index=int(payload.get("chunk_index", 0)),
                )
            )
        return passages

    async def upsert(self, collection: str, chunks: Sequence[StoredChunk], timeout: float) -> int:
        request = retrieval_pb2.UpsertRequest(
            collection=collection,
            points=[
                retrieval_pb2.Point(id=c.id, vector=c.vector, payload=dict_to_struct(c.payload))
                for c in chunks
            ],
        )
        response = await self._read(self.stub.Upsert, request, timeout, collection)
        return int(response.upserted)  # type: ignore[attr-defined]

    async def delete_stale_chunks(
        self, collection: str, document_id: str, keep_below: int, timeout: float
    ) -> None:
        request = retrieval_pb2.DeleteRequest(
            collection=collection,
            filter=retrieval_pb2.Filter(
                must=[
                    retrieval_pb2.Condition(key="document_id", keyword=document_id),
                    retrieval_pb2.Condition(key="chunk_index", range=retrieval_pb2.Range(gte=keep_below)),
                ]
            ),
        )
        await self._call(self.stub.Delete, request, timeout)

    async def commit_document(
        self, collection: str, document_id: str, version: str, expected_points: int, timeout: float
    ) -> int:
        request = retrieval_pb2.CommitDocumentRequest(
            collection=collection, document_id=document_id, version=version, expected_points=expected_points
        )
        try:
            response = await self._read(self.stub.CommitDocument, request, timeout, collection)
        except Unavailable as error:
            if "FAILED_PRECONDITION" in error.message:
                # Superseded by a concurrent commit of the same document: the caller's to retry.
                raise FailedPrecondition(f"document {document_id!r} was replaced by a concurrent ingest") from None
            raise
        return int(response.replaced_points)  # type: ignore[attr-defined]

    async def discard_document_version(
        self, collection: str, document_id: str, version: str, timeout: float
    ) -> None:
        request = retrieval_pb2.DiscardDocumentVersionRequest(
            collection=collection, document_id=document_id, version=version
        )
        await self._read(self.stub.DiscardDocumentVersion, request, timeout, collection)


def _condition(key: str, value: Any) -> Any:
    """A spec's filter value as a retrieval Condition (bool before int: YAML's true is a bool)."""
    if isinstance(value, bool):
        return retrieval_pb2.Condition(key=key, boolean=value)
    if isinstance(value, int):
        return retrieval_pb2.Condition(key=key, integer=value)
    if isinstance(value, list | tuple):
        return retrieval_pb2.Condition(key=key, any=retrieval_pb2.MatchAny(values=[str(v) for v in value]))
    return retrieval_pb2.Condition(key=key, keyword=str(value))


class GenerationClient(_Client):
    application = "generation"

    def __init__(self, channel: grpc.aio.Channel, application: str | None = None) -> None:
        super().__init__(channel, application)
        self.stub = generation_pb2_grpc.GenerationServiceStub(channel)

    @staticmethod
    def _messages(messages: Sequence[ChatTurn]) -> list[generation_pb2.ChatMessage]:
        return [generation_pb2.ChatMessage(role=_ROLES[m.role], content=m.content) for m in messages]

    @staticmethod
    def _sampling(params: GenerationParams) -> generation_pb2.SamplingParams:
        return generation_pb2.SamplingParams(
            max_new_tokens=params.max_new_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
            seed=params.seed,
            stop=list(params.stop),
        )

    async def generate(self, messages: Sequence[ChatTurn], params: GenerationParams, timeout: float) -> Generated:
        request = generation_pb2.GenerateRequest(messages=self._messages(messages), sampling=self._sampling(params))
        response = await self._call(self.stub.Generate, request, timeout)
        return Generated(str(response.text), _usage(response))  # type: ignore[attr-defined]

    async def generate_stream(
        self, messages: Sequence[ChatTurn], params: GenerationParams, timeout: float
    ) -> AsyncIterator[str | TokenUsage]:
        request = generation_pb2.GenerateStreamRequest(
            messages=self._messages(messages), sampling=self._sampling(params)
        )
        call = self.stub.GenerateStream(request, timeout=timeout, metadata=_metadata(self.application))
        try:
            async for chunk in call:
                if chunk.delta:
                    yield chunk.delta
                if chunk.HasField("usage"):
                    yield _usage(chunk)
        except grpc.aio.AioRpcError as error:
            raise map_rpc_error(self.application, error) from None
        finally:
            call.cancel()  # no-op when finished; stops generation when we stop early


def _usage(response: object) -> TokenUsage:
    usage = response.usage  # type: ignore[attr-defined]
    return TokenUsage(int(usage.prompt_tokens), int(usage.completion_tokens))


def grpc_backends(channel: grpc.aio.Channel, applications: dict[str, str] | None = None) -> Backends:
    """Clients for the four services; ``applications`` renames Serve apps per service."""
    apps = {s: s for s in ("moderation", "embedding", "retrieval", "generation")} | (applications or {})
    return Backends(
        moderation=ModerationClient(channel, apps["moderation"]),
        embedding=EmbeddingClient(channel, apps["embedding"]),
        retrieval=RetrievalClient(channel, apps["retrieval"]),
        generation=GenerationClient(channel, apps["generation"]),
        names=apps,
    )
