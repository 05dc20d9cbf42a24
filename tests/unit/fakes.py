"""In-memory fakes of the gateway's backend protocols (ragrail.gateway.backends).

No network, no models: a deterministic bag-of-words embedder, a real (tiny)
cosine vector store, marker-word moderation and scripted generation. Each fake
records what it was asked, so tests can assert on calls as well as results.

Every fake also has ``faults`` (a ``Faults``): scripted misbehaviour applied at
the start of each call, before the fake does its work: hang, fail with
UNAVAILABLE a number of times and then succeed, raise RESOURCE_EXHAUSTED or
INVALID_ARGUMENT. ``faults.attempts`` counts every call, failed or not.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import re
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ragrail.common.errors import (
    CollectionMissing,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from ragrail.gateway.chunking import chunk_text
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
from ragrail.gateway.resilience import CircuitBreaker, RetryBudget
from ragrail.gateway.stages import StageRunner

_WORD = re.compile(r"\w+")
DIMENSION = 256


class _Hang:
    def __repr__(self) -> str:
        return "HANG"


HANG = _Hang()
Action = BaseException | _Hang | None


class Faults:
    """Scripted misbehaviour: a queue of one action per call, then ``always``.

    An action is None (behave), HANG (wait until ``release()``: a backend that
    ignores its timeout) or an exception instance to raise.
    """

    def __init__(self) -> None:
        self.queue: deque[Action] = deque()
        self.always: Action = None
        self.attempts = 0  # every call, including the failed ones
        self.hanging = 0  # calls waiting in a hang right now
        self.cancelled = 0  # hung calls that were cancelled (timeout, abandoned request)
        self._released = asyncio.Event()

    def succeed(self, times: int) -> Faults:
        """Behave on the next ``times`` calls: ``faults.succeed(2).unavailable()`` fails from the third."""
        return self._script(None, times)

    def hang(self, times: int | None = None) -> Faults:
        """Hang on the next ``times`` calls, or on every call when None."""
        return self._script(HANG, times)

    def unavailable(self, times: int | None = None, message: str = "backend is down") -> Faults:
        """Raise UNAVAILABLE on the next ``times`` calls (then succeed), or always when None."""
        return self._script(Unavailable(message), times)

    def exhausted(self, times: int | None = None) -> Faults:
        return self._script(ResourceExhausted("backend queue is full", retry_after_s=1.0), times)

    def invalid(self, times: int | None = None, message: str = "bad request") -> Faults:
        return self._script(InvalidArgument(message), times)

    def clear(self) -> None:
        self.queue.clear()
        self.always = None

    def release(self) -> None:
        """Lets every hung call (and every later HANG) go on."""
        self._released.set()

    def _script(self, action: Action, times: int | None) -> Faults:
        if times is None:
            self.always = action
        else:
            self.queue.extend([action] * times)
        return self

    async def apply(self) -> None:
        self.attempts += 1
        action = self.queue.popleft() if self.queue else self.always
        if action is None:
            return
        if isinstance(action, _Hang):
            self.hanging += 1
            try:
                await self._released.wait()
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
            finally:
                self.hanging -= 1
            return
        raise action


class FakeClock:
    """A monotonic clock the test moves by hand (for breakers and caches)."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


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
        self.faults = Faults()

    def flag(self, text: str, category: str = "toxicity") -> None:
        """From now on, any text containing ``text`` is flagged for ``category``."""
        self.markers[category] = (*self.markers.get(category, ()), text.lower())

    async def moderate(
        self, texts: Sequence[str], categories: Sequence[str], timeout: float
    ) -> list[ModerationOutcome]:
        assert timeout > 0
        await self.faults.apply()
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
        self.chunked: list[tuple[int, int, int]] = []  # (characters, max_tokens, overlap_tokens)
        self.faults = Faults()

    def vector(self, text: str) -> list[float]:
        values = [0.0] * self.dimension
        for word in _WORD.findall(text.lower()):
            digest = hashlib.blake2b(word.encode(), digest_size=8).digest()
            values[int.from_bytes(digest[:4], "big") % self.dimension] += 1.0 if digest[4] % 2 else -1.0
        norm = math.sqrt(sum(v * v for v in values))
        return [v / norm for v in values] if norm else values

    async def embed(self, texts: Sequence[str], timeout: float) -> list[list[float]]:
        assert timeout > 0
        await self.faults.apply()
        self.calls.append(tuple(texts))
        return [self.vector(t) for t in texts]

    async def chunk(self, text: str, max_tokens: int, overlap_tokens: int, timeout: float) -> list[str]:
        """Characters for tokens (about 4 per token): the real split is the service's."""
        assert timeout > 0
        await self.faults.apply()
        self.chunked.append((len(text), max_tokens, overlap_tokens))
        return chunk_text(text, 4 * max_tokens, 4 * overlap_tokens)


