"""Shared pieces of the Ray Serve wrappers (the only modules that import ray)."""

from __future__ import annotations

import logging
import os
from typing import Any

from ragrail.common.config import Settings


QDRANT_API_KEY_ENV = "RAGRAIL_QDRANT_API_KEY"


def replica_settings(args: dict[str, Any]) -> Settings:
    """Settings arrive in a replica as a plain dict (what serveConfigV2 args hold too).

    The Qdrant API key may instead come from the environment (a Kubernetes
    Secret), so it never sits in the RayService object or a ConfigMap.
    """
    quiet_libraries()
    settings = Settings.model_validate(args)
    key = os.environ.get(QDRANT_API_KEY_ENV)
    if key and not settings.retrieval.qdrant_api_key:
        retrieval = settings.retrieval.model_copy(update={"qdrant_api_key": key})
        settings = settings.model_copy(update={"retrieval": retrieval})
    return settings


def use_cpu_threads(threads: int | None) -> int:
    """Sets torch's intra-op threads for this replica and returns the number.

    Ray exports OMP_NUM_THREADS=1 to an actor with a fractional num_cpus (the
    local stack's defaults), so torch ran every model replica on one thread.
    Unset means every core the process may run on, what torch picks outside Ray.
    """
    import torch

    affinity = getattr(os, "sched_getaffinity", None)  # Linux; elsewhere every core
    count = threads or (len(affinity(0)) if affinity else os.cpu_count() or 1)
    torch.set_num_threads(count)
    return count


def quiet_libraries() -> None:
    """Library chatter (progress bars, tokenizer length warnings) is noise in service logs."""
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    logging.getLogger("httpx").setLevel(logging.WARNING)
