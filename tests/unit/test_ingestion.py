"""Unit tests for document ingestion (ragrail.gateway.ingestion) over fakes."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from ragrail.common.deadline import Deadline
from ragrail.common.errors import DeadlineExceeded, FailedPrecondition, InvalidArgument, Unavailable
from ragrail.gateway import ingestion
from ragrail.gateway.chunking import chunk_text
from ragrail.gateway.ingestion import CALL_LIMITS, CallLimits, IngestDocument, Ingestor, IngestOutcome, point_id
from ragrail.gateway.pipeline import FallbackReason, Pipeline, build_pipeline
from ragrail.gateway.resilience import CircuitState
from ragrail.gateway.specs import PipelineSpec
from ragrail.gateway.stages import StageRunner
from tests.unit.fakes import FakeStack, make_runner

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


class Versions:
    """Deterministic versions: v1, v2, ... (one per ingest of a document)."""

    def __init__(self) -> None:
        self.issued = 0

    def __call__(self) -> str:
        self.issued += 1
        return f"v{self.issued}"


def make_ingestor(
    fakes: FakeStack,
    max_documents: int = MAX_DOCUMENTS,
    runner: StageRunner | None = None,
    **limits: CallLimits,
) -> Ingestor:
    """``limits``: stage name -> CallLimits replacing that stage's default."""
    return Ingestor(
        fakes.backends,
        runner=runner or make_runner(),
        collection=COLLECTION,
        chunk_chars=CHUNK_CHARS,
        overlap_chars=OVERLAP,
        max_documents=max_documents,
        max_document_chars=MAX_DOCUMENT_CHARS,
        version_factory=versions_of(fakes),
        call_limits={**CALL_LIMITS, **limits},
    )


def versions_of(fakes: FakeStack) -> Versions:
    """One version sequence per store, shared by every ingestor over it (gateway replicas)."""
    if not hasattr(fakes, "versions"):
        fakes.versions = Versions()  # type: ignore[attr-defined]
    return fakes.versions  # type: ignore[attr-defined]


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
    first = point_id("guide.md", 3, "v1")
    assert first == point_id("guide.md", 3, "v1")
    assert str(uuid.UUID(first)) == first
    # Derived from a fixed namespace, not from the process: pinned value.
    assert first == str(uuid.uuid5(ingestion._POINT_NAMESPACE, "guide.md\x00v1\x003"))
    assert point_id("guide.md", 3, "v2") != first  # a new version never overwrites the old one


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
        vector, payload = points[point_id("guide.md", index, "v1")]
        # Committed: the staged marker is gone.
        assert payload == {
            "document_id": "guide.md", "version": "v1", "chunk_index": index, "text": text, "source": "/tmp/guide.md"
        }
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
    ingestor = make_ingestor(stack)
    await ingestor.ingest([doc], Deadline(30.0))
    before = dict(stack.retrieval.collections[COLLECTION].points)

    [outcome] = await ingestor.ingest([doc], Deadline(30.0))

    assert outcome.chunks_stored == len(before)
    after = stack.retrieval.collections[COLLECTION].points
    assert after.keys() == {point_id("guide.md", i, "v2") for i in range(len(before))}
    assert {p["version"] for _, p in after.values()} == {"v2"}
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
        assert points[point_id("guide.md", index, "v1")][1]["text"] == chunk
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


# --- atomic versions, serialized by id (issue #11) ---------------------------------------


def visible_versions(fakes: FakeStack, document_id: str) -> dict[str, list[str]]:
    """What a reader can see of a document: version -> its chunk texts by index."""
    found: dict[str, dict[int, str]] = {}
    for p in fakes.retrieval.payloads(COLLECTION):
        if p["document_id"] == document_id and p.get("staged") is not True:
            found.setdefault(p["version"], {})[p["chunk_index"]] = p["text"]
    return {v: [chunks[i] for i in sorted(chunks)] for v, chunks in found.items()}


def watch_every_write(fakes: FakeStack, document_id: str, seen: list[dict[str, list[str]]]) -> None:
    """Records what a reader sees after every upsert and commit, and yields to other tasks
    between them (as a gRPC round trip would), so concurrent ingests interleave."""
    retrieval = fakes.retrieval
    upsert, commit = retrieval.upsert, retrieval.commit_document

    async def watched_upsert(*args: object, **kwargs: object) -> int:
        await asyncio.sleep(0)
        result = await upsert(*args, **kwargs)  # type: ignore[arg-type]
        seen.append(visible_versions(fakes, document_id))
        await asyncio.sleep(0)
        return result

    async def watched_commit(*args: object, **kwargs: object) -> int:
        await asyncio.sleep(0)
        result = await commit(*args, **kwargs)  # type: ignore[arg-type]
        seen.append(visible_versions(fakes, document_id))
        return result

    retrieval.upsert = watched_upsert  # type: ignore[method-assign]
    retrieval.commit_document = watched_commit  # type: ignore[method-assign]


