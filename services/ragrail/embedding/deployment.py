"""Ray Serve wrapper of the embedding service: deploys, nothing else."""

from __future__ import annotations

from typing import Any

from ray import serve
from ray.serve import Application

from ragrail.common.serving import replica_settings
from ragrail.embedding.core import build_embedder
from ragrail.embedding.servicer import EmbeddingServicer


@serve.deployment(name="EmbeddingService")
class EmbeddingDeployment(EmbeddingServicer):
    def __init__(self, settings: dict[str, Any]) -> None:
        s = replica_settings(settings)
        super().__init__(build_embedder(s.embedding, s.models_path))


def build_app(args: dict[str, Any]) -> Application:
    options = replica_settings(args).embedding.deployment
    return EmbeddingDeployment.options(**options).bind(args)
