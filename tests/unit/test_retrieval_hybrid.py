"""Hybrid search in the embedded engines: dense and BM25 rankings fused, scores still dense."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest

from ragrail.retrieval.core import Point, VectorStore

DOCS = {
    "puffin": "The Puffin ferry carries 300 passengers between Ostervik and Brennhaven.",
    "refunds": "Refunds are possible up to 7 days before departure, in full.",
    "valley": "The Valley Line has 5 stations and three passing loops.",
}
QUESTION = "How many passengers does the Puffin carry?"


@pytest.fixture(params=["edge", "local"])
def store(request: pytest.FixtureRequest, tmp_path: Path):  # type: ignore[no-untyped-def]
    store = VectorStore(path=str(tmp_path / request.param), engine=request.param)
    yield store
    store.close()


def fill(store: VectorStore, name: str = "c") -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    vectors = {key: rng.normal(size=16) for key in DOCS}
    store.ensure_collection(name, 16)
    store.upsert(name, [
        Point(str(uuid.uuid4()), vectors[key].tolist(), {"text": text, "document_id": key}) for key, text in DOCS.items()
    ])
    return vectors


def ranked(hits) -> list[str]:  # type: ignore[no-untyped-def]
    return [h.payload["document_id"] for h in hits]


def test_a_name_in_the_question_lifts_the_passage_that_contains_it(store: VectorStore) -> None:
    vectors = fill(store)
    # The query vector prefers "refunds"; only the words say the question is about the Puffin.
    query = (vectors["refunds"] + 0.5 * vectors["puffin"]).tolist()
    dense = store.search("c", query, top_k=3)
    hybrid = store.search("c", query, top_k=3, query_text=QUESTION)
    assert ranked(dense)[0] == "refunds"
    assert ranked(hybrid)[0] == "puffin"
    # The scores are still each passage's dense similarity, the same as a dense search's.
    assert {h.payload["document_id"]: round(h.score, 5) for h in hybrid} == {
        h.payload["document_id"]: round(h.score, 5) for h in dense
    }


def test_the_threshold_still_means_dense_similarity(store: VectorStore) -> None:
    vectors = fill(store)
    query = vectors["refunds"].tolist()
    passing = {h.payload["document_id"] for h in store.search("c", query, top_k=3, score_threshold=0.5)}
    hybrid = store.search("c", query, top_k=3, score_threshold=0.5, query_text=QUESTION)
    # The words match "puffin", but hybrid only reorders what passes the threshold.
    assert {h.payload["document_id"] for h in hybrid} == passing == {"refunds"}
    assert store.search("c", (-vectors["refunds"]).tolist(), top_k=3, score_threshold=0.99, query_text=QUESTION) == []


def test_filters_apply_to_both_rankings(store: VectorStore) -> None:
    from ragrail.retrieval.core import Condition, Filter

    vectors = fill(store)
    only_valley = Filter(must=[Condition(key="document_id", keyword="valley")])
    hits = store.search("c", vectors["puffin"].tolist(), top_k=3, filter=only_valley, query_text=QUESTION)
    assert ranked(hits) == ["valley"]


def test_a_collection_created_without_lexical_vectors_answers_dense(tmp_path: Path) -> None:
    old = VectorStore(path=str(tmp_path / "s"), lexical_field=None)
    vectors = fill(old)
    assert not old.describe("c").lexical
    old.close()
    reopened = VectorStore(path=str(tmp_path / "s"))  # this release's default: lexical for new collections
    query = (vectors["refunds"] + 0.5 * vectors["puffin"]).tolist()
    assert ranked(reopened.search("c", query, top_k=3, query_text=QUESTION))[0] == "refunds"
    assert not reopened.describe("c").lexical
    reopened.ensure_collection("fresh", 16)
    assert reopened.describe("fresh").lexical
    reopened.close()
