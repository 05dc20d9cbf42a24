"""Pipelined ingestion (issue 14): embedding overlapped with upserts, upserts sized by bytes,
bounded memory, documents of one call side by side, over fakes that record when each
embed and upsert call starts and ends."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ragrail.common.config import load_settings
from ragrail.common.deadline import Deadline
from ragrail.common.errors import InvalidArgument, Unavailable
from ragrail.gateway import ingestion
from ragrail.gateway.backends import StoredChunk
from ragrail.gateway.chunking import chunk_text
from ragrail.gateway.ingestion import (
    IngestDocument,
    Ingestor,
    IngestOutcome,
    Pipelining,
    point_id,
    upsert_batches,
    wire_bytes,
)
from tests.unit.fakes import FakeStack, make_runner

COLLECTION = "docs"
CHUNK_CHARS = 60
PARAGRAPHS = [
    "Tickets can be refunded in full up to seven days ahead.",
    "Bicycles need a reservation that costs four euros each.",
    "Wheelchair assistance should be booked a day in advance.",
    "Northwind Rail was founded by Margit Halvorsen in 1921.",
    "The Coastal Line is eighty four kilometres long in total.",
]
TEXT = "\n\n".join(PARAGRAPHS * 4)  # 20 chunks
EMBED_S = 0.005
UPSERT_S = 0.03


def chunks_of(text: str) -> list[str]:
    return chunk_text(text, CHUNK_CHARS, 0)


@dataclass
class Call:
    kind: str  # "embed" or "upsert"
    document_ids: set[str]
    indices: list[int]  # chunk indices: of the points (upsert), or by call order (embed, one document)
    start: float
    end: float = float("inf")


@dataclass
class Timeline:
    """Every embed and upsert call with its start and end (loop time), plus how many chunks
    were embedded but not yet stored, the most at any moment."""

    calls: list[Call] = field(default_factory=list)
    embedded: int = 0
    stored: int = 0
    most_unstored: int = 0
    embeds_now: int = 0
    most_embeds_at_once: int = 0

    def of(self, kind: str) -> list[Call]:
        return [c for c in self.calls if c.kind == kind]


def record(fakes: FakeStack, embed_s: float = EMBED_S, upsert_s: float = UPSERT_S) -> Timeline:
    """Wraps the fakes' embed and upsert: each takes its time and is recorded."""
    timeline = Timeline()
    embed, upsert = fakes.embedding.embed, fakes.retrieval.upsert
    loop = asyncio.get_running_loop()

    async def timed_embed(batch: Sequence[str], timeout: float) -> list[list[float]]:
        # Calls start in the order they are made: with one document, the k-th call embeds
        # the chunks after those of the calls before it.
        first = sum(len(c.indices) for c in timeline.of("embed"))
        call = Call("embed", set(), list(range(first, first + len(batch))), loop.time())
        timeline.calls.append(call)
        timeline.embeds_now += 1
        timeline.most_embeds_at_once = max(timeline.most_embeds_at_once, timeline.embeds_now)
        try:
            await asyncio.sleep(embed_s)
            vectors = await embed(batch, timeout)
        finally:
            timeline.embeds_now -= 1
            call.end = loop.time()
        timeline.embedded += len(vectors)
        timeline.most_unstored = max(timeline.most_unstored, timeline.embedded - timeline.stored)
        return vectors

    async def timed_upsert(collection: str, chunks: Sequence[StoredChunk], timeout: float) -> int:
        call = Call(
            "upsert", {c.payload["document_id"] for c in chunks}, [c.payload["chunk_index"] for c in chunks],
            loop.time(),
        )
        timeline.calls.append(call)
        try:
            await asyncio.sleep(upsert_s)
            result = await upsert(collection, chunks, timeout)
        finally:
            call.end = loop.time()
        timeline.stored += len(chunks)
        return result

    fakes.embedding.embed = timed_embed  # type: ignore[method-assign]
    fakes.retrieval.upsert = timed_upsert  # type: ignore[method-assign]
    return timeline


def overlap(a: Call, b: Call) -> bool:
    return a.start < b.end and b.start < a.end


@pytest.fixture
async def stack() -> FakeStack:
    fakes = FakeStack()
    await fakes.add_collection(COLLECTION)
    return fakes


def make_ingestor(fakes: FakeStack, pipelining: Pipelining, max_documents: int = 8) -> Ingestor:
    return Ingestor(
        fakes.backends, runner=make_runner(), collection=COLLECTION, chunk_chars=CHUNK_CHARS, overlap_chars=0,
        max_documents=max_documents, max_document_chars=100_000, pipelining=pipelining,
    )