@dataclass
class _Collection:
    dimension: int
    points: dict[str, tuple[list[float], dict[str, Any]]] = field(default_factory=dict)


class FakeRetrieval:
    """A tiny vector store: cosine search with top_k and threshold (score >= threshold)."""

    def __init__(self) -> None:
        self.collections: dict[str, _Collection] = {}
        self.searches: list[tuple[str, int, float]] = []  # (collection, top_k, threshold)
        self.query_texts: list[str | None] = []  # what hybrid searches were given
        self.filters: list[dict[str, Any]] = []  # each search's payload filter ({} without one)
        self.faults = Faults()

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
        await self.faults.apply()
        if collection not in self.collections:
            raise CollectionMissing.named(collection)  # like the gRPC client
        return len(self.collections[collection].points)

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
        assert timeout > 0
        await self.faults.apply()
        self.searches.append((collection, top_k, threshold))
        self.query_texts.append(query_text)
        self.filters.append(dict(filters or {}))
        coll = self.collections.get(collection)
        if coll is None:
            raise CollectionMissing.named(collection)  # like the gRPC client
        self._check_dimension(coll, vector)
        scored = [
            (_cosine(vector, v), payload)
            for v, payload in coll.points.values()
            if _matches(payload, filters or {}) and payload.get("staged") is not True  # like the service
        ]
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
        if collection not in self.collections:
            raise CollectionMissing.named(collection)  # like the gRPC client
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

    async def commit_document(
        self, collection: str, document_id: str, version: str, expected_points: int, timeout: float
    ) -> int:
        """Like the retrieval service's CommitDocument (one step: nothing interleaves)."""
        assert timeout > 0
        await self.faults.apply()
        coll = self._get(collection)
        mine = [p for p, (_, pl) in coll.points.items() if pl.get("document_id") == document_id and pl.get("version") == version]
        if len(mine) != expected_points:
            raise FailedPrecondition(f"document {document_id!r} was replaced by a concurrent ingest")
        others = [p for p, (_, pl) in coll.points.items() if pl.get("document_id") == document_id and p not in mine]
        for pid in others:
            del coll.points[pid]
        for pid in mine:
            coll.points[pid][1].pop("staged", None)
        return len(others)

    async def discard_document_version(
        self, collection: str, document_id: str, version: str, timeout: float
    ) -> None:
        assert timeout > 0
        coll = self._get(collection)
        for pid in [p for p, (_, pl) in coll.points.items() if pl.get("document_id") == document_id and pl.get("version") == version]:
            del coll.points[pid]

    # Test helpers (not part of the protocol).
    def payloads(self, collection: str) -> list[dict[str, Any]]:
        return [payload for _, payload in self._get(collection).points.values()]


def _matches(payload: Mapping[str, Any], filters: Mapping[str, Any]) -> bool:
    """Like the retrieval service's filter: exact match, or any of a list of keywords."""
    for key, wanted in filters.items():
        value = payload.get(key)
        if isinstance(wanted, list | tuple):
            if value not in wanted:
                return False
        elif value != wanted or isinstance(value, bool) != isinstance(wanted, bool):
            return False
    return True


@dataclass
class StreamRecord:
    """What happened to one ``generate_stream`` call."""

    scripted: int  # deltas it would have yielded
    yielded: int = 0
    finished: bool = False  # yielded everything
    closed: bool = False  # aclose()d early (GeneratorExit): the consumer stopped
    cancelled: bool = False  # CancelledError while waiting for the next delta
    timeout: float = 0.0


