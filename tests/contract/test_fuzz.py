"""Fuzzing every request message over real gRPC (issue 11, item 3).

Hypothesis draws requests for every RPC of the gateway and of the four services
(tests/contract/fuzz_strategies.py) and sends them over real gRPC to the real servicers
on port 0: the services as test_services_contract builds them (MiniLM, embedded Qdrant, the
tiny Llama, fake moderation scorers), the gateway over the unit fakes. Strings that are not
UTF-8 and corrupt wire formats go as raw bytes through a generic
``channel.unary_unary(path, request_serializer=None, response_deserializer=None)``.

Properties, per call:
- the status is clean (OK or one a caller can act on: never UNKNOWN, INTERNAL, UNAVAILABLE...);
- its detail names no traceback, file path or Python exception class (after removing what
  the request itself said, which a detail may quote);
- it is answered within its deadline (a DEADLINE_EXCEEDED only for the short deadlines some
  cases draw, never for the default one: that would be a hang);
and over the whole run the process's RSS grows by less than ``RSS_GROWTH_BOUND``.

Two sizes, chosen by ``RAGRAIL_FUZZ_PROFILE``: "ci" (the default: 400 cases, ~30 s, derandomized
so CI is reproducible) and "long" (``make fuzz``: over 10,000 cases). The calls run from a
worker thread on a blocking channel, so the servers keep running on the session's loop.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import ctypes
import gc
import json
import os
import re
import threading
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import psutil
import pytest
import pytest_asyncio
import yaml
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tests.contract.fuzz_strategies as fs
from ragrail.embedding.v1 import embedding_pb2
from ragrail.gateway.v1 import gateway_pb2
from ragrail.generation.v1 import generation_pb2
from ragrail.moderation.v1 import moderation_pb2
from ragrail.retrieval.v1 import retrieval_pb2
from tests.contract.gateway_fixtures import GatewayFactory, Harness, spec
from ragrail.gateway.server import SERVICE_NAME as GATEWAY_SERVICE
from tests.contract.test_services_contract import (  # noqa: F401 - stack is a fixture
    EMBED_MAX_TOKENS,
    EMBEDDING,
    GEN_LIMIT,
    GENERATION,
    MODERATION,
    RETRIEVAL,
    Stack,
    stack,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")

# -- profiles --------------------------------------------------------------------------------

_COMMON = dict(
    deadline=None,  # a call's own deadline is the property; hypothesis' would only add noise
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)
# Examples per RPC (typed messages, then raw bytes at 1/RAW_SHARE): 400 cases in CI, ~10,900 long.
settings.register_profile("ci", max_examples=24, derandomize=True, **_COMMON)
settings.register_profile("long", max_examples=640, derandomize=False, **_COMMON)
PROFILE = os.environ.get("RAGRAIL_FUZZ_PROFILE", "ci")
if os.environ.get("RAGRAIL_FUZZ_EXAMPLES"):  # a run of another size, for digging into a finding
    settings.register_profile(PROFILE, settings.get_profile(PROFILE), max_examples=int(os.environ["RAGRAIL_FUZZ_EXAMPLES"]))
RAW_SHARE = 6  # raw-bytes cases are max_examples // RAW_SHARE per RPC

CALL_TIMEOUT_S = 30.0  # the default deadline: hitting it is a hang
SHORT_TIMEOUTS = st.sampled_from([0.001, 0.02, 0.2, 1.0])
SLACK_S = 2.0  # how far past its deadline a call may be answered (a loaded 2-core CI box)
# Memory is measured after malloc_trim (live_rss): without it glibc kept the large transient
# requests' heap and the "long" run read 640-817 MiB. Trimmed, the long run grows 325-373 MiB
# (2026-12-05), most of it the first time Embed, Chunk and Upsert meet new input shapes (the
# models' and tokenizer's caches) and store points. A leak grows with every case; caches
# fill up: test_a_second_round_holds_no_more_memory fuzzes the stateless Embed and Chunk
# again and wants under a quarter of their first round's growth (measured: 28 MiB after 190).
RSS_GROWTH_BOUND = (300 if PROFILE == "ci" else 450) * 2**20
SECOND_ROUND_SHARE = 0.25
REPEATED = ("Embed", "Chunk")  # stateless, and the two whose first round grew memory most

CLEAN = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
}

_EXCEPTION_NAMES = sorted(
    {n for n, o in vars(builtins).items() if isinstance(o, type) and issubclass(o, BaseException)}
    | {"DecodeError", "EncodeError", "ValidationError", "UnexpectedResponse", "ResponseHandlingException", "RpcError", "AioRpcError", "JSONDecodeError"}
)
LEAK = re.compile(
    r"Traceback|File \"|\.py\b|site-packages|/usr/|/home/|/tmp/|/work/|\b(?:"
    + "|".join(map(re.escape, _EXCEPTION_NAMES))
    + r")\b"
)


def leak_in(details: str, request: Message | None) -> str | None:
    """The part of ``details`` that looks like a leak, ignoring what the request said itself."""
    if request is not None:
        for s in sorted(fs.each_string(request), key=len, reverse=True):
            for echo in {s, repr(s)[1:-1], " ".join(s.split()), " ".join(repr(s)[1:-1].split())}:
                if len(echo) >= 3:
                    details = details.replace(echo, " ")
    match = LEAK.search(details)
    return match.group(0) if match else None


# -- the run's record ------------------------------------------------------------------------


@dataclass
class Record:
    statuses: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    # rpc -> the opening words of each detail seen -> count (what rejected the cases)
    details: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    cases: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, rpc: str, code: grpc.StatusCode, details: str = "") -> None:
        with self.lock:
            self.cases += 1
            self.statuses[rpc][code.name] += 1
            if details:
                self.details[rpc][f"{code.name}: {' '.join(details.split()[:4])[:48]}"] += 1

    def table(self) -> str:
        lines = [f"fuzz profile {PROFILE}: {self.cases} cases"]
        for rpc in sorted(self.statuses):
            counts = ", ".join(f"{c} {n}" for c, n in self.statuses[rpc].most_common())
            lines.append(f"  {rpc:<44} {sum(self.statuses[rpc].values()):>6}  {counts}")
        return "\n".join(lines)


RECORD = Record()
def live_rss() -> int:
    """RSS once glibc has handed its free heap back (malloc_trim): what is still held, not the
    high-water mark of the large transient requests the fuzzer sends (up to the 16 MiB message
    bound), which glibc otherwise keeps mapped for reuse."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    return int(psutil.Process().memory_info().rss)