WHOLE = {tuple(chunks_of(LONG_TEXT)), tuple(chunks_of(SHORT_TEXT))}


def assert_never_mixed(seen: list[dict[str, list[str]]]) -> None:
    assert seen
    for view in seen:
        assert len(view) <= 1, f"a reader saw two versions at once: {sorted(view)}"
        for chunks in view.values():
            assert tuple(chunks) in WHOLE, f"a reader saw a partial version: {chunks}"


async def test_concurrent_ingests_of_one_id_are_serialized_and_never_mixed(
    stack: FakeStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ingestion, "UPSERT_BATCH", 1)  # one round trip per chunk: many chances to mix
    ingestor = make_ingestor(stack)
    await ingestor.ingest([IngestDocument("guide.md", LONG_TEXT)], Deadline(30.0))
    seen: list[dict[str, list[str]]] = []
    watch_every_write(stack, "guide.md", seen)

    first, second = await asyncio.gather(
        ingestor.ingest([IngestDocument("guide.md", LONG_TEXT + "\n\nAn added paragraph about ferries.")], Deadline(30.0)),
        ingestor.ingest([IngestDocument("guide.md", SHORT_TEXT)], Deadline(30.0)),
    )

    assert first[0].committed and second[0].committed
    WHOLE.add(tuple(chunks_of(LONG_TEXT + "\n\nAn added paragraph about ferries.")))
    assert_never_mixed(seen)
    # The later request wins whole, and nothing of the earlier versions is left.
    assert visible_versions(stack, "guide.md") == {"v3": chunks_of(SHORT_TEXT)}
    assert await count(stack) == len(chunks_of(SHORT_TEXT))
    assert len(ingestor.locks) == 0  # a lock lives only while it is held or awaited


