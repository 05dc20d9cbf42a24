"""Moderation: per-category scores and thresholds over pluggable scorers.

A scorer maps a batch of texts to scores in [0, 1]. Each category's backend and
threshold come from config (``moderation.categories``). The packaged defaults
ship inside PyPI packages or need no model at all: a linear toxicity model
(alt-profanity-check), a small prompt-injection classifier (metatronnanoguard)
and regular expressions with checksums for PII. The ``transformers`` backend
takes any sequence-classification model, so production can point a category at
a stronger classifier by config alone.
"""

from __future__ import annotations

import enum
import logging
import re
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from ragrail.common.errors import FailedPrecondition, require

if TYPE_CHECKING:
    from ragrail.common.config import CategorySettings, ModerationSettings

log = logging.getLogger(__name__)


class Category(enum.Enum):
    TOXICITY = "toxicity"
    PROMPT_INJECTION = "prompt_injection"
    PII = "pii"


class Scorer(Protocol):
    def score(self, texts: Sequence[str]) -> list[float]: ...


@runtime_checkable
class LabellingScorer(Protocol):
    """A scorer that also names what it found in each text (e.g. which PII types)."""

    def score_with_labels(self, texts: Sequence[str]) -> list[tuple[float, tuple[str, ...]]]: ...


@dataclass(frozen=True)
class CategoryScore:
    category: Category
    score: float
    threshold: float
    labels: tuple[str, ...] = ()  # what a labelling scorer found, e.g. ("email", "card")

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

    @property
    def pii_types(self) -> tuple[str, ...]:
        return next((s.labels for s in self.scores if s.category is Category.PII), ())


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


# -- PII ---------------------------------------------------------------------------

PII_TYPES = ("email", "phone", "card", "ssn", "uk_nino", "iban")

# Every pattern ends a match only where the number ends: not before another digit,
# letter, or a separator followed by a digit (so a prefix of a longer number never
# counts). Digits are ASCII only.
_END = r"(?![0-9A-Za-z_])(?![ .-][0-9])"

_EMAIL = re.compile(
    r"(?<![\w.+%-])[A-Za-z0-9][A-Za-z0-9._%+-]*@(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)+[A-Za-z]{2,24}(?![\w-])",
    re.ASCII,
)
# IBAN: country, check digits, 11 to 30 letters/digits, printed in groups of four or not.
_IBAN = re.compile(r"(?<![0-9A-Za-z])[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?(?![0-9A-Za-z])", re.I)
# Lengths per country (SWIFT IBAN registry), EU/EEA and neighbours.
_IBAN_LENGTHS = {
    "AT": 20, "BE": 16, "BG": 22, "CH": 21, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "EE": 20,
    "ES": 24, "FI": 18, "FR": 27, "GB": 22, "GR": 27, "HR": 21, "HU": 28, "IE": 22, "IS": 26,
    "IT": 27, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "MC": 27, "MT": 31, "NL": 18, "NO": 15,
    "PL": 28, "PT": 25, "RO": 24, "SE": 24, "SI": 19, "SK": 24, "SM": 27,
}  # fmt: skip
# Payment card: 13 to 19 digits, single spaces or dashes allowed between digits, first
# digit 2-6 (Mastercard 2/5, Amex/JCB/Diners 3, Visa 4, Discover/UnionPay/Maestro 6).
_CARD = re.compile(r"(?<![0-9+-])(?<![0-9][ -])[2-6][0-9](?:[ -]?[0-9]){11,17}" + _END)
# US SSN: AAA-GG-SSSS (or spaces); never area 000, 666 or 9xx, group 00, serial 0000.
_SSN = re.compile(r"(?<![0-9-])(?<![0-9][ -])(?!000|666|9[0-9]{2})[0-9]{3}([ -])(?!00)[0-9]{2}\1(?!0000)[0-9]{4}" + _END)
# UK National Insurance number: two letters (D, F, I, Q, U, V never; O never second;
# BG, GB, KN, NK, NT, TN, ZZ unallocated), six digits, suffix A-D.
_UK_NINO = re.compile(
    r"(?<![0-9A-Za-z])(?!BG|GB|KN|NK|NT|TN|ZZ)[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z]"
    r" ?[0-9]{2} ?[0-9]{2} ?[0-9]{2} ?[A-D](?![0-9A-Za-z])",
    re.I,
)
# Phones. International: +CC then groups (parentheses allowed), 8 to 15 digits in all.
_PHONE_INTL = re.compile(r"(?<![\w+])\+[1-9][0-9]{0,2}(?:[ .-]?\(?[0-9]{1,4}\)?){2,6}" + _END, re.ASCII)
# North American: (AAA) EEE-NNNN, AAA-EEE-NNNN, AAA.EEE.NNNN, AAA EEE NNNN, optional leading 1.
_PHONE_NANP = re.compile(
    r"(?<![\w+.,/-])(?<![0-9][ .-])(?:1[ .-]?)?(?:\([2-9][0-9]{2}\) ?|[2-9][0-9]{2}[ .-])[0-9]{3}[ .-][0-9]{4}" + _END,
    re.ASCII,
)
# National trunk prefix 0 (UK, FR, DE, NL, IT...): 020 7946 0958, 07700 900123, 01 23 45 67 89,
# 030-12345678, 0044 20 7946 0958; one separator kind throughout, so "01.02.2024 10:30" is not one.
_PHONE_NATIONAL = re.compile(
    r"(?<![\w+.,/-])(?<![0-9][ .-])0[0-9]{1,4}(?:(?P<sep>[ .-])[0-9]{2,8}(?:(?P=sep)[0-9]{2,8}){0,4}|[0-9]{5,13})"
    + _END,
    re.ASCII,
)


