"""What the gateway needs from the model services, as plain Python.

The pipeline engine depends on these protocols only; ``clients.py`` implements
them over gRPC, and unit tests implement them with fakes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class ModerationOutcome:
    flagged: bool
    categories: tuple[str, ...] = ()  # e.g. ("toxicity",)


@dataclass(frozen=True)
class Passage:
    """A retrieved chunk."""

    document_id: str
    text: str
    score: float
    chunk_index: int = 0


@dataclass(frozen=True)
class ChatTurn:
    role: str  # system | user | assistant
    content: str


@dataclass(frozen=True)
class GenerationParams:
    """Decoding settings; part of a pipeline version, so answers are reproducible."""

    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class TokenUsage:
    """Tokens a generation call read (prompt) and wrote (completion)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0

    def __add__(self, other: TokenUsage) -> TokenUsage:
        return TokenUsage(
            self.prompt_tokens + other.prompt_tokens, self.completion_tokens + other.completion_tokens
        )


@dataclass(frozen=True)
class Generated:
    text: str
    usage: TokenUsage = TokenUsage()


@dataclass(frozen=True)
class StoredChunk:
    id: str
    vector: list[float]
    payload: dict[str, Any] = field(default_factory=dict)


class ModerationBackend(Protocol):
    async def moderate(
        self, texts: Sequence[str], categories: Sequence[str], timeout: float
    ) -> list[ModerationOutcome]: ...


class EmbeddingBackend(Protocol):
    async def embed(self, texts: Sequence[str], timeout: float) -> list[list[float]]: ...

    async def chunk(self, text: str, max_tokens: int, overlap_tokens: int, timeout: float) -> list[str]: ...


class RetrievalBackend(Protocol):
    """``count`` and ``search`` raise CollectionMissing when the collection does not exist."""

    async def ensure_collection(self, collection: str, dimension: int, timeout: float) -> bool: ...

    async def count(self, collection: str, timeout: float) -> int: ...

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
        """``filters``: payload key -> exact keyword, integer or boolean, or a list of keywords;
        ``query_text`` ranks hybrid (dense + BM25) where the collection has a lexical index."""
        ...

    async def upsert(self, collection: str, chunks: Sequence[StoredChunk], timeout: float) -> int: ...

    async def delete_stale_chunks(
        self, collection: str, document_id: str, keep_below: int, timeout: float
    ) -> None: ...

    async def commit_document(
        self, collection: str, document_id: str, version: str, expected_points: int, timeout: float
    ) -> int:
        """Makes a staged version the visible one; FailedPrecondition when a concurrent
        commit of the same document removed some of its points. Returns points replaced."""
        ...

    async def discard_document_version(
        self, collection: str, document_id: str, version: str, timeout: float
    ) -> None: ...


class GenerationBackend(Protocol):
    async def generate(
        self, messages: Sequence[ChatTurn], params: GenerationParams, timeout: float
    ) -> Generated: ...

    def generate_stream(
        self, messages: Sequence[ChatTurn], params: GenerationParams, timeout: float
    ) -> AsyncIterator[str | TokenUsage]:
        """Text deltas, then the call's TokenUsage as the last item."""
        ...


@dataclass(frozen=True)
class Backends:
    """The four services, each with the name its circuit breaker is keyed by."""

    moderation: ModerationBackend
    embedding: EmbeddingBackend
    retrieval: RetrievalBackend
    generation: GenerationBackend
    names: dict[str, str] = field(
        default_factory=lambda: {s: s for s in ("moderation", "embedding", "retrieval", "generation")}
    )