def committed(fakes: FakeStack, document_id: str) -> list[str]:
    payloads = [
        p for p in fakes.retrieval.payloads(COLLECTION)
        if p["document_id"] == document_id and p.get("staged") is not True
    ]
    return [p["text"] for p in sorted(payloads, key=lambda p: p["chunk_index"])]


@pytest.fixture
def small_embeds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ingestion, "EMBED_BATCH", 2)


# --- overlap ----------------------------------------------------------------------------


@pytest.mark.usefixtures("small_embeds")
async def test_the_upsert_of_batch_k_overlaps_the_embedding_of_batch_k_plus_1(stack: FakeStack) -> None:
    # Embedding is the bottleneck (a batch takes two 10 ms embed calls, its upsert 10 ms), as
    # with real models: the store works while the next batch is embedded.
    timeline = record(stack, embed_s=0.01, upsert_s=0.01)
    ingestor = make_ingestor(stack, Pipelining(upsert_batch_points=4, embed_calls_in_flight=1))

    [outcome] = await ingestor.ingest([IngestDocument("guide.md", TEXT)], Deadline(30.0))

    assert outcome == IngestOutcome("guide.md", 20, 0)
    upserts = timeline.of("upsert")
    assert [u.indices for u in upserts] == [list(range(k, k + 4)) for k in range(0, 20, 4)]
    for k, upsert in enumerate(upserts[:-1]):
        next_batch = set(upserts[k + 1].indices)
        embeds = [e for e in timeline.of("embed") if next_batch & set(e.indices)]
        assert any(overlap(upsert, e) for e in embeds), f"upsert {k} ran alone"
    assert committed(stack, "guide.md") == chunks_of(TEXT)
    # And the whole took about the upserts' time, not the sum of all calls.
    total = max(c.end for c in timeline.calls) - min(c.start for c in timeline.calls)
    assert total < sum(c.end - c.start for c in timeline.calls)


@pytest.mark.usefixtures("small_embeds")
async def test_embed_calls_of_one_document_overlap_up_to_the_bound(stack: FakeStack) -> None:
    timeline = record(stack, upsert_s=0.0)
    ingestor = make_ingestor(stack, Pipelining(embed_calls_in_flight=3, upsert_batch_points=64))
    await ingestor.ingest([IngestDocument("guide.md", TEXT)], Deadline(30.0))
    assert timeline.most_embeds_at_once == 3
    assert committed(stack, "guide.md") == chunks_of(TEXT)


@pytest.mark.usefixtures("small_embeds")
async def test_the_sequential_path_embeds_everything_before_the_first_upsert(stack: FakeStack) -> None:
    """The baseline (``enabled=False``) is the path before pipelining: no overlap at all."""
    timeline = record(stack)
    ingestor = make_ingestor(stack, Pipelining(enabled=False, upsert_batch_points=4, documents_in_flight=4))

    await ingestor.ingest(
        [IngestDocument("a.md", TEXT), IngestDocument("b.md", TEXT)], Deadline(30.0)
    )

    first_upsert = min(u.start for u in timeline.of("upsert"))
    a_embeds = timeline.of("embed")[:10]
    assert max(e.end for e in a_embeds) <= first_upsert
    assert timeline.most_embeds_at_once == 1
    assert not any(overlap(a, b) for a in timeline.calls for b in timeline.calls if a is not b)
    assert committed(stack, "a.md") == committed(stack, "b.md") == chunks_of(TEXT)


@pytest.mark.parametrize("enabled", [True, False], ids=["pipelined", "sequential"])
async def test_both_paths_store_the_same_points(stack: FakeStack, enabled: bool) -> None:
    other = FakeStack()
    await other.add_collection(COLLECTION)
    for fakes in (stack, other):
        ingestor = make_ingestor(fakes, Pipelining(enabled=fakes is stack and enabled, upsert_batch_points=3))
        ingestor.new_version = lambda: "v1"
        await ingestor.ingest([IngestDocument("guide.md", TEXT, "src")], Deadline(30.0))
    assert stack.retrieval.collections[COLLECTION].points == other.retrieval.collections[COLLECTION].points
    assert point_id("guide.md", 19, "v1") in stack.retrieval.collections[COLLECTION].points


# --- batches sized by bytes -------------------------------------------------------------


