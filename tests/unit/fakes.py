"""In-memory fakes of the gateway's backend protocols (ragrail.gateway.backends).

No network, no models: a deterministic bag-of-words embedder, a real (tiny)
cosine vector store, marker-word moderation and scripted generation. Each fake
records what it was asked, so tests can assert on calls as well as results.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ragrail.common.errors import InvalidArgument, NotFound
from ragrail.gateway.backends import Backends, ChatTurn, ModerationOutcome, Passage, StoredChunk

_WORD = re.compile(r"\w+")
DIMENSION = 256


def _cosine(a: Sequence[float], b: Sequence[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    na = math.sqrt(sum(x * x for x in a))
    nb = math.sqrt(sum(y * y for y in b))
    if na == 0 or nb == 0:
        return 0.0
    return dot / (na * nb)


class FakeModeration:
    """Flags a text for a category when it contains one of that category's markers."""

    DEFAULT_MARKERS: Mapping[str, tuple[str, ...]] = {
        "toxicity": ("toxicword",),
        "prompt_injection": ("ignore all previous instructions",),
    }

    def __init__(self, markers: Mapping[str, Iterable[str]] | None = None) -> None:
        source = self.DEFAULT_MARKERS if markers is None else markers
        self.markers = {category: tuple(m.lower() for m in words) for category, words in source.items()}
        self.calls: list[tuple[tuple[str, ...], tuple[str, ...]]] = []  # (texts, categories)

    async def moderate(
        self, texts: Sequence[str], categories: Sequence[str], timeout: float
    ) -> list[ModerationOutcome]:
        assert timeout > 0
        self.calls.append((tuple(texts), tuple(categories)))
        outcomes = []
        for text in texts:
            lowered = text.lower()
            hits = tuple(
                c for c in categories if any(marker in lowered for marker in self.markers.get(c, ()))
            )
            outcomes.append(ModerationOutcome(flagged=bool(hits), categories=hits))
        return outcomes


class FakeEmbedding:
    """Hashed bag of words, L2-normalised: texts sharing words score higher."""

    def __init__(self, dimension: int = DIMENSION) -> None:
        self.dimension = dimension
        self.calls: list[tuple[str, ...]] = []

    def vector(self, text: str) -> list[float]:
        values = [0.0] * self.dimension
        for word in _WORD.findall(text.lower()):
            digest = hashlib.blake2b(word.encode(), digest_size=8).digest()
            values[int.from_bytes(digest[:4], "big") % self.dimension] += 1.0 if digest[4] % 2 else -1.0
        norm = math.sqrt(sum(v * v for v in values))
        return [v / norm for v in values] if norm else values

    async def embed(self, texts: Sequence[str], timeout: float) -> list[list[float]]:
        assert timeout > 0
        self.calls.append(tuple(texts))
        return [self.vector(t) for t in texts]


@dataclass
class _Collection:
    dimension: int
    points: dict[str, tuple[list[float], dict[str, Any]]] = field(default_factory=dict)