RSS_AFTER: dict[str, int] = {}  # test id -> RSS when it ended: which RPC's cases grew memory


@pytest.fixture(autouse=True)
def rss_after(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    RSS_AFTER[f"{request.node.name} #{len(RSS_AFTER) + 1}"] = live_rss()  # numbered: a test may run twice


@pytest.fixture(scope="module", autouse=True)
def report() -> Iterator[None]:
    started = time.monotonic()
    yield
    text = RECORD.table() + f"\n  in {time.monotonic() - started:.0f} s"
    print("\n" + text)
    out = os.environ.get("RAGRAIL_FUZZ_REPORT")
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(
            json.dumps(
                {"profile": PROFILE, "cases": RECORD.cases, "statuses": RECORD.statuses, "details": RECORD.details,
                 "rss_mib_after": {k: round(v / 2**20) for k, v in RSS_AFTER.items()}},
                indent=2,
                ensure_ascii=False,
            ) + "\n"
        )


# -- calling ---------------------------------------------------------------------------------


def check(rpc: str, request: Message | None, call: Callable[[float], Any], timeout: float | None = None) -> None:
    """Makes one call with ``timeout`` (default CALL_TIMEOUT_S) and checks every property."""
    deadline = timeout or CALL_TIMEOUT_S
    started = time.monotonic()
    try:
        call(deadline)
        code, details = grpc.StatusCode.OK, ""
    except grpc.RpcError as err:
        code, details = err.code(), err.details() or ""
    elapsed = time.monotonic() - started
    RECORD.add(rpc, code, details)
    what = f"{rpc} answered {code.name} {details!r} after {elapsed:.2f} s"
    assert code in CLEAN, what
    assert elapsed <= deadline + SLACK_S, what
    assert not (code == grpc.StatusCode.DEADLINE_EXCEEDED and timeout is None), f"hang: {what}"
    assert "\n" not in details, what
    leak = leak_in(details, request)
    assert leak is None, f"{what}: leaks {leak!r}"


def unary(channel: grpc.Channel, path: str, request: Message, metadata: Any = ()) -> Callable[[float], Any]:
    stub = channel.unary_unary(path, request_serializer=type(request).SerializeToString, response_deserializer=None)
    return lambda t: stub(request, timeout=t, metadata=metadata)


def streaming(channel: grpc.Channel, path: str, request: Message) -> Callable[[float], Any]:
    stub = channel.unary_stream(path, request_serializer=type(request).SerializeToString, response_deserializer=None)
    return lambda t: list(stub(request, timeout=t))


def raw(channel: grpc.Channel, path: str, wire: bytes, stream: bool) -> Callable[[float], Any]:
    if stream:
        s = channel.unary_stream(path, request_serializer=None, response_deserializer=None)
        return lambda t: list(s(wire, timeout=t))
    u = channel.unary_unary(path, request_serializer=None, response_deserializer=None)
    return lambda t: u(wire, timeout=t)


def run_in_thread(fn: Callable[[], None]) -> Any:
    """Runs a blocking hypothesis test off the loop, which keeps serving meanwhile."""
    return asyncio.to_thread(fn)


def profile(scale: float = 1.0) -> settings:
    base = settings.get_profile(PROFILE)
    return settings(base, max_examples=max(1, int(base.max_examples * scale)))


# -- targets ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """One RPC: its path, request strategy, and whether it streams."""

    path: str
    message: type[Message]
    strategy: st.SearchStrategy[Message]
    plausible: st.SearchStrategy[Message] | None = None  # valid shape, hostile content: half the cases
    stream: bool = False
    scale: float = 1.0  # of the profile's examples (the slow model calls get fewer)
    short_deadlines: bool = True

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 2)[-1]


