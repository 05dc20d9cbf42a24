"""Chunks sized in the embedding model's tokens, along the document's structure, with the
real MiniLM tokenizer: no chunk is ever cut by the model's window."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from ragrail.common.errors import InvalidArgument
from ragrail.embedding.chunking import Chunk, TokenChunker

CORPUS = Path(str(resources.files("ragrail").joinpath("data", "sample_corpus")))
WINDOW = 256


@pytest.fixture(scope="module")
def tokenizer(minilm_path: str):  # type: ignore[no-untyped-def]
    return AutoTokenizer.from_pretrained(minilm_path)


@pytest.fixture(scope="module")
def chunker(tokenizer) -> TokenChunker:  # type: ignore[no-untyped-def]
    return TokenChunker(tokenizer, window=WINDOW)


def words_outside_headings(text: str, titles: frozenset[str] = frozenset()) -> list[str]:
    """Words of the lines that are neither ``# heading`` lines nor one of ``titles``."""
    return [
        w for line in text.splitlines() if not line.lstrip().startswith("#") and line.strip() not in titles
        for w in line.split()
    ]


def heading_titles(text: str) -> frozenset[str]:
    return frozenset(line.lstrip("#").strip() for line in text.splitlines() if line.startswith("#"))


def model_tokens(tokenizer, text: str) -> int:  # type: ignore[no-untyped-def]
    """What the model reads, counted by transformers itself (special tokens included)."""
    return len(tokenizer(text, truncation=False)["input_ids"])


@pytest.mark.parametrize("document", sorted(p.name for p in CORPUS.glob("*.md")))
def test_every_chunk_of_the_corpus_fits_the_window_and_the_text_is_all_there(
    document: str, chunker: TokenChunker, tokenizer
) -> None:  # type: ignore[no-untyped-def]
    text = (CORPUS / document).read_text()
    chunks = chunker.split(text, max_tokens=WINDOW, overlap_tokens=0)
    assert len(chunks) > 1
    for chunk in chunks:
        assert chunk.token_count == model_tokens(tokenizer, chunk.text) <= WINDOW
    # Without overlap the bodies, in order, are the document's words, each once (a heading
    # alone is not a chunk: the chunks under it carry it in their heading path; one further
    # down a body is a line of its plain title).
    bodies = [c.text.split("\n\n", 1)[1] if c.heading else c.text for c in chunks]
    assert "\n#" not in "\n" + "\n".join(bodies), "no heading markup reaches a chunk's body"
    titles = heading_titles(text)
    assert words_outside_headings("\n".join(bodies), titles) == words_outside_headings(text)


def test_a_long_plain_text_is_cut_at_sentences_within_the_window(chunker: TokenChunker, tokenizer) -> None:  # type: ignore[no-untyped-def]
    sentences = [f"Train number {i} leaves platform {i % 7} at {i % 24:02d}:15 for Brennhaven." for i in range(200)]
    chunks = chunker.split(" ".join(sentences), max_tokens=64, overlap_tokens=0)
    assert len(chunks) > 10
    assert all(model_tokens(tokenizer, c.text) <= 64 for c in chunks)
    assert all(c.text.endswith(".") for c in chunks), "cut at sentence ends, not mid-sentence"


def test_chunks_carry_the_headings_they_sit_under(chunker: TokenChunker) -> None:
    text = "# Tickets\n\nIntro.\n\n## Refunds\n\n" + " ".join(
        f"Refund rule {i}: a full refund needs {i} days notice." for i in range(60)
    ) + "\n\n## Discounts\n\nChildren travel free."
    chunks = chunker.split(text, max_tokens=80, overlap_tokens=0)
    refunds = [c for c in chunks if "Refund rule" in c.text]
    assert len(refunds) > 2
    assert all(c.heading == "Tickets > Refunds" and c.text.startswith("Tickets > Refunds\n\n") for c in refunds)
    assert not any(c.text.strip().endswith("## Refunds") for c in chunks), "no chunk is a heading alone"
    discounts = next(c for c in chunks if "Children travel free" in c.text)
    assert "Refunds" not in discounts.heading, "a sibling section does not inherit the previous heading"


def test_a_chunk_opening_with_headings_has_them_in_its_path_not_its_body(chunker: TokenChunker) -> None:
    text = "# Guide\n\n## Fares\n\n### Refunds\n\nA refund takes 7 days.\n\n#### Online\n\nUse the app."
    (chunk,) = chunker.split(text, max_tokens=128, overlap_tokens=0)
    assert chunk.heading == "Guide > Fares > Refunds"
    assert chunk.text == "Guide > Fares > Refunds\n\nA refund takes 7 days.\n\nOnline\n\nUse the app."


