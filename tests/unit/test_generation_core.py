"""Generation through the engine on a tiny random Llama: bounds, determinism, stop sequences,
cancellation, incremental decoding."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from ragrail.common.errors import InvalidArgument
from ragrail.generation.core import FinishReason, Message, Sampling, TextGenerator
from ragrail.generation.detokenize import IncrementalDecoder
from ragrail.generation.engine import ContinuousBatcher

LIMIT = 240  # max_new_tokens_limit; a short prompt plus LIMIT exceeds the 256-token context
HELLO = [Message("user", "hello there, which train goes to the coast?")]


@pytest.fixture(scope="module")
def text_generator(tiny_llama_dir: Path) -> TextGenerator:
    return TextGenerator(
        str(tiny_llama_dir),
        name="tiny",
        dtype="float32",
        max_new_tokens_limit=LIMIT,
        default_max_new_tokens=12,
        max_messages=4,
        max_prompt_chars=4000,
    )


@pytest.fixture(scope="module")
def generator(text_generator: ContinuousBatcher) -> Iterator[ContinuousBatcher]:
    engine = ContinuousBatcher(text_generator, max_batch_size=4)
    yield engine
    engine.close()


class StepCounter:
    """Counts the model's forward passes (one per decoding step) and can hold each one back."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.calls = 0
        self.gate = threading.Semaphore(0)
        self.gated = False
        self._handle = model.register_forward_pre_hook(self._hook)

    def _hook(self, module: object, args: object) -> None:
        if self.gated:
            self.gate.acquire(timeout=10)
        self.calls += 1

    def remove(self) -> None:
        self._handle.remove()


@pytest.fixture
def steps(text_generator: ContinuousBatcher) -> Iterator[StepCounter]:
    counter = StepCounter(text_generator.model)
    yield counter
    counter.gated = False
    counter.gate.release(1000)
    counter.remove()


# -- whole generations ---------------------------------------------------------


def test_generate_stops_at_max_new_tokens_with_length(generator: ContinuousBatcher) -> None:
    result = generator.generate(HELLO, Sampling(max_new_tokens=10))
    assert result.finish_reason is FinishReason.LENGTH
    assert result.text.strip()
    assert 0 < result.completion_tokens <= 10
    assert result.prompt_tokens > 0


def test_default_max_new_tokens_applies_when_unset(generator: ContinuousBatcher) -> None:
    result = generator.generate(HELLO, Sampling())
    assert result.finish_reason is FinishReason.LENGTH
    assert result.completion_tokens == 12


def test_greedy_is_deterministic(generator: ContinuousBatcher) -> None:
    first = generator.generate(HELLO, Sampling(max_new_tokens=16))
    second = generator.generate(HELLO, Sampling(max_new_tokens=16))
    assert first == second


def test_seeded_sampling_is_reproducible(generator: ContinuousBatcher) -> None:
    sampling = Sampling(max_new_tokens=16, temperature=1.0, top_p=0.95, seed=7)
    first = generator.generate(HELLO, sampling)
    second = generator.generate(HELLO, sampling)
    other = generator.generate(HELLO, Sampling(max_new_tokens=16, temperature=1.0, top_p=0.95, seed=8))
    assert first.text == second.text
    assert first.text != other.text  # 30k near-uniform choices: distinct seeds give distinct text


def test_stream_deltas_concatenate_to_the_generated_text(generator: ContinuousBatcher) -> None:
    events = list(generator.stream(HELLO, Sampling(max_new_tokens=16)))
    assert all(e.finish_reason is None for e in events[:-1])
    last = events[-1]
    assert last.finish_reason is FinishReason.LENGTH
    assert last.completion_tokens == 16
    whole = generator.generate(HELLO, Sampling(max_new_tokens=16))
    assert "".join(e.delta for e in events) == whole.text


def test_stop_sequence_cuts_the_text(generator: ContinuousBatcher) -> None:
    full = generator.generate(HELLO, Sampling(max_new_tokens=16)).text
    words = full.split()
    assert len(words) >= 3
    stop = words[2]
    result = generator.generate(HELLO, Sampling(max_new_tokens=16, stop=(stop,)))
    assert result.finish_reason is FinishReason.STOP_SEQUENCE
    assert result.text == full[: full.find(stop)]
    assert stop not in result.text


# -- validation ----------------------------------------------------------------


def test_max_new_tokens_above_the_limit_is_invalid(generator: ContinuousBatcher) -> None:
    with pytest.raises(InvalidArgument, match=f"max_new_tokens must be in 1..{LIMIT}"):
        generator.generate(HELLO, Sampling(max_new_tokens=LIMIT + 1))


def test_prompt_plus_new_tokens_beyond_the_context_is_invalid(generator: ContinuousBatcher) -> None:
    prompt_tokens = generator.prepare(HELLO, Sampling(max_new_tokens=1)).token_count
    fits = generator.generator.context_window - prompt_tokens
    generator.prepare(HELLO, Sampling(max_new_tokens=fits))  # exactly the context: fine
    with pytest.raises(InvalidArgument, match="context of 256 tokens"):
        generator.prepare(HELLO, Sampling(max_new_tokens=fits + 1))