EMBED, RETRIEVE, GENERATE, MODERATE = EMBEDDING, RETRIEVAL, GENERATION, MODERATION
GATEWAY = GATEWAY_SERVICE

FUZZ_COLLECTION = "fuzz3"  # dimension 3, created before the retrieval targets run
DIMENSION = 3
MAX_TOP_K = 10  # VectorStore(max_top_k=10) in test_services_contract's fixture
RETRIEVAL_BATCH = 512
EMBED_BATCH, EMBED_CHARS = 8, 8192
EMBED_DOCUMENT_CHARS = 20_000  # test_services_contract.py's embedder
MODERATE_BATCH, MODERATE_CHARS = 256, 16_000
GATEWAY_DOCUMENTS, GATEWAY_DOCUMENT_CHARS = 16, 20_000
QUERY_CHARS = 2000


def _generate(cls: type[Message]) -> st.SearchStrategy[Message]:
    return fs.generate_fields(GEN_LIMIT).map(lambda f: cls(**{k: v for k, v in f.items() if v is not None}))


# Collections CreateCollection may create: a fixed pool, since each stays for the run.
COLLECTION_POOL = [FUZZ_COLLECTION, *(f"fuzz_c{i}" for i in range(4))]
CONFIGURED_CATEGORIES = [moderation_pb2.CATEGORY_TOXICITY, moderation_pb2.CATEGORY_PROMPT_INJECTION]

