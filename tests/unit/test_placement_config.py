"""Placement options of a service's `deployment` block, checked at load (ragrail.common.config).

Ray 2.60 checks most of these only when it deploys, and a resource no node offers never: the
replica stays pending. The config refuses what cannot work before anything starts.
"""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from ragrail.common.config import DeploymentOptions, Settings, deployment_options, load_settings


def _load(deployment: dict, service: str = "generation") -> Settings:
    return Settings.model_validate({service: {"deployment": deployment}})


def _refused(deployment: dict, *needles: str, service: str = "generation") -> str:
    with pytest.raises(ValidationError) as caught:
        _load(deployment, service)
    message = str(caught.value)
    assert f"{service}.deployment" in message
    for needle in needles:
        assert needle in message, message
    return message


def test_a_gpu_profile_with_every_placement_option_loads_as_written() -> None:
    block = {
        "autoscaling_config": {"min_replicas": 1, "max_replicas": 4},
        "max_replicas_per_node": 1,
        "ray_actor_options": {
            "num_cpus": 0.5,
            "num_gpus": 0.25,  # fractional: replicas share one device
            "accelerator_type": "H100",
            "resources": {"gpu_pool_a": 1},
            "label_selector": {"ragrail/pool": "gpu", "topology.kubernetes.io/zone": "!in(zone-a, zone-b)"},
        },
        "graceful_shutdown_timeout_s": 5,
    }
    settings = _load(block)
    assert settings.generation.deployment == block  # passed to Serve as written
    options = deployment_options(settings.generation.deployment)
    assert isinstance(options, DeploymentOptions) and options.gpus() == 0.25


def test_the_packaged_config_asks_for_no_gpu() -> None:
    settings = load_settings()
    for service in ("embedding", "retrieval", "generation", "moderation"):
        assert deployment_options(getattr(settings, service).deployment).gpus() == 0


@pytest.mark.parametrize(
    ("block", "needles"),
    [
        ({"ray_actor_options": {"num_gpus": -1}}, ["ray_actor_options.num_gpus", "greater than or equal to 0"]),
        ({"ray_actor_options": {"num_gpus": 0.00001}}, ["finer than Ray's resource unit"]),
        ({"ray_actor_options": {"accelerator_type": "H100"}}, ["accelerator_type H100 without num_gpus"]),
        ({"ray_actor_options": {"resources": {"GPU": 1}}}, ["GPU is not a custom resource (use num_gpus)"]),
        ({"ray_actor_options": {"resources": {"pool": -2}}}, ["pool: -2", "at least 0"]),
        ({"ray_actor_options": {"label_selector": {"ragrail/pool": "in(gpu,,cpu)"}}}, ["is not a selector"]),
        ({"ray_actor_options": {"label_selector": {"-bad": "x"}}}, ["'-bad' is not a label key"]),
        ({"ray_actor_options": {"num_gpu": 1}}, ["ray_actor_options.num_gpu", "Extra inputs are not permitted"]),
        ({"max_replicas_per_node": 0}, ["max_replicas_per_node", "greater than or equal to 1"]),
        ({"max_replicas_per_node": 101}, ["max_replicas_per_node", "less than or equal to 100"]),
        ({"placement_group_strategy": "SPREAD"}, ["placement_group_strategy needs placement_group_bundles"]),
        ({"placement_group_strategy": "EVERYWHERE", "placement_group_bundles": [{"CPU": 1}]}, ["'PACK'"]),
        (
            {"placement_group_bundles": [{"CPU": 1}], "max_replicas_per_node": 1},
            ["max_replicas_per_node and placement_group_bundles do not go together"],
        ),
        (
            {"placement_group_bundles": [{"CPU": 0.5}], "ray_actor_options": {"num_cpus": 1, "num_gpus": 1}},
            ["must fit in placement_group_bundles[0]", "CPU 1 > 0.5", "GPU 1 > 0"],
        ),
        ({"num_replicas": 2, "autoscaling_config": {"max_replicas": 3}}, ["num_replicas and autoscaling_config"]),
        ({"num_replica": 2}, ["num_replica: Extra inputs are not permitted"]),
    ],
)
def test_placement_that_cannot_work_is_refused_at_load_naming_the_option(block: dict, needles: list[str]) -> None:
    _refused(block, *needles)


def test_auto_replicas_go_with_autoscaling() -> None:
    assert _load({"num_replicas": "auto", "autoscaling_config": {"max_replicas": 3}})


def test_a_bad_block_is_reported_with_the_file_it_came_from(tmp_path) -> None:
    from ragrail.common.errors import InvalidArgument

    path = tmp_path / "ragrail.yaml"
    path.write_text("embedding:\n  deployment:\n    ray_actor_options: {num_gpus: 0.5, accelerator_type: ''}\n")
    with pytest.raises(InvalidArgument, match="embedding.deployment") as caught:
        load_settings(path)
    assert "accelerator_type" in str(caught.value) and str(path) in str(caught.value)
