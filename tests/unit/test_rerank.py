"""The rerank stage (ragrail.gateway.rerank): the question's words, novelty, the spec's rules."""

from __future__ import annotations

import pytest

from ragrail.common.deadline import Deadline
from ragrail.gateway.backends import Passage
from ragrail.gateway.pipeline import build_pipeline
from ragrail.gateway.rerank import lexical_order, rerank
from pydantic import ValidationError

from ragrail.gateway.specs import PipelineSpec
from tests.unit.fakes import FakeGeneration, FakeStack, make_runner


def passage(doc: str, text: str, score: float) -> Passage:
    return Passage(document_id=doc, text=text, score=score)


QUESTION = "Which ship sails to Harbour Island on Sundays?"
DENSE = [  # as dense retrieval ranked them: the ship's name only in the third
    passage("ferries.md", "Ferries leave the quay every morning in summer.", 0.62),
    passage("ferries-2.md", "Ferries leave the quay every morning in the summer months.", 0.61),
    passage("island.md", "On Sundays the Marisol sails to Harbour Island at nine.", 0.58),
    passage("cafe.md", "The quay cafe opens at eight.", 0.40),
]


def test_the_passage_holding_the_questions_words_rises() -> None:
    assert lexical_order(QUESTION, DENSE)[0] == 2
    assert [p.document_id for p in rerank(QUESTION, DENSE, top_n=2)] == ["island.md", "ferries.md"]


def test_diversity_sinks_a_near_copy_of_a_passage_already_kept() -> None:
    plain = [p.document_id for p in rerank(QUESTION, DENSE, top_n=3)]
    assert plain == ["island.md", "ferries.md", "ferries-2.md"]
    diverse = [p.document_id for p in rerank(QUESTION, DENSE, top_n=3, diversity=0.5)]
    assert diverse[:2] == ["island.md", "ferries.md"] and "ferries-2.md" not in diverse


def test_rerank_keeps_scores_and_at_most_top_n() -> None:
    kept = rerank(QUESTION, DENSE, top_n=10)
    assert sorted(kept, key=lambda p: p.document_id) == sorted(DENSE, key=lambda p: p.document_id)
    assert rerank(QUESTION, [], top_n=3) == []


def spec_with(stages: list[dict]) -> PipelineSpec:  # type: ignore[type-arg]
    return PipelineSpec.model_validate({"name": "rr", "version": 1, "stages": stages})


def test_a_rerank_stage_needs_a_retrieve_stage_before_it() -> None:
    with pytest.raises(ValidationError, match="needs a retrieve stage before it"):
        spec_with([{"type": "embed"}, {"type": "rerank"}, {"type": "generate", "prompt": "plain"}])


async def test_the_pipeline_cites_the_reranked_passages() -> None:
    stack = FakeStack(generation=FakeGeneration("The Marisol."))
    await stack.add_texts("documents", {p.document_id: p.text for p in DENSE})
    spec = spec_with([
        {"type": "embed"},
        {"type": "retrieve", "top_k": 4, "score_threshold": -1},
        {"type": "rerank", "top_n": 2},
        {"type": "generate"},
    ])
    result = await build_pipeline(spec, stack.backends, make_runner()).run(QUESTION, Deadline(30))
    assert result.citations[0].document_id == "island.md" and len(result.citations) == 2
    assert "rerank" in result.timings
