"""Versioned documents in the vector store: staged points are invisible, a commit swaps versions.

Over both embedded implementations (Qdrant's engine in process and qdrant-client's local mode),
the same calls the retrieval service makes for the gateway's ingestion.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from ragrail.common.errors import FailedPrecondition, InvalidArgument, NotFound
from ragrail.retrieval.core import Condition, Filter, Point, VectorStore

DIM = 4


@pytest.fixture(params=["edge", "local"])
def store(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[VectorStore]:
    s = VectorStore(path=str(tmp_path / "qdrant"), max_top_k=50, max_batch_size=64, engine=request.param)
    s.ensure_collection("docs", DIM)
    yield s
    s.close()


def version_points(document_id: str, version: str, n: int, *, staged: bool = True) -> list[Point]:
    points = []
    for i in range(n):
        payload: dict[str, object] = {"document_id": document_id, "version": version, "chunk_index": i}
        if staged:
            payload["staged"] = True
        pid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{document_id}/{version}/{i}"))
        points.append(Point(pid, [1.0, 0.1 * i, 0.0, 0.5], payload))
    return points


def seen(store: VectorStore, document_id: str | None = None) -> dict[str, int]:
    """Version -> points a search returns (optionally for one document)."""
    where = Filter(must=(Condition("document_id", keyword=document_id),)) if document_id else None
    hits = store.search("docs", [1.0, 0.0, 0.0, 0.5], top_k=50, filter=where)
    counts: dict[str, int] = {}
    for h in hits:
        counts[h.payload["version"]] = counts.get(h.payload["version"], 0) + 1
    return counts


def test_staged_points_are_invisible_to_search_even_with_a_filter(store: VectorStore) -> None:
    store.upsert("docs", version_points("a", "v1", 3))
    assert seen(store) == {} and seen(store, "a") == {}
    assert store.describe("docs").points_count == 3


def test_commit_makes_the_version_visible_and_drops_the_others(store: VectorStore) -> None:
    store.upsert("docs", version_points("a", "v1", 5, staged=False))
    store.upsert("docs", version_points("b", "v1", 2, staged=False))  # another document, same version tag
    store.upsert("docs", version_points("a", "v2", 3))
    assert seen(store, "a") == {"v1": 5}  # the old version whole, the new one not at all

    assert store.commit_document("docs", "a", "v2", 3) == 5

    assert seen(store, "a") == {"v2": 3}
    assert seen(store, "b") == {"v1": 2}
    assert store.describe("docs").points_count == 5


def test_a_points_of_an_unversioned_older_store_are_replaced_too(store: VectorStore) -> None:
    legacy = [Point(str(uuid.uuid4()), [1.0, 0.0, 0.0, 0.5], {"document_id": "a", "chunk_index": 0})]
    store.upsert("docs", legacy)
    store.upsert("docs", version_points("a", "v2", 2))
    store.commit_document("docs", "a", "v2", 2)
    assert seen(store, "a") == {"v2": 2}


def test_a_commit_missing_points_is_refused_and_changes_nothing(store: VectorStore) -> None:
    store.upsert("docs", version_points("a", "v1", 2, staged=False))
    store.upsert("docs", version_points("a", "v2", 2))  # of 3: a concurrent commit deleted one
    with pytest.raises(FailedPrecondition, match="has 2 of 3 points"):
        store.commit_document("docs", "a", "v2", 3)
    assert seen(store, "a") == {"v1": 2}


def test_discard_deletes_one_version_only(store: VectorStore) -> None:
    store.upsert("docs", version_points("a", "v1", 2, staged=False))
    store.upsert("docs", version_points("a", "v2", 4))
    store.discard_version("docs", "a", "v2")
    assert store.describe("docs").points_count == 2 and seen(store, "a") == {"v1": 2}


def test_versions_on_a_missing_collection_are_not_found(store: VectorStore) -> None:
    with pytest.raises(NotFound):
        store.commit_document("gone", "a", "v1", 0)
    with pytest.raises(NotFound):
        store.discard_version("gone", "a", "v1")


@pytest.mark.parametrize("document_id,version", [("", "v1"), ("a", "")])
def test_versions_need_a_document_and_a_version(store: VectorStore, document_id: str, version: str) -> None:
    with pytest.raises(InvalidArgument):
        store.commit_document("docs", document_id, version, 0)
