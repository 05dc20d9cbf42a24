"""Text generation with a transformers causal LM: whole or streamed.

``generate`` runs in a worker thread and hands token ids to the caller through
a queue; the caller decodes incrementally, applies stop sequences and can
cancel at any time (a stopping criterion checks a flag before every token), so a
cancelled or expired call stops the model at once instead of running to the end.
"""

from __future__ import annotations

import enum
import queue
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from ragrail.common.errors import require

if TYPE_CHECKING:
    from ragrail.common.config import GenerationSettings

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_ROLES = ("system", "user", "assistant")


class FinishReason(enum.Enum):
    STOP = "stop"
    LENGTH = "length"
    STOP_SEQUENCE = "stop_sequence"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class Message:
    role: str
    content: str


@dataclass(frozen=True)
class Sampling:
    """Decoding settings; temperature 0 means greedy (deterministic)."""

    max_new_tokens: int = 0  # 0 = the server's default
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()


@dataclass
class StreamEvent:
    """A text delta; the last event also has finish_reason and token counts."""

    delta: str
    finish_reason: FinishReason | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass(frozen=True)
class Generation:
    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int


def collect(events: Iterator[StreamEvent]) -> Generation:
    """A whole generation from its stream: the deltas joined, the totals of the last event."""
    parts: list[str] = []
    last = StreamEvent("")
    for event in events:
        parts.append(event.delta)
        last = event
    assert last.finish_reason is not None
    return Generation("".join(parts), last.finish_reason, last.prompt_tokens, last.completion_tokens)


@dataclass
class _Prompt:
    input_ids: torch.Tensor
    sampling: Sampling
    max_new_tokens: int
    token_count: int = field(init=False)

    def __post_init__(self) -> None:
        self.token_count = int(self.input_ids.shape[-1])


