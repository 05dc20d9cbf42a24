"""Shared pieces of the Ray Serve wrappers (the only modules that import ray)."""

from __future__ import annotations

import logging
from typing import Any

from ragrail.common.config import Settings


def replica_settings(args: dict[str, Any]) -> Settings:
    """Settings arrive in a replica as a plain dict (what serveConfigV2 args hold too)."""
    quiet_libraries()
    return Settings.model_validate(args)


def quiet_libraries() -> None:
    """Library chatter (progress bars, tokenizer length warnings) is noise in service logs."""
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    logging.getLogger("httpx").setLevel(logging.WARNING)
