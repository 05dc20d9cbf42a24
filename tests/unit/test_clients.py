"""The gateway's gRPC clients (ragrail.gateway.clients) below the integration tier, and the unit
fakes (tests/unit/fakes.py) checked against them.

No Ray: each client talks over real gRPC (127.0.0.1, port 0) to either the real retrieval
servicer over embedded Qdrant, or a scripted servicer that records what arrived and answers
what it is told. The same retrieval scenario runs on the client and on FakeRetrieval: they must
agree, or every gateway test built on the fakes proves less than it claims.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest
import pytest_asyncio

from ragrail.common.errors import (
    CollectionMissing,
    DeadlineExceeded,
    InvalidArgument,
    RagrailError,
    ResourceExhausted,
    Unavailable,
)
from ragrail.common.server import ServiceBinding
from ragrail.gateway import backends as backend_protocols
from ragrail.gateway.backends import ChatTurn, GenerationParams, ModerationOutcome, StoredChunk, TokenUsage
from ragrail.gateway.clients import (
    EmbeddingClient,
    GenerationClient,
    ModerationClient,
    RetrievalClient,
    current_request_id,
    map_rpc_error,
)
from ragrail.generation.v1 import generation_pb2, generation_pb2_grpc
from ragrail.moderation.v1 import moderation_pb2, moderation_pb2_grpc
from ragrail.retrieval.core import VectorStore
from ragrail.retrieval.servicer import RetrievalServicer
from ragrail.retrieval.v1 import retrieval_pb2, retrieval_pb2_grpc
from tests.unit.fakes import FakeEmbedding, FakeGeneration, FakeModeration, FakeRetrieval

RETRIEVAL = retrieval_pb2.DESCRIPTOR.services_by_name["RetrievalService"].full_name
MODERATION = moderation_pb2.DESCRIPTOR.services_by_name["ModerationService"].full_name
GENERATION = generation_pb2.DESCRIPTOR.services_by_name["GenerationService"].full_name


def uid(n: int) -> str:
    return str(uuid.UUID(int=n))


# -- the fakes have the clients' shape ---------------------------------------------------------

PAIRS = [
    (FakeModeration, ModerationClient, backend_protocols.ModerationBackend),
    (FakeEmbedding, EmbeddingClient, backend_protocols.EmbeddingBackend),
    (FakeRetrieval, RetrievalClient, backend_protocols.RetrievalBackend),
    (FakeGeneration, GenerationClient, backend_protocols.GenerationBackend),
]


def _public_methods(cls: type) -> dict[str, Callable[..., Any]]:
    return {n: f for n, f in inspect.getmembers(cls, inspect.isfunction) if not n.startswith("_")}


@pytest.mark.parametrize(("fake", "client", "protocol"), PAIRS, ids=lambda c: c.__name__)
def test_fake_and_client_implement_the_protocol_with_the_same_signatures(
    fake: type, client: type, protocol: type
) -> None:
    """Same parameter names, order and defaults, same kind (coroutine or async generator); the
    protocol's parameters come first (an implementation may take more, with defaults)."""
    fake_methods, client_methods = _public_methods(fake), _public_methods(client)
    for name, spec in _public_methods(protocol).items():
        assert name in fake_methods and name in client_methods, name
        want = [(p.name, p.default) for p in inspect.signature(spec).parameters.values()]
        fake_params = [(p.name, p.default) for p in inspect.signature(fake_methods[name]).parameters.values()]
        client_params = [(p.name, p.default) for p in inspect.signature(client_methods[name]).parameters.values()]
        assert fake_params == client_params, name
        assert client_params[: len(want)] == want, name
        assert all(default is not inspect.Parameter.empty for _, default in client_params[len(want) :]), name
        assert inspect.isasyncgenfunction(fake_methods[name]) == inspect.isasyncgenfunction(client_methods[name])
        assert inspect.iscoroutinefunction(fake_methods[name]) == inspect.iscoroutinefunction(client_methods[name])


# -- retrieval: the client over the real servicer, and the fake, agree --------------------------


@pytest_asyncio.fixture(loop_scope="session")
async def stores(grpc_server: Any, tmp_path: Any) -> AsyncIterator[list[Any]]:
    store = VectorStore(path=str(tmp_path / "qdrant"), max_top_k=10)
    binding = ServiceBinding(RetrievalServicer(store), retrieval_pb2_grpc.add_RetrievalServiceServicer_to_server, RETRIEVAL)
    client = RetrievalClient((await grpc_server([binding])).channel)
    yield [client, FakeRetrieval()]
    store.close()


