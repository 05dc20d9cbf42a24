"""Moderation: per-category scores and thresholds over pluggable scorers.

A scorer maps a batch of texts to scores in [0, 1]. The defaults ship inside
PyPI packages: a linear toxicity model (alt-profanity-check) and a small
prompt-injection classifier (metatronnanoguard). Thresholds come from config.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from ragrail.common.errors import require

if TYPE_CHECKING:
    from ragrail.common.config import ModerationSettings


class Category(enum.Enum):
    TOXICITY = "toxicity"
    PROMPT_INJECTION = "prompt_injection"


class Scorer(Protocol):
    def score(self, texts: Sequence[str]) -> list[float]: ...


@dataclass(frozen=True)
class CategoryScore:
    category: Category
    score: float
    threshold: float

    @property
    def flagged(self) -> bool:
        return self.score >= self.threshold


@dataclass(frozen=True)
class Verdict:
    scores: tuple[CategoryScore, ...]

    @property
    def flagged(self) -> bool:
        return any(s.flagged for s in self.scores)

    @property
    def flagged_categories(self) -> list[Category]:
        return [s.category for s in self.scores if s.flagged]


class ProfanityCheckScorer:
    """Toxicity from alt-profanity-check (a linear SVM over words; fast, crude)."""

    def __init__(self) -> None:
        from profanity_check import predict_prob

        self._predict_prob = predict_prob

    def score(self, texts: Sequence[str]) -> list[float]:
        return [float(p) for p in self._predict_prob(list(texts))]


class NanoGuardScorer:
    """Prompt injection from NanoGuard (16.8M params, reads 512 tokens).

    Long texts are scanned in windows and the worst window counts, so an
    instruction hidden at the end of a long text is still seen.
    """

    def __init__(self, device: str = "cpu", window_chars: int = 1500) -> None:
        from nanoguard import NanoGuard

        self._guard = NanoGuard(device=device)
        self._window_chars = window_chars

    def score(self, texts: Sequence[str]) -> list[float]:
        windows: list[str] = []
        owners: list[int] = []
        for i, text in enumerate(texts):
            for piece in _windows(text, self._window_chars):
                windows.append(piece)
                owners.append(i)
        scores = [0.0] * len(texts)
        for owner, result in zip(owners, self._guard.scan_batch(windows), strict=True):
            scores[owner] = max(scores[owner], float(result.injection_score))
        return scores


def _windows(text: str, size: int) -> list[str]:
    overlap = size // 5
    step = size - overlap
    return [text[start : start + size] for start in range(0, max(len(text) - overlap, 1), step)]


class Moderator:
    """Scores texts on the requested categories against configured thresholds."""

    def __init__(
        self,
        scorers: dict[Category, Scorer],
        thresholds: dict[Category, float],
        *,
        max_batch_size: int = 256,
        max_text_chars: int = 16_000,
    ) -> None:
        self.scorers = scorers
        self.thresholds = thresholds
        self.max_batch_size = max_batch_size
        self.max_text_chars = max_text_chars

    def moderate(
        self, texts: Sequence[str], categories: Sequence[Category] = ()
    ) -> list[Verdict]:
        self._validate(texts)
        wanted = list(dict.fromkeys(categories)) or list(self.scorers)
        for category in wanted:
            require(category in self.scorers, f"category {category.value} is not configured")
        by_category = {c: self.scorers[c].score(texts) for c in wanted}
        return [
            Verdict(
                tuple(
                    CategoryScore(c, by_category[c][i], self.thresholds[c]) for c in wanted
                )
            )
            for i in range(len(texts))
        ]

    def _validate(self, texts: Sequence[str]) -> None:
        require(len(texts) > 0, "texts must not be empty")
        require(
            len(texts) <= self.max_batch_size,
            f"at most {self.max_batch_size} texts per call, got {len(texts)}",
        )
        for i, text in enumerate(texts):
            require(
                len(text) <= self.max_text_chars,
                f"texts[{i}] has {len(text)} characters; the limit is {self.max_text_chars}",
            )


def build_moderator(settings: "ModerationSettings", device: str = "cpu") -> Moderator:
    return Moderator(
        {
            Category.TOXICITY: ProfanityCheckScorer(),
            Category.PROMPT_INJECTION: NanoGuardScorer(device, settings.injection_window_chars),
        },
        {
            Category.TOXICITY: settings.toxicity_threshold,
            Category.PROMPT_INJECTION: settings.prompt_injection_threshold,
        },
        max_batch_size=settings.max_batch_size,
        max_text_chars=settings.max_text_chars,
    )