def chunk(index: int, text: str, dimension: int = 8) -> StoredChunk:
    return StoredChunk(
        id=point_id("d", index, "v"), vector=[0.5] * dimension,
        payload={"document_id": "d", "version": "v", "chunk_index": index, "text": text, "source": "", "staged": True},
    )


def test_wire_bytes_is_an_upper_bound_of_the_encoded_point_and_close_to_it() -> None:
    from ragrail.gateway.clients import dict_to_struct
    from ragrail.retrieval.v1 import retrieval_pb2

    for text, dimension in [("", 8), ("short", 384), ("é" * 900, 384), ("x" * 4000, 1024)]:
        c = chunk(7, text, dimension)
        encoded = retrieval_pb2.UpsertRequest(
            points=[retrieval_pb2.Point(id=c.id, vector=c.vector, payload=dict_to_struct(c.payload))]
        ).ByteSize()
        assert encoded <= wire_bytes(c) <= encoded * 1.25 + 64, (text[:5], dimension, encoded, wire_bytes(c))


def test_batches_are_cut_by_bytes_and_by_points_in_order() -> None:
    chunks = [chunk(i, "x" * (100 if i % 3 else 900)) for i in range(40)]
    sizes = [wire_bytes(c) for c in chunks]
    limit = 2_000

    batches = list(upsert_batches(chunks, limit, 6))

    assert [c for b in batches for c in b] == chunks  # every chunk once, in order
    assert all(len(b) <= 6 and sum(map(wire_bytes, b)) <= limit for b in batches)
    # Greedy: a batch ends only when the next chunk would cross a bound.
    start = 0
    for batch in batches[:-1]:
        start += len(batch)
        assert len(batch) == 6 or sum(map(wire_bytes, batch)) + sizes[start] > limit
    assert any(len(b) < 6 for b in batches)  # the byte bound did cut some


def test_a_chunk_larger_than_the_byte_bound_goes_alone() -> None:
    chunks = [chunk(0, "a"), chunk(1, "b" * 5000), chunk(2, "c")]
    assert [len(b) for b in upsert_batches(chunks, 1_000, 100)] == [1, 1, 1]


@pytest.mark.parametrize("enabled", [True, False], ids=["pipelined", "sequential"])
@pytest.mark.usefixtures("small_embeds")
async def test_upserts_respect_the_byte_bound(stack: FakeStack, enabled: bool) -> None:
    per_chunk = wire_bytes(chunk(0, PARAGRAPHS[0], stack.embedding.dimension))
    limit = int(per_chunk * 3.5)  # three chunks of this document fit, a fourth does not
    timeline = record(stack, embed_s=0.0, upsert_s=0.0)
    upserted: list[list[StoredChunk]] = []
    upsert = stack.retrieval.upsert

    async def keep(collection: str, chunks: Sequence[StoredChunk], timeout: float) -> int:
        upserted.append(list(chunks))
        return await upsert(collection, chunks, timeout)

    stack.retrieval.upsert = keep  # type: ignore[method-assign]
    ingestor = make_ingestor(stack, Pipelining(enabled=enabled, upsert_batch_bytes=limit, upsert_batch_points=100))

    [outcome] = await ingestor.ingest([IngestDocument("guide.md", TEXT)], Deadline(30.0))

    assert outcome.chunks_stored == 20
    assert all(sum(map(wire_bytes, batch)) <= limit for batch in upserted)
    assert [len(b) for b in upserted] == [3] * 6 + [2]
    assert len(timeline.of("upsert")) == 7


# --- bounded memory ---------------------------------------------------------------------


@pytest.mark.parametrize("batches_in_flight", [1, 2, 3])
@pytest.mark.usefixtures("small_embeds")
async def test_no_more_than_n_batches_are_held_at_once(stack: FakeStack, batches_in_flight: int) -> None:
    """Embedding is fast and upserts slow: embedding must wait for the store instead of
    holding the whole document's vectors."""
    timeline = record(stack, embed_s=0.0, upsert_s=0.02)
    pipelining = Pipelining(upsert_batch_points=2, batches_in_flight=batches_in_flight, embed_calls_in_flight=1)

    [outcome] = await make_ingestor(stack, pipelining).ingest([IngestDocument("guide.md", TEXT)], Deadline(30.0))

    assert outcome.chunks_stored == 20
    # Batches held (filled, waiting or being upserted) plus one embed call's chunks not yet placed.
    bound = batches_in_flight * 2 + ingestion.EMBED_BATCH
    assert timeline.most_unstored <= bound
    assert timeline.most_unstored >= batches_in_flight * 2  # and the bound is used, not undershot


