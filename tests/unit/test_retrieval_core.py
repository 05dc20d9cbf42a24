"""VectorStore over embedded Qdrant (a temp folder; the engine and local mode), plus the unreachable-server mapping.

The same behaviour against a real Qdrant server: tests/integration/test_qdrant_congruence.py.
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from qdrant_client import models as qm
from qdrant_client.http.exceptions import UnexpectedResponse

from ragrail.common.config import RetrievalSettings
from ragrail.common.errors import InvalidArgument, NotFound, RagrailError, Unavailable
from ragrail.retrieval.core import (
    Condition,
    Distance,
    Filter,
    Point,
    Range,
    VectorStore,
    _from_grpc,
    build_store,
)

DIM = 4


def uid(n: int) -> str:
    return str(uuid.UUID(int=n))


# Five points on the unit circle in the first two dimensions, each with a payload
# covering every filterable type.
POINTS = [
    Point(uid(1), [1.0, 0.0, 0.0, 0.0], {"lang": "en", "year": 2020, "public": True, "tag": "fares"}),
    Point(uid(2), [0.9, 0.1, 0.0, 0.0], {"lang": "en", "year": 2021, "public": False, "tag": "luggage"}),
    Point(uid(3), [0.7, 0.7, 0.0, 0.0], {"lang": "de", "year": 2022, "public": True, "tag": "fares"}),
    Point(uid(4), [0.1, 0.9, 0.0, 0.0], {"lang": "fr", "year": 2023, "public": True, "tag": "history"}),
    Point(uid(5), [0.0, 0.0, 1.0, 0.0], {"lang": "en", "year": 2024, "public": False, "tag": "history"}),
]
QUERY = [1.0, 0.0, 0.0, 0.0]


@pytest.fixture(params=["edge", "local"])
def store(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[VectorStore]:
    """Both embedded implementations: Qdrant's engine in process (the default) and local mode."""
    s = VectorStore(path=str(tmp_path / "qdrant"), max_top_k=10, max_batch_size=8, engine=request.param)
    yield s
    s.close()


@pytest.fixture
def docs(store: VectorStore) -> VectorStore:
    store.ensure_collection("docs", DIM)
    assert store.upsert("docs", POINTS) == len(POINTS)
    return store


def ids(hits: list) -> list[str]:
    return [h.id for h in hits]


# -- collections ---------------------------------------------------------------


def test_ensure_collection_creates_once_then_reports_existing(store: VectorStore) -> None:
    assert store.ensure_collection("docs", DIM) is True
    assert store.ensure_collection("docs", DIM) is False
    info = store.describe("docs")
    assert (info.name, info.dimension, info.distance, info.points_count) == ("docs", DIM, Distance.COSINE, 0)


def test_recreating_with_another_dimension_is_invalid(store: VectorStore) -> None:
    store.ensure_collection("docs", DIM)
    with pytest.raises(InvalidArgument, match="exists with dimension 4"):
        store.ensure_collection("docs", DIM + 1)


def test_recreating_with_another_distance_is_invalid(store: VectorStore) -> None:
    store.ensure_collection("docs", DIM)
    with pytest.raises(InvalidArgument, match="cosine distance"):
        store.ensure_collection("docs", DIM, Distance.DOT)


@pytest.mark.parametrize("dimension", [0, -1, 65537])
def test_out_of_range_dimension_is_invalid(store: VectorStore, dimension: int) -> None:
    with pytest.raises(InvalidArgument, match="dimension must be in 1..65536"):
        store.ensure_collection("docs", dimension)


def test_describe_counts_points(docs: VectorStore) -> None:
    assert docs.describe("docs").points_count == len(POINTS)


@pytest.mark.parametrize("name", ["", "has space", "slash/name", "dots.name", "x" * 65, "ümlaut"])
def test_bad_collection_name_is_invalid(store: VectorStore, name: str) -> None:
    with pytest.raises(InvalidArgument, match="invalid collection name"):
        store.ensure_collection(name, DIM)
    with pytest.raises(InvalidArgument, match="invalid collection name"):
        store.search(name, QUERY, top_k=1)


