"""Unit tests for document ingestion (ragrail.gateway.ingestion) over fakes."""

from __future__ import annotations

import uuid

import pytest

from ragrail.common.deadline import Deadline
from ragrail.common.errors import DeadlineExceeded, InvalidArgument, Unavailable
from ragrail.gateway import ingestion
from ragrail.gateway.chunking import chunk_text
from ragrail.gateway.ingestion import IngestDocument, Ingestor, IngestOutcome, point_id
from tests.unit.fakes import FakeStack

COLLECTION = "docs"
CHUNK_CHARS = 60
OVERLAP = 0
MAX_DOCUMENTS = 4
MAX_DOCUMENT_CHARS = 2000

PARAGRAPHS = [
    "Tickets can be refunded in full up to seven days ahead.",
    "Bicycles need a reservation that costs four euros each.",
    "Wheelchair assistance should be booked a day in advance.",
    "Northwind Rail was founded by Margit Halvorsen in 1921.",
    "The Coastal Line is eighty four kilometres long in total.",
]
LONG_TEXT = "\n\n".join(PARAGRAPHS)
SHORT_TEXT = "\n\n".join(PARAGRAPHS[:2])


@pytest.fixture
async def stack() -> FakeStack:
    fakes = FakeStack()
    await fakes.add_collection(COLLECTION)
    return fakes


def make_ingestor(fakes: FakeStack) -> Ingestor:
    return Ingestor(
        fakes.backends,
        collection=COLLECTION,
        chunk_chars=CHUNK_CHARS,
        overlap_chars=OVERLAP,
        max_documents=MAX_DOCUMENTS,
        max_document_chars=MAX_DOCUMENT_CHARS,
    )


def chunks_of(text: str) -> list[str]:
    return chunk_text(text, CHUNK_CHARS, OVERLAP)


async def ingest(fakes: FakeStack, *documents: IngestDocument) -> list[IngestOutcome]:
    return await make_ingestor(fakes).ingest(list(documents), Deadline(30.0))


async def count(fakes: FakeStack) -> int:
    return await fakes.retrieval.count(COLLECTION, 1.0)


def stored_of(fakes: FakeStack, document_id: str) -> dict[int, dict]:
    return {
        p["chunk_index"]: p for p in fakes.retrieval.payloads(COLLECTION) if p["document_id"] == document_id
    }


def test_test_documents_make_several_chunks() -> None:
    assert len(chunks_of(LONG_TEXT)) == len(PARAGRAPHS)
    assert 1 < len(chunks_of(SHORT_TEXT)) < len(chunks_of(LONG_TEXT))


# --- point ids --------------------------------------------------------------------------


def test_point_id_is_a_stable_uuid() -> None:
    first = point_id("guide.md", 3)
    assert first == point_id("guide.md", 3)
    assert str(uuid.UUID(first)) == first
    # Derived from a fixed namespace, not from the process: pinned value.
    assert first == str(uuid.uuid5(ingestion._POINT_NAMESPACE, "guide.md\x003"))


def test_point_ids_are_distinct() -> None:
    ids = {point_id(doc, i) for doc in ("a", "a1", "b", "guide.md") for i in range(12)}
    assert len(ids) == 4 * 12
    assert point_id("a", 11) != point_id("a1", 1)  # the separator keeps these apart


async def test_ingest_stores_every_chunk_under_its_point_id(stack: FakeStack) -> None:
    [outcome] = await ingest(stack, IngestDocument("guide.md", LONG_TEXT, "/tmp/guide.md"))

    expected = chunks_of(LONG_TEXT)
    assert outcome == IngestOutcome("guide.md", len(expected), 0)
    assert await count(stack) == len(expected)
    points = stack.retrieval.collections[COLLECTION].points
    for index, text in enumerate(expected):
        vector, payload = points[point_id("guide.md", index)]
        assert payload == {"document_id": "guide.md", "chunk_index": index, "text": text, "source": "/tmp/guide.md"}
        assert vector == stack.embedding.vector(text)


async def test_ingested_text_is_retrievable(stack: FakeStack) -> None:
    await ingest(stack, IngestDocument("guide.md", LONG_TEXT))
    vector = stack.embedding.vector("Who founded Northwind Rail?")
    [best, *_] = await stack.retrieval.search(COLLECTION, vector, 3, 0.0, 1.0)
    assert best.document_id == "guide.md"
    assert best.text == PARAGRAPHS[3]
    assert best.chunk_index == 3


