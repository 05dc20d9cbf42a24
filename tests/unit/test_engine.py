"""Continuous batching on a tiny random Llama: rows join and leave between steps, and a
row's output never depends on the company it keeps."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from ragrail.common.errors import ResourceExhausted, Unavailable
from ragrail.generation.core import FinishReason, Generation, Message, Sampling, StreamEvent, TextGenerator
from ragrail.generation.engine import ContinuousBatcher, StepStats
from ragrail.generation.sampling import BatchSampler

PROMPTS = [
    "short",
    "a somewhat longer prompt than the first one, with more words in it",
    "third one",
    "and a fourth prompt, the longest of them all by a comfortable margin of several words",
]


@pytest.fixture(scope="module")
def text_generator(tiny_llama_dir: Path) -> TextGenerator:
    return TextGenerator(str(tiny_llama_dir), name="tiny", dtype="float32", max_new_tokens_limit=200)


class Engines:
    """Makes engines with a step log, and closes them after the test."""

    def __init__(self, generator: TextGenerator) -> None:
        self.generator = generator
        self.made: list[ContinuousBatcher] = []
        self.steps: list[StepStats] = []

    def __call__(self, **options: object) -> ContinuousBatcher:
        engine = ContinuousBatcher(self.generator, observer=self.steps.append, **options)  # type: ignore[arg-type]
        self.made.append(engine)
        return engine


@pytest.fixture
def engines(text_generator: TextGenerator) -> Iterator[Engines]:
    made = Engines(text_generator)
    yield made
    for engine in made.made:
        engine.close()


def ask(prompt: str) -> list[Message]:
    return [Message("user", prompt)]


def hf_generate(generator: TextGenerator, prompt: str, max_new: int, **kwargs: object) -> str:
    """transformers' own ``generate`` on the prompt alone: the reference output."""
    prepared = generator.prepare(ask(prompt), Sampling(max_new_tokens=max_new))
    ids = prepared.input_ids
    with torch.inference_mode():
        out = generator.model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new, do_sample=False,
            pad_token_id=generator.pad_token_id, **kwargs,
        )
    return str(generator.tokenizer.decode(out[0, prepared.token_count :], skip_special_tokens=True))


def concurrently(engine: ContinuousBatcher, jobs: list[tuple[str, Sampling]]) -> list[Generation]:
    results: list[Generation | None] = [None] * len(jobs)
    start = threading.Barrier(len(jobs))

    def run(i: int) -> None:
        start.wait()
        results[i] = engine.generate(ask(jobs[i][0]), jobs[i][1])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert all(r is not None for r in results), "a request never finished"
    return results  # type: ignore[return-value]


# -- same output as transformers, alone or in company -------------------------------------------


@pytest.mark.parametrize("chunk", [512, 5])
def test_greedy_output_is_transformers_generate(engines: Engines, text_generator: TextGenerator, chunk: int) -> None:
    engine = engines(prefill_chunk_tokens=chunk)  # 5: every prompt is prefilled over several steps
    for prompt in PROMPTS:
        ours = engine.generate(ask(prompt), Sampling(max_new_tokens=24)).text
        assert ours == hf_generate(text_generator, prompt, 24)


def test_repetition_penalty_is_transformers_semantics(engines: Engines, text_generator: TextGenerator) -> None:
    engine = engines()
    for penalty in (1.8, 0.2):  # 0.2 < 1 favours seen tokens: the random model then repeats the prompt
        ours = engine.generate(ask(PROMPTS[1]), Sampling(max_new_tokens=30, repetition_penalty=penalty)).text
        assert ours == hf_generate(text_generator, PROMPTS[1], 30, repetition_penalty=penalty)
    assert ours != hf_generate(text_generator, PROMPTS[1], 30)  # the penalty changed something


def test_greedy_output_does_not_depend_on_the_batch(engines: Engines, text_generator: TextGenerator) -> None:
    engine = engines(max_batch_size=4, prefill_chunk_tokens=16)
    jobs = [(p, Sampling(max_new_tokens=16 + 5 * i, repetition_penalty=1.3 if i % 2 else 1.0))
            for i, p in enumerate(PROMPTS)]
    alone = [engine.generate(ask(p), s) for p, s in jobs]
    together = concurrently(engine, jobs)
    assert max(s.running for s in engines.steps) > 1, "the requests never shared a step"
    assert [r.text for r in together] == [a.text for a in alone]
    assert [r.completion_tokens for r in together] == [16, 21, 26, 31]


def test_sampled_and_greedy_rows_share_a_batch(engines: Engines) -> None:
    engine = engines(max_batch_size=4)
    seeded = Sampling(max_new_tokens=20, temperature=1.0, top_p=0.9, top_k=40, seed=11)
    greedy = Sampling(max_new_tokens=20)
    alone_seeded = engine.generate(ask(PROMPTS[0]), seeded).text
    alone_greedy = engine.generate(ask(PROMPTS[1]), greedy).text
    jobs = [(PROMPTS[0], seeded), (PROMPTS[1], greedy), (PROMPTS[2], Sampling(max_new_tokens=20, temperature=0.7)),
            (PROMPTS[3], Sampling(max_new_tokens=20, temperature=1.2, seed=5))]
    together = concurrently(engine, jobs)
    assert max(s.running for s in engines.steps) > 1
    assert together[0].text == alone_seeded, "a seeded row must depend on its seed alone"
    assert together[1].text == alone_greedy
    other_seed = engine.generate(ask(PROMPTS[0]), Sampling(max_new_tokens=20, temperature=1.0, top_p=0.9,
                                                            top_k=40, seed=12)).text
    assert other_seed != alone_seeded


