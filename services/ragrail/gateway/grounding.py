"""The ground stage's logic: is a generated answer fit to release, and if not, what the
passages themselves say (an extractive answer). Pure functions over strings, no model.

An answer is held back when it states a number, time or proper name its passages do not
contain, pairs a passage's number with another unit ("10 days" where the passage says
"10 minutes" and "7 days"), echoes the prompt (wrapper tags, the wrapper's sentences, a
system-prompt sentence), or repeats a sentence. The term reading is shared with the
evaluation harness (``ragrail.common.grounding_terms``), so the gate and the groundedness
figure agree.

The extractive answer quotes the passages' sentences that share most content words with
the question (lexical overlap: no model call, microseconds), in passage order, without
citation markers: a marker like "[1]" is a number the passages do not contain, and the
response's citations already list the quoted passages in order.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ragrail.common.grounding_terms import NAME, NUMBER, TIME, canonical_number, prompt_leaks, ungrounded_terms

CHECKS = ("numbers", "times", "names", "units", "prompt_echo", "repetition", "substance")
# Words that say nothing about the passages: "The answer is:" (cut at a stop sequence) is empty.
_FILLER = frozenset({"answer", "question", "context", "passage", "text", "following", "here"})
_TERM_KINDS = {"numbers": NUMBER, "times": TIME, "names": NAME}

# Units a number is checked against: the passage must pair the figure with the same unit
# when it pairs it with any of these at all.
_UNITS = {
    "second": "second", "sec": "second", "minute": "minute", "min": "minute", "hour": "hour", "hr": "hour",
    "day": "day", "week": "week", "month": "month", "year": "year", "km": "km", "kilometre": "km",
    "kilometer": "km", "kilometres": "km", "m": "m", "metre": "m", "meter": "m", "kg": "kg",
    "kilogram": "kg", "%": "percent", "percent": "percent", "mph": "mph", "km/h": "km/h", "euro": "eur", "eur": "eur",
}
_NUMBER_UNIT = re.compile(
    r"(?<![\d.,])(\d{1,3}(?:,\d{3})+|\d+(?:\.\d+)?)(?:\s*|-)(%|km/h|[a-z]+)", re.IGNORECASE
)
_SENTENCE_SPLIT = re.compile(r"(?<=[.!?])\s+|\n+")
_WORD = re.compile(r"[^\W_]+")
# Question words that carry no topic: overlap on them says nothing.
_STOP = frozenset(
    """a an the is are was were be been being do does did can could will would shall should may might must
    i you he she it we they me my your our their its this that these those there here what which who whom
    whose when where why how many much of in on at to for from by with about as into over under and or
    not no if then than so get got have has had please tell know any some""".split()
)


@dataclass(frozen=True)
class Quote:
    """One quoted sentence and the passage (index into the passages) it comes from."""

    text: str
    passage: int
    score: float


def sentences(text: str) -> list[str]:
    """The sentences of ``text``: cut after . ! ? followed by space, and at line breaks."""
    return [s.strip() for s in _SENTENCE_SPLIT.split(text) if s and s.strip()]


def _unit(word: str) -> str:
    word = word.lower()
    if word in _UNITS:
        return _UNITS[word]
    return _UNITS.get(word[:-1], "") if word.endswith("s") else ""


def _pairs(text: str) -> set[tuple[str, str]]:
    """(figure, unit) pairs: "7 days" -> ("7", "day"), "7-day" too."""
    found = set()
    for m in _NUMBER_UNIT.finditer(text):
        unit = _unit(m.group(2))
        figure = canonical_number(m.group(1))
        if unit and figure:
            found.add((figure, unit))
    return found


def mismatched_units(answer: str, passages: Iterable[str]) -> list[str]:
    """'N unit' of the answer where the passages give N only with other units."""
    source: dict[str, set[str]] = {}
    for figure, unit in _pairs("\n".join(passages)):
        source.setdefault(figure, set()).add(unit)
    return sorted(
        f"{figure} {unit}" for figure, unit in _pairs(answer)
        if figure in source and unit not in source[figure]
    )


def repeated_sentences(answer: str) -> list[str]:
    seen: set[str] = set()
    repeated = []
    for sentence in sentences(answer):
        key = " ".join(_WORD.findall(sentence.lower()))
        if len(key) >= 12 and key in seen and sentence not in repeated:
            repeated.append(sentence)
        seen.add(key)
    return repeated


def check_answer(
    answer: str, passages: Sequence[str], system_prompts: Sequence[str] = (), checks: Sequence[str] = CHECKS
) -> list[str]:
    """Why ``answer`` must not be released (empty: it may be). One line per problem."""
    problems = []
    kinds = {_TERM_KINDS[c] for c in checks if c in _TERM_KINDS}
    if kinds:
        problems += [f"{t.kind} not in the passages: {t.text}" for t in ungrounded_terms(answer, passages) if t.kind in kinds]
    if "units" in checks:
        problems += [f"number with another unit than the passages': {m}" for m in mismatched_units(answer, passages)]
    if "prompt_echo" in checks:
        problems += [f"echoes the prompt: {leak}" for leak in prompt_leaks(answer, system_prompts)]
    if "repetition" in checks:
        problems += [f"repeats: {s}" for s in repeated_sentences(answer)]
    if "substance" in checks and not content_words(answer) - _FILLER:
        problems.append("says nothing")
    return problems


def content_words(text: str) -> set[str]:
    """Lowercased words minus question words, a plural -s dropped ("refunds" = "refund")."""
    words = set()
    for word in _WORD.findall(text.lower()):
        if word in _STOP:
            continue
        words.add(word[:-1] if len(word) > 3 and word.endswith("s") and not word.endswith("ss") else word)
    return words


def best_sentences(question: str, passages: Sequence[str], min_score: float, max_sentences: int) -> list[Quote]:
    """The passages' sentences that cover most of the question's content words (score: the
    share covered, 0..1), at least ``min_score``, best first then trimmed to ``max_sentences``,
    returned in passage order. Empty when none qualifies."""
    wanted = content_words(question)
    if not wanted:
        return []
    scored: list[Quote] = []
    seen: set[str] = set()
    for i, passage in enumerate(passages):
        for sentence in sentences(passage):
            if sentence in seen or len(sentence) < 12 or sentence.lstrip().startswith("#"):
                continue  # a duplicate (overlapping chunks), a fragment or a heading says nothing new
            seen.add(sentence)
            score = len(wanted & content_words(sentence)) / len(wanted)
            if score >= min_score:
                scored.append(Quote(sentence, i, score))
    best = sorted(scored, key=lambda q: -q.score)[:max_sentences]
    return sorted(best, key=lambda q: (q.passage, scored.index(q)))


def quote(quotes: Sequence[Quote]) -> str:
    """The extractive answer: each sentence quoted, on its own line."""
    return "\n".join(f"\u201c{q.text.strip()}\u201d" for q in quotes)


class SentenceGate:
    """Streaming release by sentence: ``feed`` text, get back the complete sentences, which the
    caller checks before sending; ``rest`` is the unfinished tail at the end of the stream."""

    def __init__(self) -> None:
        self.pending = ""

    def feed(self, text: str) -> list[str]:
        self.pending += text
        out: list[str] = []
        while True:
            m = re.search(r"[.!?](?=\s)|\n", self.pending)
            if m is None:
                return out
            cut = m.end()
            # Keep the whitespace after a sentence with it, so released text is the answer verbatim.
            while cut < len(self.pending) and self.pending[cut].isspace():
                cut += 1
            if cut == len(self.pending):
                return out  # more whitespace (or the next sentence) may follow
            out.append(self.pending[:cut])
            self.pending = self.pending[cut:]

    def rest(self) -> str:
        rest, self.pending = self.pending, ""
        return rest
