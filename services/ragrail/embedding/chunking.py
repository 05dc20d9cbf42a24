"""Splits documents into chunks sized in the embedding model's own tokens, along their structure.

The embedding model reads at most its window of tokens (256 for MiniLM) and silently
drops the rest, so a chunk sized in characters can lose its end. Here every chunk is
measured with the model's tokenizer and fits the window, special tokens included.

semantic-text-splitter (Rust, tokenizers-aware) does the splitting: it fills each chunk
up to the capacity at the highest semantic level that fits. For Markdown those levels
are sections, then blocks (paragraphs, list items, table rows, code blocks), then
sentences, then words, so a list item or a table row is cut only when it alone exceeds
the capacity; plain text falls back to paragraphs and sentences. What the splitter does
not do is carry context: each chunk gets the path of the headings it sits under
("Tickets and fares > Refunds") as its first line, so a chunk from the middle of a
section still says what it is about, to the embedding and to the generator. Room for
that line is reserved in the capacity. A heading a chunk opens with joins that path
rather than repeat in the body; one further down stays as a line of its title, without
its ``#`` marks, since the body is what citations quote.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ragrail.common.errors import require

_HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t#]*$", re.MULTILINE)
_FENCE = re.compile(r"^[ \t]{0,3}(```|~~~)", re.MULTILINE)
_SEPARATOR = " > "
_HEADING_BUDGET = 48  # most tokens a heading path may take; longer paths keep their last heading
# The splitter's time grows faster than linearly with a text's length (measured: 30k CJK
# characters 1.8 s, 100k 12.9 s), so long documents are split in segments of about this
# many characters first, at a paragraph, line, sentence or space.
_SEGMENT_CHARS = 20_000
_SEGMENT_BREAKS = ("\n\n", "\n", ". ", "。", "! ", "? ", " ")


@dataclass(frozen=True)
class Chunk:
    text: str  # what is embedded and stored: the heading path line, then the body
    heading: str  # "Tickets and fares > Refunds", or "" outside any section
    token_count: int  # tokens of ``text`` with the model's special tokens
    start: int  # character offset of the body in the document


@dataclass(frozen=True)
class _Heading:
    offset: int
    level: int
    title: str


class TokenChunker:
    """Chunks text for one embedding model: its tokenizer, its window."""

    def __init__(self, tokenizer: Any, window: int) -> None:
        """``tokenizer``: the model's transformers fast tokenizer; ``window``: the most
        tokens the model reads, special tokens included."""
        from semantic_text_splitter import MarkdownSplitter

        self._splitter_class = MarkdownSplitter
        backend = tokenizer.backend_tokenizer
        # A private copy without truncation or padding: counts must be the full text's.
        self._tokens = type(backend).from_str(backend.to_str())
        self._tokens.no_truncation()
        self._tokens.no_padding()
        self._specials = int(tokenizer.num_special_tokens_to_add(pair=False))
        self.window = window
        self._splitters: dict[tuple[int, int], Any] = {}

    def count(self, text: str) -> int:
        """Tokens the model sees for ``text``, its special tokens included."""
        return len(self._tokens.encode(text, add_special_tokens=False).ids) + self._specials

    def split(self, text: str, max_tokens: int, overlap_tokens: int, max_chars: int = 8192) -> list[Chunk]:
        """Chunks of at most ``max_tokens`` tokens (capped at the window) and ``max_chars``
        characters, consecutive chunks sharing up to ``overlap_tokens`` tokens of text.

        The character bound catches what tokens alone do not: a run of characters the
        tokenizer reads as one unknown token would otherwise be one enormous chunk."""
        capacity = min(max_tokens, self.window)
        headings = _headings(text)
        reserve = self._heading_reserve(headings)
        body = capacity - self._specials - reserve
        require(body >= 8, f"max_tokens {max_tokens} leaves no room for text (the model's window is {self.window})")
        require(0 <= overlap_tokens < body, f"overlap_tokens must be in [0, {body}) for max_tokens {max_tokens}")
        splitter = self._splitter(body, overlap_tokens)
        chunks: list[Chunk] = []
        for offset, segment in _segments(text, _SEGMENT_CHARS):
            for start, piece in splitter.chunk_indices(segment):
                for at, part in _at_most(start + offset, piece, max_chars):
                    if _only_headings(part):
                        continue  # a heading alone says nothing; the chunks below carry it in their path
                    path, body = _section_of(headings, at, part)
                    chunks.append(self._with_heading(body, path, at, capacity))
        return chunks

    def _splitter(self, capacity: int, overlap: int) -> Any:
        key = (capacity, overlap)
        if key not in self._splitters:
            self._splitters[key] = self._splitter_class.from_huggingface_tokenizer(
                self._tokens, capacity, overlap=overlap
            )
        return self._splitters[key]

    def _heading_reserve(self, headings: list[_Heading]) -> int:
        """Tokens to keep free for the longest heading path line (0 without headings)."""
        if not headings:
            return 0
        longest = 0
        stack: list[_Heading] = []
        for heading in headings:
            stack = [h for h in stack if h.level < heading.level] + [heading]
            longest = max(longest, self.count(_SEPARATOR.join(h.title for h in stack) + "\n\n") - self._specials)
        return min(longest, _HEADING_BUDGET)

    def _with_heading(self, body: str, path: list[str], start: int, capacity: int) -> Chunk:
        """The body under the fullest heading path that fits the capacity."""
        for heading in (_SEPARATOR.join(path), path[-1] if path else ""):
            text = f"{heading}\n\n{body}" if heading else body
            tokens = self.count(text)
            if tokens <= capacity:
                return Chunk(text, heading, tokens, start)
        return Chunk(body, "", self.count(body), start)  # unreachable while the reserve holds the last heading


def _segments(text: str, size: int) -> list[tuple[int, str]]:
    """``text`` in consecutive pieces of at most about ``size`` characters, each cut at
    the latest natural break in its second half, with their offsets."""
    out: list[tuple[int, str]] = []
    start = 0
    while len(text) - start > size:
        window = text[start : start + size]
        cut = next((i + len(b) for b in _SEGMENT_BREAKS if (i := window.rfind(b)) >= size // 2), size)
        out.append((start, text[start : start + cut]))
        start += cut
    out.append((start, text[start:]))
    return out


def _at_most(start: int, piece: str, max_chars: int) -> list[tuple[int, str]]:
    """``piece`` cut into runs of ``max_chars`` characters where it is longer (rare: text
    the tokenizer reads as a few unknown tokens)."""
    if len(piece) <= max_chars:
        return [(start, piece)]
    return [(start + i, piece[i : i + max_chars]) for i in range(0, len(piece), max_chars)]


def _headings(text: str) -> list[_Heading]:
    """Markdown ATX headings (``# Title``) outside fenced code blocks, in order."""
    in_code = _code_test(text)
    return [
        _Heading(m.start(), len(m.group(1)), m.group(2).strip()) for m in _HEADING.finditer(text) if not in_code(m.start())
    ]


def _code_test(text: str) -> Callable[[int], bool]:
    """Whether an offset of ``text`` lies inside a fenced code block: a ```` ``` ```` or ``~~~``
    line opens one, the next line with the same fence closes it (the loader keeps both)."""
    fences: list[int] = []  # offsets where a block opens, closes, opens, ...
    opener = ""
    for m in _FENCE.finditer(text):
        if not opener or m.group(1) == opener:
            opener = "" if opener else m.group(1)
            fences.append(m.start())
    return lambda offset: bisect.bisect_right(fences, offset) % 2 == 1


def _only_headings(piece: str) -> bool:
    return all(_HEADING.fullmatch(line.strip()) for line in piece.splitlines() if line.strip())


def _section_of(headings: list[_Heading], start: int, piece: str) -> tuple[list[str], str]:
    """The heading path of a chunk starting at ``start`` and its body as plain text.

    Headings the piece opens with join the path rather than repeat in the body, and a
    heading further down the body stays as a line of plain title text."""
    stack: list[_Heading] = []
    for heading in headings:
        if heading.offset >= start:
            break
        stack = [h for h in stack if h.level < heading.level] + [heading]
    body = piece.lstrip()
    while opening := _HEADING.match(body):
        level = len(opening.group(1))
        stack = [h for h in stack if h.level < level] + [_Heading(start, level, opening.group(2).strip())]
        body = body[opening.end() :].lstrip()
    return [h.title for h in stack], _plain_headings(body)


def _plain_headings(body: str) -> str:
    """``## Growth`` lines as ``Growth`` (outside code fences): a title, not markup."""
    in_code = _code_test(body)
    return _HEADING.sub(lambda m: m.group(0) if in_code(m.start()) else m.group(2).strip(), body)
