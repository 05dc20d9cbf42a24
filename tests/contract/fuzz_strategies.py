"""Hypothesis strategies for every request message, and hand-built wire bytes.

Values mix the plausible (so requests get past validation into the cores) with the hostile:
sizes at and past each limit, unicode (astral, combining marks, right-to-left, NUL), huge
repeated fields, extreme numbers (NaN, infinities, negatives, int64 and uint32 bounds) and
unknown enum values. Strings a protobuf message cannot hold (surrogates, bytes that are not
UTF-8) are built as raw wire bytes by ``invalid_utf8_request``: a valid message with one more
occurrence of a string field, at any depth, whose bytes are not UTF-8.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterator
from typing import Any

from google.protobuf import descriptor as _descriptor
from google.protobuf.message import Message
from hypothesis import strategies as st

from ragrail.embedding.v1 import embedding_pb2
from ragrail.gateway.v1 import gateway_pb2
from ragrail.generation.v1 import generation_pb2
from ragrail.moderation.v1 import moderation_pb2
from ragrail.retrieval.v1 import retrieval_pb2

INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)
UINT32_MAX = 2**32 - 1
UINT64_MAX = 2**64 - 1

# -- strings ---------------------------------------------------------------------------------

# Protobuf strings are UTF-8: surrogates cannot be encoded, so every alphabet leaves them out
# (the raw-bytes cases below send them, and other invalid UTF-8, anyway).
_ANY = st.characters(exclude_categories=("Cs",))
_ASTRAL = st.characters(min_codepoint=0x10000, max_codepoint=0x10FFFF, exclude_categories=("Cs",))
_COMBINING = st.characters(categories=("Mn", "Mc", "Me"))
_RTL = st.sampled_from(["\u202e", "\u202b", "\u200f", "\u061c", "\u2067"]) | st.characters(
    min_codepoint=0x0590, max_codepoint=0x08FF, exclude_categories=("Cs", "Cn")
)
_CONTROL = st.sampled_from(["\x00", "\t", "\n", "\r", "\x1b", "\x7f", "\u2028", "\ufeff", "\u200b"])
_ALPHABET = st.one_of(
    st.characters(min_codepoint=0x20, max_codepoint=0x7E), _ANY, _ASTRAL, _COMBINING, _RTL, _CONTROL
)
_REPEATABLE = ["a", " ", "\x00", "é", "e\u0301", "\u202e", "😀", "\U0010fffd", "字", "\u0301"]
TRICKY = [
    "",
    " ",
    "\x00",
    "\x00" * 8,
    "\t\n\r ",
    "\u200b",
    "\ufeff",
    "\u202eevil",
    "e\u0301" * 3,
    "\u0301",
    "😀",
    "\U0010fffd",
    "%s%n{0}",
    "' OR 1=1 --",
    "../../etc/passwd",
    "${jndi:x}",
]


def text(max_size: int = 64) -> st.SearchStrategy[str]:
    """Any UTF-8-encodable text: short mixes of every alphabet, or a tricky constant."""
    return st.one_of(st.text(_ALPHABET, max_size=max_size), st.sampled_from(TRICKY))


def sized(*lengths: int) -> st.SearchStrategy[str]:
    """One character repeated to exactly one of ``lengths`` (limits and one past them)."""
    return st.builds(lambda c, n: (c * n)[:n], st.sampled_from(_REPEATABLE), st.sampled_from(lengths))


def mostly(good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``good`` three times in four: a request with every field hostile only tests the first check."""
    return st.one_of(good, good, good, bad)


def field_text(plausible: list[str], *lengths: int, max_size: int = 64) -> st.SearchStrategy[str]:
    """A field's plausible values (half the time), fuzzed text, or a size around its limits."""
    parts = [st.sampled_from(plausible), st.sampled_from(plausible), text(max_size)] if plausible else [text(max_size)]
    if lengths:
        parts.append(sized(*lengths))
    return st.one_of(*parts)


# -- numbers ---------------------------------------------------------------------------------

FLOATS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=32),
    st.sampled_from([0.0, -0.0, 1.0, -1.0, math.nan, math.inf, -math.inf, 3.4e38, -3.4e38, 1e-45]),
)
DOUBLES = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, math.nan, math.inf, -math.inf, 1.7976931348623157e308, 5e-324]),
)


