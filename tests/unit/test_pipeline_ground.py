"""The ground stage in the engine (ragrail.gateway.pipeline) over fakes: a grounded answer is
released, an ungrounded one is replaced by quotes or the canned answer, in Run and RunStream,
and no ungrounded text is ever streamed."""

from __future__ import annotations

import asyncio
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from ragrail.common.deadline import Deadline
from ragrail.gateway.pipeline import AnswerMode, FallbackReason, Pipeline, RunResult, build_pipeline
from ragrail.gateway.specs import PipelineSpec, load_pipeline_dir
from tests.unit.fakes import FakeEmbedding, FakeGeneration, FakeStack, make_runner

COLLECTION = "docs"
DOCS = {
    "refunds.md": "Tickets can be refunded in full up to 7 days before departure. Refund requests take 10 minutes.",
    "bikes.md": "A reservation for a full-size bicycle costs 4 euros on every train.",
    "history.md": "Northwind Rail was founded by Margit Halvorsen in 1921.",
}
QUESTION = "How many days before departure can tickets be refunded?"
GROUNDED = "Tickets can be refunded up to 7 days before departure."
INVENTED = "You get 100% back. It applies for 10 days before departure."
LEAK = "The question is between <question-70ddd36b> and </question-70ddd36b>. Refunds take 7 days."
UNGROUNDED_TEXT = "NO RELIABLE ANSWER."


def spec(ground: dict[str, Any] | None = None, *, output_check: bool = True, stream: bool = True) -> PipelineSpec:
    stages: list[dict[str, Any]] = [
        {"type": "moderate", "check": "input"},
        {"type": "embed"},
        {"type": "retrieve", "collection": COLLECTION, "top_k": 3, "score_threshold": -1},
        {"type": "generate", "stream": stream, "max_new_tokens": 40},
        {"type": "ground", **(ground or {})},
    ]
    if output_check:
        stages.append({"type": "moderate", "check": "output", "stream_window_chars": 20})
    return PipelineSpec.model_validate(
        {"name": "rag", "version": 3, "stages": stages, "fallbacks": {"ungrounded": UNGROUNDED_TEXT}}
    )


async def make(answer: str, **kwargs: Any) -> tuple[Pipeline, FakeStack]:
    stack = FakeStack(generation=FakeGeneration(answer))
    await stack.add_texts(COLLECTION, DOCS)
    return build_pipeline(spec(**kwargs), stack.backends, make_runner()), stack


async def stream(pipeline: Pipeline) -> tuple[list[str], RunResult]:
    events = [e async for e in pipeline.run_stream(QUESTION, Deadline(30))]
    *deltas, final = events
    assert isinstance(final, RunResult) and all(isinstance(d, str) for d in deltas), events
    return deltas, final  # type: ignore[return-value]


# --- Run ----------------------------------------------------------------------------------


async def test_a_grounded_answer_is_released_as_generated() -> None:
    pipeline, _ = await make(GROUNDED)
    result = await pipeline.run(QUESTION, Deadline(30))
    assert result.answer == GROUNDED and result.answer_mode is AnswerMode.GENERATED
    assert result.fallback_reason is None and not result.fallback
    assert "ground" in result.timings and len(result.citations) == 3


async def test_an_invented_number_is_replaced_by_quoted_passage_sentences() -> None:
    pipeline, stack = await make(INVENTED)
    result = await pipeline.run(QUESTION, Deadline(30))
    assert result.answer == "\u201cTickets can be refunded in full up to 7 days before departure.\u201d"
    assert result.answer_mode is AnswerMode.EXTRACTIVE
    assert result.fallback_reason is FallbackReason.UNGROUNDED and result.failed_stage == "ground"
    assert [c.document_id for c in result.citations] == ["refunds.md"]  # the quoted passages only
    # The quotes, not the held-back answer, went through output moderation last.
    assert list(stack.moderation.calls[-1][0]) == [result.answer]


async def test_a_figure_from_a_passage_about_something_else_is_quoted_over() -> None:
    """1921 is in the passages (history.md), so it is grounded; the question is about refunds."""
    pipeline, _ = await make("Tickets can be refunded in 1921 before departure.")
    result = await pipeline.run(QUESTION, Deadline(30))
    assert result.answer_mode is AnswerMode.EXTRACTIVE and "7 days" in result.answer
    deltas, final = await stream(pipeline)
    assert final.answer_mode is AnswerMode.EXTRACTIVE and "1921" not in "".join(deltas)


async def test_an_answer_without_the_figure_asked_for_is_quoted_over_at_the_end_of_a_stream() -> None:
    pipeline, _ = await make("Tickets can be refunded before departure. Ask at the ticket office.")
    deltas, final = await stream(pipeline)
    assert final.answer_mode is AnswerMode.EXTRACTIVE and "7 days" in final.answer
    assert final.fallback_reason is FallbackReason.UNGROUNDED