# --- failures ---------------------------------------------------------------------------


POISON = "A poisoned paragraph that the embedding service refuses."


@pytest.mark.usefixtures("small_embeds")
async def test_an_embedding_failure_after_upserts_discards_the_staged_version(stack: FakeStack) -> None:
    await make_ingestor(stack, Pipelining()).ingest([IngestDocument("guide.md", "\n\n".join(PARAGRAPHS))], Deadline(30.0))
    before = committed(stack, "guide.md")
    embed = stack.embedding.embed

    async def refuses_poison(batch: Sequence[str], timeout: float) -> list[list[float]]:
        if any(POISON in text for text in batch):  # every attempt
            raise Unavailable("the embedding service is unavailable (UNAVAILABLE)")
        return await embed(batch, timeout)

    stack.embedding.embed = refuses_poison  # type: ignore[method-assign]
    timeline = record(stack, embed_s=0.001, upsert_s=0.001)
    discards: list[str] = []
    discard = stack.retrieval.discard_document_version

    async def recording_discard(collection: str, document_id: str, version: str, timeout: float) -> None:
        discards.append(document_id)
        await discard(collection, document_id, version, timeout)

    stack.retrieval.discard_document_version = recording_discard  # type: ignore[method-assign]
    ingestor = make_ingestor(stack, Pipelining(upsert_batch_points=4, documents_in_flight=2))

    # The poison is the last chunk: four batches of guide.md are upserted before it fails.
    outcomes = await ingestor.ingest(
        [IngestDocument("guide.md", TEXT + "\n\n" + POISON), IngestDocument("other.md", TEXT)], Deadline(30.0)
    )

    failed, other = outcomes
    assert not failed.committed and isinstance(failed.error, Unavailable)
    assert failed.chunks_stored == 0 and "ingest_discard" in failed.timings
    assert any("guide.md" in u.document_ids for u in timeline.of("upsert"))  # part of it was staged ...
    assert discards == ["guide.md"]  # ... and discarded
    assert committed(stack, "guide.md") == before  # the old version, whole
    assert other == IngestOutcome("other.md", 20, 0) and committed(stack, "other.md") == chunks_of(TEXT)
    assert all(p.get("staged") is not True for p in stack.retrieval.payloads(COLLECTION))


@pytest.mark.usefixtures("small_embeds")
async def test_an_upsert_failure_stops_the_embedding_and_discards(stack: FakeStack) -> None:
    timeline = record(stack, embed_s=0.002, upsert_s=0.01)
    upsert = stack.retrieval.upsert
    calls = 0

    async def second_fails(collection: str, chunks: Sequence[StoredChunk], timeout: float) -> int:
        nonlocal calls
        calls += 1
        if calls >= 2:  # every attempt of the second batch
            raise Unavailable("the retrieval service is unavailable (UNAVAILABLE)")
        return await upsert(collection, chunks, timeout)

    stack.retrieval.upsert = second_fails  # type: ignore[method-assign]
    ingestor = make_ingestor(stack, Pipelining(upsert_batch_points=2, batches_in_flight=2, embed_calls_in_flight=1))

    with pytest.raises(Unavailable):
        await ingestor.ingest([IngestDocument("guide.md", TEXT)], Deadline(30.0))

    assert await stack.retrieval.count(COLLECTION, 1.0) == 0  # the first batch was discarded
    # Embedding stopped near the failure, bounded by the batches in flight; not all 20 chunks.
    assert timeline.embedded <= 2 * 2 + 2 + 2
    assert timeline.embeds_now == 0  # nothing left running


async def test_a_cancelled_pipelined_ingest_stops_every_call_and_leaves_nothing(stack: FakeStack) -> None:
    record(stack, embed_s=0.01, upsert_s=0.05)
    ingestor = make_ingestor(stack, Pipelining(upsert_batch_points=2, documents_in_flight=2))
    task = asyncio.create_task(
        ingestor.ingest([IngestDocument("a.md", TEXT), IngestDocument("b.md", TEXT)], Deadline(30.0))
    )
    while not stack.retrieval.collections[COLLECTION].points:
        await asyncio.sleep(0.001)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.1)  # nothing still running would get to write
    assert await stack.retrieval.count(COLLECTION, 1.0) == 0
    assert len(ingestor.locks) == 0


# --- documents side by side -------------------------------------------------------------


