"""The local stack: a private Ray cluster with the four services on Serve's gRPC proxy.

The same application builders (``ragrail.<service>.deployment:build_app``) are
what a RayService's serveConfigV2 points at in Kubernetes.
"""

from __future__ import annotations

import importlib
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ragrail.common.config import Settings
from ragrail.common.errors import FailedPrecondition

log = logging.getLogger(__name__)

SERVICES = ("embedding", "retrieval", "generation", "moderation")
# Import paths Serve's proxy uses to register each generated servicer.
SERVICER_FUNCTIONS = [
    "ragrail.embedding.v1.embedding_pb2_grpc.add_EmbeddingServiceServicer_to_server",
    "ragrail.retrieval.v1.retrieval_pb2_grpc.add_RetrievalServiceServicer_to_server",
    "ragrail.generation.v1.generation_pb2_grpc.add_GenerationServiceServicer_to_server",
    "ragrail.moderation.v1.moderation_pb2_grpc.add_ModerationServiceServicer_to_server",
]
# Replicas need no model hub, ever: weights come from packages or folders.
REPLICA_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def app_import_path(service: str) -> str:
    return f"ragrail.{service}.deployment:build_app"


def build_app(service: str, args: dict[str, Any]) -> Any:
    module, _, attr = app_import_path(service).partition(":")
    return getattr(importlib.import_module(module), attr)(args)


@dataclass
class LocalStack:
    """A Ray cluster this process started and owns; stop() ends all of it."""

    settings: Settings
    temp_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="ragrail-ray-")))
    started: bool = False

    def start(self, timeout_s: float = 300.0) -> None:
        import ray
        from ray import serve
        from ray.serve.config import HTTPOptions, gRPCOptions

        s = self.settings.serve
        os.environ.update(REPLICA_ENV)
        ray.init(
            address="local",  # never join someone else's cluster
            num_cpus=s.num_cpus,
            include_dashboard=False,
            _temp_dir=str(self.temp_dir),
            runtime_env={"env_vars": REPLICA_ENV},
            logging_level=logging.WARNING,
            log_to_driver=False,
            configure_logging=True,
        )
        self.started = True
        serve.start(
            http_options=HTTPOptions(host=s.host, port=s.http_port),
            grpc_options=gRPCOptions(
                port=s.grpc_port,
                grpc_servicer_functions=SERVICER_FUNCTIONS,
                request_timeout_s=s.request_timeout_s,
            ),
            logging_config={"enable_access_log": False, "log_level": "WARNING"},
        )
        self.deploy()
        self.wait_until_running(timeout_s)

    def deploy(self) -> None:
        from ray import serve
        from ray.serve.api import RunTarget

        args = self.settings.model_dump(mode="json")
        targets = [
            RunTarget(build_app(name, args), name=name, route_prefix=f"/{name}") for name in SERVICES
        ]
        serve.run_many(targets, wait_for_applications_running=False)

    def wait_until_running(self, timeout_s: float) -> None:
        """Waits for every app; a replica that cannot be scheduled is named, not waited on forever."""
        deadline = time.monotonic() + timeout_s
        while True:
            statuses = service_statuses()
            failed = {k: v for k, v in statuses.items() if v.startswith("DEPLOY_FAILED")}
            if failed:
                raise FailedPrecondition(f"services failed to deploy: {failed}")
            if all(v == "RUNNING" for v in statuses.values()) and len(statuses) == len(SERVICES):
                return
            if time.monotonic() > deadline:
                raise FailedPrecondition(f"services not running after {timeout_s:.0f} s: {statuses}")
            time.sleep(0.5)

    def stop(self) -> None:
        if not self.started:
            return
        import ray
        from ray import serve

        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            self.started = False
            shutil.rmtree(self.temp_dir, ignore_errors=True)

    @property
    def log_dir(self) -> Path:
        return self.temp_dir / "session_latest" / "logs"


def service_statuses() -> dict[str, str]:
    """One line per app: RUNNING, or the deployment status and message that explain why not."""
    from ray import serve

    out: dict[str, str] = {}
    for name, app in serve.status().applications.items():
        if app.status == "RUNNING":
            out[name] = "RUNNING"
            continue
        details = [
            f"{dep_name}: {dep.status} {dep.message}".strip()
            for dep_name, dep in app.deployments.items()
            if dep.status != "HEALTHY"
        ]
        out[name] = f"{app.status} ({'; '.join(details) or app.message})"
    return out
