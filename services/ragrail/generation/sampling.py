"""Next-token choice for a whole batch at once, each row with its own settings.

Rows of one batch may differ in temperature, top-k, top-p, repetition penalty
and seed, so the settings are tensors of one value per row, built when the
batch's membership changes, and every step is a handful of batched tensor ops
on the model's device: no per-row Python, no host round trip. The order and
semantics follow transformers' logits processors (repetition penalty over
prompt and output, suppressed tokens, then temperature, top-k, top-p).

A seeded row samples from its own ``torch.Generator``, so its output depends
on its seed alone, not on which other requests share the batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class RowSampling:
    """One row's decoding settings (temperature 0 = greedy)."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    seed: int | None = None


class BatchSampler:
    """Chooses one token per row from the last position's logits."""

    def __init__(
        self,
        rows: Sequence[RowSampling],
        device: torch.device,
        *,
        suppress_tokens: Sequence[int] = (),
        generators: Sequence[torch.Generator | None] | None = None,
    ) -> None:
        self.rows = list(rows)
        self._device = device
        n = len(self.rows)
        greedy = [r.temperature <= 0 for r in self.rows]
        self.all_greedy = all(greedy)
        self._greedy = torch.tensor(greedy, device=device)
        self._temperature = torch.tensor(
            [[r.temperature if r.temperature > 0 else 1.0] for r in self.rows], dtype=torch.float32, device=device
        )
        self._top_k = torch.tensor([[r.top_k] for r in self.rows], dtype=torch.long, device=device)
        self._top_p = torch.tensor([[r.top_p] for r in self.rows], dtype=torch.float32, device=device)
        self._penalty = torch.tensor([[r.repetition_penalty] for r in self.rows], dtype=torch.float32, device=device)
        self.uses_penalty = any(r.repetition_penalty != 1.0 for r in self.rows)
        self._uses_top_k = any(r.top_k > 0 and r.temperature > 0 for r in self.rows)
        self._uses_top_p = any(r.top_p < 1.0 and r.temperature > 0 for r in self.rows)
        self._suppress = torch.tensor(sorted(set(suppress_tokens)), dtype=torch.long, device=device)
        self._generators = list(generators) if generators is not None else [None] * n
        self._seeded = [i for i, g in enumerate(self._generators) if g is not None and not greedy[i]]

    def __call__(self, logits: torch.Tensor, seen: torch.Tensor | None = None) -> torch.Tensor:
        """``logits`` [rows, vocab]; ``seen`` [rows, vocab] bool marks tokens the penalty applies to."""
        scores = logits.float()
        if self.uses_penalty and seen is not None:
            penalised = torch.where(scores < 0, scores * self._penalty, scores / self._penalty)
            scores = torch.where(seen, penalised, scores)
        if self._suppress.numel():
            scores = scores.index_fill(1, self._suppress, float("-inf"))
        greedy_choice = scores.argmax(dim=-1)
        if self.all_greedy:
            return greedy_choice
        sampled = self._sample(scores / self._temperature)
        return torch.where(self._greedy, greedy_choice, sampled)

    def _sample(self, scores: torch.Tensor) -> torch.Tensor:
        if self._uses_top_k:
            scores = self._apply_top_k(scores)
        if self._uses_top_p:
            scores = self._apply_top_p(scores)
        probs = scores.softmax(dim=-1)
        chosen = torch.multinomial(probs, 1).squeeze(1)
        for i in self._seeded:  # seeded rows draw from their own generator
            chosen[i] = torch.multinomial(probs[i], 1, generator=self._generators[i]).squeeze(0)
        return chosen

    def _apply_top_k(self, scores: torch.Tensor) -> torch.Tensor:
        vocab = scores.shape[-1]
        k = torch.where(self._top_k > 0, self._top_k, torch.full_like(self._top_k, vocab)).clamp(max=vocab)
        kth = scores.topk(int(k.max()), dim=-1).values.gather(1, k - 1)
        return scores.masked_fill(scores < kth, float("-inf"))

    def _apply_top_p(self, scores: torch.Tensor) -> torch.Tensor:
        ascending, order = scores.sort(dim=-1)
        cumulative = ascending.softmax(dim=-1).cumsum(dim=-1)
        remove = cumulative <= (1 - self._top_p)
        remove[:, -1] = False  # always keep the most likely token
        return scores.masked_fill(remove.scatter(1, order, remove), float("-inf"))


def seen_tokens(token_rows: Sequence[torch.Tensor], vocab_size: int, device: torch.device) -> torch.Tensor:
    """[rows, vocab] bool: which tokens each row has seen (prompt ids, no padding)."""
    seen = torch.zeros((len(token_rows), vocab_size), dtype=torch.bool, device=device)
    for i, ids in enumerate(token_rows):
        seen[i, ids.to(device)] = True
    return seen