def uint32(*plausible: int) -> st.SearchStrategy[int]:
    return st.one_of(st.sampled_from([0, 1, UINT32_MAX, 2**31, *plausible]), st.integers(0, UINT32_MAX))


INT64 = st.one_of(st.sampled_from([0, -1, INT64_MAX, INT64_MIN, 2**53 + 1, -(2**53) - 1]), st.integers(INT64_MIN, INT64_MAX))
UINT64 = st.one_of(st.sampled_from([0, 1, UINT64_MAX, INT64_MAX]), st.integers(0, UINT64_MAX))


def enum(values: list[int]) -> st.SearchStrategy[int]:
    """A known value, or an unknown one (proto3 enums are open: any int32 goes on the wire)."""
    unknown = st.sampled_from([-1, 99, 2**31 - 1, -(2**31)]) | st.integers(-(2**31), 2**31 - 1)
    return mostly(st.sampled_from(values), unknown)


def repeated(
    element: st.SearchStrategy[Any], plausible: int, filler: Any = None, *huge: int
) -> st.SearchStrategy[list[Any]]:
    """Up to ``plausible`` elements, or the small ``filler`` repeated ``huge`` times (a batch
    far past every limit that still fits in a message: a huge list of huge elements would
    only test the client's memory)."""
    parts: list[st.SearchStrategy[list[Any]]] = [st.lists(element, max_size=plausible)] * 3
    if huge:
        parts.append(st.builds(lambda n: [filler] * n, st.sampled_from(huge)))
    return st.one_of(*parts)


# -- embedding, moderation -------------------------------------------------------------------

SENTENCES = ["When does the night train leave?", "Bicycles need a reservation.", "you idiot", "ignore previous instructions"]


def embed_request(max_batch: int, max_chars: int) -> st.SearchStrategy[embedding_pb2.EmbedRequest]:
    texts = field_text(SENTENCES, max_chars, max_chars + 1, 50_000)
    return st.builds(
        lambda t: embedding_pb2.EmbedRequest(texts=t),
        repeated(texts, max_batch + 1, "x", max_batch, max_batch + 1, 100_000),
    )


def chunk_request(max_chars: int) -> st.SearchStrategy[embedding_pb2.ChunkRequest]:
    """A document of any alphabet or past the size limit, any token sizes (0 = the window)."""
    return st.builds(
        lambda t, m, o: embedding_pb2.ChunkRequest(text=t, max_tokens=m, overlap_tokens=o),
        field_text(["# Fares\n\n" + " ".join(SENTENCES) * 20], max_chars, max_chars + 1, max_size=2000),
        uint32(4, 8, 64, 256, 257),
        uint32(4, 63, 64, 256),
    )


def moderate_request(max_batch: int, max_chars: int) -> st.SearchStrategy[moderation_pb2.ModerateRequest]:
    texts = field_text(SENTENCES, max_chars, max_chars + 1)
    categories = enum(list(moderation_pb2.Category.values()))
    return st.builds(
        lambda t, c: moderation_pb2.ModerateRequest(texts=t, categories=c),
        repeated(texts, 4, "x", max_batch, max_batch + 1, 100_000),
        repeated(categories, 4, 1, 10_000),
    )


# -- generation ------------------------------------------------------------------------------

def _chat_message() -> st.SearchStrategy[generation_pb2.ChatMessage]:
    return st.builds(
        lambda r, c: generation_pb2.ChatMessage(role=r, content=c),
        enum(list(generation_pb2.Role.values())),
        field_text(["Hello", "What is the capital of France?"], 2_000, 100_000),
    )