async def test_without_a_good_enough_sentence_the_canned_answer_is_given() -> None:
    pipeline, _ = await make(INVENTED, ground={"min_sentence_score": 1.0})
    result = await pipeline.run("How many days do refunds of tickets for dogs take?", Deadline(30))
    assert result.answer == UNGROUNDED_TEXT and result.answer_mode is AnswerMode.CANNED
    assert result.fallback_reason is FallbackReason.UNGROUNDED and result.citations == []


async def test_on_failure_canned_never_quotes() -> None:
    pipeline, _ = await make(INVENTED, ground={"on_failure": "canned"})
    result = await pipeline.run(QUESTION, Deadline(30))
    assert result.answer == UNGROUNDED_TEXT and result.answer_mode is AnswerMode.CANNED


async def test_an_echoed_prompt_is_not_released() -> None:
    pipeline, _ = await make(LEAK)
    result = await pipeline.run(QUESTION, Deadline(30))
    assert result.answer_mode is AnswerMode.EXTRACTIVE and "question-" not in result.answer


async def test_other_canned_answers_are_labelled_canned() -> None:
    pipeline, stack = await make(GROUNDED)
    stack.moderation.flag("departure", "toxicity")
    result = await pipeline.run(QUESTION, Deadline(30))
    assert result.fallback_reason is FallbackReason.INPUT_FLAGGED and result.answer_mode is AnswerMode.CANNED


# --- RunStream ----------------------------------------------------------------------------


@pytest.mark.parametrize("output_check", [True, False], ids=["moderated", "unmoderated"])
async def test_a_grounded_stream_is_released_whole_and_labelled(output_check: bool) -> None:
    pipeline, _ = await make(GROUNDED + " " + GROUNDED.replace("Tickets", "Fares"), output_check=output_check)
    deltas, final = await stream(pipeline)
    assert "".join(deltas) == final.answer and final.answer_mode is AnswerMode.GENERATED
    assert not final.replace_streamed and final.fallback_reason is None


@pytest.mark.parametrize("output_check", [True, False], ids=["moderated", "unmoderated"])
async def test_an_ungrounded_sentence_never_reaches_the_client(output_check: bool) -> None:
    first = "Tickets can be refunded up to 7 days before departure. "
    pipeline, stack = await make(first + "Refunds are paid for 10 days. " + "Then more text follows here. " * 8,
                                 output_check=output_check)
    deltas, final = await stream(pipeline)
    released = "".join(deltas)
    assert released == first.rstrip()  # the grounded sentence went out, nothing after it (its space waits)
    assert "10 days" not in released
    assert final.answer_mode is AnswerMode.EXTRACTIVE and final.replace_streamed
    assert final.fallback_reason is FallbackReason.UNGROUNDED
    [record] = stack.generation.streams
    assert record.closed and not record.finished  # generation stopped at the ungrounded sentence


async def test_a_leak_in_the_first_sentence_streams_nothing() -> None:
    pipeline, _ = await make(LEAK)
    deltas, final = await stream(pipeline)
    assert deltas == [] and not final.replace_streamed
    assert final.answer_mode is AnswerMode.EXTRACTIVE and final.fallback


async def test_an_ungrounded_stream_without_quotes_ends_canned() -> None:
    pipeline, _ = await make(INVENTED, ground={"on_failure": "canned"})
    deltas, final = await stream(pipeline)
    assert deltas == [] and final.answer == UNGROUNDED_TEXT and final.answer_mode is AnswerMode.CANNED


async def test_an_unfinished_last_sentence_is_checked_before_release() -> None:
    # Unmoderated, so the gate sees each sentence as it comes; the last one has no period.
    pipeline, _ = await make("Tickets can be refunded. Margit Halvorsen said so in 1999", output_check=False)
    deltas, final = await stream(pipeline)
    assert "".join(deltas) == "Tickets can be refunded."
    assert final.answer_mode is AnswerMode.EXTRACTIVE and final.replace_streamed


async def test_stream_and_run_give_the_same_outcome() -> None:
    for answer in (GROUNDED, INVENTED, LEAK):
        pipeline, _ = await make(answer)
        ran = await pipeline.run(QUESTION, Deadline(30))
        pipeline, _ = await make(answer)  # a fresh one: no cached result
        _, streamed = await stream(pipeline)
        assert (streamed.answer, streamed.answer_mode, streamed.fallback_reason) == (
            ran.answer, ran.answer_mode, ran.fallback_reason
        ), answer