async def test_two_gateways_ingesting_one_id_leave_one_whole_version(
    stack: FakeStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two replicas have no lock in common: the commit decides, and the loser is told."""
    monkeypatch.setattr(ingestion, "UPSERT_BATCH", 1)
    seen: list[dict[str, list[str]]] = []
    watch_every_write(stack, "guide.md", seen)

    long_run, short_run = await asyncio.gather(
        make_ingestor(stack).ingest([IngestDocument("guide.md", LONG_TEXT)], Deadline(30.0)),
        make_ingestor(stack).ingest([IngestDocument("guide.md", SHORT_TEXT)], Deadline(30.0)),
        return_exceptions=True,
    )

    assert_never_mixed(seen)
    [(version, chunks)] = visible_versions(stack, "guide.md").items()
    assert tuple(chunks) in WHOLE
    assert await count(stack) == len(chunks)  # no staged leftovers either
    # Whoever's version is not the stored one was told so (FAILED_PRECONDITION), or
    # committed first and was replaced afterwards.
    for run in (long_run, short_run):
        if isinstance(run, BaseException):
            assert isinstance(run, FailedPrecondition)


async def test_a_failure_mid_document_keeps_the_old_version_whole(
    stack: FakeStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ingestion, "UPSERT_BATCH", 2)
    await ingest(stack, IngestDocument("guide.md", SHORT_TEXT))
    upsert = stack.retrieval.upsert
    calls = 0

    async def second_batch_fails(*args: object, **kwargs: object) -> int:
        nonlocal calls
        calls += 1
        if calls >= 2:  # on every attempt: a retry would otherwise store it
            raise Unavailable("the retrieval service is unavailable (UNAVAILABLE)")
        return await upsert(*args, **kwargs)  # type: ignore[arg-type]

    stack.retrieval.upsert = second_batch_fails  # type: ignore[method-assign]
    with pytest.raises(Unavailable):
        await ingest(stack, IngestDocument("guide.md", LONG_TEXT))

    assert visible_versions(stack, "guide.md") == {"v1": chunks_of(SHORT_TEXT)}
    assert await count(stack) == len(chunks_of(SHORT_TEXT))  # the staged batch was discarded


async def test_document_7_of_10_failing_reports_each_document(stack: FakeStack) -> None:
    documents = [IngestDocument(f"d{i}.md", PARAGRAPHS[i % len(PARAGRAPHS)]) for i in range(1, 11)]
    # One commit per document (each is one chunk): the 7th fails, its retry too.
    stack.retrieval.faults.succeed(6).unavailable(1 + ingestion.CALL_LIMITS["ingest_commit"].retries)

    outcomes = await make_ingestor(stack, max_documents=10).ingest(documents, Deadline(30.0))

    assert [o.document_id for o in outcomes] == [d.document_id for d in documents]
    assert [o.committed for o in outcomes] == [True] * 6 + [False] + [True] * 3
    failed = outcomes[6]
    assert isinstance(failed.error, Unavailable) and failed.chunks_stored == 0
    assert {p["document_id"] for p in stack.retrieval.payloads(COLLECTION)} == {
        d.document_id for d in documents
    } - {"d7.md"}
    # Retrying the failed one alone is enough, and idempotent.
    [retried] = await ingest(stack, documents[6])
    assert retried.committed and await count(stack) == 10


async def test_when_no_document_commits_the_call_fails_with_the_first_error(stack: FakeStack) -> None:
    stack.retrieval.faults.unavailable()
    with pytest.raises(Unavailable):
        await ingest(stack, IngestDocument("a.md", SHORT_TEXT), IngestDocument("b.md", LONG_TEXT))
    stack.retrieval.faults.clear()
    assert await count(stack) == 0


async def test_a_deleted_collection_is_recreated_by_the_next_ingest(stack: FakeStack) -> None:
    await ingest(stack, IngestDocument("guide.md", LONG_TEXT))
    del stack.retrieval.collections[COLLECTION]  # DeleteCollection while serving

    [outcome] = await ingest(stack, IngestDocument("guide.md", SHORT_TEXT))

    assert outcome.committed
    assert stack.retrieval.collections[COLLECTION].dimension == len(stack.embedding.vector("x"))
    assert visible_versions(stack, "guide.md") == {"v2": chunks_of(SHORT_TEXT)}


async def test_a_cancelled_ingest_leaves_nothing_behind(stack: FakeStack) -> None:
    await ingest(stack, IngestDocument("guide.md", SHORT_TEXT))
    stack.retrieval.faults.hang(1)  # the commit never answers; the caller gives up
    task = asyncio.create_task(ingest(stack, IngestDocument("guide.md", LONG_TEXT)))
    while stack.retrieval.faults.hanging == 0:
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert visible_versions(stack, "guide.md") == {"v1": chunks_of(SHORT_TEXT)}
    assert await count(stack) == len(chunks_of(SHORT_TEXT))


async def test_token_chunking_asks_the_embedding_service_and_stores_its_chunks(stack: FakeStack) -> None:
    """chunking: tokens (the gateway's default) leaves the split to the embedding model's service."""
    ingestor = Ingestor(
        stack.backends, runner=make_runner(), collection=COLLECTION, chunk_chars=CHUNK_CHARS, overlap_chars=OVERLAP,
        max_documents=MAX_DOCUMENTS, max_document_chars=MAX_DOCUMENT_CHARS, chunking="tokens",
        chunk_tokens=16, overlap_tokens=0,
    )
    [outcome] = await ingestor.ingest([IngestDocument("doc", LONG_TEXT, "doc.md")], Deadline(10))
    assert stack.embedding.chunked == [(len(LONG_TEXT), 16, 0)]
    expected = await stack.embedding.chunk(LONG_TEXT, 16, 0, timeout=1)
    assert outcome.chunks_stored == len(expected) > 1
    assert [p["text"] for _, p in sorted(stored_of(stack, "doc").items())] == expected


# --- backend calls through the pipelines' StageRunner (issue 12) --------------------------------

GUIDE = IngestDocument("guide.md", LONG_TEXT)


def query_pipeline(fakes: FakeStack, runner: StageRunner) -> Pipeline:
    spec = PipelineSpec.model_validate(
        {"name": "rag", "version": 1, "kind": "rag", "retrieval": {"collection": COLLECTION, "score_threshold": -1.0}}
    )
    return build_pipeline(spec, fakes.backends, runner)


async def test_failing_ingests_open_the_retrieval_circuit_that_queries_see(stack: FakeStack) -> None:
    runner = make_runner(failure_threshold=2, cooldown_s=60)
    stack.retrieval.faults.unavailable()  # the commit, then its retry

    with pytest.raises(Unavailable):
        await make_ingestor(stack, runner=runner).ingest([GUIDE], Deadline(30.0))

    assert runner.breaker("retrieval").state is CircuitState.OPEN
    stack.retrieval.faults.clear()
    result = await query_pipeline(stack, runner).run("Who founded Northwind Rail?", Deadline(30.0))
    assert result.fallback_reason is FallbackReason.BACKEND_UNAVAILABLE and result.failed_stage == "retrieve"
    assert stack.retrieval.searches == []  # the open circuit answered, not the service


async def test_with_the_retrieval_circuit_open_an_ingest_fails_at_once_without_embedding(stack: FakeStack) -> None:
    runner = make_runner(failure_threshold=2, cooldown_s=60)
    stack.retrieval.faults.unavailable()
    await query_pipeline(stack, runner).run("Who founded Northwind Rail?", Deadline(30.0))  # a query opens it
    assert runner.breaker("retrieval").state is CircuitState.OPEN
    stack.retrieval.faults.hang()  # were it called, the ingest would wait for its deadline
    embedded, moderated = len(stack.embedding.calls), len(stack.moderation.calls)

    start = time.monotonic()
    with pytest.raises(Unavailable) as info:
        await asyncio.wait_for(make_ingestor(stack, runner=runner).ingest([GUIDE], Deadline(30.0)), 5)

    assert time.monotonic() - start < 1.0
    assert "circuit for retrieval is open" in info.value.message
    assert (len(stack.embedding.calls), len(stack.moderation.calls)) == (embedded, moderated)
    assert stack.retrieval.faults.hanging == 0


async def test_a_commit_that_fails_once_is_retried_and_commits(stack: FakeStack) -> None:
    stack.retrieval.faults.unavailable(1)

    [outcome] = await ingest(stack, GUIDE)

    assert outcome.committed and stack.retrieval.faults.attempts == 2
    assert visible_versions(stack, "guide.md") == {"v1": chunks_of(LONG_TEXT)}


async def test_an_upsert_that_fails_once_is_retried_without_duplicating_points(
    stack: FakeStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ingestion, "UPSERT_BATCH", 2)
    upsert = stack.retrieval.upsert
    calls = 0

    async def second_call_fails(*args: object, **kwargs: object) -> int:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise Unavailable("the retrieval service is unavailable (UNAVAILABLE)")
        return await upsert(*args, **kwargs)  # type: ignore[arg-type]

    stack.retrieval.upsert = second_call_fails  # type: ignore[method-assign]
    [outcome] = await ingest(stack, GUIDE)

    assert outcome.committed and outcome.chunks_stored == len(chunks_of(LONG_TEXT))
    assert visible_versions(stack, "guide.md") == {"v1": chunks_of(LONG_TEXT)}
    assert await count(stack) == len(chunks_of(LONG_TEXT))  # same point ids: rewritten, not added


async def test_each_call_gets_its_own_timeout_within_the_deadline(stack: FakeStack) -> None:
    seen: list[float] = []
    commit = stack.retrieval.commit_document

    async def recording_commit(*args: object) -> int:
        seen.append(float(args[-1]))  # type: ignore[arg-type]
        return await commit(*args)  # type: ignore[arg-type]

    stack.retrieval.commit_document = recording_commit  # type: ignore[method-assign]
    await make_ingestor(stack, ingest_commit=CallLimits(0.5)).ingest([GUIDE], Deadline(30.0))
    await make_ingestor(stack, ingest_commit=CallLimits(60.0)).ingest([GUIDE], Deadline(0.3))

    assert 0 < seen[0] <= 0.5  # its own limit, far inside the deadline
    assert 0 < seen[1] <= 0.3  # the deadline, far inside its own limit


async def test_a_hung_commit_fails_at_the_deadline_without_counting_against_the_service(stack: FakeStack) -> None:
    runner = make_runner(failure_threshold=1)
    stack.retrieval.faults.hang()
    ingestor = make_ingestor(stack, runner=runner, ingest_commit=CallLimits(60.0))

    start = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        await asyncio.wait_for(ingestor.ingest([GUIDE], Deadline(0.3)), 5)

    assert time.monotonic() - start < 2.0
    # Cut short by the request's deadline: that says nothing about the service.
    assert runner.breaker("retrieval").state is CircuitState.CLOSED
    stack.retrieval.faults.clear()
    stack.retrieval.faults.release()
    assert await count(stack) == 0  # the staged version was discarded


async def test_a_hung_commit_fails_at_its_own_timeout_and_counts_against_the_service(stack: FakeStack) -> None:
    runner = make_runner(failure_threshold=1, cooldown_s=60)
    stack.retrieval.faults.hang()
    ingestor = make_ingestor(stack, runner=runner, ingest_commit=CallLimits(0.1, retries=1))

    start = time.monotonic()
    with pytest.raises(DeadlineExceeded, match="ingest_commit"):
        await asyncio.wait_for(ingestor.ingest([GUIDE], Deadline(30.0)), 5)

    assert time.monotonic() - start < 2.0
    assert runner.breaker("retrieval").state is CircuitState.OPEN  # a timeout is not retried, but counted
    stack.retrieval.faults.clear()
    stack.retrieval.faults.release()


async def test_outcomes_carry_the_time_spent_per_stage(stack: FakeStack) -> None:
    stack.retrieval.faults.succeed(1).unavailable(2)  # the second document's commit, and its retry

    [committed, failed] = await ingest(stack, GUIDE, IngestDocument("other.md", SHORT_TEXT))

    assert committed.timings.keys() == {"ingest_moderate", "ingest_embed", "ingest_stage", "ingest_commit"}
    assert all(seconds >= 0 for seconds in committed.timings.values())
    assert not failed.committed and "ingest_discard" in failed.timings