CHUNKS = [
    StoredChunk(uid(1), [1.0, 0.0, 0.0], {"document_id": "a.md", "text": "alpha", "chunk_index": 0, "lang": "en"}),
    StoredChunk(uid(2), [0.8, 0.6, 0.0], {"document_id": "a.md", "text": "alpha two", "chunk_index": 1, "lang": "fr"}),
    StoredChunk(uid(3), [0.6, 0.8, 0.0], {"document_id": "b.md", "text": "bravo", "chunk_index": 0, "lang": "en"}),
    StoredChunk(uid(4), [0.0, 0.0, 1.0], {"document_id": "c.md", "text": "charlie", "chunk_index": 0, "lang": "en"}),
]


async def scenario(store: Any) -> list[Any]:
    """What the gateway asks of retrieval, with every outcome (value or error class) recorded."""
    seen: list[Any] = []

    async def record(call: Any) -> None:
        try:
            value = await call
        except RagrailError as exc:
            value = (type(exc).__name__, exc.message if isinstance(exc, CollectionMissing) else "")
        if isinstance(value, list):
            value = [(p.document_id, p.text, round(p.score, 4), p.chunk_index) for p in value]
        seen.append(value)

    await record(store.count("docs", 5.0))  # missing collection
    await record(store.search("docs", [1.0, 0.0, 0.0], 3, -1.0, 5.0))
    await record(store.ensure_collection("docs", 3, 5.0))  # created
    await record(store.ensure_collection("docs", 3, 5.0))  # already there
    await record(store.search("docs", [1.0, 0.0, 0.0], 3, -1.0, 5.0))  # empty: a miss, not an error
    await record(store.upsert("docs", CHUNKS, 5.0))
    await record(store.count("docs", 5.0))
    await record(store.search("docs", [1.0, 0.0, 0.0], 2, -1.0, 5.0))  # top_k, best first
    await record(store.search("docs", [1.0, 0.0, 0.0], 10, 0.5, 5.0))  # threshold: score >= 0.5
    await record(store.search("docs", [1.0, 0.0, 0.0], 10, -1.0, 5.0, filters={"lang": "en"}))
    await record(store.search("docs", [1.0, 0.0, 0.0], 10, -1.0, 5.0, filters={"document_id": ["a.md", "b.md"]}))
    await record(store.search("docs", [1.0, 0.0, 0.0], 10, -1.0, 5.0, filters={"chunk_index": 1}))
    await record(store.upsert("docs", [StoredChunk(uid(9), [1.0, 0.0], {})], 5.0))  # wrong dimension
    await record(store.upsert("nowhere", CHUNKS[:1], 5.0))
    return seen


async def test_the_retrieval_fake_answers_as_the_client_over_the_real_service_does(stores: list[Any]) -> None:
    client, fake = stores
    real = await scenario(client)
    assert real[0] == real[1] == ("CollectionMissing", "collection 'docs' does not exist; ingest documents first")
    assert real[2:4] == [True, False]
    assert real[5:7] == [4, 4]
    assert [p[0] for p in real[7]] == ["a.md", "a.md"] and real[7][0][3] == 0
    assert [p[1] for p in real[8]] == ["alpha", "alpha two", "bravo"]  # 1.0, 0.8, 0.6; 0.0 is below
    assert [p[1] for p in real[9]] == ["alpha", "bravo", "charlie"]
    assert {p[1] for p in real[10]} == {"alpha", "alpha two", "bravo"}
    assert [p[1] for p in real[11]] == ["alpha two"]
    assert real[12][0] == "InvalidArgument" and real[13][0] == "CollectionMissing"
    assert await scenario(fake) == real


# -- the other clients: what goes on the wire, and what comes back ------------------------------


class Scripted:
    """A servicer that records each request and its metadata and answers from a script."""

    def __init__(self) -> None:
        self.requests: list[Any] = []
        self.metadata: list[dict[str, str]] = []
        self.fail: grpc.StatusCode | None = None
        self.cancelled = False
        self.hold = False  # streams stop after their first delta until cancelled

    async def _take(self, request: Any, context: grpc.aio.ServicerContext) -> None:
        self.requests.append(request)
        self.metadata.append({k: v for k, v in context.invocation_metadata() if isinstance(v, str)})
        if self.fail is not None:
            await context.abort(self.fail, f"scripted {self.fail.name}")


