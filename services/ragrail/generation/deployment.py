"""Ray Serve wrapper of the generation service: deploys, nothing else."""

from __future__ import annotations

from typing import Any

from ray import serve
from ray.serve import Application

from ragrail.common.serving import note_device, replica_settings, use_cpu_threads
from ragrail.common.service_metrics import service_metrics
from ragrail.generation.engine import StepStats, build_engine
from ragrail.generation.servicer import GenerationServicer


@serve.deployment(name="GenerationService")
class GenerationDeployment(GenerationServicer):
    def __init__(self, settings: dict[str, Any]) -> None:
        s = replica_settings(settings)
        use_cpu_threads(s.generation.cpu_threads)
        note_device("generation", s.generation.device)  # says when a GPU-scheduled replica runs on CPU
        super().__init__(build_engine(s.generation, s.models_path, observer=_record_step))


def _record_step(step: StepStats) -> None:
    if step.running:
        service_metrics("generation").observe_batch(step.running, method="Generate")


def build_app(args: dict[str, Any]) -> Application:
    options = replica_settings(args).generation.deployment
    return GenerationDeployment.options(**options).bind(args)
