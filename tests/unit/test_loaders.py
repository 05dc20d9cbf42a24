"""Unit tests for ragrail.cli.loaders, plus sanity checks on the sample corpus."""

from __future__ import annotations

from pathlib import Path

import pytest

import ragrail
from ragrail.cli.loaders import SUPPORTED_SUFFIXES, collect_files, load_document
from ragrail.common.errors import InvalidArgument
from ragrail.gateway.chunking import chunk_text
from tests.unit.sample_questions import ANSWERABLE, OFF_TOPIC

SAMPLE_CORPUS = Path(ragrail.__file__).parent / "data" / "sample_corpus"


def _write(path: Path, content: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content, encoding="utf-8")
    return path


def test_txt_is_loaded_verbatim(tmp_path: Path) -> None:
    path = _write(tmp_path / "notes.txt", "Plain text\n\nwith two paragraphs.")
    document = load_document(path)
    assert document.document_id == "notes.txt"
    assert document.text == "Plain text\n\nwith two paragraphs."
    assert document.source == str(path.resolve())
    assert Path(document.source).is_absolute()


@pytest.mark.parametrize("suffix", [".md", ".markdown"])
def test_markdown_markup_is_stripped_but_headings_and_code_fences_stay(tmp_path: Path, suffix: str) -> None:
    markdown = (
        "# Ray Serve #\n\n"
        "Read [the guide](https://example.com/guide) and **bold** *words*.\n\n"
        "```python\n# install first\nprint('hi')\n```\n\n"
        "## Deploy\nKeep snake_case_names and `inline code`.\n\n---\n\nThe end."
    )
    text = load_document(_write(tmp_path / f"ray-serve{suffix}", markdown)).text
    assert text.startswith("# Ray Serve\n\n"), "a heading stays a heading line, its closing #s dropped"
    assert "Read the guide and bold words." in text
    assert "```python\n# install first\nprint('hi')\n```" in text, "a code block is kept whole, fences too"
    assert "](" not in text and "**" not in text and "---" not in text
    assert "\n## Deploy\n" in text
    assert "snake_case_names" in text and "inline code" in text and "`inline" not in text


def test_markdown_setext_headings_become_heading_lines(tmp_path: Path) -> None:
    markdown = "Fares\n=====\n\nIntro.\n\nRefunds\n-------\n\nBody.\n\n- an item\n---\n\nEnd."
    text = load_document(_write(tmp_path / "fares.md", markdown)).text
    assert text.splitlines()[0] == "# Fares"
    assert "\n## Refunds\n" in text
    assert "- an item" in text and "## - an item" not in text, "a list item over a rule is not a heading"


def test_a_hash_line_in_a_code_block_is_not_made_a_heading(tmp_path: Path) -> None:
    text = load_document(_write(tmp_path / "code.md", "Intro.\n\n~~~\n# comment **kept**\n~~~\n")).text
    assert "~~~\n# comment **kept**\n~~~" in text


@pytest.mark.parametrize("suffix", [".html", ".htm"])
def test_html_drops_script_style_head_and_unescapes(tmp_path: Path, suffix: str) -> None:
    page = (
        "<html><head><title>Hidden title</title><style>p { color: red }</style></head>"
        "<body><h1>Fares &amp; tickets</h1><p>Price:&nbsp;&euro;4 &lt;per trip&gt;</p>"
        "<script>var s = '<p>not text</p>';</script>"
        "<ul><li>one</li><li>two</li></ul>line<br>break</body></html>"
    )
    text = load_document(_write(tmp_path / f"page{suffix}", page)).text
    assert "Hidden title" not in text
    assert "color" not in text
    assert "not text" not in text and "var s" not in text
    assert "# Fares & tickets" in text.splitlines(), "an <h1> becomes a heading line"
    assert "Price: €4 <per trip>" in text
    assert "one\ntwo" in text
    assert "line\nbreak" in text
    assert text.index("Fares") < text.index("Price")
    assert "\n" in text[text.index("tickets") : text.index("Price")]


