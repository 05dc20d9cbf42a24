"""gRPC face of the embedding service: converts protos, nothing else."""

from __future__ import annotations

import asyncio
from typing import Any

from ragrail.common.grpc_errors import grpc_method
from ragrail.common.service_metrics import service_metrics
from ragrail.embedding.core import EmbeddedText, TextEmbedder
from ragrail.embedding.v1 import embedding_pb2 as pb
from ragrail.embedding.v1 import embedding_pb2_grpc


class EmbeddingServicer(embedding_pb2_grpc.EmbeddingServiceServicer):
    def __init__(self, embedder: TextEmbedder) -> None:
        self._embedder = embedder

    @grpc_method(pb.EmbedResponse)
    async def Embed(self, request: pb.EmbedRequest, grpc_context: Any = None) -> pb.EmbedResponse:
        texts = list(request.texts)
        self._embedder.validate(texts)  # fail fast, before queueing for a thread
        embedded = await self.encode(texts)
        return pb.EmbedResponse(
            embeddings=[
                pb.Embedding(values=e.vector, truncated=e.truncated, token_count=e.token_count)
                for e in embedded
            ],
            model=self._embedder.name,
            dimension=self._embedder.dimension,
            model_version=self._embedder.version,
        )

    @grpc_method(pb.ChunkResponse)
    async def Chunk(self, request: pb.ChunkRequest, grpc_context: Any = None) -> pb.ChunkResponse:
        # A thread (the splitter holds the GIL briefly per call), but not the model's metrics.
        chunks = await asyncio.to_thread(self._embedder.chunk, request.text, request.max_tokens, request.overlap_tokens)
        return pb.ChunkResponse(
            chunks=[pb.TextChunk(text=c.text, heading=c.heading, token_count=c.token_count, start=c.start) for c in chunks],
            model=self._embedder.name,
            window=self._embedder.max_tokens,
        )

    async def encode(self, texts: list[str]) -> list[EmbeddedText]:
        """Embeds validated texts; the Ray Serve wrapper overrides it with dynamic batching."""
        return await service_metrics("embedding").to_thread(self._embedder.encode, texts, batch_size=len(texts))
