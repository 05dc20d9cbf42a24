"""Ray Serve wrapper of the moderation service: deploys, nothing else."""

from __future__ import annotations

from typing import Any

from ray import serve
from ray.serve import Application

from ragrail.common.models import pick_device
from ragrail.common.serving import note_device, replica_settings, use_cpu_threads
from ragrail.moderation.core import build_moderator
from ragrail.moderation.servicer import ModerationServicer


@serve.deployment(name="ModerationService")
class ModerationDeployment(ModerationServicer):
    def __init__(self, settings: dict[str, Any]) -> None:
        s = replica_settings(settings)
        use_cpu_threads(s.moderation.cpu_threads)
        note_device("moderation", "auto")  # says when a GPU-scheduled replica runs on CPU
        super().__init__(build_moderator(s.moderation, pick_device("auto"), s.models_path))


def build_app(args: dict[str, Any]) -> Application:
    options = replica_settings(args).moderation.deployment
    return ModerationDeployment.options(**options).bind(args)
