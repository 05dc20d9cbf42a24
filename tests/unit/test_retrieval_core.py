"""VectorStore over embedded Qdrant (a temp folder), plus the unreachable-server mapping."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from ragrail.common.errors import InvalidArgument, NotFound, Unavailable
from ragrail.retrieval.core import (
    Condition,
    Distance,
    Filter,
    Point,
    Range,
    VectorStore,
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


@pytest.fixture
def store(tmp_path: Path) -> Iterator[VectorStore]:
    s = VectorStore(path=str(tmp_path / "qdrant"), max_top_k=10, max_batch_size=8)
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


# -- a server that cannot be reached ---------------------------------------------


@pytest.mark.filterwarnings("ignore:Failed to obtain server version")
@pytest.mark.parametrize("prefer_grpc", [True, False])
def test_unreachable_server_is_unavailable(prefer_grpc: bool) -> None:
    before = set(threading.enumerate())
    store = VectorStore(url="http://127.0.0.1:1", timeout_s=1, prefer_grpc=prefer_grpc)
    # qdrant-client checks the server version in a background thread and warns when it
    # cannot; let that happen inside this test rather than in whichever test runs next.
    for thread in set(threading.enumerate()) - before:
        thread.join(timeout=5)
    try:
        with pytest.raises(Unavailable, match="Qdrant is unavailable"):
            store.ensure_collection("docs", DIM)
        with pytest.raises(Unavailable):
            store.search("docs", QUERY, top_k=1)
        with pytest.raises(Unavailable):
            store.upsert("docs", POINTS[:1])
    finally:
        store.close()
