"""The embedding core's dtype: bfloat16 weights give the float32 vectors, to 1e-3 in cosine."""

from __future__ import annotations

import logging
import math
from importlib import resources
from pathlib import Path

import pytest
import torch

from ragrail.common.config import EmbeddingSettings
from ragrail.embedding.core import EmbeddedText, TextEmbedder, build_embedder

CORPUS = Path(str(resources.files("ragrail").joinpath("data", "sample_corpus")))


def corpus_paragraphs() -> list[str]:
    """Every paragraph of the sample corpus (headings included), shortest first: batches
    of similar lengths pad little (bfloat16 matmuls are ~10x slower than float32 on CPU)."""
    paragraphs = {p.strip() for f in sorted(CORPUS.glob("*.md")) for p in f.read_text().split("\n\n")}
    return sorted((p for p in paragraphs if p), key=lambda p: (len(p), p))


@pytest.fixture(scope="module")
def paragraphs() -> list[str]:
    texts = corpus_paragraphs()
    assert len(texts) > 50, "the sample corpus should give many paragraphs"
    return texts


def _embed(minilm_path: str, dtype: str, texts: list[str]) -> tuple[TextEmbedder, list[EmbeddedText]]:
    embedder = TextEmbedder(minilm_path, name="all-MiniLM-L6-v2", device="cpu", dtype=dtype, max_batch_size=8)
    return embedder, embedder.encode(texts)


@pytest.fixture(scope="module")
def fp32(minilm_path: str, paragraphs: list[str]) -> tuple[TextEmbedder, list[EmbeddedText]]:
    return _embed(minilm_path, "float32", paragraphs)


@pytest.fixture(scope="module")
def bf16(minilm_path: str, paragraphs: list[str]) -> tuple[TextEmbedder, list[EmbeddedText]]:
    return _embed(minilm_path, "bfloat16", paragraphs)


def _assert_unit_fp32_lists(embedded: list[EmbeddedText], dimension: int) -> None:
    for e in embedded:
        assert isinstance(e.vector, list) and len(e.vector) == dimension
        assert all(type(x) is float for x in e.vector)
        assert torch.tensor(e.vector, dtype=torch.float64).float().double().tolist() == e.vector  # fp32 values
        assert math.sqrt(sum(x * x for x in e.vector)) == pytest.approx(1.0, abs=1e-5)


def test_bfloat16_vectors_match_float32_ones(
    paragraphs: list[str],
    fp32: tuple[TextEmbedder, list[EmbeddedText]],
    bf16: tuple[TextEmbedder, list[EmbeddedText]],
) -> None:
    (full, full_vectors), (half, half_vectors) = fp32, bf16
    # The setting reached the weights (else the comparison below would be vacuous).
    assert (full.model.dtype, half.model.dtype) == (torch.float32, torch.bfloat16)
    assert len(full_vectors) == len(half_vectors) == len(paragraphs)
    _assert_unit_fp32_lists(half_vectors, half.dimension)
    _assert_unit_fp32_lists(full_vectors, full.dimension)
    a = torch.tensor([e.vector for e in full_vectors], dtype=torch.float64)
    b = torch.tensor([e.vector for e in half_vectors], dtype=torch.float64)
    cosines = (a * b).sum(dim=1)
    worst = int(cosines.argmin())
    assert cosines.min() >= 0.999, f"cosine {float(cosines[worst]):.5f} for {paragraphs[worst]!r}"
    assert not torch.equal(a, b), "bfloat16 weights should change the vectors a little"
    assert [e.token_count for e in half_vectors] == [e.token_count for e in full_vectors]


def test_auto_on_cpu_is_bfloat16_only_where_the_cpu_has_it(minilm_path: str, caplog: pytest.LogCaptureFixture) -> None:
    from ragrail.common.models import _cpu_has_native_bf16

    auto = torch.bfloat16 if _cpu_has_native_bf16() else torch.float32  # AMX / AVX512-BF16
    with caplog.at_level(logging.INFO, logger="ragrail.embedding.core"):
        embedder = TextEmbedder(minilm_path, name="all-MiniLM-L6-v2")
    assert (embedder.device, embedder.dtype, embedder.model.dtype) == ("cpu", auto, auto)
    assert f"embedding model all-MiniLM-L6-v2 on cpu ({str(auto).removeprefix('torch.')})" in caplog.messages


def test_the_builder_passes_dtype_and_logs_it(
    minilm_path: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = EmbeddingSettings(model=minilm_path, device="cpu", dtype="bfloat16", max_batch_size=4)
    with caplog.at_level(logging.INFO, logger="ragrail.embedding.core"):
        embedder = build_embedder(settings, tmp_path)
    assert (embedder.dtype, embedder.model.dtype, embedder.max_batch_size) == (torch.bfloat16, torch.bfloat16, 4)
    assert [m for m in caplog.messages if m.startswith("embedding model")] == [
        f"embedding model {minilm_path} on cpu (bfloat16)"
    ]
    (vector,) = embedder.embed(["refund rules"])
    _assert_unit_fp32_lists([vector], embedder.dimension)


def test_embedding_dtype_defaults_to_auto() -> None:
    assert EmbeddingSettings().dtype == "auto"
