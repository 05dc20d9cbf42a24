"""TextGenerator on a tiny random Llama: bounds, determinism, stop sequences, cancellation."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import torch
from transformers import StoppingCriteria

from ragrail.common.errors import InvalidArgument
from ragrail.generation.core import (
    FinishReason,
    Message,
    Sampling,
    TextGenerator,
    _IncrementalDecoder,
)

LIMIT = 240  # max_new_tokens_limit; a short prompt plus LIMIT exceeds the 256-token context
HELLO = [Message("user", "hello there, which train goes to the coast?")]


@pytest.fixture(scope="module")
def generator(tiny_llama_dir: Path) -> TextGenerator:
    return TextGenerator(
        str(tiny_llama_dir),
        name="tiny",
        dtype="float32",
        max_new_tokens_limit=LIMIT,
        default_max_new_tokens=12,
        max_messages=4,
        max_prompt_chars=4000,
    )


class _StepProbe(StoppingCriteria):
    """Counts the tokens the model really generates, slowly, so cancellation has time to bite."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.steps = 0

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: object) -> torch.BoolTensor:
        self.steps += 1
        time.sleep(self.delay_s)
        return torch.zeros((input_ids.shape[0],), dtype=torch.bool)  # type: ignore[return-value]


class SlowGenerator(TextGenerator):
    """A TextGenerator whose model takes ``delay_s`` per token and reports how many it made."""

    delay_s = 0.02

    def _generate_kwargs(self, prompt, streamer, cancel):  # type: ignore[no-untyped-def]
        kwargs = super()._generate_kwargs(prompt, streamer, cancel)
        self.probe = _StepProbe(self.delay_s)
        kwargs["stopping_criteria"].append(self.probe)
        return kwargs


@pytest.fixture(scope="module")
def slow_generator(tiny_llama_dir: Path) -> SlowGenerator:
    return SlowGenerator(str(tiny_llama_dir), name="tiny-slow", dtype="float32", max_new_tokens_limit=LIMIT)


# -- whole generations ---------------------------------------------------------


def test_generate_stops_at_max_new_tokens_with_length(generator: TextGenerator) -> None:
    result = generator.generate(HELLO, Sampling(max_new_tokens=10))
    assert result.finish_reason is FinishReason.LENGTH
    assert result.text.strip()
    assert 0 < result.completion_tokens <= 10
    assert result.prompt_tokens > 0


def test_default_max_new_tokens_applies_when_unset(generator: TextGenerator) -> None:
    result = generator.generate(HELLO, Sampling())
    assert result.finish_reason is FinishReason.LENGTH
    assert result.completion_tokens == 12


def test_greedy_is_deterministic(generator: TextGenerator) -> None:
    first = generator.generate(HELLO, Sampling(max_new_tokens=16))
    second = generator.generate(HELLO, Sampling(max_new_tokens=16))
    assert first == second


def test_seeded_sampling_is_reproducible(generator: TextGenerator) -> None:
    sampling = Sampling(max_new_tokens=16, temperature=1.0, top_p=0.95, seed=7)
    first = generator.generate(HELLO, sampling)
    second = generator.generate(HELLO, sampling)
    other = generator.generate(HELLO, Sampling(max_new_tokens=16, temperature=1.0, top_p=0.95, seed=8))
    assert first.text == second.text
    assert first.text != other.text  # 30k near-uniform choices: distinct seeds give distinct text


def test_stream_deltas_concatenate_to_the_generated_text(generator: TextGenerator) -> None:
    events = list(generator.stream(HELLO, Sampling(max_new_tokens=16)))
    assert all(e.finish_reason is None for e in events[:-1])
    last = events[-1]
    assert last.finish_reason is FinishReason.LENGTH
    assert last.completion_tokens == 16
    whole = generator.generate(HELLO, Sampling(max_new_tokens=16))
    assert "".join(e.delta for e in events) == whole.text