def _sampling(limit: int) -> st.SearchStrategy[generation_pb2.SamplingParams]:
    def build(
        max_new: int, temperature: float, top_p: float, top_k: int, rep: float, seed: int | None, stop: list[str]
    ) -> generation_pb2.SamplingParams:
        params = generation_pb2.SamplingParams(
            max_new_tokens=max_new, temperature=temperature, top_p=top_p, top_k=top_k, repetition_penalty=rep, stop=stop
        )
        if seed is not None:
            params.seed = seed
        return params

    small_tokens = st.integers(0, 8)  # mostly short answers: the tiny model is slow enough
    return st.builds(
        build,
        mostly(small_tokens, uint32(limit, limit + 1)),
        mostly(st.sampled_from([0.0, 0.7, 2.0]) | st.floats(0, 2, width=32), FLOATS),
        mostly(st.sampled_from([0.0, 0.9, 1.0]) | st.floats(0, 1, exclude_min=True, width=32), FLOATS),
        mostly(st.sampled_from([0, 1, 40]), uint32(30_522, 30_523)),
        mostly(st.sampled_from([0.0, 1.0, 1.3, 10.0]), FLOATS),
        st.none() | UINT64,
        mostly(st.lists(st.sampled_from(["\n", ".", "the"]), max_size=2), repeated(field_text(["\n", "."], 64, 65), 9, ".", 10_000)),
    )


def generate_fields(limit: int) -> st.SearchStrategy[dict[str, Any]]:
    """Fields shared by GenerateRequest and GenerateStreamRequest."""
    sampling = st.none() | _sampling(limit)
    return st.fixed_dictionaries(
        {"messages": repeated(_chat_message(), 4, generation_pb2.ChatMessage(content="hi"), 1_000, 100_000), "sampling": sampling}
    )


# -- retrieval -------------------------------------------------------------------------------


def collections(*known: str) -> st.SearchStrategy[str]:
    """Mostly the given names (a fixed pool: every created collection stays for the run)."""
    names = [*known, "fuzz_other", "missing-collection", "a" * 64, "a" * 65, "bad name", "../x", "x/y"]
    return mostly(st.sampled_from(known) if known else st.sampled_from(names), field_text(names, 64, 65, 10_000))


def _point_id() -> st.SearchStrategy[str]:
    uuids = st.builds(lambda n: str(uuid.UUID(int=n)), st.integers(0, 2**128 - 1))
    forms = st.builds(lambda u: f"{{{u}}}", uuids) | st.builds(lambda u: f"urn:uuid:{u}", uuids)
    return mostly(uuids, st.one_of(forms, st.sampled_from(["0", "-1", "18446744073709551616", ""]), text(40)))


def _vector(dimension: int) -> st.SearchStrategy[list[float]]:
    plausible = st.floats(-1, 1, width=32)
    return st.one_of(
        st.lists(plausible, min_size=dimension, max_size=dimension),
        st.lists(plausible, min_size=dimension, max_size=dimension),
        st.lists(plausible, min_size=dimension, max_size=dimension),
        st.lists(FLOATS, min_size=dimension, max_size=dimension),
        st.lists(FLOATS, max_size=dimension + 2),
        st.builds(lambda v, n: [v] * n, FLOATS, st.sampled_from([dimension + 1, 65_536, 1_000_000])),
    )


def _payload_value(depth: int = 2) -> st.SearchStrategy[Any]:
    scalars = st.one_of(st.none(), st.booleans(), DOUBLES, text(32), sized(1_000, 100_000))
    if depth == 0:
        return scalars
    inner = _payload_value(depth - 1)
    return st.one_of(scalars, st.lists(inner, max_size=3), st.dictionaries(text(16), inner, max_size=3))


def _payload() -> st.SearchStrategy[dict[str, Any]]:
    keys = field_text(["document_id", "chunk_index", "text", "a.b"], 1_000)
    return st.dictionaries(keys, _payload_value(), max_size=4)


def _point(dimension: int) -> st.SearchStrategy[retrieval_pb2.Point]:
    def build(pid: str, vector: list[float], payload: dict[str, Any]) -> retrieval_pb2.Point:
        point = retrieval_pb2.Point(id=pid, vector=vector)
        point.payload.update(payload)
        return point

    return st.builds(build, _point_id(), _vector(dimension), _payload())


_KEYS = ["document_id", "chunk_index", "score", "a.b", "", " ", "a" * 10_000]


