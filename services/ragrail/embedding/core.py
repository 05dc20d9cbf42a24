"""Sentence embeddings with a transformers encoder: mean pooling + L2 norm.

This is how sentence-transformers computes all-MiniLM-L6-v2's vectors; doing it
with plain ``AutoModel`` keeps one loading path for any encoder in config.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from transformers import AutoModel, AutoTokenizer

from ragrail.common.errors import require
from ragrail.common.models import dtype_name, pick_dtype, tune_cuda_attention
from ragrail.embedding.chunking import Chunk, TokenChunker

if TYPE_CHECKING:
    from ragrail.common.config import EmbeddingSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmbeddedText:
    vector: list[float]
    truncated: bool
    token_count: int


class TextEmbedder:
    """Embeds batches of texts; bounded in batch size and text length."""

    def __init__(
        self,
        location: str,
        *,
        name: str,
        device: str = "cpu",
        dtype: str = "auto",
        max_batch_size: int = 64,
        max_text_chars: int = 8192,
        max_tokens: int = 256,
        max_document_chars: int = 2_000_000,
    ) -> None:
        self.name = name
        self.device = device
        self.dtype = pick_dtype(dtype, device)
        self.max_batch_size = max_batch_size
        self.max_text_chars = max_text_chars
        tune_cuda_attention(device)
        self.tokenizer = AutoTokenizer.from_pretrained(location)
        self.model = AutoModel.from_pretrained(location, dtype=self.dtype).to(device).eval()
        self.max_tokens = min(max_tokens, self.tokenizer.model_max_length)
        self.max_document_chars = max_document_chars
        self.chunker = TokenChunker(self.tokenizer, window=self.max_tokens)
        self.dimension: int = int(self.model.config.hidden_size)
        self.version = model_fingerprint(location)
        log.info("embedding model %s on %s (%s)", name, device, dtype_name(self.dtype))

    def validate(self, texts: list[str]) -> None:
        require(len(texts) > 0, "texts must not be empty")
        require(
            len(texts) <= self.max_batch_size,
            f"at most {self.max_batch_size} texts per call, got {len(texts)}",
        )
        for i, text in enumerate(texts):
            require(bool(text.strip()), f"texts[{i}] is empty")
            require(
                len(text) <= self.max_text_chars,
                f"texts[{i}] has {len(text)} characters; the limit is {self.max_text_chars}",
            )

    def chunk(self, text: str, max_tokens: int = 0, overlap_tokens: int = 0) -> list[Chunk]:
        """``text`` in chunks that fit this model's window (``max_tokens`` 0: the window)."""
        require(bool(text.strip()), "text is empty")
        require(
            len(text) <= self.max_document_chars,
            f"text has {len(text)} characters; the limit is {self.max_document_chars}",
        )
        return self.chunker.split(text, max_tokens or self.max_tokens, overlap_tokens, max_chars=self.max_text_chars)

    def embed(self, texts: list[str]) -> list[EmbeddedText]:
        self.validate(texts)
        return self.encode(texts)

    def encode(self, texts: list[str]) -> list[EmbeddedText]:
        """Embeds already-validated texts, max_batch_size at a time (a merged
        dynamic batch from several requests may be larger than one request)."""
        out: list[EmbeddedText] = []
        for start in range(0, len(texts), self.max_batch_size):
            out.extend(self._encode_chunk(texts[start : start + self.max_batch_size]))
        return out

    @torch.inference_mode()
    def _encode_chunk(self, texts: list[str]) -> list[EmbeddedText]:
        full_lengths = [len(ids) for ids in self.tokenizer(texts, truncation=False)["input_ids"]]
        batch = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt"
        ).to(self.device)
        # Pool and normalise in float32 whatever the weights' dtype: a bfloat16 sum over
        # 256 tokens keeps ~3 significant digits, and callers expect unit-norm fp32 vectors.
        hidden = self.model(**batch).last_hidden_state.float()
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        vectors = torch.nn.functional.normalize(pooled, p=2, dim=1).cpu()
        used = batch["attention_mask"].sum(dim=1).tolist()
        return [
            EmbeddedText(vector=vec.tolist(), truncated=full > self.max_tokens, token_count=int(n))
            for vec, full, n in zip(vectors, full_lengths, used, strict=True)
        ]


def model_fingerprint(location: str) -> str:
    """A short id of the exact weights' config: a folder's config.json hash, else the location."""
    config = Path(location) / "config.json"
    if config.is_file():
        return hashlib.sha256(config.read_bytes()).hexdigest()[:12]
    return location


def build_embedder(settings: "EmbeddingSettings", models_dir: Path) -> TextEmbedder:
    from ragrail.common.models import pick_device, resolve_model

    return TextEmbedder(
        resolve_model(settings.model, models_dir),
        name=settings.model,
        device=pick_device(settings.device),
        dtype=settings.dtype,
        max_batch_size=settings.max_batch_size,
        max_text_chars=settings.max_text_chars,
        max_tokens=settings.max_tokens,
        max_document_chars=settings.max_document_chars,
    )