@pytest.mark.usefixtures("small_embeds")
async def test_documents_of_one_call_overlap_and_report_in_order(stack: FakeStack) -> None:
    record(stack)
    ingestor = make_ingestor(stack, Pipelining(documents_in_flight=2))
    loop = asyncio.get_running_loop()
    spans: dict[str, list[float]] = {}
    serialized = ingestor._ingest_serialized

    async def timed(doc: IngestDocument, deadline: Deadline) -> IngestOutcome:
        spans[doc.document_id] = [loop.time(), float("inf")]
        try:
            return await serialized(doc, deadline)
        finally:
            spans[doc.document_id][1] = loop.time()

    ingestor._ingest_serialized = timed  # type: ignore[method-assign]
    documents = [IngestDocument(f"d{i}.md", "\n\n".join(PARAGRAPHS[: i + 1])) for i in range(5)]

    outcomes = await ingestor.ingest(documents, Deadline(30.0))

    assert [o.document_id for o in outcomes] == [d.document_id for d in documents]
    assert [o.chunks_stored for o in outcomes] == [1, 2, 3, 4, 5]
    assert spans["d1.md"][0] < spans["d0.md"][1]  # the second started before the first ended
    for t, _ in spans.values():  # at any start, at most two documents are running
        assert sum(1 for s, e in spans.values() if s <= t < e) <= 2
    assert all(committed(stack, d.document_id) == chunks_of(d.text) for d in documents)


async def test_calls_sharing_ids_in_opposite_orders_finish_whole(stack: FakeStack) -> None:
    """Each document takes its slot, then its id's lock, and holds one lock at a time: two
    calls naming the same ids in opposite orders cannot deadlock, and every id ends whole."""
    record(stack, embed_s=0.001, upsert_s=0.005)
    ingestor = make_ingestor(stack, Pipelining(documents_in_flight=2, upsert_batch_points=3))
    ids = ["a.md", "b.md", "c.md", "d.md"]
    short = "\n\n".join(PARAGRAPHS[:2])

    first, second = await asyncio.wait_for(
        asyncio.gather(
            ingestor.ingest([IngestDocument(i, TEXT) for i in ids], Deadline(30.0)),
            ingestor.ingest([IngestDocument(i, short) for i in reversed(ids)], Deadline(30.0)),
        ),
        10,
    )

    assert all(o.committed for o in first + second)
    for i in ids:
        assert committed(stack, i) in (chunks_of(TEXT), chunks_of(short))
    assert await stack.retrieval.count(COLLECTION, 1.0) == sum(len(committed(stack, i)) for i in ids)
    assert len(ingestor.locks) == 0


def test_pipelining_refuses_nonsense_bounds() -> None:
    for name in ("upsert_batch_bytes", "upsert_batch_points", "batches_in_flight", "embed_calls_in_flight",
                 "documents_in_flight"):
        with pytest.raises(ValueError, match=name):
            Pipelining(**{name: 0})  # type: ignore[arg-type]


# --- settings ---------------------------------------------------------------------------


async def test_the_gateway_builds_its_ingestor_from_gateway_ingest(tmp_path: Path) -> None:
    import grpc

    from ragrail.gateway.server import build_gateway

    ingest = {
        "pipelined": False, "upsert_batch_bytes": 1_000_000, "upsert_batch_points": 100,
        "batches_in_flight": 3, "embed_calls_in_flight": 4, "documents_in_flight": 5,
    }
    settings = load_settings(
        None, data_dir=str(tmp_path), gateway={"ingest": ingest, "feedback_db": str(tmp_path / "feedback.sqlite3")}
    )
    fakes = FakeStack()
    async with grpc.aio.insecure_channel("127.0.0.1:9") as channel:
        servicer, _ = build_gateway(settings, channel, backends_for=lambda _spec: fakes.backends)
        servicer.feedback.close()
    assert servicer.ingestor.pipelining == Pipelining(False, 1_000_000, 100, 3, 4, 5)
    assert load_settings(None).gateway.ingest.pipelined is True  # the default


@pytest.mark.parametrize(
    "override,message",
    [
        ({"gateway": {"ingest": {"upsert_batch_points": 600}}}, r"upsert_batch_points \(600\) must be at most"),
        ({"gateway": {"ingest": {"upsert_batch_bytes": 8 * 1024 * 1024}}}, "upsert_batch_bytes"),
        ({"gateway": {"ingest": {"batches_in_flight": 0}}}, "batches_in_flight"),
    ],
)
def test_ingest_settings_out_of_bounds_are_refused(override: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        load_settings(None, **override)