SERVICE_TARGETS = [
    Target(f"/{EMBED}/Embed", embedding_pb2.EmbedRequest, fs.embed_request(EMBED_BATCH, EMBED_CHARS), fs.plausible_embed(EMBED_BATCH)),
    Target(f"/{EMBED}/Chunk", embedding_pb2.ChunkRequest, fs.chunk_request(EMBED_DOCUMENT_CHARS), fs.plausible_chunk()),
    Target(
        f"/{MODERATE}/Moderate", moderation_pb2.ModerateRequest, fs.moderate_request(MODERATE_BATCH, MODERATE_CHARS),
        fs.plausible_moderate(CONFIGURED_CATEGORIES),
    ),
    Target(
        f"/{GENERATE}/Generate", generation_pb2.GenerateRequest, _generate(generation_pb2.GenerateRequest),
        fs.plausible_generate(generation_pb2.GenerateRequest), scale=0.75,
    ),
    Target(
        f"/{GENERATE}/GenerateStream", generation_pb2.GenerateStreamRequest, _generate(generation_pb2.GenerateStreamRequest),
        fs.plausible_generate(generation_pb2.GenerateStreamRequest), stream=True, scale=0.75,
    ),
    Target(
        f"/{RETRIEVE}/CreateCollection", retrieval_pb2.CreateCollectionRequest, fs.create_collection_request(FUZZ_COLLECTION),
        fs.plausible_create_collection(COLLECTION_POOL),
    ),
    Target(
        f"/{RETRIEVE}/DescribeCollection", retrieval_pb2.DescribeCollectionRequest,
        fs.describe_collection_request(*COLLECTION_POOL),
    ),
    # Never the fuzz collection itself: the other targets need it.
    Target(
        f"/{RETRIEVE}/DeleteCollection", retrieval_pb2.DeleteCollectionRequest, fs.delete_collection_request(*COLLECTION_POOL[1:])
    ),
    Target(
        f"/{RETRIEVE}/Upsert", retrieval_pb2.UpsertRequest, fs.upsert_request(FUZZ_COLLECTION, DIMENSION, RETRIEVAL_BATCH),
        fs.plausible_upsert(FUZZ_COLLECTION, DIMENSION),
    ),
    Target(
        f"/{RETRIEVE}/Search", retrieval_pb2.SearchRequest, fs.search_request(FUZZ_COLLECTION, DIMENSION, MAX_TOP_K),
        fs.plausible_search(FUZZ_COLLECTION, DIMENSION, MAX_TOP_K),
    ),
    Target(f"/{RETRIEVE}/Delete", retrieval_pb2.DeleteRequest, fs.delete_request(FUZZ_COLLECTION), fs.plausible_delete(FUZZ_COLLECTION)),
]
GATEWAY_TARGETS = [
    Target(
        f"/{GATEWAY}/Run", gateway_pb2.RunRequest, fs.run_request(QUERY_CHARS), fs.plausible_run(gateway_pb2.RunRequest, QUERY_CHARS)
    ),
    Target(
        f"/{GATEWAY}/RunStream", gateway_pb2.RunStreamRequest, fs.run_stream_request(QUERY_CHARS),
        fs.plausible_run(gateway_pb2.RunStreamRequest, QUERY_CHARS), stream=True,
    ),
    Target(
        f"/{GATEWAY}/Ingest", gateway_pb2.IngestRequest, fs.ingest_request(GATEWAY_DOCUMENTS, GATEWAY_DOCUMENT_CHARS),
        fs.plausible_ingest(),
    ),
    Target(f"/{GATEWAY}/Feedback", gateway_pb2.FeedbackRequest, fs.feedback_request(), fs.plausible_feedback()),
    Target(f"/{GATEWAY}/ListPipelines", gateway_pb2.ListPipelinesRequest, st.just(gateway_pb2.ListPipelinesRequest()), scale=0.25),
    Target(f"/{GATEWAY}/Status", gateway_pb2.StatusRequest, st.just(gateway_pb2.StatusRequest()), scale=0.25),
]
# DeleteCollection must not delete the fuzz collection through a raw request either.
_RAW_EXCLUDED = {f"/{RETRIEVE}/DeleteCollection"}