def luhn_valid(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_valid(candidate: str) -> bool:
    iban = candidate.replace(" ", "").upper()
    if _IBAN_LENGTHS.get(iban[:2]) != len(iban):
        return False
    rearranged = iban[4:] + iban[:4]
    return int("".join(str(int(ch, 36)) for ch in rearranged)) % 97 == 1


def _digits(text: str) -> str:
    return "".join(ch for ch in text if ch.isdigit())


def _card_valid(match: str) -> bool:
    digits = _digits(match)
    return 13 <= len(digits) <= 19 and luhn_valid(digits)


def _phone_national_valid(match: str) -> bool:
    digits = _digits(match)
    if digits.startswith("00"):  # international call prefix: 00 + CC + number
        return 10 <= len(digits) - 2 <= 15
    return 10 <= len(digits) <= 12


def _always(match: str) -> bool:
    return True


_ISBN_CONTEXT = re.compile(r"isbn(?:-1[03])?:?\s*$", re.I)

# (type, pattern, validator, skip after "ISBN"). Order matters: each found span is
# masked before the next detector runs, so a card number is never also a phone.
_DETECTORS: tuple[tuple[str, re.Pattern[str], Callable[[str], bool], bool], ...] = (
    ("email", _EMAIL, _always, False),
    ("iban", _IBAN, iban_valid, False),
    ("card", _CARD, _card_valid, True),
    ("ssn", _SSN, _always, False),
    ("uk_nino", _UK_NINO, _always, False),
    ("phone", _PHONE_INTL, lambda m: 8 <= len(_digits(m)) <= 15, True),
    ("phone", _PHONE_NANP, _always, True),
    ("phone", _PHONE_NATIONAL, _phone_national_valid, True),
)


def pii_key(value: str) -> str:
    """How a PII value is compared with the allow list: emails case-folded, the rest
    letters and digits only ("0800 555 0140" == "0800-555-0140")."""
    return value.casefold() if "@" in value else "".join(ch for ch in value if ch.isalnum()).upper()


def find_pii(text: str, types: Iterable[str] = PII_TYPES, allow: Iterable[str] = ()) -> tuple[str, ...]:
    """The PII types found in ``text``, in PII_TYPES order, each once.

    Values in ``allow`` (published contacts, say) are recognised but not reported.
    """
    wanted = set(types)
    allowed = {pii_key(v) for v in allow}
    found: set[str] = set()
    # Every detector runs (a card is never a phone, even when cards are not wanted); found
    # spans become "#"s of the same length, so positions stay those of ``text``.
    masked = text
    for kind, pattern, valid, not_after_isbn in _DETECTORS:
        spans = []
        for match in pattern.finditer(masked):
            value = match.group(0)
            if not_after_isbn and _ISBN_CONTEXT.search(text, max(0, match.start() - 12), match.start()):
                continue
            if valid(value):
                spans.append(match.span())
                if kind in wanted and pii_key(value) not in allowed:
                    found.add(kind)
        if spans:
            parts, last = [], 0
            for start, end in spans:
                parts += [masked[last:start], "#" * (end - start)]
                last = end
            masked = "".join([*parts, masked[last:]])
    return tuple(k for k in PII_TYPES if k in found)


class RegexPiiScorer:
    """PII by regular expressions with checksums: 1.0 when any type is found, else 0.0.

    Types: email; phone (+CC international, North American 10-digit, national numbers
    with a leading 0); card (13-19 digits, first digit 2-6, Luhn-valid); ssn (US, valid
    ranges only); uk_nino (UK National Insurance number); iban (EU/EEA formats, length
    per country, mod-97 check). A 7-digit local number ("555-1234") is not a phone
    here: without an area code it cannot be told from a reference or a range.
    ``allow`` lists values that are not personal (a published helpline, say).
    """

    def __init__(self, types: Iterable[str] = PII_TYPES, allow: Iterable[str] = ()) -> None:
        self.types = tuple(dict.fromkeys(types))
        self.allow = tuple(allow)
        unknown = sorted(set(self.types) - set(PII_TYPES))
        require(not unknown, f"unknown PII types {unknown}; known: {', '.join(PII_TYPES)}")

    def score_with_labels(self, texts: Sequence[str]) -> list[tuple[float, tuple[str, ...]]]:
        out = []
        for text in texts:
            found = find_pii(text, self.types, self.allow)
            out.append((1.0 if found else 0.0, found))
        return out

    def score(self, texts: Sequence[str]) -> list[float]:
        return [s for s, _ in self.score_with_labels(texts)]


# -- any sequence-classification model -------------------------------------------------


class TransformersClassifierScorer:
    """The probability of one label of a transformers sequence-classification model.

    ``model`` is a builtin name, a folder or a hub id (``resolve_model``); ``label`` is
    a name from the model's ``config.id2label`` (exact, else case-insensitive) or an
    index. Texts are scored in batches of ``batch_size`` and truncated to the
    model's maximum length (or ``max_length`` when smaller): only the head of a long
    text is read. Softmax over the logits, or a sigmoid for multi-label and
    single-logit models. ``dtype`` is the weights' (``pick_dtype``: ``auto`` is
    bfloat16 on CUDA, float32 on CPU).
    """

    DEFAULT_MAX_LENGTH = 512

    def __init__(
        self,
        model: str,
        label: str | int,
        *,
        models_dir: Path | None = None,
        revision: str | None = None,
        device: str = "cpu",
        dtype: str = "auto",
        batch_size: int = 32,
        max_length: int | None = None,
    ) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from ragrail.common.models import dtype_name, pick_dtype, resolve_model, tune_cuda_attention

        require(batch_size >= 1, "batch_size must be at least 1")
        location = resolve_model(model, models_dir or Path("."))
        self.dtype = pick_dtype(dtype, device)
        tune_cuda_attention(device)
        try:
            self._tokenizer = AutoTokenizer.from_pretrained(location, revision=revision)
            self._model = AutoModelForSequenceClassification.from_pretrained(
                location, revision=revision, dtype=self.dtype
            )
        except (OSError, ValueError, KeyError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise FailedPrecondition(f"cannot load moderation model {model!r}: {first}") from exc
        self._model.eval().to(device)
        self._torch = torch
        self.name = model
        self.device = device
        self.batch_size = batch_size
        config = self._model.config
        self.labels = {int(i): str(name) for i, name in config.id2label.items()}
        self.label_index = self._resolve_label(label)
        self.label = self.labels.get(self.label_index, str(self.label_index))
        self.multi_label = config.problem_type == "multi_label_classification" or config.num_labels == 1
        limits = [
            n
            for n in (getattr(self._tokenizer, "model_max_length", None), getattr(config, "max_position_embeddings", None), max_length)
            if isinstance(n, int) and 0 < n < 1_000_000
        ]
        self.max_length = min(limits) if limits else self.DEFAULT_MAX_LENGTH
        # A fast tokenizer's truncation settings are shared state: one batch at a time.
        self._lock = threading.Lock()
        log.info("moderation model %s on %s (%s)", model, device, dtype_name(self.dtype))

    def _resolve_label(self, label: str | int) -> int:
        known = ", ".join(f"{i}={name}" for i, name in sorted(self.labels.items()))
        if isinstance(label, int) and not isinstance(label, bool):
            if 0 <= label < self._model.config.num_labels:
                return label
            raise FailedPrecondition(
                f"moderation model {self.name!r} has no label index {label}; its labels: {known}"
            )
        exact = [i for i, name in self.labels.items() if name == label]
        folded = [i for i, name in self.labels.items() if name.casefold() == str(label).casefold()]
        if len(exact) == 1 or len(folded) == 1:
            return (exact or folded)[0]
        raise FailedPrecondition(f"moderation model {self.name!r} has no label {label!r}; its labels: {known}")

    def score(self, texts: Sequence[str]) -> list[float]:
        torch = self._torch
        scores: list[float] = []
        with self._lock, torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                batch = list(texts[start : start + self.batch_size])
                encoded = self._tokenizer(
                    batch, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
                ).to(self.device)
                # Softmax/sigmoid in float32: bfloat16 keeps ~3 significant digits, too few
                # near a threshold such as 0.98.
                logits = self._model(**encoded).logits.float()
                if self.multi_label:
                    probs = torch.sigmoid(logits)
                else:
                    probs = torch.softmax(logits, dim=-1)
                scores.extend(float(p) for p in probs[:, self.label_index].cpu())
        return scores


# -- the moderator ---------------------------------------------------------------------


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
        by_category = {c: _score(self.scorers[c], texts) for c in wanted}
        return [
            Verdict(
                tuple(
                    CategoryScore(c, by_category[c][i][0], self.thresholds[c], by_category[c][i][1])
                    for c in wanted
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


def _score(scorer: Scorer, texts: Sequence[str]) -> list[tuple[float, tuple[str, ...]]]:
    if isinstance(scorer, LabellingScorer):
        results = scorer.score_with_labels(texts)
    else:
        results = [(s, ()) for s in scorer.score(texts)]
    if len(results) != len(texts):
        raise RuntimeError(f"{type(scorer).__name__} returned {len(results)} scores for {len(texts)} texts")
    return [(float(s), tuple(labels)) for s, labels in results]


# -- backends from config ----------------------------------------------------------------

BackendFactory = Callable[["CategorySettings", str, "Path | None"], Scorer]


def _transformers(s: CategorySettings, device: str, models_dir: Path | None) -> Scorer:
    from ragrail.common.models import pick_device

    assert s.model is not None and s.label is not None  # the config requires both
    return TransformersClassifierScorer(
        s.model,
        s.label,
        models_dir=models_dir,
        revision=s.revision,
        device=pick_device(s.device) if s.device else device,
        dtype=s.dtype or "auto",
        batch_size=s.batch_size or 32,
        max_length=s.max_length,
    )


# Backend name (``moderation.categories.<category>.backend``) -> scorer factory.
BACKENDS: dict[str, BackendFactory] = {
    "profanity_check": lambda s, device, models_dir: ProfanityCheckScorer(),
    "nanoguard": lambda s, device, models_dir: NanoGuardScorer(device, s.window_chars or 1500),
    "regex": lambda s, device, models_dir: RegexPiiScorer(s.pii_types or PII_TYPES, s.pii_allow or ()),
    "transformers": _transformers,
}


def build_scorer(settings: CategorySettings, device: str = "cpu", models_dir: Path | None = None) -> Scorer:
    if settings.backend not in BACKENDS:
        raise FailedPrecondition(f"unknown moderation backend {settings.backend!r}; known: {', '.join(BACKENDS)}")
    return BACKENDS[settings.backend](settings, device, models_dir)


def build_moderator(
    settings: ModerationSettings, device: str = "cpu", models_dir: Path | None = None
) -> Moderator:
    """One scorer per category, each from its configured backend and threshold."""
    configured = {c: getattr(settings.categories, c.value) for c in Category}
    return Moderator(
        {c: build_scorer(s, device, models_dir) for c, s in configured.items()},
        {c: s.threshold for c, s in configured.items()},
        max_batch_size=settings.max_batch_size,
        max_text_chars=settings.max_text_chars,
    )
