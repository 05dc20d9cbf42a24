"""Document ingestion: chunk, drop toxic chunks, embed, store idempotently.

Point ids are derived from (document id, chunk index), so ingesting the same
file again overwrites its chunks instead of duplicating them; chunks left over
from a longer earlier version are deleted afterwards.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from ragrail.common.deadline import Deadline
from ragrail.common.errors import require
from ragrail.gateway.backends import Backends, StoredChunk
from ragrail.gateway.chunking import chunk_text

# Fixed namespace: ids must be identical across runs and machines.
_POINT_NAMESPACE = uuid.UUID("6f1c1e36-7a51-4a4c-9d55-2b7d3f0e8a11")
MODERATION_BATCH = 128
EMBED_BATCH = 32
UPSERT_BATCH = 256
# Bounds on what is copied into every chunk's payload (the text is bounded by config):
# without them one request multiplies a field by its chunk count in the store.
MAX_DOCUMENT_ID_CHARS = 512
MAX_SOURCE_CHARS = 1024


@dataclass(frozen=True)
class IngestDocument:
    document_id: str
    text: str
    source: str = ""


@dataclass(frozen=True)
class IngestOutcome:
    document_id: str
    chunks_stored: int
    chunks_dropped: int


def point_id(document_id: str, chunk_index: int) -> str:
    return str(uuid.uuid5(_POINT_NAMESPACE, f"{document_id}\x00{chunk_index}"))


def _require_at_most(value: str, limit: int, field: str) -> None:
    require(len(value) <= limit, f"{field} has {len(value)} characters; the limit is {limit}")


class Ingestor:
    def __init__(
        self,
        backends: Backends,
        *,
        collection: str,
        chunk_chars: int,
        overlap_chars: int,
        max_documents: int,
        max_document_chars: int,
    ) -> None:
        self.backends = backends
        self.collection = collection
        self.chunk_chars = chunk_chars
        self.overlap_chars = overlap_chars
        self.max_documents = max_documents
        self.max_document_chars = max_document_chars

    def validate(self, documents: Sequence[IngestDocument]) -> None:
        require(len(documents) > 0, "documents must not be empty")
        require(
            len(documents) <= self.max_documents,
            f"at most {self.max_documents} documents per call, got {len(documents)}",
        )
        seen: set[str] = set()
        for i, doc in enumerate(documents):
            require(bool(doc.document_id.strip()), f"documents[{i}].document_id is empty")
            _require_at_most(doc.document_id, MAX_DOCUMENT_ID_CHARS, f"documents[{i}].document_id")
            require(doc.document_id not in seen, f"document_id {doc.document_id!r} appears twice")
            seen.add(doc.document_id)
            # A blank text chunks to nothing, and storing nothing deletes the stored version.
            require(bool(doc.text.strip()), f"documents[{i}].text is empty")
            _require_at_most(doc.text, self.max_document_chars, f"documents[{i}].text")
            _require_at_most(doc.source, MAX_SOURCE_CHARS, f"documents[{i}].source")

    async def ingest(self, documents: Sequence[IngestDocument], deadline: Deadline) -> list[IngestOutcome]:
        self.validate(documents)
        return [await self._ingest_one(doc, deadline) for doc in documents]

    async def _ingest_one(self, doc: IngestDocument, deadline: Deadline) -> IngestOutcome:
        chunks = chunk_text(doc.text, self.chunk_chars, self.overlap_chars)
        kept = await self._drop_toxic(chunks, deadline)
        stored: list[StoredChunk] = []
        for start in range(0, len(kept), EMBED_BATCH):
            batch = kept[start : start + EMBED_BATCH]
            vectors = await self.backends.embedding.embed(batch, deadline.timeout("embed"))
            stored.extend(
                StoredChunk(
                    id=point_id(doc.document_id, position),
                    vector=vector,
                    payload={
                        "document_id": doc.document_id,
                        # Position among stored chunks: ids and stale-chunk
                        # deletion both key on it.
                        "chunk_index": position,
                        "text": text,
                        "source": doc.source,
                    },
                )
                for position, (text, vector) in enumerate(zip(batch, vectors, strict=True), start)
            )
        for start in range(0, len(stored), UPSERT_BATCH):
            await self.backends.retrieval.upsert(
                self.collection, stored[start : start + UPSERT_BATCH], deadline.timeout("upsert")
            )
        await self.backends.retrieval.delete_stale_chunks(
            self.collection, doc.document_id, len(stored), deadline.timeout("delete")
        )
        return IngestOutcome(doc.document_id, len(stored), len(chunks) - len(kept))

    async def _drop_toxic(self, chunks: list[str], deadline: Deadline) -> list[str]:
        kept: list[str] = []
        for start in range(0, len(chunks), MODERATION_BATCH):
            batch = chunks[start : start + MODERATION_BATCH]
            verdicts = await self.backends.moderation.moderate(
                batch, ("toxicity",), deadline.timeout("moderate")
            )
            kept.extend(text for text, v in zip(batch, verdicts, strict=True) if not v.flagged)
        return kept