class ScriptedModeration(moderation_pb2_grpc.ModerationServiceServicer, Scripted):
    async def Moderate(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await self._take(request, context)
        return moderation_pb2.ModerateResponse(
            results=[
                moderation_pb2.ModerationResult(
                    flagged="bad" in text,
                    flagged_categories=[moderation_pb2.CATEGORY_TOXICITY] if "bad" in text else [],
                )
                for text in request.texts
            ]
        )


class ScriptedGeneration(generation_pb2_grpc.GenerationServiceServicer, Scripted):
    async def Generate(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await self._take(request, context)
        usage = generation_pb2.Usage(prompt_tokens=7, completion_tokens=3)
        return generation_pb2.GenerateResponse(text="an answer", usage=usage)

    async def GenerateStream(self, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        await self._take(request, context)
        for word in ("an ", "answer"):
            yield generation_pb2.GenerateStreamResponse(delta=word)
            if self.hold:
                try:
                    await asyncio.Event().wait()
                except asyncio.CancelledError:  # grpc cancels the handler when the client does
                    self.cancelled = True
                    raise
        yield generation_pb2.GenerateStreamResponse(usage=generation_pb2.Usage(prompt_tokens=7, completion_tokens=2))


@pytest_asyncio.fixture(loop_scope="session")
async def scripted(grpc_server: Any) -> tuple[ScriptedModeration, ScriptedGeneration, grpc.aio.Channel]:
    moderation, generation = ScriptedModeration(), ScriptedGeneration()
    running = await grpc_server(
        [
            ServiceBinding(moderation, moderation_pb2_grpc.add_ModerationServiceServicer_to_server, MODERATION),
            ServiceBinding(generation, generation_pb2_grpc.add_GenerationServiceServicer_to_server, GENERATION),
        ]
    )
    return moderation, generation, running.channel


async def test_moderation_client_maps_categories_both_ways_and_routes_by_application(scripted: Any) -> None:
    moderation, _, channel = scripted
    client = ModerationClient(channel, "moderation-v2")
    token = current_request_id.set("rid-7")
    try:
        outcomes = await client.moderate(["fine", "bad words"], ["toxicity", "pii"], 5.0)
    finally:
        current_request_id.reset(token)
    assert outcomes == [ModerationOutcome(False, ()), ModerationOutcome(True, ("toxicity",))]
    [request] = moderation.requests
    assert list(request.categories) == [moderation_pb2.CATEGORY_TOXICITY, moderation_pb2.CATEGORY_PII]
    assert moderation.metadata[0]["application"] == "moderation-v2"  # Serve routes by it
    assert moderation.metadata[0]["request_id"] == "rid-7"
    # The fake speaks the same language: the same outcome type for the same category names.
    fake = FakeModeration({"toxicity": ["bad"]})
    assert await fake.moderate(["fine", "bad words"], ["toxicity", "pii"], 5.0) == outcomes


async def test_generation_client_sends_roles_and_sampling_and_reads_usage(scripted: Any) -> None:
    _, generation, channel = scripted
    client = GenerationClient(channel)
    params = GenerationParams(max_new_tokens=32, temperature=0.5, top_p=0.9, seed=11, stop=("\n\n",))
    turns = [ChatTurn("system", "be brief"), ChatTurn("user", "hi")]
    generated = await client.generate(turns, params, 5.0)
    assert (generated.text, generated.usage) == ("an answer", TokenUsage(7, 3))
    request = generation.requests[-1]
    assert [(m.role, m.content) for m in request.messages] == [
        (generation_pb2.ROLE_SYSTEM, "be brief"),
        (generation_pb2.ROLE_USER, "hi"),
    ]
    s = request.sampling
    assert (s.max_new_tokens, s.top_p, s.seed, list(s.stop)) == (32, pytest.approx(0.9), 11, ["\n\n"])
    assert math.isclose(s.temperature, 0.5)

    events = [e async for e in client.generate_stream(turns, params, 5.0)]
    assert events == ["an ", "answer", TokenUsage(7, 2)]
    fake_events = [e async for e in FakeGeneration().generate_stream(turns, params, 5.0)]
    assert all(isinstance(e, str) for e in fake_events[:-1]) and isinstance(fake_events[-1], TokenUsage)


async def test_a_stream_left_early_is_cancelled_at_the_service(scripted: Any) -> None:
    _, generation, channel = scripted
    generation.hold = True
    stream = GenerationClient(channel).generate_stream([ChatTurn("user", "hi")], GenerationParams(8), 5.0)
    assert await stream.__anext__() == "an "
    await stream.aclose()
    for _ in range(200):  # the service sees the cancellation over the wire
        if generation.cancelled:
            break
        await asyncio.sleep(0.01)
    assert generation.cancelled


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (grpc.StatusCode.DEADLINE_EXCEEDED, DeadlineExceeded),
        (grpc.StatusCode.INVALID_ARGUMENT, InvalidArgument),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, ResourceExhausted),
        (grpc.StatusCode.UNAVAILABLE, Unavailable),
        (grpc.StatusCode.INTERNAL, Unavailable),
        (grpc.StatusCode.NOT_FOUND, Unavailable),  # Serve's "no such application": an outage
    ],
)
async def test_service_failures_reach_the_gateway_as_domain_errors(
    scripted: Any, code: grpc.StatusCode, expected: type[RagrailError]
) -> None:
    moderation, _, channel = scripted
    moderation.fail = code
    try:
        with pytest.raises(expected) as caught:
            await ModerationClient(channel).moderate(["x"], ["toxicity"], 5.0)
    finally:
        moderation.fail = None
    assert "\n" not in caught.value.message and "Traceback" not in caught.value.message
    assert type(map_rpc_error("moderation", _rpc_error(code))) is expected


def _rpc_error(code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details="d")