class FakeRetrieval:
    """A tiny vector store: cosine search with top_k and threshold (score >= threshold)."""

    def __init__(self) -> None:
        self.collections: dict[str, _Collection] = {}
        self.searches: list[tuple[str, int, float]] = []  # (collection, top_k, threshold)

    def _get(self, collection: str) -> _Collection:
        if collection not in self.collections:
            raise NotFound(f"collection {collection!r} does not exist")
        return self.collections[collection]

    def _check_dimension(self, coll: _Collection, vector: Sequence[float]) -> None:
        if len(vector) != coll.dimension:
            raise InvalidArgument(f"vector has {len(vector)} values; the collection has {coll.dimension}")

    async def ensure_collection(self, collection: str, dimension: int, timeout: float) -> bool:
        assert timeout > 0
        existing = self.collections.get(collection)
        if existing is not None:
            if existing.dimension != dimension:
                raise InvalidArgument(f"collection {collection!r} has dimension {existing.dimension}")
            return False
        self.collections[collection] = _Collection(dimension)
        return True

    async def count(self, collection: str, timeout: float) -> int:
        assert timeout > 0
        return len(self._get(collection).points)

    async def search(
        self, collection: str, vector: Sequence[float], top_k: int, threshold: float, timeout: float
    ) -> list[Passage]:
        assert timeout > 0
        self.searches.append((collection, top_k, threshold))
        coll = self.collections.get(collection)
        if coll is None:
            return []  # like the gRPC client: nothing ingested yet is a miss
        self._check_dimension(coll, vector)
        scored = [(_cosine(vector, v), payload) for v, payload in coll.points.values()]
        hits = sorted((s for s in scored if s[0] >= threshold), key=lambda s: s[0], reverse=True)
        return [
            Passage(
                document_id=str(payload.get("document_id", "")),
                text=str(payload.get("text", "")),
                score=score,
                chunk_index=int(payload.get("chunk_index", 0)),
            )
            for score, payload in hits[:top_k]
        ]

    async def upsert(self, collection: str, chunks: Sequence[StoredChunk], timeout: float) -> int:
        assert timeout > 0
        coll = self._get(collection)
        for chunk in chunks:
            self._check_dimension(coll, chunk.vector)
            coll.points[chunk.id] = (list(chunk.vector), dict(chunk.payload))
        return len(chunks)

    async def delete_stale_chunks(
        self, collection: str, document_id: str, keep_below: int, timeout: float
    ) -> None:
        assert timeout > 0
        coll = self._get(collection)
        stale = [
            pid
            for pid, (_, payload) in coll.points.items()
            if payload.get("document_id") == document_id and int(payload.get("chunk_index", 0)) >= keep_below
        ]
        for pid in stale:
            del coll.points[pid]

    # Test helpers (not part of the protocol).
    def payloads(self, collection: str) -> list[dict[str, Any]]:
        return [payload for _, payload in self._get(collection).points.values()]


class FakeGeneration:
    """Returns (or streams, word by word) a scripted answer; records every prompt."""

    def __init__(self, answer: str = "A scripted answer.") -> None:
        self.answer = answer
        self.prompts: list[list[ChatTurn]] = []
        self.max_new_tokens: list[int] = []

    @property
    def calls(self) -> int:
        return len(self.prompts)

    def _record(self, messages: Sequence[ChatTurn], max_new_tokens: int, timeout: float) -> None:
        assert timeout > 0
        self.prompts.append(list(messages))
        self.max_new_tokens.append(max_new_tokens)

    async def generate(self, messages: Sequence[ChatTurn], max_new_tokens: int, timeout: float) -> str:
        self._record(messages, max_new_tokens, timeout)
        return self.answer

    async def generate_stream(
        self, messages: Sequence[ChatTurn], max_new_tokens: int, timeout: float
    ) -> AsyncIterator[str]:
        self._record(messages, max_new_tokens, timeout)
        for piece in re.findall(r"\S+\s*", self.answer):
            yield piece


@dataclass
class FakeStack:
    """The four fakes together, plus the Backends bundle the gateway takes."""

    moderation: FakeModeration = field(default_factory=FakeModeration)
    embedding: FakeEmbedding = field(default_factory=FakeEmbedding)
    retrieval: FakeRetrieval = field(default_factory=FakeRetrieval)
    generation: FakeGeneration = field(default_factory=FakeGeneration)

    @property
    def backends(self) -> Backends:
        return Backends(self.moderation, self.embedding, self.retrieval, self.generation)

    async def add_collection(self, collection: str) -> None:
        await self.retrieval.ensure_collection(collection, self.embedding.dimension, 1.0)

    async def add_texts(self, collection: str, texts: Mapping[str, str]) -> None:
        """Stores each text as chunk 0 of a document with the given id."""
        await self.add_collection(collection)
        chunks = [
            StoredChunk(
                id=f"{document_id}#0",
                vector=self.embedding.vector(text),
                payload={"document_id": document_id, "chunk_index": 0, "text": text, "source": ""},
            )
            for document_id, text in texts.items()
        ]
        await self.retrieval.upsert(collection, chunks, 1.0)
