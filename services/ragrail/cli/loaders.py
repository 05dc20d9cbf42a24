"""Turns files on disk into plain-text documents for ingestion.

Only the standard library is used, so the CLI can load a corpus without any
parsing dependency. Markup is reduced to readable text because the text is both
embedded and quoted back to users as citations; markup noise hurts both. Headings
are the one piece of structure kept, as Markdown ATX lines ("## Refunds") from
Markdown and HTML alike: the chunker splits along them and carries each chunk's
heading path ("Tickets and fares > Refunds"), so a passage still says what it is about.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

from ragrail.common.errors import InvalidArgument

SUPPORTED_SUFFIXES = (".txt", ".md", ".markdown", ".html", ".htm")
DEFAULT_MAX_BYTES = 2_000_000

_MARKDOWN_SUFFIXES = (".md", ".markdown")
_HTML_SUFFIXES = (".html", ".htm")


@dataclass(frozen=True)
class LoadedDocument:
    """A document ready for ingestion; ``document_id`` is the file name."""

    document_id: str
    text: str
    source: str


def collect_files(paths: list[Path]) -> list[Path]:
    """Expands directories (recursively, sorted, supported suffixes only) and
    checks single files, so errors surface before anything is ingested.

    Hidden files and folders inside a directory (".git", ".obsidian") are skipped.
    Duplicates are dropped, keeping the first occurrence.
    """
    collected: list[Path] = []
    seen: set[Path] = set()
    for path in paths:
        for file in _expand(path):
            key = file.resolve()
            if key not in seen:
                seen.add(key)
                collected.append(file)
    return collected


def load_document(path: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> LoadedDocument:
    """Reads one supported file as UTF-8 (undecodable bytes replaced) and
    converts it to plain text according to its suffix."""
    _check_file(path)
    size = path.stat().st_size
    if size > max_bytes:
        raise InvalidArgument(f"{path}: file is {size} bytes, larger than the limit of {max_bytes}")
    raw = path.read_bytes().decode("utf-8-sig", errors="replace")  # utf-8-sig drops a BOM
    return LoadedDocument(
        document_id=path.name,
        text=_to_text(raw, path.suffix.lower()),
        source=str(path.resolve()),
    )


def _expand(path: Path) -> list[Path]:
    if not path.exists():
        raise InvalidArgument(f"{path}: no such file or directory")
    if path.is_dir():
        return sorted(
            file
            for file in path.rglob("*")
            if file.is_file()
            and _is_supported(file)
            and not _is_hidden(file.relative_to(path))
        )
    _check_file(path)
    return [path]


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise InvalidArgument(f"{path}: not a regular file")
    if not _is_supported(path):
        supported = ", ".join(SUPPORTED_SUFFIXES)
        raise InvalidArgument(f"{path}: unsupported file type (supported: {supported})")


def _is_supported(path: Path) -> bool:
    return path.suffix.lower() in SUPPORTED_SUFFIXES


def _is_hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def _to_text(raw: str, suffix: str) -> str:
    if suffix in _HTML_SUFFIXES:
        return html_to_text(raw)
    if suffix in _MARKDOWN_SUFFIXES:
        return markdown_to_text(raw)
    return raw


# --- HTML ---------------------------------------------------------------------

# Contents of these never reach a reader of the rendered page.
_SKIPPED_TAGS = frozenset({"script", "style", "head", "noscript", "template"})
# Blocks that read as separate paragraphs, so the chunker may cut between them.
_PARAGRAPH_TAGS = frozenset(
    {"p", "div", "h1", "h2", "h3", "h4", "h5", "h6", "section", "article", "header",
     "footer", "main", "aside", "nav", "blockquote", "pre", "table", "ul", "ol", "dl",
     "figure", "form", "fieldset", "address"}
)
# Elements that only end a line.
_LINE_TAGS = frozenset({"br", "li", "tr", "dt", "dd", "hr", "caption", "figcaption"})
_CELL_TAGS = frozenset({"td", "th"})
_HEADING_TAGS = {f"h{level}": level for level in range(1, 7)}
_EMPTY_HEADING = re.compile(r"^#{1,6}[ \t]*$", re.MULTILINE)
_HTML_SPACE = re.compile(r"\s+")


class _TextExtractor(HTMLParser):
    """Collects visible text; entities are unescaped by ``convert_charrefs``."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self._parts: list[str] = []
        self._skip_depth: dict[str, int] = {}
        self._pre_depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "body":
            # A missing </head> must not hide the whole page.
            self._skip_depth.pop("head", None)
        if tag in _SKIPPED_TAGS:
            self._skip_depth[tag] = self._skip_depth.get(tag, 0) + 1
        elif tag == "pre":
            self._pre_depth += 1
        self._break_for(tag)
        if tag in _HEADING_TAGS and not any(self._skip_depth.values()):
            self._parts.append("#" * _HEADING_TAGS[tag] + " ")

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIPPED_TAGS and self._skip_depth.get(tag):
            self._skip_depth[tag] -= 1
        elif tag == "pre" and self._pre_depth:
            self._pre_depth -= 1
        # Line breaks come from start tags only, so "</li><li>" is one newline
        # rather than a paragraph break.
        if tag not in _LINE_TAGS:
            self._break_for(tag)

    def handle_data(self, data: str) -> None:
        if any(self._skip_depth.values()):
            return
        self._parts.append(data if self._pre_depth else _HTML_SPACE.sub(" ", data))

    def text(self) -> str:
        return _tidy_lines(_EMPTY_HEADING.sub("", "".join(self._parts)))

    def _break_for(self, tag: str) -> None:
        if tag in _PARAGRAPH_TAGS:
            self._parts.append("\n\n")
        elif tag in _LINE_TAGS:
            self._parts.append("\n")
        elif tag in _CELL_TAGS:
            self._parts.append(" ")


