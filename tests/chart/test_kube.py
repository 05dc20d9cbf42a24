"""ragrail.kube: the serveConfigV2 mapping the chart implements (tests/chart/test_render.py
checks the chart's rendering equals it)."""

from __future__ import annotations

import re
from importlib import resources

import pytest

from ragrail.common.config import GenerationSettings, Settings, load_settings
from ragrail.common.serving import app_config, default_cpu_threads
from ragrail.kube import DEPLOYMENT_NAMES, config_mapping, serve_config_v2
from ragrail.stack import REPLICA_ENV, SERVICER_FUNCTIONS, SERVICES


def test_deployment_names_are_the_serve_deployment_names() -> None:
    for service in SERVICES:
        source = resources.files("ragrail").joinpath(service, "deployment.py").read_text()
        assert re.findall(r'@serve\.deployment\(name="([^"]+)"', source) == [DEPLOYMENT_NAMES[service]]


def test_packaged_config_maps_to_a_valid_serve_config() -> None:
    from ray.serve.schema import ServeDeploySchema

    settings = load_settings(None)
    config = serve_config_v2(settings)
    ServeDeploySchema.model_validate(config)
    assert config["grpc_options"] == {
        "port": 9000, "grpc_servicer_functions": SERVICER_FUNCTIONS, "request_timeout_s": 120.0,
    }
    assert config["proxy_location"] == "EveryNode" and config["http_options"] == {"host": "0.0.0.0", "port": 8000}
    for service, app in zip(SERVICES, config["applications"], strict=True):
        assert app["name"] == service and app["route_prefix"] == f"/{service}"
        assert app["import_path"] == f"ragrail.{service}.deployment:build_app"
        assert app["runtime_env"] == {"env_vars": REPLICA_ENV}
        assert app["args"] == app_config(config_mapping(settings), service)
        assert set(app["args"]) <= {"data_dir", "models_dir", service}
        [deployment] = app["deployments"]
        assert deployment == {"name": DEPLOYMENT_NAMES[service], **getattr(settings, service).deployment}


def test_args_are_the_config_as_written_and_load_back_the_same() -> None:
    assert config_mapping(Settings()) == {}
    settings = Settings.model_validate({"gateway": {"port": 6000}, "retrieval": {"qdrant_url": "http://q:6334"}})
    args = config_mapping(settings)
    assert args == {"gateway": {"port": 6000}, "retrieval": {"qdrant_url": "http://q:6334"}}
    assert Settings.model_validate(args) == settings  # what a replica rebuilds from args


def test_extra_env_is_added_over_replica_env() -> None:
    config = serve_config_v2(Settings(), extra_env={"HF_HUB_OFFLINE": "0", "HF_HOME": "/models/hf"})
    env = config["applications"][0]["runtime_env"]["env_vars"]
    assert env == {**REPLICA_ENV, "HF_HUB_OFFLINE": "0", "HF_HOME": "/models/hf"}


@pytest.mark.parametrize("key", ["num_replica", "name"])
def test_deployment_keys_serve_does_not_take_are_rejected(key: str) -> None:
    """At load (the config's DeploymentOptions), and again when serveConfigV2 is built."""
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=f"generation.deployment\n.*{key}: Extra inputs are not permitted"):
        Settings.model_validate({"generation": {"deployment": {key: 2}}})
    settings = Settings.model_construct(generation=GenerationSettings.model_construct(deployment={key: 2}))
    with pytest.raises(ValueError, match=f"generation.deployment: not Ray Serve deployment options: {key}"):
        serve_config_v2(settings)


def test_the_config_types_every_serve_deployment_option() -> None:
    """DeploymentOptions and ActorOptions name exactly Serve's options (less `name`, ours to set):
    a new Ray that adds or drops one fails here, not on a cluster."""
    from ray.serve.schema import DeploymentSchema, RayActorOptionsSchema

    from ragrail.common.config import ActorOptions, DeploymentOptions

    assert set(DeploymentOptions.model_fields) == set(DeploymentSchema.model_fields) - {"name"}
    assert set(ActorOptions.model_fields) == set(RayActorOptionsSchema.model_fields)


def test_an_app_rebuilds_its_own_section_from_its_args_alone() -> None:
    full = load_settings(None, models_dir="/models", generation={"max_waiting": 7}, gateway={"port": 6000})
    for service in SERVICES:
        args = app_config(config_mapping(full), service)
        assert "gateway" not in args
        rebuilt = Settings.model_validate(args)  # what replica_settings does, less the library setup
        assert getattr(rebuilt, service) == getattr(full, service)
        assert rebuilt.models_path == full.models_path and rebuilt.qdrant_path == full.qdrant_path


@pytest.mark.parametrize(("limit", "expected"), [(None, None), ("", None), ("1", 1), ("10000", None), ("x", None)])
def test_cpu_threads_default_is_capped_by_the_pods_cpu_limit(limit: str | None, expected: int | None) -> None:
    import os

    cores = len(os.sched_getaffinity(0))
    assert default_cpu_threads(limit) == (cores if expected is None else expected)