def fuzz_typed(channel: grpc.Channel, target: Target) -> Callable[[], None]:
    """Hostile requests, then (where the target has them) plausible ones: half the cases each."""
    timeouts = st.one_of(st.none(), st.none(), st.none(), SHORT_TIMEOUTS) if target.short_deadlines else st.none()

    def given_requests(strategy: st.SearchStrategy[Message], scale: float) -> Callable[[], None]:
        @profile(scale)
        @given(request=strategy, timeout=timeouts)
        def case(request: Message, timeout: float | None) -> None:
            call = streaming(channel, target.path, request) if target.stream else unary(channel, target.path, request)
            check(target.name, request, call, timeout)

        return case

    if target.plausible is None:
        return given_requests(target.strategy, target.scale)
    hostile = given_requests(target.strategy, target.scale / 2)
    plausible = given_requests(target.plausible, target.scale / 2)

    def both() -> None:
        hostile()
        plausible()

    return both


def fuzz_raw(channel: grpc.Channel, target: Target) -> Callable[[], None]:
    """Raw bytes: a valid message with a string field that is not UTF-8, or garbage."""
    garbage = fs.garbage().map(lambda b: (b, None))
    cases: st.SearchStrategy[tuple[bytes, tuple[int, ...] | None]] = garbage
    if fs.string_paths(target.message.DESCRIPTOR):  # not the empty messages
        invalid = fs.invalid_utf8_request(target.message, None if target.path in _RAW_EXCLUDED else target.strategy)
        cases = st.one_of(invalid, invalid, invalid, garbage)

    @profile(max(1.0, target.scale) / RAW_SHARE)
    @given(case=cases)
    def case_fn(case: tuple[bytes, tuple[int, ...] | None]) -> None:
        wire, path = case
        rpc = f"{target.name} (raw)"
        if path is None:
            check(rpc, None, raw(channel, target.path, wire, target.stream))
            return
        started = time.monotonic()
        try:
            raw(channel, target.path, wire, target.stream)(CALL_TIMEOUT_S)
            code, details = grpc.StatusCode.OK, ""
        except grpc.RpcError as err:
            code, details = err.code(), err.details() or ""
        RECORD.add(rpc, code)
        what = f"{rpc} with bad UTF-8 at field path {path} answered {code.name} {details!r}"
        assert code == grpc.StatusCode.INVALID_ARGUMENT, what
        assert details.startswith("request is not a valid ") and LEAK.search(details) is None, what
        assert time.monotonic() - started <= CALL_TIMEOUT_S, what

    return case_fn


# -- fixtures --------------------------------------------------------------------------------


@dataclass
class Rss:
    start: int = 0