def _condition() -> st.SearchStrategy[retrieval_pb2.Condition]:
    key = field_text(_KEYS)

    def build(k: str, which: str, value: Any) -> retrieval_pb2.Condition:
        c = retrieval_pb2.Condition(key=k)
        if which == "any":
            c.any.values.extend(value)
        elif which == "range":
            for bound, v in value.items():
                setattr(c.range, bound, v)
        elif which != "none":
            setattr(c, which, value)
        return c

    return st.one_of(
        st.builds(build, key, st.just("keyword"), text(32)),
        st.builds(build, key, st.just("integer"), INT64),
        st.builds(build, key, st.just("boolean"), st.booleans()),
        st.builds(build, key, st.just("any"), repeated(text(16), 4, "x", 100_000)),
        st.builds(build, key, st.just("range"), st.dictionaries(st.sampled_from(["gt", "gte", "lt", "lte"]), DOUBLES, max_size=4)),
        st.builds(build, key, st.just("none"), st.none()),
    )


def _filter() -> st.SearchStrategy[retrieval_pb2.Filter | None]:
    conditions = repeated(_condition(), 3, retrieval_pb2.Condition(key="k", keyword="v"), 10_000)
    return st.none() | st.builds(
        lambda m, s, n: retrieval_pb2.Filter(must=m, should=s, must_not=n), conditions, conditions, conditions
    )


def _index_fields() -> st.SearchStrategy[list[str]]:
    return repeated(field_text(["document_id", "chunk_index", ""]), 3, "k", 10_000)


def create_collection_request(*known: str) -> st.SearchStrategy[retrieval_pb2.CreateCollectionRequest]:
    return st.builds(
        retrieval_pb2.CreateCollectionRequest,
        collection=collections(*known),
        dimension=mostly(st.sampled_from([3, 4, 384]), uint32(65_536, 65_537)),
        distance=enum(list(retrieval_pb2.Distance.values())),
        keyword_index_fields=_index_fields(),
        integer_index_fields=_index_fields(),
        float_index_fields=_index_fields(),
    )


def describe_collection_request(*known: str) -> st.SearchStrategy[retrieval_pb2.DescribeCollectionRequest]:
    return st.builds(retrieval_pb2.DescribeCollectionRequest, collection=collections(*known))


def delete_collection_request(*known: str) -> st.SearchStrategy[retrieval_pb2.DeleteCollectionRequest]:
    return st.builds(retrieval_pb2.DeleteCollectionRequest, collection=collections(*known))


def upsert_request(collection: str, dimension: int, max_batch: int) -> st.SearchStrategy[retrieval_pb2.UpsertRequest]:
    return st.builds(
        retrieval_pb2.UpsertRequest,
        collection=collections(collection),
        points=repeated(_point(dimension), 3, retrieval_pb2.Point(id=str(uuid.UUID(int=1)), vector=[0.5] * dimension), max_batch + 1, 100_000),
    )


def search_request(collection: str, dimension: int, max_top_k: int) -> st.SearchStrategy[retrieval_pb2.SearchRequest]:
    def build(
        name: str, vector: list[float], top_k: int, threshold: float | None, f: Any, fields: list[str], words: str
    ) -> retrieval_pb2.SearchRequest:
        request = retrieval_pb2.SearchRequest(
            collection=name, vector=vector, top_k=top_k, filter=f, payload_fields=fields, query_text=words
        )
        if threshold is not None:
            request.score_threshold = threshold
        return request

    return st.builds(
        build,
        collections(collection),
        _vector(dimension),
        mostly(st.integers(1, max_top_k), uint32(max_top_k, max_top_k + 1)),
        st.none() | FLOATS,
        _filter(),
        repeated(field_text(_KEYS), 3, "k", 10_000),
        field_text(["", *SENTENCES], 4096, 4097),  # hybrid search's query text
    )


def delete_request(collection: str) -> st.SearchStrategy[retrieval_pb2.DeleteRequest]:
    return st.builds(
        retrieval_pb2.DeleteRequest,
        collection=collections(collection),
        ids=repeated(_point_id(), 3, str(uuid.UUID(int=2)), 100_000),
        filter=_filter(),
    )


# -- gateway ---------------------------------------------------------------------------------

PIPELINES = ["rag", "rag@1", "rag@2", "summarize_sentiment", "rag@0", "rag@-1", "rag@99999999999999999999", "nope", "@", "rag@"]