class FakeGeneration:
    """Returns (or streams) a scripted answer; records every prompt and its params.

    ``answers`` is consumed one per call before falling back to ``answer``;
    ``respond`` (messages, params) -> str overrides both. Streams yield
    ``stream_deltas`` (default: the answer word by word), ``stream_delay_s``
    apart; ``stream_fail_after`` raises UNAVAILABLE after that many deltas and
    ``stream_stall_after`` hangs there (until ``faults.release()``).
    """

    def __init__(
        self,
        answer: str = "A scripted answer.",
        *,
        answers: Iterable[str] = (),
        respond: Callable[[list[ChatTurn], GenerationParams], str] | None = None,
        stream_deltas: Sequence[str] | None = None,
        stream_delay_s: float = 0.0,
        stream_fail_after: int | None = None,
        stream_stall_after: int | None = None,
    ) -> None:
        self.answer = answer
        self.answers: deque[str] = deque(answers)
        self.respond = respond
        self.stream_deltas = stream_deltas
        self.stream_delay_s = stream_delay_s
        self.stream_fail_after = stream_fail_after
        self.stream_stall_after = stream_stall_after
        self.prompts: list[list[ChatTurn]] = []
        self.params: list[GenerationParams] = []
        self.streams: list[StreamRecord] = []
        self.faults = Faults()

    @property
    def calls(self) -> int:
        """Calls that got past ``faults`` (``faults.attempts`` counts all)."""
        return len(self.prompts)

    @property
    def max_new_tokens(self) -> list[int]:
        return [p.max_new_tokens for p in self.params]

    def _record(self, messages: Sequence[ChatTurn], params: GenerationParams, timeout: float) -> None:
        assert timeout > 0
        assert isinstance(params, GenerationParams), params
        self.prompts.append(list(messages))
        self.params.append(params)

    def _next_answer(self, messages: Sequence[ChatTurn], params: GenerationParams) -> str:
        if self.respond is not None:
            return self.respond(list(messages), params)
        return self.answers.popleft() if self.answers else self.answer

    async def generate(self, messages: Sequence[ChatTurn], params: GenerationParams, timeout: float) -> Generated:
        await self.faults.apply()
        self._record(messages, params, timeout)
        answer = self._next_answer(messages, params)
        return Generated(answer, fake_usage(messages, answer))

    async def generate_stream(
        self, messages: Sequence[ChatTurn], params: GenerationParams, timeout: float
    ) -> AsyncIterator[str | TokenUsage]:
        deltas = (
            list(self.stream_deltas)
            if self.stream_deltas is not None
            else re.findall(r"\S+\s*", self._next_answer(messages, params))
        )
        record = StreamRecord(scripted=len(deltas), timeout=timeout)
        self.streams.append(record)
        try:
            await self.faults.apply()
            self._record(messages, params, timeout)
            for index, delta in enumerate(deltas):
                if index == self.stream_fail_after:
                    raise Unavailable("generation replica died mid-stream")
                if index == self.stream_stall_after:
                    await self.faults._released.wait()
                if self.stream_delay_s:
                    await asyncio.sleep(self.stream_delay_s)
                record.yielded += 1
                yield delta
            yield fake_usage(messages, "".join(deltas))
            record.finished = True
        except GeneratorExit:
            record.closed = True
            raise
        except asyncio.CancelledError:
            record.cancelled = True
            raise


def fake_usage(messages: Sequence[ChatTurn], answer: str) -> TokenUsage:
    """A token is a word here: easy to check in tests."""
    return TokenUsage(sum(len(m.content.split()) for m in messages), len(answer.split()))


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

    async def add_texts(
        self, collection: str, texts: Mapping[str, str], payload: Mapping[str, Any] | None = None
    ) -> None:
        """Stores each text as chunk 0 of a document with the given id (and extra ``payload``)."""
        await self.add_collection(collection)
        chunks = [
            StoredChunk(
                id=f"{document_id}#0",
                vector=self.embedding.vector(text),
                payload={"document_id": document_id, "chunk_index": 0, "text": text, "source": "", **(payload or {})},
            )
            for document_id, text in texts.items()
        ]
        await self.retrieval.upsert(collection, chunks, 1.0)


async def no_sleep(_seconds: float) -> None:
    """A backoff that does not wait (still yields to the loop)."""
    await asyncio.sleep(0)


def make_runner(
    *,
    failure_threshold: int = 5,
    cooldown_s: float = 10.0,
    clock: Callable[[], float] | None = None,
    budget: RetryBudget | None = None,
    sleep: Callable[[float], Any] = no_sleep,
) -> StageRunner:
    """A StageRunner like the gateway's, with test knobs (fake clock, instant backoff)."""
    return StageRunner(
        budget if budget is not None else RetryBudget(0.1),
        lambda name: CircuitBreaker(
            name,
            failure_threshold=failure_threshold,
            cooldown_s=cooldown_s,
            **({"clock": clock} if clock is not None else {}),
        ),
        sleep=sleep,
    )