def test_unknown_collection_is_not_found(store: VectorStore) -> None:
    with pytest.raises(NotFound, match="collection nope does not exist"):
        store.describe("nope")
    with pytest.raises(NotFound):
        store.search("nope", QUERY, top_k=1)
    with pytest.raises(NotFound):
        store.upsert("nope", POINTS[:1])
    with pytest.raises(NotFound):
        store.delete("nope", ids=[uid(1)])


# -- upsert and search ---------------------------------------------------------


def test_search_orders_hits_by_score(docs: VectorStore) -> None:
    hits = docs.search("docs", QUERY, top_k=5)
    assert ids(hits) == [uid(1), uid(2), uid(3), uid(4), uid(5)]
    scores = [h.score for h in hits]
    assert scores == sorted(scores, reverse=True)
    assert scores[0] == pytest.approx(1.0, abs=1e-5)
    assert hits[0].payload == POINTS[0].payload


def test_top_k_limits_the_hits(docs: VectorStore) -> None:
    assert ids(docs.search("docs", QUERY, top_k=2)) == [uid(1), uid(2)]


def test_score_threshold_drops_weak_hits(docs: VectorStore) -> None:
    hits = docs.search("docs", QUERY, top_k=5, score_threshold=0.5)
    assert ids(hits) == [uid(1), uid(2), uid(3)]  # cos 1.0, 0.99, 0.71; not 0.11 or 0.0
    assert all(h.score >= 0.5 for h in hits)


def test_upsert_replaces_a_point_with_the_same_id(docs: VectorStore) -> None:
    docs.upsert("docs", [Point(uid(5), [1.0, 0.0, 0.0, 0.0], {"lang": "xx"})])
    assert docs.describe("docs").points_count == len(POINTS)
    top = docs.search("docs", QUERY, top_k=5, filter=Filter(must=(Condition("lang", keyword="xx"),)))
    assert ids(top) == [uid(5)]
    assert top[0].payload == {"lang": "xx"}


def test_payload_fields_restrict_the_payload(docs: VectorStore) -> None:
    hits = docs.search("docs", QUERY, top_k=2, payload_fields=["lang", "year"])
    assert hits[0].payload == {"lang": "en", "year": 2020}


def test_ids_are_normalised_uuids(store: VectorStore) -> None:
    store.ensure_collection("docs", DIM)
    upper = str(uuid.UUID(int=7)).upper()
    store.upsert("docs", [Point(upper, QUERY)])
    assert ids(store.search("docs", QUERY, top_k=1)) == [uid(7)]


# -- filters -------------------------------------------------------------------


def search_ids(store: VectorStore, f: Filter) -> set[str]:
    return set(ids(store.search("docs", QUERY, top_k=10, filter=f)))


def test_filter_must_keyword(docs: VectorStore) -> None:
    assert search_ids(docs, Filter(must=(Condition("lang", keyword="en"),))) == {uid(1), uid(2), uid(5)}


def test_filter_must_not_range(docs: VectorStore) -> None:
    f = Filter(must_not=(Condition("year", range=Range(gte=2022)),))
    assert search_ids(docs, f) == {uid(1), uid(2)}


def test_filter_range_bounds(docs: VectorStore) -> None:
    f = Filter(must=(Condition("year", range=Range(gt=2020, lt=2023)),))
    assert search_ids(docs, f) == {uid(2), uid(3)}
    f = Filter(must=(Condition("year", range=Range(gte=2020, lte=2021)),))
    assert search_ids(docs, f) == {uid(1), uid(2)}


def test_filter_should_is_an_or(docs: VectorStore) -> None:
    f = Filter(should=(Condition("lang", keyword="de"), Condition("lang", keyword="fr")))
    assert search_ids(docs, f) == {uid(3), uid(4)}


def test_filter_match_any(docs: VectorStore) -> None:
    f = Filter(must=(Condition("tag", any_of=("fares", "luggage")),))
    assert search_ids(docs, f) == {uid(1), uid(2), uid(3)}


def test_filter_integer(docs: VectorStore) -> None:
    assert search_ids(docs, Filter(must=(Condition("year", integer=2023),))) == {uid(4)}