# -- joining and leaving -----------------------------------------------------------------------


def test_a_newcomer_joins_the_running_batch_and_leaves_first(engines: Engines) -> None:
    """With static batching the short request waited for the long one to finish."""
    engine = engines(max_batch_size=4)
    long_events = engine.stream(ask(PROMPTS[3]), Sampling(max_new_tokens=180))
    received: list[StreamEvent] = [next(long_events)]  # the long request is decoding
    short = engine.generate(ask(PROMPTS[0]), Sampling(max_new_tokens=4))
    assert short.completion_tokens == 4
    received += list(long_events)
    assert received[-1].finish_reason is FinishReason.LENGTH and received[-1].completion_tokens == 180
    shared = [s for s in engines.steps if s.running == 2]
    assert 1 <= len(shared) <= 4, "the short request decoded alongside the long one, then left"


def test_a_long_prefill_is_chunked_between_decoding_steps(engines: Engines) -> None:
    engine = engines(max_batch_size=2, prefill_chunk_tokens=4)
    running = engine.stream(ask(PROMPTS[0]), Sampling(max_new_tokens=120))
    next(running)
    decoding_from = len(engines.steps)  # the first prompt, from idle, was prefilled in one burst
    newcomer = engine.generate(ask(PROMPTS[3]), Sampling(max_new_tokens=2))
    assert newcomer.completion_tokens == 2
    list(running)
    chunks = [s for s in engines.steps[decoding_from:] if s.prefill_tokens and s.running]
    assert len(chunks) >= 5, "the newcomer's prompt was prefilled in small chunks while the other row decoded"
    assert all(s.prefill_tokens <= 4 for s in chunks)


def test_from_idle_a_burst_shares_one_prefill(engines: Engines) -> None:
    """The first arrival waits (up to gather_wait_s) for company instead of being prefilled alone."""
    engine = engines(max_batch_size=4, gather_wait_s=30.0)  # ends as soon as 4 are waiting
    results = concurrently(engine, [(p, Sampling(max_new_tokens=5)) for p in PROMPTS])
    assert [r.completion_tokens for r in results] == [5] * 4
    first = next(s for s in engines.steps if s.prefill_tokens)
    assert first.running == 4, "all four were prefilled in the first step and decoded together"


def test_a_burst_of_newcomers_is_prefilled_in_groups_that_fit_a_chunk(engines: Engines, text_generator: TextGenerator) -> None:
    """From idle a burst shares a larger prefill (nobody decodes, nobody stalls); once rows
    decode, the rest join in groups that fit a chunk, so their stall stays bounded."""
    jobs = [(p, Sampling(max_new_tokens=6)) for p in PROMPTS * 6]
    widest = max(text_generator.prepare(ask(p), s).token_count for p, s in jobs)
    engine = engines(max_batch_size=len(jobs), prefill_chunk_tokens=widest + 1, start=False)
    assert engine.prefill_chunk_tokens < engine.prefill_burst_tokens < widest * len(jobs)  # not all in one
    streams = [engine.stream(ask(p), s) for p, s in jobs]
    engine.step()
    assert engine.running > 1 and engine.waiting >= 1, "one step prefilled a burst that fits, and it decodes"
    assert engines.steps[0].prefill_tokens <= engine.prefill_burst_tokens
    while not engine.idle:
        engine.step()
    assert [list(events)[-1].completion_tokens for events in streams] == [6] * len(jobs)
    later = [s.prefill_tokens for s in engines.steps[1:] if s.prefill_tokens]
    assert later and max(later) <= engine.prefill_chunk_tokens


def test_cancelled_row_leaves_and_the_others_finish(engines: Engines) -> None:
    engine = engines(max_batch_size=3)
    cancel = threading.Event()
    doomed = engine.stream(ask(PROMPTS[1]), Sampling(max_new_tokens=150), cancel)
    others = [engine.stream(ask(p), Sampling(max_new_tokens=40)) for p in (PROMPTS[0], PROMPTS[2])]
    next(doomed)
    cancel.set()
    assert list(doomed)[-1].finish_reason is FinishReason.CANCELLED
    for events in others:
        final = list(events)[-1]
        assert final.finish_reason is FinishReason.LENGTH and final.completion_tokens == 40
    assert sum(1 for s in engines.steps if s.running == 3) < 40, "the cancelled row kept being decoded"


# -- bounds ------------------------------------------------------------------------------------


