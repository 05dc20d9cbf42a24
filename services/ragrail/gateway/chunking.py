"""Splits document text into overlapping, size-bounded chunks for embedding.

Chunks are cut at the most natural boundary that fits: a paragraph break, else a
sentence end, else whitespace. Only a single word longer than the chunk size is
ever cut mid-word. Consecutive chunks share up to ``overlap_chars`` characters
(aligned to a word start) so a fact that straddles a cut is still retrievable
from one chunk. The output depends only on the inputs, so re-ingesting the same
document yields the same chunk ids.
"""

from __future__ import annotations

import re

from ragrail.common.errors import InvalidArgument

_INLINE_SPACE = re.compile(r"[^\S\n]+")  # any whitespace except newline
_SPACE_AROUND_NEWLINE = re.compile(r" ?\n ?")
_PARAGRAPH_BREAK = re.compile(r"\n{2,}")
_SENTENCE_END = re.compile(r"[.?!](?=\s)")



def normalize_whitespace(text: str) -> str:
    """Collapses spaces/tabs to one space, keeps single newlines, and turns any
    blank-line run into exactly "\\n\\n" so paragraph breaks are recognisable."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _INLINE_SPACE.sub(" ", text)
    text = _SPACE_AROUND_NEWLINE.sub("\n", text)
    text = _PARAGRAPH_BREAK.sub("\n\n", text)
    return text.strip()


def chunk_text(text: str, chunk_chars: int, overlap_chars: int) -> list[str]:
    """Returns the chunks of ``text``, each at most ``chunk_chars`` characters.

    Raises InvalidArgument for a non-positive size or an overlap that is not
    smaller than the size (which could never make progress).
    """
    _validate(chunk_chars, overlap_chars)
    text = normalize_whitespace(text)
    chunks: list[str] = []
    start = 0
    while start < len(text):
        if len(text) - start <= chunk_chars:
            chunks.append(text[start:].strip())
            break
        cut = _find_cut(text, start, chunk_chars, overlap_chars)
        chunks.append(text[start:cut].strip())
        if not text[cut:].strip():
            break
        start = _next_start(text, start, cut, overlap_chars)
    return [chunk for chunk in chunks if chunk]


def _validate(chunk_chars: int, overlap_chars: int) -> None:
    if chunk_chars < 1:
        raise InvalidArgument(f"chunk_chars must be at least 1, got {chunk_chars}")
    if overlap_chars < 0:
        raise InvalidArgument(f"overlap_chars must not be negative, got {overlap_chars}")
    if overlap_chars >= chunk_chars:
        raise InvalidArgument(
            f"overlap_chars ({overlap_chars}) must be smaller than chunk_chars ({chunk_chars})"
        )


def _find_cut(text: str, start: int, chunk_chars: int, overlap_chars: int) -> int:
    """Returns the end (exclusive) of the chunk beginning at ``start``; always in
    (start, start + chunk_chars], so every chunk respects the size bound."""
    window_end = start + chunk_chars
    # A natural boundary must keep at least half the window (no sliver chunks) and
    # lie beyond the overlap (so the next chunk starts later than this one).
    min_cut = start + max(overlap_chars + 1, chunk_chars // 2)
    for finder in (_last_paragraph_break, _last_sentence_end, _last_whitespace):
        cut = finder(text, min_cut, window_end)
        if cut is not None:
            return cut
    # No good boundary: any whitespace beats cutting a word in half.
    cut = _last_whitespace(text, start + 1, window_end)
    return cut if cut is not None else window_end


def _last_paragraph_break(text: str, lo: int, hi: int) -> int | None:
    """Index of the last "\\n\\n" starting in [lo, hi]; the chunk ends before it."""
    index = text.rfind("\n\n", lo, hi + 2)
    return index if lo <= index <= hi else None


def _last_sentence_end(text: str, lo: int, hi: int) -> int | None:
    """Position just after the last ". "/"? "/"! " whose cut falls in [lo, hi]."""
    last: int | None = None
    # The lookahead needs the character after the punctuation, hence hi + 1.
    for match in _SENTENCE_END.finditer(text, max(lo - 1, 0), min(hi + 1, len(text))):
        cut = match.end()
        if lo <= cut <= hi:
            last = cut
    return last


def _last_whitespace(text: str, lo: int, hi: int) -> int | None:
    """Index of the last whitespace character in [lo, hi]."""
    for index in range(min(hi, len(text) - 1), lo - 1, -1):
        if text[index].isspace():
            return index
    return None


def _next_start(text: str, start: int, cut: int, overlap_chars: int) -> int:
    """Start of the following chunk: ``overlap_chars`` before ``cut``, moved
    forward to a word start, and always past ``start`` so the loop terminates."""
    position = max(cut - overlap_chars, start + 1)
    while position < cut and not _is_word_start(text, position):
        position += 1
    while position < len(text) and text[position].isspace():
        position += 1
    return position


def _is_word_start(text: str, position: int) -> bool:
    return not text[position].isspace() and text[position - 1].isspace()