def test_filter_boolean(docs: VectorStore) -> None:
    assert search_ids(docs, Filter(must=(Condition("public", boolean=False),))) == {uid(2), uid(5)}


def test_filter_combined(docs: VectorStore) -> None:
    f = Filter(
        must=(Condition("public", boolean=True),),
        must_not=(Condition("tag", keyword="history"),),
        should=(Condition("lang", keyword="en"), Condition("year", integer=2022)),
    )
    assert search_ids(docs, f) == {uid(1), uid(3)}


def test_empty_filter_is_no_filter(docs: VectorStore) -> None:
    assert len(search_ids(docs, Filter())) == len(POINTS)


@pytest.mark.parametrize(
    ("condition", "message"),
    [
        (Condition("lang"), "has no match"),
        (Condition("", keyword="en"), "needs a key"),
        (Condition("tag", any_of=()), "match-any needs at least one value"),
        (Condition("year", range=Range()), "a range needs at least one bound"),
    ],
)
def test_bad_conditions_are_invalid(docs: VectorStore, condition: Condition, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        docs.search("docs", QUERY, top_k=1, filter=Filter(must=(condition,)))


# -- delete --------------------------------------------------------------------


def test_delete_by_ids(docs: VectorStore) -> None:
    docs.delete("docs", ids=[uid(1), uid(2)])
    assert docs.describe("docs").points_count == 3
    assert uid(1) not in ids(docs.search("docs", QUERY, top_k=10))


def test_delete_by_filter(docs: VectorStore) -> None:
    docs.delete("docs", filter=Filter(must=(Condition("tag", keyword="history"),)))
    assert set(ids(docs.search("docs", QUERY, top_k=10))) == {uid(1), uid(2), uid(3)}


def test_delete_missing_ids_is_fine(docs: VectorStore) -> None:
    docs.delete("docs", ids=[uid(99)])
    assert docs.describe("docs").points_count == len(POINTS)


@pytest.mark.parametrize("selector", [{}, {"ids": []}, {"filter": Filter()}])
def test_delete_without_ids_or_filter_is_invalid(docs: VectorStore, selector: dict) -> None:
    with pytest.raises(InvalidArgument, match="give ids or a filter"):
        docs.delete("docs", **selector)
    assert docs.describe("docs").points_count == len(POINTS)


def test_delete_with_a_bad_id_is_invalid(docs: VectorStore) -> None:
    with pytest.raises(InvalidArgument, match=r"ids\[1\] is not a UUID: 'nope'"):
        docs.delete("docs", ids=[uid(1), "nope"])
    assert docs.describe("docs").points_count == len(POINTS)  # nothing deleted


# -- input errors --------------------------------------------------------------


def test_wrong_vector_length_on_upsert_is_invalid(docs: VectorStore) -> None:
    bad = [POINTS[0], Point(uid(9), [1.0, 0.0, 0.0])]
    with pytest.raises(InvalidArgument, match=r"points\[1\].vector has 3 dimensions; the collection has 4"):
        docs.upsert("docs", bad)
    assert docs.describe("docs").points_count == len(POINTS)


def test_wrong_vector_length_on_search_is_invalid(docs: VectorStore) -> None:
    with pytest.raises(InvalidArgument, match="vector has 5 dimensions; the collection has 4"):
        docs.search("docs", [1.0] * 5, top_k=1)


@pytest.mark.parametrize("bad_id", ["doc-1", "", "12345"])
def test_non_uuid_id_is_invalid(docs: VectorStore, bad_id: str) -> None:
    with pytest.raises(InvalidArgument, match=r"points\[0\].id is not a UUID"):
        docs.upsert("docs", [Point(bad_id, QUERY)])


def test_empty_and_oversized_upserts_are_invalid(docs: VectorStore) -> None:
    with pytest.raises(InvalidArgument, match="points must not be empty"):
        docs.upsert("docs", [])
    many = [Point(uid(100 + i), QUERY) for i in range(9)]
    with pytest.raises(InvalidArgument, match="at most 8 points per call, got 9"):
        docs.upsert("docs", many)


@pytest.mark.parametrize("top_k", [0, -1, 11])
def test_top_k_out_of_range_is_invalid(docs: VectorStore, top_k: int) -> None:
    with pytest.raises(InvalidArgument, match=f"top_k must be in 1..10, got {top_k}"):
        docs.search("docs", QUERY, top_k=top_k)


def test_exactly_one_of_url_and_path(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="exactly one"):
        VectorStore()
    with pytest.raises(InvalidArgument, match="exactly one"):
        VectorStore(url="http://127.0.0.1:1", path=str(tmp_path))


def test_a_dropped_collection_is_not_found_not_stale(tmp_path: Path) -> None:
    """The dimension cache must not hide that a collection is gone."""
    store = VectorStore(path=str(tmp_path / "q"))
    try:
        store.ensure_collection("docs", DIM)
        store.upsert("docs", POINTS[:1])
        store._client.delete_collection("docs")  # dropped behind the store's back
        with pytest.raises(NotFound):
            store.search("docs", QUERY, top_k=1)
        store.ensure_collection("docs", DIM + 2)  # re-created with another dimension
        with pytest.raises(InvalidArgument, match="has 4 dimensions; the collection has 6"):
            store.search("docs", QUERY, top_k=1)
    finally:
        store.close()


def test_a_collection_recreated_with_another_dimension_takes_new_vectors(tmp_path: Path) -> None:
    """Dropped and re-created (e.g. after switching embedding models): no stale dimension."""
    store = VectorStore(path=str(tmp_path / "q"))
    try:
        store.ensure_collection("docs", DIM)
        store.upsert("docs", POINTS[:1])  # caches dimension 4
        store._client.delete_collection("docs")
        assert store.ensure_collection("docs", DIM + 2) is True
        assert store.upsert("docs", [Point(uid(1), [1.0] + [0.0] * (DIM + 1))]) == 1
        assert ids(store.search("docs", [1.0] + [0.0] * (DIM + 1), top_k=1)) == [uid(1)]
    finally:
        store.close()


# -- dropping collections ----------------------------------------------------------


def test_delete_collection_drops_points_and_name(docs: VectorStore) -> None:
    docs.delete_collection("docs")
    with pytest.raises(NotFound, match="collection docs does not exist"):
        docs.describe("docs")
    with pytest.raises(NotFound):
        docs.search("docs", QUERY, top_k=1)
    with pytest.raises(NotFound, match="collection docs does not exist"):
        docs.delete_collection("docs")
    # Re-created with another dimension: the cached dimension went with the drop.
    assert docs.ensure_collection("docs", DIM + 1) is True
    assert docs.upsert("docs", [Point(uid(1), [1.0] * (DIM + 1))]) == 1
    assert docs.describe("docs").points_count == 1


def test_delete_collection_validates_the_name(store: VectorStore) -> None:
    with pytest.raises(InvalidArgument, match="invalid collection name"):
        store.delete_collection("no/slashes")


# -- payload indexes -------------------------------------------------------------------


class IndexingClient:
    """The embedded client, keeping payload indexes the way a server does."""

    def __init__(self, inner: Any, indexes: dict[str, qm.PayloadSchemaType] | None = None) -> None:
        self.inner = inner
        self.indexes = dict(indexes or {})
        self.created: list[tuple[str, str]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def create_payload_index(self, collection: str, field_name: str, field_schema: Any, **kwargs: Any) -> None:
        assert kwargs.get("timeout") is not None, "index creation without a timeout"
        self.created.append((field_name, field_schema.value))
        self.indexes[field_name] = field_schema

    def get_collection(self, name: str) -> Any:
        info = self.inner.get_collection(name)
        schema = {k: qm.PayloadIndexInfo(data_type=v, points=0) for k, v in self.indexes.items()}
        return info.model_copy(update={"payload_schema": schema})


@pytest.fixture
def server_like(store: VectorStore) -> IndexingClient:
    """The store, made to behave like one talking to a server (indexes kept)."""
    client = IndexingClient(store._client)
    store._client = client  # type: ignore[assignment]
    store.embedded = False
    store.engine = "server"
    return client


def test_a_server_gets_every_index_asked_for(store: VectorStore, server_like: IndexingClient) -> None:
    assert store.ensure_collection(
        "docs", DIM, keyword_index_fields=["lang"], integer_index_fields=["year"], float_index_fields=["price"]
    )
    assert server_like.created == [("lang", "keyword"), ("year", "integer"), ("price", "float")]
    assert store.describe("docs").payload_indexes == {"lang": "keyword", "year": "integer", "price": "float"}


def test_an_existing_collection_gets_only_the_missing_indexes(store: VectorStore, server_like: IndexingClient) -> None:
    store.ensure_collection("docs", DIM, keyword_index_fields=["document_id"])
    server_like.created.clear()
    # A later release also filters on chunk_index: the collection exists, the index does not.
    assert not store.ensure_collection(
        "docs", DIM, keyword_index_fields=["document_id"], integer_index_fields=["chunk_index"]
    )
    assert server_like.created == [("chunk_index", "integer")]


def test_an_index_of_another_type_is_not_replaced_silently(store: VectorStore, server_like: IndexingClient) -> None:
    store.ensure_collection("docs", DIM, keyword_index_fields=["year"])
    with pytest.raises(InvalidArgument, match="payload field 'year' of collection docs is indexed as keyword, not integer"):
        store.ensure_collection("docs", DIM, integer_index_fields=["year"])


def test_the_embedded_engine_keeps_payload_indexes(tmp_path: Path) -> None:
    store = VectorStore(path=str(tmp_path / "q"))
    assert store.engine == "edge"
    assert store.ensure_collection("docs", DIM, keyword_index_fields=["lang"], integer_index_fields=["year"])
    assert store.describe("docs").payload_indexes == {"lang": "keyword", "year": "integer"}
    # Asked again with one more (a later release): only that one is added.
    assert not store.ensure_collection("docs", DIM, keyword_index_fields=["lang"], float_index_fields=["price"])
    assert store.describe("docs").payload_indexes == {"lang": "keyword", "year": "integer", "price": "float"}
    with pytest.raises(InvalidArgument, match="indexed as keyword, not integer"):
        store.ensure_collection("docs", DIM, integer_index_fields=["lang"])
    store.close()


def test_local_mode_ignores_indexes_quietly(tmp_path: Path) -> None:
    store = VectorStore(path=str(tmp_path / "q"), engine="local")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # qdrant-client warns when asked for a local index
            assert store.ensure_collection("docs", DIM, keyword_index_fields=["lang"], integer_index_fields=["year"])
        assert store.describe("docs").payload_indexes == {}
    finally:
        store.close()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"keyword_index_fields": ["a"], "integer_index_fields": ["a"]}, "indexed as both keyword and integer"),
        ({"integer_index_fields": ["a"], "float_index_fields": ["a"]}, "indexed as both integer and float"),
        ({"keyword_index_fields": [""]}, "invalid payload index field ''"),
        ({"float_index_fields": [" price"]}, "invalid payload index field ' price'"),
        ({"keyword_index_fields": [f"f{i}" for i in range(65)]}, "at most 64 payload index fields"),
    ],
)
def test_bad_index_fields_are_invalid(store: VectorStore, fields: dict, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        store.ensure_collection("docs", DIM, **fields)
    with pytest.raises(NotFound):
        store.describe("docs")  # validated before anything was created


# -- timeouts ------------------------------------------------------------------------------


class RecordingClient:
    """Wraps the embedded client and records the timeout each call was given."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.timeouts: dict[str, Any] = {}

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.inner, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            self.timeouts[name] = kwargs.get("timeout")
            return method(*args, **kwargs)

        return call


def test_every_call_that_takes_a_timeout_gets_one(tmp_path: Path) -> None:
    """The client-wide timeout bounds all calls; the ones that accept their own get it too."""
    store = VectorStore(path=str(tmp_path / "q"), timeout_s=2.5)
    recorder = RecordingClient(store._client)
    store._client = recorder  # type: ignore[assignment]
    try:
        store.ensure_collection("docs", DIM)
        store.upsert("docs", POINTS)
        store.search("docs", QUERY, top_k=1)
        store.delete("docs", ids=[uid(1)], filter=Filter(must=(Condition("lang", keyword="fr"),)))
        store.describe("docs")
        store.delete_collection("docs")
    finally:
        store.close()
    takes_timeout = {"create_collection", "upsert", "query_points", "delete", "count", "delete_collection"}
    assert {name: recorder.timeouts[name] for name in takes_timeout} == dict.fromkeys(takes_timeout, 3)  # 2.5 rounded up
    # collection_exists and get_collection take none of their own: the client-wide one bounds them.
    assert set(recorder.timeouts) - takes_timeout == {"collection_exists", "get_collection", "close"}


@pytest.mark.parametrize("timeout_s", [0, -1])
def test_a_timeout_must_be_positive(tmp_path: Path, timeout_s: float) -> None:
    with pytest.raises(InvalidArgument, match="timeout_s must be positive"):
        VectorStore(path=str(tmp_path), timeout_s=timeout_s)


# -- a server that cannot be reached or does not answer -------------------------------------


def remote_store(url: str, grpc_port: int, prefer_grpc: bool) -> VectorStore:
    before = set(threading.enumerate())
    store = VectorStore(url=url, grpc_port=grpc_port, timeout_s=1, prefer_grpc=prefer_grpc)
    # qdrant-client checks the server version in a background thread and warns when it
    # cannot; let that happen inside this test rather than in whichever test runs next.
    for thread in set(threading.enumerate()) - before:
        thread.join(timeout=5)
    return store


def every_operation(store: VectorStore) -> dict[str, Callable[[], Any]]:
    match_en = Filter(must=(Condition("lang", keyword="en"),))
    return {
        "ensure_collection": lambda: store.ensure_collection("docs", DIM, keyword_index_fields=["lang"]),
        "describe": lambda: store.describe("docs"),
        "delete_collection": lambda: store.delete_collection("docs"),
        "upsert": lambda: store.upsert("docs", POINTS[:1]),
        "search": lambda: store.search("docs", QUERY, top_k=1, filter=match_en),
        "delete by ids": lambda: store.delete("docs", ids=[uid(1)]),
        "delete by filter": lambda: store.delete("docs", filter=match_en),
    }


def outcomes(store: VectorStore) -> dict[str, tuple[RagrailError | None, float]]:
    """Runs every operation at once (each alone would take the full timeout)."""

    def run(fn: Callable[[], Any]) -> tuple[RagrailError | None, float]:
        start = time.monotonic()
        try:
            fn()
        except RagrailError as exc:
            return exc, time.monotonic() - start
        return None, time.monotonic() - start

    ops = every_operation(store)
    with ThreadPoolExecutor(len(ops)) as pool:
        futures = {name: pool.submit(run, fn) for name, fn in ops.items()}
        return {name: f.result() for name, f in futures.items()}


@pytest.mark.filterwarnings("ignore:Failed to obtain server version")
@pytest.mark.parametrize(("prefer_grpc", "where"), [(True, "gRPC 127.0.0.1:1"), (False, "http://127.0.0.1:1")])
def test_unreachable_server_is_unavailable(prefer_grpc: bool, where: str) -> None:
    store = remote_store("http://127.0.0.1:1", 1, prefer_grpc)
    try:
        for name, (error, _) in outcomes(store).items():
            assert isinstance(error, Unavailable), f"{name}: {error!r}"
            assert error.message.startswith(f"Qdrant is unavailable ({where}): cannot connect"), error.message
            assert "\n" not in error.message
    finally:
        store.close()


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections (the kernel's backlog) and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield sock.getsockname()[1]


@pytest.mark.filterwarnings("ignore:Failed to obtain server version")
@pytest.mark.parametrize("prefer_grpc", [True, False])
def test_a_server_that_does_not_answer_times_out_as_unavailable(silent_port: int, prefer_grpc: bool) -> None:
    store = remote_store(f"http://127.0.0.1:{silent_port}", silent_port, prefer_grpc)
    try:
        for name, (error, elapsed) in outcomes(store).items():
            assert isinstance(error, Unavailable), f"{name}: {error!r}"
            assert "no answer within 1s" in error.message, error.message
            assert elapsed < 3, f"{name} took {elapsed:.1f}s with a 1s timeout"
    finally:
        store.close()


class FakeRpcError:
    def __init__(self, code: str, details: str = "details") -> None:
        self._code, self._details = code, details

    def code(self) -> Any:
        return type("Code", (), {"name": self._code})()

    def details(self) -> str:
        return self._details


@pytest.mark.parametrize(
    ("code", "kind", "fragment"),
    [
        ("NOT_FOUND", NotFound, "collection docs does not exist"),
        ("INVALID_ARGUMENT", InvalidArgument, "Qdrant rejected the request: details"),
        ("FAILED_PRECONDITION", InvalidArgument, "Qdrant rejected the request"),
        ("UNAVAILABLE", Unavailable, "cannot connect (UNAVAILABLE)"),
        ("DEADLINE_EXCEEDED", Unavailable, "no answer within 2s"),
        ("UNAUTHENTICATED", Unavailable, "refused our API key"),
        ("PERMISSION_DENIED", Unavailable, "refused our API key"),
        ("INTERNAL", Unavailable, "INTERNAL: details"),
        ("RESOURCE_EXHAUSTED", Unavailable, "RESOURCE_EXHAUSTED"),
    ],
)
def test_grpc_statuses_from_qdrant_are_mapped(code: str, kind: type, fragment: str) -> None:
    error = _from_grpc(FakeRpcError(code), "docs", 2)
    assert type(error) is kind and fragment in str(error)


@pytest.mark.parametrize(
    ("status", "kind", "fragment"),
    [
        (404, NotFound, "collection docs does not exist"),
        (400, InvalidArgument, "Qdrant rejected the request: bad filter"),
        (401, Unavailable, "refused our API key (HTTP 401)"),
        (403, Unavailable, "refused our API key (HTTP 403)"),
        (500, Unavailable, "HTTP 500: bad filter"),
        (503, Unavailable, "HTTP 503"),
    ],
)
def test_http_statuses_from_qdrant_are_mapped(store: VectorStore, status: int, kind: type, fragment: str) -> None:
    def fail() -> None:
        raise UnexpectedResponse(status, "reason", b'{"status": {"error": "bad filter"}}', None)  # type: ignore[arg-type]

    with pytest.raises(kind) as info:
        store._call(fail, collection="docs")
    assert fragment in info.value.message


# -- settings ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "deployment",
    [{"num_replicas": 2}, {"num_replicas": "auto"}, {"autoscaling_config": {"min_replicas": 1, "max_replicas": 3}}],
)
def test_the_embedded_store_allows_exactly_one_replica(deployment: dict) -> None:
    with pytest.raises(ValidationError, match="exactly one replica may own"):
        RetrievalSettings(deployment=deployment)
    RetrievalSettings(qdrant_url="http://qdrant:6333", deployment=deployment)  # a server scales out


@pytest.mark.parametrize(
    "deployment", [{}, {"num_replicas": 1}, {"autoscaling_config": {"min_replicas": 1, "max_replicas": 1}}]
)
def test_one_replica_is_fine_for_the_embedded_store(deployment: dict) -> None:
    RetrievalSettings(deployment=deployment)


@pytest.mark.filterwarnings("ignore:Failed to obtain server version")
def test_build_store_passes_the_server_settings(tmp_path: Path) -> None:
    settings = RetrievalSettings(qdrant_url="http://127.0.0.1:1", grpc_port=2, timeout_s=0.5, max_top_k=7)
    before = set(threading.enumerate())
    store = build_store(settings, tmp_path / "unused")
    for thread in set(threading.enumerate()) - before:  # the version check warns here, not later
        thread.join(timeout=5)
    try:
        assert (store.embedded, store.where, store.max_top_k, store._timeout) == (False, "gRPC 127.0.0.1:2", 7, 1)
    finally:
        store.close()
    assert not (tmp_path / "unused").exists()
    embedded = build_store(RetrievalSettings(), tmp_path / "q")
    try:
        assert embedded.embedded and (tmp_path / "q").is_dir()
    finally:
        embedded.close()