def test_the_loaded_sample_corpus_gives_chunks_their_section(chunker: TokenChunker) -> None:
    """What `ragrail ingest` sends: the loader keeps Markdown headings for the chunker."""
    from ragrail.cli.loaders import load_document

    text = load_document(CORPUS / "network-and-stations.md").text
    chunks = chunker.split(text, max_tokens=WINDOW, overlap_tokens=32)
    aldergate = next(c for c in chunks if "3. Aldergate" in c.text)
    assert aldergate.heading == "Network and Stations > Valley Line (blue)"


def test_list_items_and_table_rows_are_not_split(chunker: TokenChunker) -> None:
    items = [f"- item {i}: a bicycle space on the {i}th carriage, reservable until noon" for i in range(40)]
    rows = [f"| Station {i} | {i * 3} km | platform {i % 4} |" for i in range(40)]
    text = "## Bikes\n\n" + "\n".join(items) + "\n\n## Stations\n\n| Station | Distance | Platform |\n|---|---|---|\n" + "\n".join(rows)
    chunks = chunker.split(text, max_tokens=96, overlap_tokens=0)
    for chunk in chunks:
        for line in chunk.text.splitlines():
            if line.startswith("- item"):
                assert line in items, f"a list item was cut: {line!r}"
            if line.startswith("| Station ") and "Distance" not in line:
                assert line in rows, f"a table row was cut: {line!r}"


def test_overlap_repeats_text_across_the_cut(chunker: TokenChunker) -> None:
    text = " ".join(f"Sentence number {i} is about the Valley Line." for i in range(80))
    plain = chunker.split(text, max_tokens=64, overlap_tokens=0)
    overlapping = chunker.split(text, max_tokens=64, overlap_tokens=16)
    assert len(overlapping) > len(plain)
    assert any(a.text.split()[-1] in b.text.split()[:40] for a, b in zip(overlapping, overlapping[1:]))


def test_a_heading_in_a_code_block_is_not_a_heading(chunker: TokenChunker) -> None:
    text = "# Guide\n\n```\n# not a heading\n```\n\n" + "Body text about refunds. " * 80
    assert all("not a heading" not in c.heading for c in chunker.split(text, max_tokens=64, overlap_tokens=0))


def test_a_heading_in_a_tilde_code_block_is_not_a_heading(chunker: TokenChunker) -> None:
    text = "# Guide\n\n~~~\n```\n# not a heading\n~~~\n\n## Refunds\n\n" + "Body text about refunds. " * 80
    chunks = chunker.split(text, max_tokens=64, overlap_tokens=0)
    assert all("not a heading" not in c.heading for c in chunks)
    assert chunks[-1].heading == "Guide > Refunds", "a ``` inside a ~~~ block does not keep the block open"


@pytest.mark.parametrize(("max_tokens", "overlap"), [(4, 0), (64, 64), (64, 500)])
def test_sizes_that_cannot_work_are_refused(chunker: TokenChunker, max_tokens: int, overlap: int) -> None:
    with pytest.raises(InvalidArgument):
        chunker.split("Some text. " * 50, max_tokens=max_tokens, overlap_tokens=overlap)


def test_max_tokens_is_capped_at_the_window(chunker: TokenChunker) -> None:
    chunks = chunker.split("A sentence about trains and stations. " * 400, max_tokens=10_000, overlap_tokens=0)
    assert max(c.token_count for c in chunks) <= WINDOW
    assert isinstance(chunks[0], Chunk)


def test_a_long_document_is_split_in_segments_and_loses_nothing(chunker: TokenChunker, tokenizer) -> None:  # type: ignore[no-untyped-def]
    paragraphs = [f"Paragraph {i}: the train from Ostervik to Brennhaven stops at Kelby Harbour." for i in range(600)]
    text = "\n\n".join(paragraphs)  # ~50k characters: three segments for the splitter
    chunks = chunker.split(text, max_tokens=WINDOW, overlap_tokens=0)
    assert all(model_tokens(tokenizer, c.text) <= WINDOW for c in chunks)
    assert " ".join(c.text for c in chunks).split() == text.split()
    assert [c.start for c in chunks] == sorted(c.start for c in chunks)


def test_text_the_tokenizer_reads_as_one_token_is_still_bounded_in_characters(chunker: TokenChunker) -> None:
    chunks = chunker.split("a" * 20_000, max_tokens=WINDOW, overlap_tokens=0, max_chars=8192)
    assert [len(c.text) for c in chunks] == [8192, 8192, 3616]
