"""Document ingestion: chunk, drop toxic chunks, embed, store one whole version at a time.

Each ingest of a document writes a new *version*: its chunks get point ids derived from
(document id, version, chunk index) and the payload keys ``version`` and ``staged: true``,
which the retrieval service's search never returns. Once every chunk is stored, one
``CommitDocument`` call drops the document's other versions and unstages this one; the
retrieval service runs the embedded store's calls on one thread, so no search runs
between the two and a reader sees the old version whole or the new one whole. A failure
before the commit leaves the old version as it was (the staged chunks are discarded, or
stay invisible until the next commit of that document deletes them).

Serialized by id: within one gateway a per-id lock orders concurrent ingests of one
document (the later request wins). Across gateway replicas the commit decides: the last
commit wins whole, and a commit whose staged chunks were deleted by a concurrent one fails
with FAILED_PRECONDITION for that document (retry). Details in docs/reliability.md.

A multi-document call reports each document: committed, or failed with its status (the
others still go ahead); see ``IngestOutcome``.

Pipelined (``Pipelining``, the default): a document's embedding and its upserts overlap. Embed
calls (``EMBED_BATCH`` chunks each, ``embed_calls_in_flight`` at once, 1 by default) fill an upsert batch
bounded by bytes and by points; a full batch goes to the one upsert loop of the document while
the next one is embedded. At most ``batches_in_flight`` batches exist at once (being filled,
waiting or being upserted), so a document's vectors never all sit in memory, and
``documents_in_flight`` documents of one call run side by side (distinct ids, each under its
own lock). All of a version is staged before its commit, as before; a failure anywhere stops
the rest of that document and discards what it staged. ``Pipelining(enabled=False)`` is the
sequential path (embed everything one call at a time, then upsert, one document after
another), kept as the benchmark's baseline.

Every backend call goes through the gateway's ``StageRunner``, as a pipeline stage's does:
its own timeout inside the request's deadline, retries on UNAVAILABLE within the shared
budget, and the same circuit breaker per service as the pipelines, so a retrieval service
that fails ingests also fails queries fast, and the other way round (``CALL_LIMITS``).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from ragrail.common.deadline import Deadline
from ragrail.common.errors import CollectionMissing, RagrailError, require
from ragrail.gateway.backends import Backends, StoredChunk
from ragrail.gateway.chunking import chunk_text
from ragrail.gateway.stages import StageFailure, StageRunner

log = logging.getLogger(__name__)
T = TypeVar("T")

# Fixed namespace: ids must be identical across runs and machines.
_POINT_NAMESPACE = uuid.UUID("6f1c1e36-7a51-4a4c-9d55-2b7d3f0e8a11")
MODERATION_BATCH = 128
EMBED_BATCH = 32
# Most points per upsert (the retrieval service takes up to retrieval.max_batch_size, 512).
UPSERT_BATCH = 256
# Most bytes per upsert, as ``wire_bytes`` estimates them. Ray Serve replicas' gRPC servers
# (the fast path's) accept 4 MiB by default (RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH): half of
# that leaves room for the estimate's error and one oversize chunk. 256 chunks of ~800
# characters with 384-d vectors are ~0.65 MiB, so the point bound usually ends a batch first;
# this one ends it for long chunks or wide vectors (256 x 1024-d float32 alone is 1 MiB).
UPSERT_BATCH_BYTES = 2 * 1024 * 1024
# wire_bytes: per point (id, vector and payload framing) and per payload field (key, Value).
_POINT_FRAMING_BYTES = 16
_FIELD_FRAMING_BYTES = 8
# Bounds on what is copied into every chunk's payload (the text is bounded by config):
# without them one request multiplies a field by its chunk count in the store.
MAX_DOCUMENT_ID_CHARS = 512
MAX_SOURCE_CHARS = 1024
# Cleaning up a failed version gets its own short budget: the caller's may be spent.
DISCARD_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class CallLimits:
    """One kind of ingestion call: its per-attempt timeout (the deadline bounds it too) and
    extra attempts on UNAVAILABLE."""

    timeout_s: float
    retries: int = 1  # a pipeline stage's default


# Stage names (timings, spans, error messages) and limits of every backend call. Each may be
# retried: chunk, moderate and embed only read; a staged version's point ids come from
# (document, version, index), so upserting a batch again rewrites the same points; commit
# and discard of one version converge to the same state however often they run.
# Timeouts are generous: they only catch a backend that hangs, and an upsert may build the
# HNSW index (~10 s per 10k points on 2 loaded cores, docs/retrieval.md).
CALL_LIMITS: Mapping[str, CallLimits] = {
    "ingest_chunk": CallLimits(30.0),
    "ingest_moderate": CallLimits(60.0),
    "ingest_embed": CallLimits(60.0),
    "ingest_collection": CallLimits(30.0),
    "ingest_stage": CallLimits(180.0),
    "ingest_commit": CallLimits(60.0),
    "ingest_discard": CallLimits(DISCARD_TIMEOUT_S),
}


@dataclass(frozen=True)
class Pipelining:
    """How one ingest overlaps its backend calls (the gateway's ``gateway.ingest`` settings).

    ``enabled=False``: the sequential path (each document embedded whole, one call at a time,
    then upserted; one document after another), kept as a baseline for benchmarks."""

    enabled: bool = True
    upsert_batch_bytes: int = UPSERT_BATCH_BYTES
    upsert_batch_points: int | None = None  # None: UPSERT_BATCH, read when a batch is formed
    batches_in_flight: int = 2  # upsert batches of one document held at once
    # Per document. One: on 2 CPU cores concurrent Embed calls cost the embedding replica a
    # quarter of its throughput at 2 and half at 4 (22.3 / 17.1 / 10.7 texts/s, 2026-12-05,
    # docs/benchmarks.md); embedding still overlaps the upserts. Raise it for a GPU replica.
    embed_calls_in_flight: int = 1
    # Per Ingest call. One: a call's documents commit in request order (and backend calls
    # come in document order, which tests that script faults by call rely on).
    documents_in_flight: int = 1

    def __post_init__(self) -> None:
        for name in ("upsert_batch_bytes", "batches_in_flight", "embed_calls_in_flight", "documents_in_flight"):
            if getattr(self, name) < 1:
                raise ValueError(f"Pipelining.{name} must be at least 1")
        if self.upsert_batch_points is not None and self.upsert_batch_points < 1:
            raise ValueError("Pipelining.upsert_batch_points must be at least 1")

    @property
    def max_points(self) -> int:
        return self.upsert_batch_points if self.upsert_batch_points is not None else UPSERT_BATCH


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
    # Set when the document failed: nothing of its new version is visible.
    error: RagrailError | None = None
    # Seconds per ingestion stage (summed over batches and retries), as a pipeline run's.
    timings: dict[str, float] = field(default_factory=dict, compare=False)

    @property
    def committed(self) -> bool:
        return self.error is None


def point_id(document_id: str, chunk_index: int, version: str = "") -> str:
    key = f"{document_id}\x00{version}\x00{chunk_index}" if version else f"{document_id}\x00{chunk_index}"
    return str(uuid.uuid5(_POINT_NAMESPACE, key))


def wire_bytes(chunk: StoredChunk) -> int:
    """About what ``chunk`` adds to an UpsertRequest, rounded up: float32 vector, id, and each
    payload key and value (strings as UTF-8, numbers as 8 bytes), plus framing."""
    size = 4 * len(chunk.vector) + len(chunk.id) + _POINT_FRAMING_BYTES
    for key, value in chunk.payload.items():
        size += len(key) + _FIELD_FRAMING_BYTES
        size += len(value.encode()) if isinstance(value, str) else 8
    return size


class _BatchBuilder:
    """One upsert batch being filled, bounded by points and by ``wire_bytes``; a chunk larger
    than the byte bound alone still makes a batch of its own."""

    def __init__(self, max_bytes: int, max_points: int) -> None:
        self.max_bytes = max_bytes
        self.max_points = max_points
        self.chunks: list[StoredChunk] = []
        self.bytes = 0

    def fits(self, size: int) -> bool:
        return not self.chunks or (len(self.chunks) < self.max_points and self.bytes + size <= self.max_bytes)

    def add(self, chunk: StoredChunk, size: int) -> None:
        self.chunks.append(chunk)
        self.bytes += size

    def take(self) -> list[StoredChunk]:
        batch, self.chunks, self.bytes = self.chunks, [], 0
        return batch


def upsert_batches(chunks: Iterable[StoredChunk], max_bytes: int, max_points: int) -> Iterator[list[StoredChunk]]:
    """``chunks`` in order, cut into batches of at most ``max_points`` and ``max_bytes``."""
    builder = _BatchBuilder(max_bytes, max_points)
    for chunk in chunks:
        size = wire_bytes(chunk)
        if not builder.fits(size):
            yield builder.take()
        builder.add(chunk, size)
    if builder.chunks:
        yield builder.take()


def new_version() -> str:
    """Sortable by time (easier to read in a store), unique by its random tail."""
    return f"{time.time_ns():x}-{uuid.uuid4().hex[:12]}"


class KeyedLocks:
    """One asyncio lock per key, kept only while someone holds or waits for it (bounded)."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    def __len__(self) -> int:
        return len(self._locks)


def _require_at_most(value: str, limit: int, field: str) -> None:
    require(len(value) <= limit, f"{field} has {len(value)} characters; the limit is {limit}")


class Ingestor:
    def __init__(
        self,
        backends: Backends,
        *,
        runner: StageRunner,
        collection: str,
        chunk_chars: int,
        overlap_chars: int,
        max_documents: int,
        max_document_chars: int,
        version_factory: Callable[[], str] = new_version,
        chunking: Literal["tokens", "chars"] = "chars",
        chunk_tokens: int = 200,
        overlap_tokens: int = 32,
        call_limits: Mapping[str, CallLimits] = CALL_LIMITS,
        pipelining: Pipelining = Pipelining(),
    ) -> None:
        """``chunking``: "tokens" asks the embedding service to split each document in its
        model's tokens along the document's structure (no chunk past the model's window);
        "chars" splits here by characters, as before. ``runner``: the gateway's, shared with
        the pipelines (one breaker per service). ``pipelining``: how calls overlap."""
        self.backends = backends
        self.runner = runner
        self.call_limits = call_limits
        self.collection = collection
        self.chunk_chars = chunk_chars
        self.overlap_chars = overlap_chars
        self.max_documents = max_documents
        self.max_document_chars = max_document_chars
        self.new_version = version_factory
        self.chunking = chunking
        self.chunk_tokens = chunk_tokens
        self.overlap_tokens = overlap_tokens
        self.pipelining = pipelining
        self.locks = KeyedLocks()

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
        """One outcome per document, in order; raises the first document's error when none committed."""
        self.validate(documents)
        outcomes = await self._ingest_all(documents, deadline)
        failed = [o.error for o in outcomes if o.error is not None]
        if len(failed) == len(outcomes):
            raise failed[0]
        return outcomes

    async def _ingest_all(self, documents: Sequence[IngestDocument], deadline: Deadline) -> list[IngestOutcome]:
        """Documents are independent: up to ``documents_in_flight`` of them at once. Each takes
        its slot before its id's lock and holds one lock at a time, so calls sharing ids wait
        for each other without a cycle; ids of one call are distinct (``validate``)."""
        width = self.pipelining.documents_in_flight if self.pipelining.enabled else 1
        if width == 1 or len(documents) == 1:
            return [await self._ingest_serialized(doc, deadline) for doc in documents]
        slots = asyncio.Semaphore(width)

        async def one(doc: IngestDocument) -> IngestOutcome:
            async with slots:
                return await self._ingest_serialized(doc, deadline)

        tasks = [asyncio.ensure_future(one(doc)) for doc in documents]
        await _together(tasks)
        return [task.result() for task in tasks]

    async def _ingest_serialized(self, doc: IngestDocument, deadline: Deadline) -> IngestOutcome:
        timings: dict[str, float] = {}
        async with self.locks.hold(doc.document_id):
            try:
                return await self._ingest_one(doc, _Calls(self, deadline, timings))
            except RagrailError as error:
                log.warning("ingest of %r failed: %s", doc.document_id, error.message)
                return IngestOutcome(doc.document_id, 0, 0, error, timings)

    async def _ingest_one(self, doc: IngestDocument, calls: _Calls) -> IngestOutcome:
        # Every version ends in the retrieval service: with its circuit open, embedding
        # a document would be work thrown away.
        calls.refuse_if_open("ingest_stage", "retrieval")
        chunks = await self._chunks(doc.text, calls)
        kept = await self._drop_toxic(chunks, calls)
        version = self.new_version()
        store = self._store_pipelined if self.pipelining.enabled else self._store_sequential
        try:
            stored = await store(doc, kept, version, calls)
            await self._commit(doc.document_id, version, stored, calls)
        except BaseException:
            # Cancelled (the caller left) too: the version must not linger, even invisibly.
            # Nothing to discard when no upsert was sent (a failed embedding, say).
            if calls.staging:
                await self._discard(doc.document_id, version, calls)
            raise
        return IngestOutcome(doc.document_id, stored, len(chunks) - len(kept), timings=calls.timings)

    async def _store_sequential(self, doc: IngestDocument, kept: list[str], version: str, calls: _Calls) -> int:
        """Embeds every chunk, one call at a time, then upserts them batch after batch."""
        stored: list[StoredChunk] = []
        for start in range(0, len(kept), EMBED_BATCH):
            stored.extend(await self._embed(doc, kept, start, version, calls))
        p = self.pipelining
        for batch in upsert_batches(stored, p.upsert_batch_bytes, p.max_points):
            await self._upsert(batch, calls)
        return len(stored)

    async def _store_pipelined(self, doc: IngestDocument, kept: list[str], version: str, calls: _Calls) -> int:
        """Stages ``kept`` as the sequential path does, with embedding and upserts overlapped:
        batch k is upserted while batch k+1 is embedded. A batch takes one of
        ``batches_in_flight`` slots from its first chunk until its upsert returns."""
        p = self.pipelining
        slots = asyncio.Semaphore(p.batches_in_flight)
        full: asyncio.Queue[list[StoredChunk] | None] = asyncio.Queue()
        stored = 0

        async def fill() -> None:
            builder = _BatchBuilder(p.upsert_batch_bytes, p.max_points)
            pending: deque[asyncio.Task[list[StoredChunk]]] = deque()

            async def place(chunks: list[StoredChunk]) -> None:
                for chunk in chunks:
                    size = wire_bytes(chunk)
                    if not builder.fits(size):
                        full.put_nowait(builder.take())
                    if not builder.chunks:
                        await slots.acquire()  # a new batch waits for the oldest to be stored
                    builder.add(chunk, size)
                    if len(builder.chunks) == builder.max_points:
                        full.put_nowait(builder.take())  # nothing more fits: store it now

            try:
                for start in range(0, len(kept), EMBED_BATCH):
                    pending.append(asyncio.ensure_future(self._embed(doc, kept, start, version, calls)))
                    if len(pending) >= p.embed_calls_in_flight:
                        await place(await pending.popleft())
                while pending:
                    await place(await pending.popleft())
            finally:
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
            if builder.chunks:
                full.put_nowait(builder.take())
            full.put_nowait(None)

        async def drain() -> None:
            nonlocal stored
            while (batch := await full.get()) is not None:
                await self._upsert(batch, calls)
                stored += len(batch)
                slots.release()

        await _together([asyncio.ensure_future(fill()), asyncio.ensure_future(drain())])
        return stored

    async def _embed(
        self, doc: IngestDocument, kept: list[str], start: int, version: str, calls: _Calls
    ) -> list[StoredChunk]:
        """Chunks ``kept[start : start + EMBED_BATCH]``, embedded, as staged points."""
        batch = kept[start : start + EMBED_BATCH]
        vectors = await calls("ingest_embed", "embedding", lambda t: self.backends.embedding.embed(batch, t))
        return [
            StoredChunk(
                id=point_id(doc.document_id, position, version),
                vector=vector,
                payload={
                    "document_id": doc.document_id,
                    "version": version,
                    # Position among stored chunks (dense after dropped ones).
                    "chunk_index": position,
                    "text": text,
                    "source": doc.source,
                    "staged": True,  # invisible to search until committed
                },
            )
            for position, (text, vector) in enumerate(zip(batch, vectors, strict=True), start)
        ]

    async def _chunks(self, text: str, calls: _Calls) -> list[str]:
        if self.chunking == "chars":
            return chunk_text(text, self.chunk_chars, self.overlap_chars)
        return await calls(
            "ingest_chunk", "embedding",
            lambda t: self.backends.embedding.chunk(text, self.chunk_tokens, self.overlap_tokens, t),
        )

    async def _upsert(self, batch: list[StoredChunk], calls: _Calls) -> None:
        retrieval = self.backends.retrieval
        calls.staging = True  # from the first attempt on, something of the version may be stored
        try:
            await calls("ingest_stage", "retrieval", lambda t: retrieval.upsert(self.collection, batch, t))
        except CollectionMissing:
            # Deleted while serving (collections are otherwise made only at startup):
            # recreate it with these vectors' dimension rather than fail every ingest.
            log.warning("collection %s is missing; recreating it", self.collection)
            dimension = len(batch[0].vector)
            await calls(
                "ingest_collection", "retrieval", lambda t: retrieval.ensure_collection(self.collection, dimension, t)
            )
            await calls("ingest_stage", "retrieval", lambda t: retrieval.upsert(self.collection, batch, t))

    async def _commit(self, document_id: str, version: str, points: int, calls: _Calls) -> None:
        try:
            await calls(
                "ingest_commit", "retrieval",
                lambda t: self.backends.retrieval.commit_document(self.collection, document_id, version, points, t),
            )
        except CollectionMissing:
            if points:
                raise
            # Every chunk was dropped and there is no collection: nothing to replace.

    async def _discard(self, document_id: str, version: str, calls: _Calls) -> None:
        # Its own deadline: the request's may be what ran out.
        cleanup = _Calls(self, Deadline(DISCARD_TIMEOUT_S), calls.timings)
        try:
            await cleanup(
                "ingest_discard", "retrieval",
                lambda t: self.backends.retrieval.discard_document_version(self.collection, document_id, version, t),
            )
        except (RagrailError, asyncio.CancelledError) as error:
            # Staged points stay invisible; the next commit of this document deletes them.
            log.warning("could not discard version %s of %r: %s", version, document_id, error)

    async def _drop_toxic(self, chunks: list[str], calls: _Calls) -> list[str]:
        kept: list[str] = []
        for start in range(0, len(chunks), MODERATION_BATCH):
            batch = chunks[start : start + MODERATION_BATCH]
            verdicts = await calls(
                "ingest_moderate", "moderation",
                lambda t: self.backends.moderation.moderate(batch, ("toxicity",), t),
            )
            kept.extend(text for text, v in zip(batch, verdicts, strict=True) if not v.flagged)
        return kept


class _Calls:
    """One document's backend calls: through the shared runner, under the request's deadline,
    timed into ``timings``. A stage failure becomes the status the caller gets."""

    def __init__(self, ingestor: Ingestor, deadline: Deadline, timings: dict[str, float]) -> None:
        self.runner = ingestor.runner
        self.names = ingestor.backends.names
        self.limits = ingestor.call_limits
        self.deadline = deadline
        self.timings = timings
        self.staging = False  # an upsert of this document's version has been sent

    async def __call__(self, stage: str, service: str, fn: Callable[[float], Awaitable[T]]) -> T:
        limits = self.limits[stage]
        try:
            return await self.runner.run(
                stage, self.names[service], fn, timeout_s=limits.timeout_s, retries=limits.retries,
                deadline=self.deadline, timings=self.timings,
            )
        except StageFailure as failure:
            raise failure.as_error() from None

    def refuse_if_open(self, stage: str, service: str) -> None:
        try:
            self.runner.refuse_if_open(stage, self.names[service])
        except StageFailure as failure:
            raise failure.as_error() from None


async def _together(tasks: Sequence[asyncio.Future[Any]]) -> None:
    """Awaits ``tasks``; the first to fail cancels the others, which are awaited, and its
    exception is raised as it is (not in a group). Cancelling the caller cancels them all."""
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