def test_stop_sequence_cuts_the_text(generator: TextGenerator) -> None:
    full = generator.generate(HELLO, Sampling(max_new_tokens=16)).text
    words = full.split()
    assert len(words) >= 3
    stop = words[2]
    result = generator.generate(HELLO, Sampling(max_new_tokens=16, stop=(stop,)))
    assert result.finish_reason is FinishReason.STOP_SEQUENCE
    assert result.text == full[: full.find(stop)]
    assert stop not in result.text


# -- validation ----------------------------------------------------------------


def test_max_new_tokens_above_the_limit_is_invalid(generator: TextGenerator) -> None:
    with pytest.raises(InvalidArgument, match=f"max_new_tokens must be in 1..{LIMIT}"):
        generator.generate(HELLO, Sampling(max_new_tokens=LIMIT + 1))


def test_prompt_plus_new_tokens_beyond_the_context_is_invalid(generator: TextGenerator) -> None:
    prompt_tokens = generator.prepare(HELLO, Sampling(max_new_tokens=1)).token_count
    fits = generator.context_window - prompt_tokens
    generator.prepare(HELLO, Sampling(max_new_tokens=fits))  # exactly the context: fine
    with pytest.raises(InvalidArgument, match="context of 256 tokens"):
        generator.prepare(HELLO, Sampling(max_new_tokens=fits + 1))


def test_prompt_longer_than_the_context_is_invalid(generator: TextGenerator) -> None:
    long_prompt = [Message("user", " ".join(["station"] * 300))]
    with pytest.raises(InvalidArgument, match="context"):
        generator.generate(long_prompt, Sampling(max_new_tokens=1))