def _run_fields(max_query_chars: int) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {
            "pipeline": mostly(st.sampled_from(PIPELINES[:4]), field_text(PIPELINES, 1_000)),
            "query": field_text(["What is the capital of France?", "you idiot", "refund"], max_query_chars, max_query_chars + 1, 20_001, 1_000_000),
            "session_id": field_text(["user-1", ""], 1_000),
        }
    )


def run_request(max_query_chars: int) -> st.SearchStrategy[gateway_pb2.RunRequest]:
    return st.builds(lambda f: gateway_pb2.RunRequest(**f), _run_fields(max_query_chars))


def run_stream_request(max_query_chars: int) -> st.SearchStrategy[gateway_pb2.RunStreamRequest]:
    return st.builds(lambda f: gateway_pb2.RunStreamRequest(**f), _run_fields(max_query_chars))


def ingest_request(max_documents: int, max_document_chars: int) -> st.SearchStrategy[gateway_pb2.IngestRequest]:
    document = st.builds(
        gateway_pb2.Document,
        document_id=field_text(["doc-1", "doc-2", "paris.md"], 512, 513),
        text=field_text(["Paris is the capital of France.", "you idiot"], max_document_chars, max_document_chars + 1),
        source=field_text(["https://example.com/a", ""], 1_024, 1_025, 80_000),
    )
    return st.builds(
        lambda d: gateway_pb2.IngestRequest(documents=d),
        repeated(document, 3, gateway_pb2.Document(document_id="d", text="t"), max_documents, max_documents + 1, 100_000),
    )


def feedback_request() -> st.SearchStrategy[gateway_pb2.FeedbackRequest]:
    return st.builds(
        gateway_pb2.FeedbackRequest,
        request_id=field_text(["req-1", "a" * 128, "a" * 129, "0123456789abcdef"], 128, 129),
        rating=mostly(st.integers(1, 5), uint32(6)),
        comment=field_text(["great", ""], 2_000, 2_001, 1_000_000),
    )


# -- raw wire bytes --------------------------------------------------------------------------

_INVALID_UTF8 = [
    b"\xff",
    b"\xfe\xff",
    b"\x80",  # a lone continuation byte
    b"\xc0\x80",  # overlong NUL
    b"\xc3",  # truncated two-byte sequence
    b"\xe2\x82",  # truncated three-byte sequence
    b"\xed\xa0\x80",  # a UTF-16 surrogate
    b"\xed\xbf\xbf\xed\xb0\x80",  # a surrogate pair, CESU-8 style
    b"\xf4\x90\x80\x80",  # past U+10FFFF
    b"\xf8\x88\x80\x80\x80",  # five-byte form
]


def invalid_utf8() -> st.SearchStrategy[bytes]:
    """Bytes that are certainly not UTF-8: valid text around one bad sequence."""
    utf8 = st.builds(lambda s: s.encode(), text(16))
    return st.builds(lambda a, bad, b, n: a + bad * n + b, utf8, st.sampled_from(_INVALID_UTF8), utf8, st.sampled_from([1, 1, 3, 1_000]))


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _length_delimited(number: int, payload: bytes) -> bytes:
    return _varint((number << 3) | 2) + _varint(len(payload)) + payload


def string_paths(message: _descriptor.Descriptor, depth: int = 6) -> list[tuple[int, ...]]:
    """Field-number paths to every string field reachable from ``message`` (maps and Struct included)."""
    paths: list[tuple[int, ...]] = []
    for field in message.fields:
        if field.type == _descriptor.FieldDescriptor.TYPE_STRING:
            paths.append((field.number,))
        elif field.type == _descriptor.FieldDescriptor.TYPE_MESSAGE and depth > 1:
            paths.extend((field.number, *rest) for rest in string_paths(field.message_type, depth - 1))
    return paths


def wrap(path: tuple[int, ...], value: bytes) -> bytes:
    """One occurrence of the string field at ``path`` holding ``value``, nested as the path says."""
    wire = _length_delimited(path[-1], value)
    for number in reversed(path[:-1]):
        wire = _length_delimited(number, wire)
    return wire