def test_prompt_longer_than_the_context_is_invalid(generator: ContinuousBatcher) -> None:
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
def test_bad_messages_are_invalid(generator: ContinuousBatcher, messages: list[Message], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        generator.stream(messages, Sampling(max_new_tokens=4))  # fails before any token


@pytest.mark.parametrize(
    "sampling",
    [
        Sampling(temperature=-0.1),
        Sampling(temperature=2.5),
        Sampling(temperature=1e-45),  # overflowed the logits (found by fuzzing)
        Sampling(temperature=float("nan")),
        Sampling(repetition_penalty=1e-45),
        Sampling(top_p=0.0),
        Sampling(top_k=-1),
        Sampling(repetition_penalty=0.0),
        Sampling(stop=("",)),
        Sampling(stop=tuple("abcdefghi")),
    ],
)
def test_bad_sampling_is_invalid(generator: ContinuousBatcher, sampling: Sampling) -> None:
    with pytest.raises(InvalidArgument):
        generator.prepare(HELLO, sampling)


# -- cancellation --------------------------------------------------------------


def test_cancel_after_first_event_ends_with_cancelled_and_no_more_tokens(generator: ContinuousBatcher) -> None:
    cancel = threading.Event()
    events = generator.stream(HELLO, Sampling(max_new_tokens=200), cancel)
    first = next(events)
    assert first.finish_reason is None and first.delta
    cancel.set()
    rest = list(events)
    assert len(rest) == 1, "nothing but the final event may follow a cancellation"
    final = rest[0]
    assert final.finish_reason is FinishReason.CANCELLED
    assert final.completion_tokens < 200
    assert final.prompt_tokens > 0


def test_cancel_stops_the_model_itself(generator: ContinuousBatcher, steps: StepCounter) -> None:
    steps.gated = True  # the model makes one step per permit: it cannot run ahead of the test
    cancel = threading.Event()
    events = generator.stream(HELLO, Sampling(max_new_tokens=200), cancel)
    steps.gate.release(2)  # prefill + first decoding step
    next(events)
    cancel.set()
    steps.gated = False
    steps.gate.release(1000)
    final = list(events)[-1]
    assert final.finish_reason is FinishReason.CANCELLED
    _wait_idle(generator)
    assert steps.calls < 10, f"the model ran {steps.calls} steps for a request cancelled after its first token"


def test_abandoning_the_stream_stops_the_model(generator: ContinuousBatcher, steps: StepCounter) -> None:
    cancel = threading.Event()
    events = generator.stream(HELLO, Sampling(max_new_tokens=200), cancel)
    next(events)
    events.close()  # the consumer walks away (e.g. a dropped gRPC stream)
    assert cancel.is_set()
    _wait_idle(generator)
    assert steps.calls < 200  # it left the batch long before its 200 tokens


def _wait_idle(engine: ContinuousBatcher) -> None:
    done = threading.Event()
    for _ in range(2000):
        if engine.idle:
            return
        done.wait(0.005)
    raise AssertionError("the engine never went idle")


# -- IncrementalDecoder with a fake tokenizer ------------------------------------------


class FakeTokenizer:
    """decode() joins what the ids stand for; bytes pieces decode like a byte-level BPE."""

    def __init__(self, pieces: list[str | bytes]) -> None:
        self.pieces = [p.encode() if isinstance(p, str) else p for p in pieces]
        self.decoded_lengths: list[int] = []

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        self.decoded_lengths.append(len(ids))
        return b"".join(self.pieces[i] for i in ids).decode("utf-8", errors="replace")


def feed(pieces: list[str | bytes], stop: tuple[str, ...]) -> tuple[list[str], IncrementalDecoder]:
    decoder = IncrementalDecoder(FakeTokenizer(pieces), stop)
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


def test_decoding_cost_per_token_does_not_grow_with_the_output() -> None:
    """Each token decodes a window of a few ids, not the whole output (that was O(n^2) per request)."""
    pieces: list[str | bytes] = [f" w{i}" for i in range(500)]
    tokenizer = FakeTokenizer(pieces)
    decoder = IncrementalDecoder(tokenizer, ("STOP",))
    text = "".join(decoder.add(i) for i in range(500)) + decoder.flush()
    assert text == "".join(str(p) for p in pieces)
    assert max(tokenizer.decoded_lengths) <= 3


def test_deltas_match_a_whole_decode_with_the_real_tokenizer(text_generator: ContinuousBatcher) -> None:
    tokenizer = text_generator.tokenizer
    ids = tokenizer("Northwind Rail's trains run hourly; café prices: £3.50 — no refunds!")["input_ids"][1:-1]
    decoder = IncrementalDecoder(tokenizer)
    text = "".join(decoder.add(i) for i in ids) + decoder.flush()
    assert text == tokenizer.decode(ids, skip_special_tokens=True)