def html_to_text(markup: str) -> str:
    """Visible text of an HTML page, with block elements as line breaks and
    ``<h1>``–``<h6>`` as Markdown heading lines."""
    parser = _TextExtractor()
    parser.feed(markup)
    parser.close()
    return parser.text()


# --- Markdown -----------------------------------------------------------------

# A fenced code block, opening to closing fence (or to the end of the text).
_FENCED_BLOCK = re.compile(
    r"^[ \t]{0,3}(?P<fence>```|~~~)[^\n]*\n(?:.*?\n)??(?:[ \t]{0,3}(?P=fence)[ \t]*$|\Z)", re.MULTILINE | re.DOTALL
)
_RULE_LINE = re.compile(r"^[ \t]{0,3}([-*_])([ \t]*\1){2,}[ \t]*$", re.MULTILINE)
_HEADING_MARKS = re.compile(r"^[ \t]{0,3}(#{1,6})[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$", re.MULTILINE)
# "Title" over a line of "=" or "-" (setext): a heading only under a line of text.
_SETEXT_HEADING = re.compile(r"^(?![ \t]*(?:[-*+>#|]|\d+[.)])[ \t])[ \t]{0,3}(\S[^\n]*?)[ \t]*\n[ \t]{0,3}(=+|-+)[ \t]*$", re.MULTILINE)
_IMAGE_OR_LINK = re.compile(r"!?\[([^\]\n]*)\]\([^)\n]*\)")
_STRONG = re.compile(r"(\*\*|__)(?=\S)(.+?)(?<=\S)\1")
_EMPHASIS = re.compile(r"(?<![\w*])\*(?=[^\s*])([^*\n]+?)(?<=\S)\*(?![\w*])")
_UNDERSCORE_EMPHASIS = re.compile(r"(?<![\w_])_(?=[^\s_])([^_\n]+?)(?<=\S)_(?![\w_])")
_INLINE_CODE = re.compile(r"`([^`\n]+)`")


def markdown_to_text(markdown: str) -> str:
    """Markdown with the cheap-to-remove markup stripped: rules, link/image syntax
    (text kept), emphasis and code ticks. Two kinds of structure stay for the chunker:
    headings, as ``# Title`` lines (setext headings too), and code fences, which
    tell a heading from a ``# comment`` in a code block. Underscores inside
    identifiers such as ``snake_case`` are left alone."""
    pieces, done = [], 0
    for block in _FENCED_BLOCK.finditer(markdown):  # kept verbatim; markup is stripped outside them
        pieces += [_strip_markup(markdown[done : block.start()]), block.group()]
        done = block.end()
    pieces.append(_strip_markup(markdown[done:]))
    return _tidy_lines("".join(pieces))


def _strip_markup(text: str) -> str:
    text = _SETEXT_HEADING.sub(_setext_to_atx, text)
    text = _RULE_LINE.sub("", text)
    text = _HEADING_MARKS.sub(r"\1 \2", text)
    text = _EMPTY_HEADING.sub("", text)
    text = _IMAGE_OR_LINK.sub(r"\1", text)
    text = _STRONG.sub(r"\2", text)
    text = _EMPHASIS.sub(r"\1", text)
    text = _UNDERSCORE_EMPHASIS.sub(r"\1", text)
    return _INLINE_CODE.sub(r"\1", text)


def _setext_to_atx(match: re.Match[str]) -> str:
    level = "#" if match.group(2).startswith("=") else "##"
    return f"{level} {match.group(1)}"


# --- shared -------------------------------------------------------------------

_SPACES = re.compile(r"[ \t\f\v\xa0]+")
_BLANK_RUN = re.compile(r"\n{3,}")


def _tidy_lines(text: str) -> str:
    """Collapses spaces, trims every line, and keeps at most one blank line."""
    lines = [_SPACES.sub(" ", line).strip() for line in text.splitlines()]
    return _BLANK_RUN.sub("\n\n", "\n".join(lines)).strip()