def test_beyond_the_waiting_bound_callers_get_resource_exhausted(engines: Engines) -> None:
    engine = engines(max_batch_size=1, max_waiting=1)
    running = engine.stream(ask(PROMPTS[0]), Sampling(max_new_tokens=150))
    next(running)  # it holds the only row
    waiting = engine.stream(ask(PROMPTS[1]), Sampling(max_new_tokens=2))  # queued
    with pytest.raises(ResourceExhausted, match="queue is full") as info:
        engine.stream(ask(PROMPTS[2]), Sampling(max_new_tokens=2))
    assert info.value.retry_after_s and info.value.retry_after_s > 0
    assert list(running)[-1].completion_tokens == 150
    assert list(waiting)[-1].completion_tokens == 2


@pytest.mark.parametrize(("budget", "most_rows"), [(1, 1), (16_384, 2)])
def test_the_kv_budget_holds_a_request_until_tokens_free_up(engines: Engines, budget: int, most_rows: int) -> None:
    # A budget under the context (256 tokens) is raised to it: a request reserving ~210 leaves no
    # room for a second one reserving ~80, which waits; with the default budget both decode together.
    engine = engines(max_batch_size=4, max_batch_tokens=budget)
    first = engine.stream(ask(PROMPTS[0]), Sampling(max_new_tokens=200))
    next(first)
    done: list[Generation] = []
    thread = threading.Thread(target=lambda: done.append(engine.generate(ask(PROMPTS[1]), Sampling(max_new_tokens=60))))
    thread.start()
    assert list(first)[-1].completion_tokens == 200
    thread.join(timeout=60)
    assert done and done[0].completion_tokens == 60
    assert max(s.running for s in engines.steps) == most_rows


# -- failures ----------------------------------------------------------------------------------


def test_a_failed_step_fails_its_requests_and_the_engine_goes_on(engines: Engines, text_generator: TextGenerator) -> None:
    engine = engines()
    calls = {"n": 0}

    def explode_once(module: object, args: object) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("CUDA error: device-side assert (simulated)")

    handle = text_generator.model.register_forward_pre_hook(explode_once)
    try:
        with pytest.raises(RuntimeError, match="simulated"):
            engine.generate(ask(PROMPTS[0]), Sampling(max_new_tokens=10))
        assert engine.generate(ask(PROMPTS[0]), Sampling(max_new_tokens=10)).completion_tokens == 10
    finally:
        handle.remove()


def test_a_step_failing_as_a_prefill_completes_still_answers_its_requests(
    engines: Engines, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by fuzzing: sampling raised after the prefill group had left the engine's
    state, so nobody told its requests and their callers waited for their deadline."""
    engine = engines()
    original = BatchSampler.__call__
    failures = iter([True])

    def fail_once(self: BatchSampler, logits: torch.Tensor, seen: torch.Tensor | None = None) -> torch.Tensor:
        if next(failures, False):
            raise RuntimeError("invalid multinomial distribution (simulated)")
        return original(self, logits, seen)

    monkeypatch.setattr(BatchSampler, "__call__", fail_once)
    outcome: list[BaseException | Generation] = []

    def run() -> None:
        try:
            outcome.append(engine.generate(ask(PROMPTS[0]), Sampling(max_new_tokens=5)))
        except Exception as exc:  # noqa: BLE001
            outcome.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout=30)
    assert outcome, "the request was never answered"
    assert isinstance(outcome[0], RuntimeError) and "simulated" in str(outcome[0])
    assert engine.generate(ask(PROMPTS[0]), Sampling(max_new_tokens=5)).completion_tokens == 5


def test_closing_ends_every_request_with_unavailable(text_generator: TextGenerator) -> None:
    engine = ContinuousBatcher(text_generator, start=False)
    events = engine.stream(ask(PROMPTS[0]), Sampling(max_new_tokens=5))
    engine.close()
    with pytest.raises(Unavailable, match="shutting down"):
        list(events)
    with pytest.raises(ResourceExhausted, match="shutting down"):
        engine.stream(ask(PROMPTS[0]), Sampling(max_new_tokens=5))


# -- device placement --------------------------------------------------------------------------


def test_every_tensor_the_engine_makes_is_on_the_models_device(text_generator: TextGenerator) -> None:
    """On a GPU, one tensor built on the host (a stopping criterion's result) failed every call.

    Here the model is on the CPU and the default device is ``meta``: any tensor the
    serving code creates without naming the model's device lands on ``meta`` and
    the first operation mixing it with the model's tensors raises.
    """
    engine = ContinuousBatcher(text_generator, max_batch_size=4, prefill_chunk_tokens=8, start=False)
    jobs = [Sampling(max_new_tokens=6), Sampling(max_new_tokens=9, repetition_penalty=1.2),
            Sampling(max_new_tokens=7, temperature=0.8, top_k=20, top_p=0.9, seed=3), Sampling(max_new_tokens=5)]
    streams = [engine.stream(ask(p), s) for p, s in zip(PROMPTS, jobs, strict=True)]
    with torch.device("meta"):
        while not engine.idle:
            engine.step()
    finals = [list(events)[-1] for events in streams]
    assert [f.completion_tokens for f in finals] == [6, 9, 7, 5]
    engine.close()
