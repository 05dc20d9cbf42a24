"""The RayService ``serveConfigV2`` that runs the four services on KubeRay, from ragrail settings.

This is the mapping the Helm chart (``deploy/helm/ragrail/templates/rayservice.yaml``)
implements in templates; tests render the chart and compare its ``serveConfigV2``
with :func:`serve_config_v2` of the same config, so the two cannot drift apart.

The mapping, for each service in :data:`ragrail.stack.SERVICES`:

- one Serve application ``name=<service>``, ``route_prefix=/<service>``,
  ``import_path=ragrail.<service>.deployment:build_app`` (what the local stack runs);
- ``args``: the service's own section of the ragrail config as written, plus the keys
  every service shares (:func:`ragrail.common.serving.app_config`; keys left unset keep the
  defaults the replicas apply themselves), so changing one service's options redeploys that
  application alone and a gateway-only change leaves the RayService untouched;
- ``deployments``: one entry, named like the ``@serve.deployment`` class
  (:data:`DEPLOYMENT_NAMES`), carrying the service's ``deployment`` block. That block is
  already in Ray Serve's vocabulary (``num_replicas``, ``max_ongoing_requests``,
  ``autoscaling_config``, ``ray_actor_options``...), so it is passed as is; a key Serve's
  ``DeploymentSchema`` does not know is rejected here instead of being dropped silently;
- ``runtime_env.env_vars``: :data:`ragrail.stack.REPLICA_ENV`, plus ``extra_env``.

Cluster-wide: the gRPC proxy listens on ``serve.grpc_port`` with
:data:`ragrail.stack.SERVICER_FUNCTIONS` (the head container names that port
``serve-grpc`` so KubeRay exposes it on ``<rayservice>-serve-svc``), the HTTP proxy on
``serve.http_port`` (KubeRay's readiness checks use it), both on every node.
"""

from __future__ import annotations

from typing import Any

from ragrail.common.config import Settings
from ragrail.common.serving import app_config
from ragrail.stack import FAST_PATH_ENV, REPLICA_ENV, SERVICER_FUNCTIONS, SERVICES, app_import_path

# The names given by @serve.deployment(name=...) in ragrail.<service>.deployment.
DEPLOYMENT_NAMES = {
    "embedding": "EmbeddingService",
    "retrieval": "RetrievalService",
    "generation": "GenerationService",
    "moderation": "ModerationService",
}
# Same as the local stack (ragrail.stack.LocalStack.start).
LOGGING_CONFIG = {"enable_access_log": False, "log_level": "WARNING"}
# Proxies listen on all of a pod's interfaces; by default (serve.proxy_location) on every node so
# any pod can take traffic.
PROXY_HOST = "0.0.0.0"
PROXY_LOCATION = "EveryNode"


def config_mapping(settings: Settings) -> dict[str, Any]:
    """The config as written: the keys that were set, as JSON-able values."""
    return settings.model_dump(mode="json", exclude_unset=True)


def deployment_options(service: str, block: dict[str, Any]) -> dict[str, Any]:
    """A service's ``deployment`` block as a serveConfigV2 deployment entry."""
    from ray.serve.schema import DeploymentSchema  # the one place this module touches Ray

    # `name` is Serve's too, but it is ours to set: it must match the @serve.deployment class.
    allowed = set(DeploymentSchema.model_fields) - {"name"}
    unknown = sorted(set(block) - allowed)
    if unknown:
        raise ValueError(f"{service}.deployment: not Ray Serve deployment options: {', '.join(unknown)}")
    return {"name": DEPLOYMENT_NAMES[service], **block}


def serve_config_v2(
    settings: Settings, extra_env: dict[str, str] | None = None, proxy_host: str = PROXY_HOST
) -> dict[str, Any]:
    """The RayService ``spec.serveConfigV2`` (as a mapping; the CRD holds it as YAML text).

    ``ragrail up --cluster`` deploys the same mapping with ``proxy_host`` = ``serve.host``.
    """
    args = config_mapping(settings)
    env_vars = {**REPLICA_ENV, **(extra_env or {})}
    applications = []
    for service in SERVICES:
        block = getattr(settings, service).deployment
        applications.append(
            {
                "name": service,
                "route_prefix": f"/{service}",
                "import_path": app_import_path(service),
                "runtime_env": {"env_vars": env_vars},
                "args": app_config(args, service),
                "deployments": [deployment_options(service, dict(block))],
            }
        )
    return {
        "proxy_location": settings.serve.proxy_location,
        "http_options": {"host": proxy_host, "port": settings.serve.http_port},
        "grpc_options": {
            "port": settings.serve.grpc_port,
            "grpc_servicer_functions": list(SERVICER_FUNCTIONS),
            "request_timeout_s": settings.serve.request_timeout_s,
        },
        "logging_config": dict(LOGGING_CONFIG),
        "applications": applications,
    }


def chart_constants() -> dict[str, Any]:
    """What the chart needs from the code and cannot import: written to the chart's
    ``files/serve.yaml`` by ``scripts/sync_chart_config.py`` (checked by tests/chart)."""
    return {
        "services": [
            {"name": s, "import_path": app_import_path(s), "deployment_name": DEPLOYMENT_NAMES[s]}
            for s in SERVICES
        ],
        "grpc_servicer_functions": list(SERVICER_FUNCTIONS),
        "replica_env": dict(REPLICA_ENV),
        "fast_path_env": dict(FAST_PATH_ENV),
        "logging_config": dict(LOGGING_CONFIG),
        "proxy_location": PROXY_LOCATION,
        "proxy_host": PROXY_HOST,
    }