# --- idempotence ------------------------------------------------------------------------


async def test_reingesting_the_same_document_does_not_grow_the_store(stack: FakeStack) -> None:
    doc = IngestDocument("guide.md", LONG_TEXT)
    await ingest(stack, doc)
    before = dict(stack.retrieval.collections[COLLECTION].points)

    [outcome] = await ingest(stack, doc)

    assert outcome.chunks_stored == len(before)
    assert stack.retrieval.collections[COLLECTION].points.keys() == before.keys()
    assert await count(stack) == len(chunks_of(LONG_TEXT))


async def test_reingesting_a_shorter_version_deletes_stale_chunks(stack: FakeStack) -> None:
    await ingest(stack, IngestDocument("guide.md", LONG_TEXT), IngestDocument("other.md", LONG_TEXT))
    others_before = stored_of(stack, "other.md")

    [outcome] = await ingest(stack, IngestDocument("guide.md", SHORT_TEXT))

    short = chunks_of(SHORT_TEXT)
    assert outcome.chunks_stored == len(short)
    guide = stored_of(stack, "guide.md")
    assert sorted(guide) == list(range(len(short)))
    assert [guide[i]["text"] for i in sorted(guide)] == short
    # Another document's chunks with the same indices are untouched.
    assert stored_of(stack, "other.md") == others_before
    assert await count(stack) == len(short) + len(chunks_of(LONG_TEXT))


@pytest.mark.parametrize("blank", ["", " ", "\n\n\t \r\n"])
async def test_reingesting_a_blank_version_is_refused_and_keeps_the_document(stack: FakeStack, blank: str) -> None:
    await ingest(stack, IngestDocument("guide.md", LONG_TEXT))
    before = stored_of(stack, "guide.md")
    with pytest.raises(InvalidArgument) as info:
        await ingest(stack, IngestDocument("guide.md", blank))
    assert info.value.message == "documents[0].text is empty"
    assert stored_of(stack, "guide.md") == before


# --- moderation -------------------------------------------------------------------------


async def test_toxic_chunks_are_dropped_and_counted(stack: FakeStack) -> None:
    paragraphs = list(PARAGRAPHS)
    paragraphs[1] = "Bicycles need a reservation, you toxicword, four euros."
    paragraphs[3] = "Northwind Rail was founded by a toxicword in 1921 or so."
    text = "\n\n".join(paragraphs)
    chunks = chunks_of(text)
    clean = [c for c in chunks if "toxicword" not in c]
    assert len(clean) == len(chunks) - 2

    [outcome] = await ingest(stack, IngestDocument("guide.md", text))

    assert outcome == IngestOutcome("guide.md", len(clean), 2)
    stored = stored_of(stack, "guide.md")
    # Kept chunks are renumbered densely, so ids and stale deletion stay consistent.
    assert sorted(stored) == list(range(len(clean)))
    assert [stored[i]["text"] for i in sorted(stored)] == clean
    assert all(("toxicity",) == cats for _, cats in stack.moderation.calls)
    assert all("toxicword" not in t for batch in stack.embedding.calls for t in batch)


async def test_toxic_chunks_from_a_previous_version_do_not_survive(stack: FakeStack) -> None:
    await ingest(stack, IngestDocument("guide.md", LONG_TEXT))
    toxic = "\n\n".join(p + " toxicword" if i % 2 else p for i, p in enumerate(PARAGRAPHS))
    [outcome] = await ingest(stack, IngestDocument("guide.md", toxic))
    assert outcome.chunks_dropped > 0
    assert await count(stack) == outcome.chunks_stored
    assert all("toxicword" not in p["text"] for p in stack.retrieval.payloads(COLLECTION))


async def test_batching_keeps_positions_and_ids_aligned(stack: FakeStack, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ingestion, "MODERATION_BATCH", 2)
    monkeypatch.setattr(ingestion, "EMBED_BATCH", 3)
    monkeypatch.setattr(ingestion, "UPSERT_BATCH", 2)
    text = "\n\n".join(PARAGRAPHS * 3)
    expected = chunks_of(text)
    assert len(expected) == 15

    [outcome] = await ingest(stack, IngestDocument("guide.md", text))

    assert outcome.chunks_stored == len(expected)
    points = stack.retrieval.collections[COLLECTION].points
    for index, chunk in enumerate(expected):
        assert points[point_id("guide.md", index)][1]["text"] == chunk
    assert [len(batch) for batch in stack.embedding.calls] == [3, 3, 3, 3, 3]


