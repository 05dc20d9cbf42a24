"""A chat model behind validation and bounds: the model side of text generation.

``TextGenerator`` loads a causal LM and its tokenizer through ``from_pretrained``,
validates messages and sampling, and turns a chat into prompt ids. Running
requests (continuous batching, streaming, cancellation) is the job of a
``GenerationEngine`` (see ``ragrail.generation.engine``); the servicer only
knows that protocol, so another engine (vLLM, say) can take its place.
"""

from __future__ import annotations

import enum
import logging
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from ragrail.common.errors import require
from ragrail.common.models import pick_dtype, tune_cuda_attention

if TYPE_CHECKING:
    from ragrail.common.config import GenerationSettings

log = logging.getLogger(__name__)
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
class PreparedPrompt:
    """A validated request: prompt ids (on the host), its sampling and its token bound."""

    input_ids: torch.Tensor
    sampling: Sampling
    max_new_tokens: int
    token_count: int = field(init=False)

    def __post_init__(self) -> None:
        self.token_count = int(self.input_ids.shape[-1])


class TextGenerator:
    """A chat model and its tokenizer behind validation and bounds."""

    def __init__(
        self,
        location: str,
        *,
        name: str,
        device: str = "cpu",
        dtype: str = "auto",
        revision: str | None = None,
        max_new_tokens_limit: int = 512,
        default_max_new_tokens: int = 128,
        max_messages: int = 64,
        max_prompt_chars: int = 32_000,
    ) -> None:
        self.name = name
        self.device = device
        self.max_new_tokens_limit = max_new_tokens_limit
        self.default_max_new_tokens = min(default_max_new_tokens, max_new_tokens_limit)
        self.max_messages = max_messages
        self.max_prompt_chars = max_prompt_chars
        tune_cuda_attention(device)
        self.tokenizer = AutoTokenizer.from_pretrained(location, revision=revision)
        self.model = AutoModelForCausalLM.from_pretrained(
            location, revision=revision, dtype=pick_dtype(dtype, device)
        ).to(device).eval()
        self.context_window = int(getattr(self.model.config, "max_position_embeddings", 2048))
        log.info("generation model %s on %s (%s)", name, self.model.device, self.model.dtype)

    def prepare(self, messages: Sequence[Message], sampling: Sampling) -> PreparedPrompt:
        self._validate_messages(messages)
        max_new = self._validate_sampling(sampling)
        chat = [{"role": m.role, "content": m.content} for m in messages]
        encoded = self.tokenizer.apply_chat_template(
            chat, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        input_ids = encoded["input_ids"]
        prompt = PreparedPrompt(input_ids=input_ids, sampling=sampling, max_new_tokens=max_new)
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
        # Below 0.01 logits divided by it overflow float32 (found by fuzzing: 1e-45).
        require(s.temperature == 0 or 0.01 <= s.temperature <= 2,
                f"temperature must be 0 (greedy) or in [0.01, 2], got {s.temperature}")
        require(0 < s.top_p <= 1, f"top_p must be in (0, 1], got {s.top_p}")
        require(s.top_k >= 0, "top_k must be >= 0")
        require(0.01 <= s.repetition_penalty <= 10, f"repetition_penalty must be in [0.01, 10], got {s.repetition_penalty}")
        require(len(s.stop) <= 8 and all(0 < len(x) <= 64 for x in s.stop),
                "at most 8 stop sequences of 1..64 characters")
        return max_new

    @property
    def pad_token_id(self) -> int:
        tok = self.tokenizer
        return int(tok.pad_token_id if tok.pad_token_id is not None else (self.eos_token_ids or [0])[0])

    @property
    def eos_token_ids(self) -> list[int]:
        """Tokens that end a generation: the generation config's, else the tokenizer's."""
        ids = _as_list(self.model.generation_config.eos_token_id)
        return ids or _as_list(self.tokenizer.eos_token_id)

    @property
    def suppressed_token_ids(self) -> list[int]:
        """Tokens the model's generation config never lets it emit (``suppress_tokens``)."""
        return _as_list(getattr(self.model.generation_config, "suppress_tokens", None))


def _as_list(value: int | list[int] | None) -> list[int]:
    if value is None:
        return []
    return [value] if isinstance(value, int) else list(value)


class GenerationEngine(Protocol):
    """What the servicer needs; ``ContinuousBatcher`` provides it (a vLLM engine could too)."""

    name: str

    def prepare(self, messages: Sequence[Message], sampling: Sampling) -> PreparedPrompt: ...

    def generate(
        self, messages: Sequence[Message], sampling: Sampling, cancel: threading.Event | None = None
    ) -> Generation: ...

    def stream(
        self, messages: Sequence[Message], sampling: Sampling, cancel: threading.Event | None = None
    ) -> Iterator[StreamEvent]: ...

    def astream(
        self, messages: Sequence[Message], sampling: Sampling, cancel: threading.Event | None = None
    ) -> AsyncIterator[StreamEvent]: ...


async def acollect(events: AsyncIterator[StreamEvent]) -> Generation:
    """``collect`` for an asyncio stream."""
    parts: list[str] = []
    last = StreamEvent("")
    async for event in events:
        parts.append(event.delta)
        last = event
    assert last.finish_reason is not None
    return Generation("".join(parts), last.finish_reason, last.prompt_tokens, last.completion_tokens)


def build_generator(settings: "GenerationSettings", models_dir: Path) -> TextGenerator:
    from ragrail.common.models import pick_device, resolve_model  # noqa: PLC0415

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
