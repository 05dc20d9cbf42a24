"""Ray Serve wrapper of the retrieval service: deploys, nothing else."""

from __future__ import annotations

from typing import Any

from ray import serve
from ray.serve import Application

from ragrail.common.serving import replica_settings
from ragrail.retrieval.core import build_store
from ragrail.retrieval.servicer import RetrievalServicer


@serve.deployment(name="RetrievalService")
class RetrievalDeployment(RetrievalServicer):
    def __init__(self, settings: dict[str, Any]) -> None:
        s = replica_settings(settings)
        super().__init__(build_store(s.retrieval, s.qdrant_path))

    def __del__(self) -> None:
        # Releases the embedded store's folder lock for the next replica.
        self._store.close()


def build_app(args: dict[str, Any]) -> Application:
    options = replica_settings(args).retrieval.deployment
    return RetrievalDeployment.options(**options).bind(args)