class TextGenerator:
    """A chat model behind validation, bounds, streaming and cancellation."""

    def __init__(
        self,
        location: str,
        *,
        name: str,
        device: str = "cpu",
        dtype: str = "bfloat16",
        revision: str | None = None,
        max_new_tokens_limit: int = 512,
        default_max_new_tokens: int = 128,
        max_messages: int = 64,
        max_prompt_chars: int = 32_000,
    ) -> None:
        require(dtype in _DTYPES, f"dtype must be one of {sorted(_DTYPES)}, got {dtype}")
        self.name = name
        self.device = device
        self.max_new_tokens_limit = max_new_tokens_limit
        self.default_max_new_tokens = min(default_max_new_tokens, max_new_tokens_limit)
        self.max_messages = max_messages
        self.max_prompt_chars = max_prompt_chars
        self.tokenizer = AutoTokenizer.from_pretrained(location, revision=revision)
        self.model = AutoModelForCausalLM.from_pretrained(
            location, revision=revision, dtype=_DTYPES[dtype]
        ).to(device).eval()
        self.context_window = int(getattr(self.model.config, "max_position_embeddings", 2048))
        self._seed_lock = threading.Lock()

    # -- public API ---------------------------------------------------------

    def generate(
        self, messages: Sequence[Message], sampling: Sampling, cancel: threading.Event | None = None
    ) -> Generation:
        return collect(self.stream(messages, sampling, cancel))

    def stream(
        self, messages: Sequence[Message], sampling: Sampling, cancel: threading.Event | None = None
    ) -> Iterator[StreamEvent]:
        """Yields text deltas as tokens arrive; the last event carries the totals.

        Validation happens before the first yield is requested, so bad input
        fails the call rather than an open stream.
        """
        prompt = self.prepare(messages, sampling)
        return self._run(prompt, cancel or threading.Event())

    def prepare(self, messages: Sequence[Message], sampling: Sampling) -> _Prompt:
        self._validate_messages(messages)
        max_new = self._validate_sampling(sampling)
        chat = [{"role": m.role, "content": m.content} for m in messages]
        encoded = self.tokenizer.apply_chat_template(
            chat, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        input_ids = encoded["input_ids"]
        prompt = _Prompt(input_ids=input_ids, sampling=sampling, max_new_tokens=max_new)
        require(
            prompt.token_count + max_new <= self.context_window,
            f"prompt has {prompt.token_count} tokens; with max_new_tokens={max_new} it exceeds "
            f"the model's context of {self.context_window} tokens",
        )
        return prompt

    # -- internals ----------------------------------------------------------

    def _validate_messages(self, messages: Sequence[Message]) -> None:
        require(len(messages) > 0, "messages must not be empty")
        require(
            len(messages) <= self.max_messages,
            f"at most {self.max_messages} messages, got {len(messages)}",
        )
        total = 0
        for i, m in enumerate(messages):
            require(m.role in _ROLES, f"messages[{i}].role must be one of {_ROLES}")
            require(bool(m.content.strip()), f"messages[{i}].content is empty")
            total += len(m.content)
        require(
            total <= self.max_prompt_chars,
            f"messages have {total} characters; the limit is {self.max_prompt_chars}",
        )

    def _validate_sampling(self, s: Sampling) -> int:
        max_new = s.max_new_tokens or self.default_max_new_tokens
        require(
            1 <= max_new <= self.max_new_tokens_limit,
            f"max_new_tokens must be in 1..{self.max_new_tokens_limit}, got {max_new}",
        )
        require(0 <= s.temperature <= 2, f"temperature must be in [0, 2], got {s.temperature}")
        require(0 < s.top_p <= 1, f"top_p must be in (0, 1], got {s.top_p}")
        require(s.top_k >= 0, "top_k must be >= 0")
        require(0 < s.repetition_penalty <= 10, "repetition_penalty must be in (0, 10]")
        require(len(s.stop) <= 8 and all(0 < len(x) <= 64 for x in s.stop),
                "at most 8 stop sequences of 1..64 characters")
        return max_new

    def sampling_key(self, prompt: _Prompt) -> tuple[object, ...]:
        """Requests with equal keys may share one batched ``generate`` call."""
        s = prompt.sampling
        return (prompt.max_new_tokens, s.temperature, s.top_p, s.top_k, s.repetition_penalty, s.seed)

    def _generate_kwargs(self, prompt: _Batch, streamer: BaseStreamer, cancel: list[threading.Event]) -> dict:
        s = prompt.rows[0].prompt.sampling  # every row of a batch shares its sampling
        kwargs: dict = {
            "input_ids": prompt.input_ids.to(self.device),
            "attention_mask": prompt.attention_mask.to(self.device),
            "max_new_tokens": prompt.rows[0].prompt.max_new_tokens,
            "streamer": streamer,
            "stopping_criteria": StoppingCriteriaList([_CancelCriteria(cancel)]),
            "pad_token_id": self._pad_id,
            "repetition_penalty": s.repetition_penalty,
        }
        if s.temperature > 0:
            kwargs.update(do_sample=True, temperature=s.temperature, top_p=s.top_p, top_k=s.top_k or None)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        return kwargs

    @property
    def _pad_id(self) -> int:
        return int(self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id)

    def new_row(self, prompt: _Prompt, cancel: threading.Event | None = None) -> Row:
        return Row(prompt, cancel or threading.Event())

    def run_batch(self, rows: list[Row]) -> None:
        """Generates for every row in one ``generate`` call (blocking); tokens flow to each row."""
        batch = _Batch(rows, self._pad_id)
        streamer = _BatchStreamer(rows)
        kwargs = self._generate_kwargs(batch, streamer, [row.cancel for row in rows])
        try:
            with torch.inference_mode():
                seed = rows[0].prompt.sampling.seed
                if seed is not None:
                    # torch's RNG is process-wide: hold the lock so the seed
                    # governs this whole generation.
                    with self._seed_lock:
                        torch.manual_seed(seed)
                        self.model.generate(**kwargs)
                else:
                    self.model.generate(**kwargs)
        except BaseException as exc:  # reported to each consumer, not lost in a thread
            streamer.fail(exc)

    def _run(self, prompt: _Prompt, cancel: threading.Event) -> Iterator[StreamEvent]:
        row = self.new_row(prompt, cancel)
        worker = threading.Thread(target=self.run_batch, args=([row],), name="generate", daemon=True)
        worker.start()
        try:
            yield from self.consume(row)
        finally:
            worker.join(timeout=5)

    def consume(self, row: Row) -> Iterator[StreamEvent]:
        """Turns a row's token ids into text deltas, ending with the totals."""
        decoder = _IncrementalDecoder(self.tokenizer, row.prompt.sampling.stop)
        eos = set(_as_list(self.model.generation_config.eos_token_id))
        finish = FinishReason.LENGTH
        try:
            for token_id in row:
                if token_id in eos:
                    finish = FinishReason.STOP
                    break
                delta = decoder.add(token_id)
                if decoder.stopped:
                    finish = FinishReason.STOP_SEQUENCE
                    if delta:
                        yield StreamEvent(delta)
                    break
                if delta:
                    yield StreamEvent(delta)
                if row.cancel.is_set():
                    finish = FinishReason.CANCELLED
                    break
                if decoder.token_count >= row.prompt.max_new_tokens:
                    break  # LENGTH: in a batch, generate may run on for other rows
        finally:
            # Runs on normal end, on break, and when the consumer abandons the
            # iterator (GeneratorExit): this row stops at the model's next token.
            row.cancel.set()
        yield StreamEvent(
            decoder.flush(),
            finish_reason=finish,
            prompt_tokens=row.prompt.token_count,
            completion_tokens=decoder.token_count,
        )


@dataclass(eq=False)  # identity, not field equality: rows hold tensors of different shapes
class Row:
    """One request inside a (possibly batched) generate call."""

    prompt: _Prompt
    cancel: threading.Event
    tokens: queue.Queue[object] = field(default_factory=queue.Queue)
    error: BaseException | None = None

    def __iter__(self) -> Iterator[int]:
        while True:
            item = self.tokens.get()
            if item is _END:
                if self.error is not None:
                    raise self.error
                return
            yield item  # type: ignore[misc]


class _Batch:
    """Left-padded inputs: decoder-only models continue from the right edge."""

    def __init__(self, rows: list[Row], pad_id: int) -> None:
        self.rows = rows
        width = max(r.prompt.token_count for r in rows)
        self.input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        self.attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids = row.prompt.input_ids.reshape(-1)
            self.input_ids[i, width - len(ids) :] = ids
            self.attention_mask[i, width - len(ids) :] = 1


class _CancelCriteria(StoppingCriteria):
    """Per row: a cancelled (or finished-by-consumer) row stops; the others go on."""

    def __init__(self, cancel: list[threading.Event]) -> None:
        self.cancel = cancel

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: object) -> torch.BoolTensor:
        return torch.tensor([c.is_set() for c in self.cancel], dtype=torch.bool)  # type: ignore[return-value]