async def test_outcomes_follow_request_order(stack: FakeStack) -> None:
    outcomes = await ingest(stack, IngestDocument("b.md", SHORT_TEXT), IngestDocument("a.md", LONG_TEXT))
    assert [o.document_id for o in outcomes] == ["b.md", "a.md"]
    assert [o.chunks_stored for o in outcomes] == [len(chunks_of(SHORT_TEXT)), len(chunks_of(LONG_TEXT))]


# --- validation -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "documents",
    [
        [],
        [IngestDocument(f"d{i}.md", "text") for i in range(MAX_DOCUMENTS + 1)],
        [IngestDocument("big.md", "x" * (MAX_DOCUMENT_CHARS + 1))],
        [IngestDocument("same.md", "one"), IngestDocument("same.md", "two")],
        [IngestDocument("", "text")],
        [IngestDocument("   ", "text")],
        [IngestDocument("x" * 513, "text")],
        [IngestDocument("blank.md", " \n ")],
        [IngestDocument("a.md", "text", source="s" * (ingestion.MAX_SOURCE_CHARS + 1))],
    ],
    ids=["empty", "too-many", "oversize", "duplicate-id", "empty-id", "blank-id", "long-id", "blank-text", "long-source"],
)
async def test_invalid_requests_are_rejected_before_any_write(
    stack: FakeStack, documents: list[IngestDocument]
) -> None:
    with pytest.raises(InvalidArgument):
        await make_ingestor(stack).ingest(documents, Deadline(30.0))
    assert await count(stack) == 0
    assert stack.moderation.calls == [] and stack.embedding.calls == []


async def test_limits_are_inclusive(stack: FakeStack) -> None:
    documents = [IngestDocument(f"d{i}.md", "x" * MAX_DOCUMENT_CHARS) for i in range(MAX_DOCUMENTS - 1)]
    longest_id = "i" * ingestion.MAX_DOCUMENT_ID_CHARS
    documents.append(IngestDocument(longest_id, "text", source="s" * ingestion.MAX_SOURCE_CHARS))
    outcomes = await ingest(stack, *documents)
    assert len(outcomes) == MAX_DOCUMENTS
    assert stored_of(stack, longest_id)[0]["source"] == "s" * ingestion.MAX_SOURCE_CHARS


@pytest.mark.parametrize(
    "document,message",
    [
        (IngestDocument("a.md", "text", source="s" * 1025), "documents[1].source has 1025 characters; the limit is 1024"),
        (IngestDocument("i" * 513, "text"), "documents[1].document_id has 513 characters; the limit is 512"),
        (
            IngestDocument("a.md", "x" * (MAX_DOCUMENT_CHARS + 1)),
            f"documents[1].text has {MAX_DOCUMENT_CHARS + 1} characters; the limit is {MAX_DOCUMENT_CHARS}",
        ),
    ],
    ids=["source", "document_id", "text"],
)
async def test_an_oversize_field_is_named_with_its_limit(
    stack: FakeStack, document: IngestDocument, message: str
) -> None:
    with pytest.raises(InvalidArgument) as info:
        await ingest(stack, IngestDocument("ok.md", "text"), document)
    assert info.value.message == message


async def test_validation_error_in_a_later_document_writes_nothing(stack: FakeStack) -> None:
    documents = [IngestDocument("good.md", LONG_TEXT), IngestDocument("", "bad")]
    with pytest.raises(InvalidArgument, match=r"documents\[1\]"):
        await make_ingestor(stack).ingest(documents, Deadline(30.0))
    assert await count(stack) == 0


# --- backend failures -------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["moderation", "embedding"])
async def test_a_backend_failure_before_the_upsert_writes_nothing(stack: FakeStack, backend: str) -> None:
    getattr(stack, backend).faults.unavailable()
    with pytest.raises(Unavailable):
        await ingest(stack, IngestDocument("guide.md", LONG_TEXT))
    assert await count(stack) == 0


async def test_an_expired_deadline_stops_ingestion_before_any_call(stack: FakeStack) -> None:
    with pytest.raises(DeadlineExceeded):
        await make_ingestor(stack).ingest([IngestDocument("guide.md", LONG_TEXT)], Deadline(-1.0))
    assert stack.moderation.faults.attempts == 0 and await count(stack) == 0