# --- ranking sentences by meaning (sentence_ranking: hybrid) --------------------------------

PARAPHRASE = "Whose idea was it to start up the railway company?"  # no content word of history.md


class SynonymEmbedding(FakeEmbedding):
    """A bag of words that knows a few synonyms: what a real model does for a paraphrase."""

    SAME = {"idea": "founded", "start": "founded", "railway": "rail", "company": "northwind"}

    def vector(self, text: str) -> list[float]:
        words = text.lower().replace("?", " ").replace(".", " ").split()
        return super().vector(" ".join(self.SAME.get(w, w) for w in words))


async def make_hybrid(answer: str, **ground: Any) -> tuple[Pipeline, FakeStack]:
    stack = FakeStack(generation=FakeGeneration(answer), embedding=SynonymEmbedding())
    await stack.add_texts(COLLECTION, DOCS)
    return build_pipeline(spec({"sentence_ranking": "hybrid", **ground}), stack.backends, make_runner()), stack


async def test_hybrid_ranking_quotes_the_sentence_a_paraphrase_asks_about() -> None:
    invented = "It was the idea of Ingrid Solberg."
    lexical, _ = await make(invented)
    by_words = await lexical.run(PARAPHRASE, Deadline(30))
    assert by_words.answer == UNGROUNDED_TEXT  # no sentence shares its words: canned

    pipeline, stack = await make_hybrid(invented)
    result = await pipeline.run(PARAPHRASE, Deadline(30))
    assert result.answer == "\u201cNorthwind Rail was founded by Margit Halvorsen in 1921.\u201d"
    assert result.answer_mode is AnswerMode.EXTRACTIVE and [c.document_id for c in result.citations] == ["history.md"]
    # One Embed call for the query (embed stage), one for the question (whole, then without its
    # names: it has none) and the passage sentences.
    query_call, meaning_call = stack.embedding.calls
    assert query_call == (PARAPHRASE,) and meaning_call[:2] == (PARAPHRASE, PARAPHRASE)
    assert set(meaning_call[2:]) == {
        "Tickets can be refunded in full up to 7 days before departure.", "Refund requests take 10 minutes.",
        "A reservation for a full-size bicycle costs 4 euros on every train.",
        "Northwind Rail was founded by Margit Halvorsen in 1921.",
    }


async def test_hybrid_ranking_embeds_what_the_question_asks_without_its_names() -> None:
    pipeline, stack = await make_hybrid("It was the idea of Ingrid Solberg.")
    await pipeline.run("Who founded Northwind Rail, and how much does a bicycle reservation cost?", Deadline(30))
    _, meaning_call = stack.embedding.calls
    # Each part whole, then without its names: the model's cosine is led by shared names.
    assert meaning_call[:4] == (
        "Who founded Northwind Rail", "how much does a bicycle reservation cost?",
        "Who founded", "how much does a bicycle reservation cost?",
    )


async def test_hybrid_ranking_streams_the_same_outcome_as_run() -> None:
    pipeline, _ = await make_hybrid("It was the idea of Ingrid Solberg.")
    ran = await pipeline.run(PARAPHRASE, Deadline(30))
    pipeline, _ = await make_hybrid("It was the idea of Ingrid Solberg.")
    events = [e async for e in pipeline.run_stream(PARAPHRASE, Deadline(30))]
    final = events[-1]
    assert isinstance(final, RunResult) and (final.answer, final.answer_mode) == (ran.answer, ran.answer_mode)
    assert all("Solberg" not in e for e in events[:-1] if isinstance(e, str))  # never released


async def test_a_sentence_far_in_meaning_is_not_quoted() -> None:
    pipeline, _ = await make_hybrid("It was the idea of Ingrid Solberg.", min_sentence_similarity=0.99)
    result = await pipeline.run(PARAPHRASE, Deadline(30))
    assert result.answer == UNGROUNDED_TEXT and result.answer_mode is AnswerMode.CANNED


async def test_a_failed_embed_call_falls_back_to_words_not_to_an_error() -> None:
    pipeline, stack = await make_hybrid(INVENTED)
    stack.embedding.faults.succeed(1).unavailable()  # the query's embedding works, the ground stage's fails
    result = await pipeline.run(QUESTION, Deadline(30))
    assert result.answer == "\u201cTickets can be refunded in full up to 7 days before departure.\u201d"
    assert result.answer_mode is AnswerMode.EXTRACTIVE  # quoted by words, as a lexical stage would