def test_html_without_closing_head_keeps_body(tmp_path: Path) -> None:
    page = "<head><title>t</title><body><p>visible text</p>"
    assert load_document(_write(tmp_path / "p.html", page)).text == "visible text"


def test_invalid_utf8_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "bad.txt"
    path.write_bytes(b"caf\xe9 ok")
    assert load_document(path).text == "caf\ufffd ok"


def test_oversize_file_is_rejected(tmp_path: Path) -> None:
    path = _write(tmp_path / "big.txt", "x" * 101)
    with pytest.raises(InvalidArgument, match="big.txt"):
        load_document(path, max_bytes=100)
    assert load_document(path, max_bytes=101).text == "x" * 101


def test_load_rejects_unsupported_suffix(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="data.pdf"):
        load_document(_write(tmp_path / "data.pdf", "%PDF"))


def test_collect_expands_directories_recursively_and_sorted(tmp_path: Path) -> None:
    for name in ["b.md", "a.txt", "sub/c.html", "sub/deeper/d.htm", "e.markdown", "skip.pdf"]:
        _write(tmp_path / "docs" / name, "x")
    _write(tmp_path / "docs" / ".hidden" / "h.md", "x")
    files = collect_files([tmp_path / "docs"])
    relative = [file.relative_to(tmp_path / "docs").as_posix() for file in files]
    assert relative == ["a.txt", "b.md", "e.markdown", "sub/c.html", "sub/deeper/d.htm"]


def test_collect_keeps_explicit_files_and_drops_duplicates(tmp_path: Path) -> None:
    single = _write(tmp_path / "one.txt", "x")
    _write(tmp_path / "dir" / "two.md", "x")
    files = collect_files([single, tmp_path / "dir", single])
    assert [file.name for file in files] == ["one.txt", "two.md"]


def test_collect_rejects_missing_path(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="nope.md") as caught:
        collect_files([tmp_path / "nope.md"])
    assert "\n" not in caught.value.message


def test_collect_rejects_unsupported_single_file(tmp_path: Path) -> None:
    path = _write(tmp_path / "slides.pptx", "x")
    with pytest.raises(InvalidArgument, match="slides.pptx") as caught:
        collect_files([path])
    assert "\n" not in caught.value.message


def test_supported_suffixes() -> None:
    assert SUPPORTED_SUFFIXES == (".txt", ".md", ".markdown", ".html", ".htm")


def _sample_files() -> list[Path]:
    return collect_files([SAMPLE_CORPUS])


def test_sample_corpus_has_five_markdown_documents() -> None:
    files = _sample_files()
    assert len(files) == 5
    assert all(file.suffix == ".md" for file in files)
    assert sorted(path.name for path in SAMPLE_CORPUS.iterdir()) == [f.name for f in files]


@pytest.mark.parametrize("path", _sample_files(), ids=lambda path: path.name)
def test_sample_document_loads_into_several_chunks(path: Path) -> None:
    document = load_document(path)
    words = len(document.text.split())
    assert 300 <= words <= 700
    chunks = chunk_text(document.text, chunk_chars=800, overlap_chars=120)
    assert len(chunks) >= 2
    assert all(len(chunk) <= 800 for chunk in chunks)


@pytest.mark.parametrize("question,document_id,expected", ANSWERABLE)
def test_answerable_questions_match_the_corpus(
    question: str, document_id: str, expected: str
) -> None:
    document = load_document(SAMPLE_CORPUS / document_id)
    assert expected in document.text
    chunks = chunk_text(document.text, chunk_chars=800, overlap_chars=120)
    assert any(expected in chunk for chunk in chunks)


def test_question_sets_are_distinct() -> None:
    assert len(ANSWERABLE) == 5
    assert {document_id for _, document_id, _ in ANSWERABLE} == {f.name for f in _sample_files()}
    assert len(OFF_TOPIC) == 5 and len(set(OFF_TOPIC)) == 5