RSS = Rss()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def services(stack: Stack) -> AsyncIterator[grpc.Channel]:  # noqa: F811 - the imported fixture
    """The four services (test_services_contract's fixture), warmed, and a blocking channel to them."""
    await stack.retrieval.CreateCollection(retrieval_pb2.CreateCollectionRequest(collection=FUZZ_COLLECTION, dimension=DIMENSION))
    await stack.embedding.Embed(embedding_pb2.EmbedRequest(texts=["warm up"]))
    await stack.generation.Generate(generation_pb2.GenerateRequest(messages=[generation_pb2.ChatMessage(content="hi")]))
    channel = grpc.insecure_channel(stack.address, options=[("grpc.max_receive_message_length", 64 * 2**20), ("grpc.max_send_message_length", 64 * 2**20)])
    yield channel
    channel.close()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def gateway(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[grpc.Channel]:
    factory = GatewayFactory(tmp_path_factory.mktemp("fuzz-gateway"))
    packaged = Path(__file__).parents[2] / "services" / "ragrail" / "pipelines" / "summarize_sentiment@1.yaml"
    h: Harness = await factory(
        [spec("rag", 1), spec("rag", 2), yaml.safe_load(packaged.read_text())],
        gateway={"max_documents": GATEWAY_DOCUMENTS, "max_document_chars": GATEWAY_DOCUMENT_CHARS},
    )
    channel = grpc.insecure_channel(h.address, options=[("grpc.max_send_message_length", 64 * 2**20)])
    yield channel
    channel.close()
    await factory.close()


def _ids(targets: list[Target]) -> list[str]:
    return [t.name for t in targets]


async def test_rss_baseline(services: grpc.Channel, gateway: grpc.Channel) -> None:
    """Both fixtures up and warm: the memory bound is measured from here."""
    RSS.start = live_rss()


@pytest.mark.parametrize("target", SERVICE_TARGETS, ids=_ids(SERVICE_TARGETS))
async def test_service_requests(services: grpc.Channel, target: Target) -> None:
    await run_in_thread(fuzz_typed(services, target))


@pytest.mark.parametrize("target", GATEWAY_TARGETS, ids=_ids(GATEWAY_TARGETS))
async def test_gateway_requests(gateway: grpc.Channel, target: Target) -> None:
    await run_in_thread(fuzz_typed(gateway, target))


@pytest.mark.parametrize("target", SERVICE_TARGETS + GATEWAY_TARGETS, ids=_ids(SERVICE_TARGETS + GATEWAY_TARGETS))
async def test_raw_bytes(services: grpc.Channel, gateway: grpc.Channel, target: Target) -> None:
    channel = gateway if target.path.startswith(f"/{GATEWAY}/") else services
    await run_in_thread(fuzz_raw(channel, target))


@pytest.mark.parametrize(
    "sampling",
    [
        generation_pb2.SamplingParams(max_new_tokens=3, temperature=1e-45),
        generation_pb2.SamplingParams(max_new_tokens=3, temperature=1.0, repetition_penalty=1e-45),
    ],
    ids=["temperature=1e-45", "repetition_penalty=1e-45"],
)
async def test_a_tiny_divisor_is_answered_cleanly(services: grpc.Channel, sampling: generation_pb2.SamplingParams) -> None:
    request = generation_pb2.GenerateRequest(
        messages=[generation_pb2.ChatMessage(role=generation_pb2.ROLE_USER, content="hello")], sampling=sampling
    )
    call = unary(services, f"/{GENERATE}/Generate", request)

    def once() -> None:
        try:
            call(5.0)
        except grpc.RpcError as err:
            assert err.code() in CLEAN - {grpc.StatusCode.DEADLINE_EXCEEDED}, f"{err.code()}: {err.details()}"

    await run_in_thread(once)


async def test_rss_growth_is_bounded(services: grpc.Channel, gateway: grpc.Channel) -> None:
    assert RSS.start, "runs after test_rss_baseline"
    growth = live_rss() - RSS.start
    print(f"\nRSS growth over the fuzz run: {growth / 2**20:.0f} MiB (bound {RSS_GROWTH_BOUND / 2**20:.0f} MiB)")
    previous = RSS.start
    for name, rss in RSS_AFTER.items():  # where it grew, test by test
        if rss - previous >= 8 * 2**20:
            print(f"  +{(rss - previous) / 2**20:.0f} MiB in {name}")
        previous = rss
    assert growth < RSS_GROWTH_BOUND, f"RSS grew by {growth / 2**20:.0f} MiB"


@pytest.mark.skipif(PROFILE == "ci", reason="the ci profile's first round is too short to fill the caches")
async def test_a_second_round_holds_no_more_memory(services: grpc.Channel, gateway: grpc.Channel) -> None:
    """A leak grows with every case; caches stop growing: fuzz the stateless RPCs whose first
    round grew memory once more, and the process must grow far less than the first time."""
    first_round, previous = 0, RSS.start
    for name, rss in RSS_AFTER.items():
        if any(name.startswith(f"test_service_requests[{rpc}]") for rpc in REPEATED):
            first_round += max(0, rss - previous)
        previous = rss
    before = live_rss()
    for target in (t for t in SERVICE_TARGETS if t.name in REPEATED):
        await run_in_thread(fuzz_typed(services, target))
    growth = live_rss() - before
    print(f"\nRSS growth of {', '.join(REPEATED)}: first round {first_round / 2**20:.0f} MiB, "
          f"second round {growth / 2**20:.0f} MiB")
    assert growth < max(SECOND_ROUND_SHARE * first_round, 16 * 2**20), "the second round grew as the first: a leak"