_END = object()


class _BatchStreamer(BaseStreamer):
    """Receives each step's new token per row from ``generate`` and routes it."""

    def __init__(self, rows: list[Row]) -> None:
        self._rows = rows
        self._seen_prompt = False

    def put(self, value: torch.Tensor) -> None:
        if not self._seen_prompt:  # generate() first hands over the prompt
            self._seen_prompt = True
            return
        for row, token_id in zip(self._rows, value.reshape(-1).tolist(), strict=True):
            if not row.cancel.is_set():
                row.tokens.put(int(token_id))

    def end(self) -> None:
        for row in self._rows:
            row.tokens.put(_END)

    def fail(self, exc: BaseException) -> None:
        for row in self._rows:
            row.error = exc
            row.tokens.put(_END)


class _IncrementalDecoder:
    """Decodes token ids into text deltas and cuts at stop sequences.

    Text that could still grow into a stop sequence, or an unfinished UTF-8
    character, is held back until the next token settles it.
    """

    def __init__(self, tokenizer: object, stop: Sequence[str]) -> None:
        self._tokenizer = tokenizer
        self._stop = tuple(stop)
        self._ids: list[int] = []
        self._emitted = 0
        self.stopped = False

    @property
    def token_count(self) -> int:
        return len(self._ids)

    def add(self, token_id: int) -> str:
        self._ids.append(token_id)
        text = self._text()
        for stop in self._stop:
            at = text.find(stop)
            if at != -1:
                self.stopped = True
                return self._emit(text[:at])
        safe_end = len(text)
        if text.endswith("\ufffd"):
            safe_end -= 1
        safe_end -= self._partial_stop_suffix(text[:safe_end])
        return self._emit(text[:safe_end])

    def flush(self) -> str:
        if self.stopped:
            return ""
        return self._emit(self._text().rstrip("\ufffd"))

    def _text(self) -> str:
        return self._tokenizer.decode(self._ids, skip_special_tokens=True)  # type: ignore[attr-defined]

    def _emit(self, upto: str) -> str:
        delta = upto[self._emitted :]
        self._emitted = max(self._emitted, len(upto))
        return delta

    def _partial_stop_suffix(self, text: str) -> int:
        longest = 0
        for stop in self._stop:
            for n in range(min(len(stop) - 1, len(text)), 0, -1):
                if text.endswith(stop[:n]):
                    longest = max(longest, n)
                    break
        return longest


def _as_list(value: int | list[int] | None) -> list[int]:
    if value is None:
        return []
    return [value] if isinstance(value, int) else list(value)


class GenerationEngine(Protocol):
    """What the servicer needs; TextGenerator, BatchingGenerator (and e.g. a vLLM engine) provide it."""

    name: str

    def prepare(self, messages: Sequence[Message], sampling: Sampling) -> _Prompt: ...

    def generate(
        self, messages: Sequence[Message], sampling: Sampling, cancel: threading.Event | None = None
    ) -> Generation: ...

    def stream(
        self, messages: Sequence[Message], sampling: Sampling, cancel: threading.Event | None = None
    ) -> Iterator[StreamEvent]: ...


def build_engine(settings: "GenerationSettings", models_dir: Path) -> GenerationEngine:
    generator = build_generator(settings, models_dir)
    if settings.max_batch_size <= 1:
        return generator
    from ragrail.generation.batching import BatchingGenerator

    return BatchingGenerator(
        generator,
        max_batch_size=settings.max_batch_size,
        batch_wait_s=settings.batch_wait_s,
        max_waiting=settings.max_waiting,
    )


def build_generator(settings: "GenerationSettings", models_dir: Path) -> TextGenerator:
    from ragrail.common.models import pick_device, resolve_model

    return TextGenerator(
        resolve_model(settings.model, models_dir),
        name=settings.model,
        device=pick_device(settings.device),
        dtype=settings.dtype,
        revision=settings.revision,
        max_new_tokens_limit=settings.max_new_tokens_limit,
        default_max_new_tokens=settings.default_max_new_tokens,
        max_messages=settings.max_messages,
        max_prompt_chars=settings.max_prompt_chars,
    )