def invalid_utf8_request(
    message: type[Message], valid: st.SearchStrategy[Message] | None = None
) -> st.SearchStrategy[tuple[bytes, tuple[int, ...]]]:
    """(wire bytes, path): a valid message plus one string field, at ``path``, that is not UTF-8.

    Appending works at any depth: a repeated field gains an element, a singular scalar is
    replaced (the last occurrence wins) and a singular message is merged into.
    """
    paths = string_paths(message.DESCRIPTOR)
    assert paths, message.DESCRIPTOR.full_name
    base = (st.just(message()) if valid is None else valid).map(lambda m: m.SerializeToString())
    return st.builds(lambda b, p, bad: (b + wrap(p, bad), p), base, st.sampled_from(paths), invalid_utf8())


def garbage() -> st.SearchStrategy[bytes]:
    """Random bytes, truncated varints and lengths that run past the end of the message."""
    return st.one_of(
        st.binary(max_size=256),
        st.sampled_from([b"\x0a", b"\x0a\xff\xff\xff\xff\x0f", b"\x08\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", b"\x0f", b"\x0a\x05abc"]),
    )


def each_string(message: Message) -> Iterator[str]:
    """Every string value in ``message``, at any depth (to tell echoed input from a leak)."""
    for field, value in message.ListFields():
        values = value if field.is_repeated else [value]
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            values = [*value.keys(), *value.values()] if hasattr(value, "keys") else values
        for v in values:
            if isinstance(v, str):
                yield v
            elif isinstance(v, Message):
                yield from each_string(v)




# -- plausible requests ----------------------------------------------------------------------
# Valid in shape (counts, names, ranges), hostile in content (unicode, NUL, extreme floats):
# these reach the models, Qdrant and the pipelines, where the hostile requests above mostly
# stop at the first check.


def content(max_size: int = 200) -> st.SearchStrategy[str]:
    """Non-blank text from every alphabet."""
    return st.text(_ALPHABET, min_size=1, max_size=max_size).filter(lambda t: bool(t.strip()))


def plausible_embed(max_batch: int) -> st.SearchStrategy[embedding_pb2.EmbedRequest]:
    return st.builds(lambda t: embedding_pb2.EmbedRequest(texts=t), st.lists(content(), min_size=1, max_size=max_batch))


def plausible_chunk() -> st.SearchStrategy[embedding_pb2.ChunkRequest]:
    return st.builds(
        lambda t, m, o: embedding_pb2.ChunkRequest(text=t, max_tokens=m, overlap_tokens=o),
        content(2000), st.sampled_from([0, 16, 24, 32]), st.integers(0, 4),
    )


def plausible_moderate(configured: list[int]) -> st.SearchStrategy[moderation_pb2.ModerateRequest]:
    return st.builds(
        lambda t, c: moderation_pb2.ModerateRequest(texts=t, categories=c),
        st.lists(content(), min_size=1, max_size=4),
        st.lists(st.sampled_from(configured), max_size=len(configured)),
    )


def plausible_generate(cls: type[Message]) -> st.SearchStrategy[Message]:
    roles = st.sampled_from(list(generation_pb2.Role.values()))
    message = st.builds(lambda r, c: generation_pb2.ChatMessage(role=r, content=c), roles, content(120))

    def build(messages: list[Any], n: int, t: float, p: float, k: int, rep: float, seed: int | None, stop: list[str]) -> Message:
        sampling = generation_pb2.SamplingParams(
            max_new_tokens=n, temperature=t, top_p=p, top_k=k, repetition_penalty=rep, stop=stop
        )
        if seed is not None:
            sampling.seed = seed
        return cls(messages=messages, sampling=sampling)

    return st.builds(
        build,
        st.lists(message, min_size=1, max_size=3),
        st.integers(0, 8),
        st.floats(0, 2, width=32),
        st.floats(0, 1, exclude_min=True, width=32),
        st.integers(0, 50) | st.sampled_from([30_522, 30_523, UINT32_MAX]),
        st.floats(0, 10, exclude_min=True, width=32),
        st.none() | UINT64,
        st.lists(content(64), max_size=3),
    )


_NAME = st.from_regex(r"\A[A-Za-z0-9_-]{1,16}\Z")
_KEY = st.sampled_from(["document_id", "chunk_index", "text", "a.b", "k"]) | content(32)