@pytest.mark.parametrize(
    ("messages", "message"),
    [
        ([], "messages must not be empty"),
        ([Message("robot", "hi")], r"messages\[0\].role must be one of"),
        ([Message("user", "hi"), Message("user", "   ")], r"messages\[1\].content is empty"),
        ([Message("user", "hi")] * 5, "at most 4 messages"),
        ([Message("user", "x" * 4001)], "limit is 4000"),
    ],
)
def test_bad_messages_are_invalid(generator: TextGenerator, messages: list[Message], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        generator.stream(messages, Sampling(max_new_tokens=4))  # fails before any token


@pytest.mark.parametrize(
    "sampling",
    [
        Sampling(temperature=-0.1),
        Sampling(temperature=2.5),
        Sampling(top_p=0.0),
        Sampling(top_k=-1),
        Sampling(repetition_penalty=0.0),
        Sampling(stop=("",)),
        Sampling(stop=tuple("abcdefghi")),
    ],
)
def test_bad_sampling_is_invalid(generator: TextGenerator, sampling: Sampling) -> None:
    with pytest.raises(InvalidArgument):
        generator.prepare(HELLO, sampling)


# -- cancellation --------------------------------------------------------------


def test_cancel_after_first_event_ends_with_cancelled_and_no_more_tokens(generator: TextGenerator) -> None:
    cancel = threading.Event()
    events = generator.stream(HELLO, Sampling(max_new_tokens=200), cancel)
    first = next(events)
    assert first.finish_reason is None and first.delta
    cancel.set()
    rest = list(events)
    assert len(rest) == 1, "nothing but the final event may follow a cancellation"
    final = rest[0]
    assert final.finish_reason is FinishReason.CANCELLED
    assert final.completion_tokens <= 3
    assert final.prompt_tokens > 0


def test_cancel_stops_the_model_itself(slow_generator: SlowGenerator) -> None:
    cancel = threading.Event()
    events = slow_generator.stream(HELLO, Sampling(max_new_tokens=200), cancel)
    next(events)
    cancel.set()
    final = list(events)[-1]
    assert final.finish_reason is FinishReason.CANCELLED
    # 200 tokens would take >= 4 s; the model must have stopped within a few tokens.
    assert slow_generator.probe.steps < 50


def test_abandoning_the_stream_stops_the_model(slow_generator: SlowGenerator) -> None:
    cancel = threading.Event()
    events = slow_generator.stream(HELLO, Sampling(max_new_tokens=200), cancel)
    next(events)
    events.close()  # the consumer walks away (e.g. a dropped gRPC stream)
    assert cancel.is_set()
    steps = slow_generator.probe.steps
    time.sleep(0.2)
    assert slow_generator.probe.steps == steps < 50  # the worker has finished


# -- _IncrementalDecoder with a fake tokenizer ------------------------------------------


class FakeTokenizer:
    """decode() joins what the ids stand for; bytes pieces decode like a byte-level BPE."""

    def __init__(self, pieces: list[str | bytes]) -> None:
        self.pieces = [p.encode() if isinstance(p, str) else p for p in pieces]

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return b"".join(self.pieces[i] for i in ids).decode("utf-8", errors="replace")


def feed(pieces: list[str | bytes], stop: tuple[str, ...]) -> tuple[list[str], _IncrementalDecoder]:
    decoder = _IncrementalDecoder(FakeTokenizer(pieces), stop)
    deltas = []
    for i in range(len(pieces)):
        deltas.append(decoder.add(i))
        if decoder.stopped:
            break
    deltas.append(decoder.flush())
    return deltas, decoder


def test_decoder_without_stops_emits_every_piece() -> None:
    deltas, decoder = feed(["Hel", "lo", " world"], ())
    assert deltas == ["Hel", "lo", " world", ""]
    assert decoder.token_count == 3 and not decoder.stopped


def test_stop_split_across_tokens_is_cut_and_never_emitted() -> None:
    deltas, decoder = feed(["Hello ", "wor", "ld", "</", "s", ">", " after"], ("</s>",))
    assert decoder.stopped
    assert "".join(deltas) == "Hello world"
    # nothing of the stop sequence ever left the decoder, not even its first characters
    assert all("<" not in d and "/" not in d for d in deltas)
    assert deltas[3:] == ["", "", "", ""]  # held back, then cut; flush adds nothing
    assert decoder.token_count == 6  # the token after the stop was never read


def test_stop_inside_one_token_keeps_the_text_before_it() -> None:
    deltas, decoder = feed(["abc", "dEND", "ignored"], ("END",))
    assert decoder.stopped
    assert "".join(deltas) == "abcd"


def test_held_back_prefix_is_emitted_when_it_is_not_a_stop() -> None:
    deltas, decoder = feed(["Hello ", "</", "b", ">", " done"], ("</s>",))
    assert not decoder.stopped
    assert deltas[1] == ""  # "</" could still become "</s>"
    assert deltas[2] == "</b"  # "</b" cannot: the held-back "</" comes out with it
    assert "".join(deltas) == "Hello </b> done"


def test_held_back_prefix_is_released_at_the_first_char_that_rules_out_the_stop() -> None:
    deltas, _ = feed(["x", "ST", "O", "p"], ("STOP",))
    assert deltas == ["x", "", "", "STOp", ""]


def test_held_back_prefix_at_the_end_is_flushed() -> None:
    deltas, decoder = feed(["done ", "ST"], ("STOP",))
    assert not decoder.stopped
    assert deltas == ["done ", "", "ST"]


def test_longest_partial_stop_among_several_is_held() -> None:
    deltas, decoder = feed(["a", "##", "#", "!"], ("###", "#!"))
    assert deltas[1] == ""  # "##" is the longest partial stop: both characters held
    assert decoder.stopped  # "###" completes at the third token
    assert "".join(deltas) == "a"


def test_unfinished_utf8_character_is_held_back() -> None:
    deltas, _ = feed([b"caf", b"\xc3", b"\xa9", b"!"], ())  # "é" split over two tokens
    assert deltas == ["caf", "", "é", "!", ""]
    assert "\ufffd" not in "".join(deltas)


def test_unfinished_utf8_character_at_the_end_is_dropped_by_flush() -> None:
    deltas, _ = feed([b"caf", b"\xc3"], ())
    assert deltas == ["caf", "", ""]
