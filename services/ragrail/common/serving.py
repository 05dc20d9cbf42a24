"""Shared pieces of the Ray Serve wrappers (the only modules that import ray)."""

from __future__ import annotations

import logging
import os
from typing import Any

from ragrail.common.config import Settings

log = logging.getLogger("ragrail.serving")

QDRANT_API_KEY_ENV = "RAGRAIL_QDRANT_API_KEY"
# Whole CPUs of the pod's limit (Kubernetes downward API, rounded up): a container sees every
# core of its node, so torch would start one thread per node core and be throttled by the limit.
CPU_LIMIT_ENV = "RAGRAIL_CPU_LIMIT"
# What every Serve application reads besides its own section (models_path, qdrant_path).
SHARED_KEYS = ("data_dir", "models_dir")


def app_config(config: dict[str, Any], service: str) -> dict[str, Any]:
    """The part of a config mapping one Serve application reads: its section and SHARED_KEYS.

    Passed as the application's args (serveConfigV2), so a change to another service's or
    the gateway's options leaves this application's config, and so its replicas, untouched.
    The other sections take their defaults in the replica, where nothing reads them.
    """
    return {key: config[key] for key in (*SHARED_KEYS, service) if key in config}


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
    Unset means every core the process may run on, what torch picks outside Ray, capped
    by the container's CPU limit when the pod exports it (CPU_LIMIT_ENV).
    """
    import torch

    count = threads or default_cpu_threads(os.environ.get(CPU_LIMIT_ENV))
    torch.set_num_threads(count)
    return count


def note_device(service: str, setting: str) -> str:
    """The device ``setting`` resolves to in this replica, saying so when Ray scheduled the replica
    onto GPUs that CUDA cannot see (a logical GPU: a node started with --num-gpus and no device or
    driver, or a CPU build of torch): ``auto`` then runs the model on CPU, and the log says why."""
    import ray

    from ragrail.common.models import pick_device

    device = pick_device(setting)
    gpu_ids = ray.get_gpu_ids() if ray.is_initialized() else []
    if gpu_ids and not device.startswith("cuda"):
        log.warning(
            "%s: this replica holds GPU %s (Ray's ids) but CUDA is not available in it (no device or driver, "
            "or a CPU build of torch): device %s runs the model on %s",
            service, ",".join(str(i) for i in gpu_ids), setting, device,
        )
    elif gpu_ids:
        log.warning("%s: this replica holds GPU %s (Ray's ids): device %s runs the model on %s",
                    service, ",".join(str(i) for i in gpu_ids), setting, device)
    return device


def default_cpu_threads(cpu_limit: str | None) -> int:
    """Cores this process may run on, at most the pod's CPU limit (whole CPUs) when known."""
    affinity = getattr(os, "sched_getaffinity", None)  # Linux; elsewhere every core
    cores = len(affinity(0)) if affinity else os.cpu_count() or 1
    try:
        limit = int(cpu_limit or 0)
    except ValueError:
        limit = 0  # not a whole number: ignore it rather than fail the replica
    return min(cores, limit) if limit > 0 else cores


def quiet_libraries() -> None:
    """Library chatter (progress bars, tokenizer length warnings) is noise in service logs."""
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    logging.getLogger("httpx").setLevel(logging.WARNING)
