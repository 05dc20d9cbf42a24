"""Ray Serve wrapper of the embedding service: deploys, nothing else."""

from __future__ import annotations

from typing import Any

from ray import serve
from ray.serve import Application

from ragrail.common.service_metrics import service_metrics
from ragrail.common.serving import note_device, replica_settings, use_cpu_threads
from ragrail.embedding.core import EmbeddedText, build_embedder
from ragrail.embedding.servicer import EmbeddingServicer


@serve.deployment(name="EmbeddingService")
class EmbeddingDeployment(EmbeddingServicer):
    def __init__(self, settings: dict[str, Any]) -> None:
        s = replica_settings(settings)
        use_cpu_threads(s.embedding.cpu_threads)
        note_device("embedding", s.embedding.device)  # says when a GPU-scheduled replica runs on CPU
        super().__init__(build_embedder(s.embedding, s.models_path))
        self._encode_batched.set_max_batch_size(s.embedding.batch_max_requests)
        self._encode_batched.set_batch_wait_timeout_s(s.embedding.batch_wait_s)

    async def encode(self, texts: list[str]) -> list[EmbeddedText]:
        return await self._encode_batched(texts)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.02)  # replaced from settings in __init__
    async def _encode_batched(self, requests: list[list[str]]) -> list[list[EmbeddedText]]:
        """Concurrent Embed calls share one forward pass; each gets its own slice back."""
        flat = [text for texts in requests for text in texts]
        embedded = await service_metrics("embedding").to_thread(self._embedder.encode, flat, batch_size=len(flat))
        out, start = [], 0
        for texts in requests:
            out.append(embedded[start : start + len(texts)])
            start += len(texts)
        return out


def build_app(args: dict[str, Any]) -> Application:
    options = replica_settings(args).embedding.deployment
    return EmbeddingDeployment.options(**options).bind(args)