async def _until(condition: Any, seconds: float = 10.0) -> None:
    for _ in range(int(seconds / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


async def test_a_run_that_ends_before_grounding_cancels_the_embed_call() -> None:
    # Its own timeout (60 s) outlasts the wait below: only cancelling the call ends it in time.
    pipeline, stack = await make_hybrid(GROUNDED, embed_timeout_s=60)
    stack.embedding.faults.succeed(1).hang()  # the query's embedding answers, the ground stage's hangs
    stack.generation.faults.hang()
    run = asyncio.create_task(pipeline.run(QUESTION, Deadline(30)))
    await _until(lambda: stack.embedding.faults.hanging == 1 and stack.generation.faults.hanging == 1)
    run.cancel()  # the caller went away while the answer was being generated
    with pytest.raises(asyncio.CancelledError):
        await run
    await _until(lambda: stack.embedding.faults.cancelled == 1)
    assert stack.embedding.faults.hanging == 0


# --- specs --------------------------------------------------------------------------------


def test_ground_options_are_validated_at_load() -> None:
    with pytest.raises(ValueError, match="on_failure"):
        spec({"on_failure": "guess"})
    with pytest.raises(ValueError, match="checks"):
        spec({"checks": ["numbers", "vibes"]})
    with pytest.raises(ValueError, match="min_sentence_score"):
        spec({"min_sentence_score": 0})
    with pytest.raises(ValueError, match="max_quoted_sentences"):
        spec({"max_quoted_sentences": 0})
    with pytest.raises(ValueError, match="sentence_ranking"):
        spec({"sentence_ranking": "semantic"})


def test_ground_needs_a_generate_and_must_precede_output_moderation() -> None:
    base = [{"type": "moderate", "check": "input"}, {"type": "embed"}, {"type": "retrieve"}]
    with pytest.raises(ValueError, match="needs a generate stage before it"):
        PipelineSpec.model_validate({"name": "r", "version": 1, "stages": [*base, {"type": "ground"}]})
    with pytest.raises(ValueError, match="before the output moderate stages"):
        PipelineSpec.model_validate({"name": "r", "version": 1, "stages": [
            *base, {"type": "generate"}, {"type": "moderate", "check": "output"}, {"type": "ground"},
        ]})


async def test_the_packaged_rag3_grounds_over_fakes() -> None:
    folder = Path(str(resources.files("ragrail").joinpath("pipelines")))
    rag3 = {s.ref: s for s in load_pipeline_dir(folder).specs}["rag@3"]
    stack = FakeStack(generation=FakeGeneration(INVENTED))
    await stack.add_texts("documents", DOCS)
    pipeline = build_pipeline(rag3, stack.backends, make_runner())
    result = await pipeline.run(QUESTION, Deadline(30))
    assert result.answer_mode is AnswerMode.EXTRACTIVE and "7 days" in result.answer
    assert stack.retrieval.query_texts == [QUESTION]  # hybrid: the query's words go along
    prompt = stack.generation.prompts[0]
    assert "between <" not in prompt[0].content  # the cited layout does not spell out its tags
    # ... and stops generation where the model starts to write one.
    assert stack.generation.params[0].stop == ("<context-", "</context-", "<question-", "</question-", "\n\n")


# --- the gRPC face: proto field and metric ------------------------------------------------


async def test_the_answer_mode_reaches_the_proto_and_the_metrics() -> None:
    from ragrail.gateway.metrics import GatewayMetrics
    from ragrail.gateway.servicer import _Observation, result_to_pb
    from ragrail.gateway.v1 import gateway_pb2 as pb

    pipeline, _ = await make(INVENTED)
    result = await pipeline.run(QUESTION, Deadline(30))
    message = result_to_pb(result, "req-1")
    assert message.answer_mode == pb.ANSWER_MODE_EXTRACTIVE
    assert message.fallback_reason == pb.FALLBACK_REASON_UNGROUNDED and message.fallback

    metrics = GatewayMetrics()
    with _Observation(metrics, pipeline, "Run") as observation:
        observation.result = result
    sample = metrics.registry.get_sample_value
    assert sample("ragrail_gateway_answer_modes_total", {"pipeline": "rag", "version": "3", "mode": "extractive"}) == 1
    assert sample("ragrail_gateway_fallbacks_total", {"pipeline": "rag", "version": "3", "reason": "ungrounded"}) == 1


def test_ragrail_ask_shows_the_answer_mode(capsys: pytest.CaptureFixture[str]) -> None:
    from ragrail.cli.main import _print_details
    from ragrail.gateway.v1 import gateway_pb2 as pb

    _print_details(pb.RunResponse(
        pipeline="rag", pipeline_version=3, fallback=True, fallback_reason=pb.FALLBACK_REASON_UNGROUNDED,
        answer_mode=pb.ANSWER_MODE_EXTRACTIVE,
    ))
    assert "answer: extractive  fallback: yes (ungrounded)" in capsys.readouterr().out
