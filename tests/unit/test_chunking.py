"""Unit tests for ragrail.gateway.chunking.chunk_text."""

from __future__ import annotations

import random
import re

import pytest

from ragrail.common.errors import InvalidArgument
from ragrail.gateway.chunking import chunk_text, normalize_whitespace

_WORDS = ["rail", "ticket", "platform", "conductor", "timetable", "a", "of", "Ostervik"]


def _prose(seed: int, sentences: int) -> str:
    """Deterministic pseudo-prose with sentence ends and paragraph breaks."""
    rng = random.Random(seed)
    parts: list[str] = []
    for index in range(sentences):
        words = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 15)))
        parts.append(words.capitalize() + rng.choice([".", "?", "!"]))
        parts.append("\n\n" if index % 5 == 4 else " ")
    return "".join(parts)


def _overlap_len(previous: str, following: str) -> int:
    """Length of the longest suffix of ``previous`` that starts ``following``."""
    for size in range(min(len(previous), len(following)), 0, -1):
        if previous.endswith(following[:size]):
            return size
    return 0


def _words(text: str) -> list[str]:
    return text.split()


@pytest.mark.parametrize("chunk_chars,overlap_chars", [(50, 0), (80, 10), (200, 40), (800, 120)])
def test_chunks_never_exceed_size(chunk_chars: int, overlap_chars: int) -> None:
    chunks = chunk_text(_prose(seed=1, sentences=120), chunk_chars, overlap_chars)
    assert len(chunks) > 1
    assert all(0 < len(chunk) <= chunk_chars for chunk in chunks)


def test_randomised_inputs_respect_bound_and_keep_all_words() -> None:
    rng = random.Random(20240611)
    for _ in range(300):
        chunk_chars = rng.randint(1, 300)
        overlap_chars = rng.randint(0, chunk_chars - 1)
        text = _random_text(rng)
        chunks = chunk_text(text, chunk_chars, overlap_chars)
        assert all(0 < len(chunk) <= chunk_chars for chunk in chunks)
        if overlap_chars == 0 and all(len(w) <= chunk_chars for w in text.split()):
            # Without overlap and oversized words, chunks partition the words.
            assert [w for chunk in chunks for w in _words(chunk)] == _words(text)


def _random_text(rng: random.Random) -> str:
    alphabet = "abcdefghij .,?!\n\t  "
    length = rng.randint(0, 1500)
    return "".join(rng.choice(alphabet) for _ in range(length))


def test_consecutive_chunks_overlap() -> None:
    chunks = chunk_text(_prose(seed=2, sentences=80), chunk_chars=200, overlap_chars=50)
    assert len(chunks) > 2
    for previous, following in zip(chunks, chunks[1:]):
        shared = _overlap_len(previous, following)
        assert 0 < shared <= 50


def test_zero_overlap_does_not_repeat_text() -> None:
    text = _prose(seed=3, sentences=60)
    chunks = chunk_text(text, chunk_chars=150, overlap_chars=0)
    assert " ".join(_words(" ".join(chunks))) == " ".join(_words(text))


def test_prefers_paragraph_boundary() -> None:
    first = "First paragraph sentence one. It has a second sentence here."
    second = "Second paragraph starts. It goes on for a little while longer."
    chunks = chunk_text(f"{first}\n\n{second}", chunk_chars=100, overlap_chars=0)
    assert chunks == [first, second]


def test_prefers_sentence_end_over_whitespace() -> None:
    text = "One two three four five six. Seven eight nine ten eleven twelve thirteen fourteen."
    chunks = chunk_text(text, chunk_chars=50, overlap_chars=0)
    assert chunks[0] == "One two three four five six."


def test_never_cuts_mid_word_when_words_fit() -> None:
    text = _prose(seed=4, sentences=50)
    vocabulary = set(_words(text))
    for chunk in chunk_text(text, chunk_chars=60, overlap_chars=15):
        assert set(_words(chunk)) <= vocabulary


def test_long_single_word_is_split_hard() -> None:
    word = "x" * 95
    chunks = chunk_text(f"short {word} tail", chunk_chars=40, overlap_chars=10)
    assert chunks[0] == "short"
    assert all(len(chunk) <= 40 for chunk in chunks)
    assert "".join(chunks[1:-1]) + chunks[-1].split()[0] == word
    assert chunks[-1].endswith("tail")


@pytest.mark.parametrize("text", ["", "   ", "\n\n\t \n", "\r\n"])
def test_empty_or_blank_text_gives_no_chunks(text: str) -> None:
    assert chunk_text(text, chunk_chars=100, overlap_chars=10) == []


def test_short_text_is_one_normalised_chunk() -> None:
    assert chunk_text("  Hello\t\t world  ", 100, 10) == ["Hello world"]


@pytest.mark.parametrize(
    "chunk_chars,overlap_chars",
    [(0, 0), (-5, 0), (10, 10), (10, 11), (10, -1)],
)
def test_invalid_parameters_raise(chunk_chars: int, overlap_chars: int) -> None:
    with pytest.raises(InvalidArgument):
        chunk_text("some text", chunk_chars, overlap_chars)


def test_large_overlap_still_terminates() -> None:
    chunks = chunk_text(_prose(seed=5, sentences=40), chunk_chars=30, overlap_chars=29)
    assert chunks
    assert all(len(chunk) <= 30 for chunk in chunks)


def test_deterministic() -> None:
    text = _prose(seed=6, sentences=70)
    assert chunk_text(text, 120, 30) == chunk_text(text, 120, 30)


def test_normalize_whitespace_keeps_paragraph_breaks() -> None:
    raw = "a  b\t\tc\r\n\r\n\r\n  d \n e\n\n\n\nf "
    assert normalize_whitespace(raw) == "a b c\n\nd\ne\n\nf"
    assert not re.search(r"\n{3,}| {2,}", normalize_whitespace(raw))