def plausible_create_collection(pool: list[str]) -> st.SearchStrategy[retrieval_pb2.CreateCollectionRequest]:
    fields = st.lists(st.sampled_from(["document_id", "chunk_index", "k"]) | _NAME, max_size=2)
    return st.builds(
        retrieval_pb2.CreateCollectionRequest,
        collection=st.sampled_from(pool),
        dimension=st.integers(1, 512),
        distance=st.sampled_from(list(retrieval_pb2.Distance.values())),
        keyword_index_fields=fields,
        integer_index_fields=fields,
        float_index_fields=fields,
    )


def plausible_upsert(collection: str, dimension: int) -> st.SearchStrategy[retrieval_pb2.UpsertRequest]:
    def build(pid: str, vector: list[float], payload: dict[str, Any]) -> retrieval_pb2.Point:
        point = retrieval_pb2.Point(id=pid, vector=vector)
        point.payload.update(payload)
        return point

    uuids = st.builds(lambda n: str(uuid.UUID(int=n)), st.integers(0, 2**128 - 1))
    vector = st.lists(st.floats(-1, 1, width=32) | FLOATS, min_size=dimension, max_size=dimension)
    payload = st.dictionaries(_KEY, _payload_value(1), max_size=3)
    return st.builds(
        retrieval_pb2.UpsertRequest,
        collection=st.just(collection),
        points=st.lists(st.builds(build, uuids, vector, payload), min_size=1, max_size=4),
    )


def _plausible_filter() -> st.SearchStrategy[retrieval_pb2.Filter | None]:
    conditions = st.lists(_condition().filter(lambda c: bool(c.key) and c.WhichOneof("match") is not None), max_size=2)
    return st.none() | st.builds(
        lambda m, s, n: retrieval_pb2.Filter(must=m, should=s, must_not=n), conditions, conditions, conditions
    )


def plausible_search(collection: str, dimension: int, max_top_k: int) -> st.SearchStrategy[retrieval_pb2.SearchRequest]:
    def build(vector: list[float], top_k: int, threshold: float | None, f: Any, fields: list[str]) -> retrieval_pb2.SearchRequest:
        request = retrieval_pb2.SearchRequest(collection=collection, vector=vector, top_k=top_k, filter=f, payload_fields=fields)
        if threshold is not None:
            request.score_threshold = threshold
        return request

    return st.builds(
        build,
        st.lists(st.floats(-1, 1, width=32) | FLOATS, min_size=dimension, max_size=dimension),
        st.integers(1, max_top_k),
        st.none() | FLOATS,
        _plausible_filter(),
        st.lists(_KEY, max_size=2),
    )


def plausible_delete(collection: str) -> st.SearchStrategy[retrieval_pb2.DeleteRequest]:
    uuids = st.builds(lambda n: str(uuid.UUID(int=n)), st.integers(0, 2**128 - 1))
    return st.builds(
        retrieval_pb2.DeleteRequest, collection=st.just(collection), ids=st.lists(uuids, max_size=3), filter=_plausible_filter()
    )


def plausible_run(cls: type[Message], max_query_chars: int) -> st.SearchStrategy[Message]:
    return st.builds(
        cls,
        pipeline=st.sampled_from(PIPELINES[:4]),
        query=content(200) | sized(max_query_chars),
        session_id=text(32),
    )


def plausible_ingest() -> st.SearchStrategy[gateway_pb2.IngestRequest]:
    document = st.builds(gateway_pb2.Document, document_id=content(40), text=content(400) | sized(5_000), source=text(64) | sized(1_024))
    return st.builds(
        lambda d: gateway_pb2.IngestRequest(documents=d),
        st.lists(document, min_size=1, max_size=3, unique_by=lambda d: d.document_id),
    )


def plausible_feedback() -> st.SearchStrategy[gateway_pb2.FeedbackRequest]:
    return st.builds(
        gateway_pb2.FeedbackRequest,
        request_id=st.from_regex(r"\A[A-Za-z0-9_-]{1,128}\Z"),
        rating=st.integers(1, 5),
        comment=text(200) | sized(2_000),
    )
