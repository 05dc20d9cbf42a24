"""`helm upgrade` in place: which objects (and which Serve applications) a values change touches.

KubeRay starts a whole new RayCluster (every GPU worker twice while both run) when a Ray pod
template changes, and Serve redeploys an application when its entry in serveConfigV2 changes.
So the chart must keep the config out of the pod templates and give each application only
its own section: these tests render two releases and diff them object by object.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from tests.chart.conftest import SCENARIOS, Rendered, chart_available, render


def _key(obj: dict[str, Any]) -> tuple[str, str]:
    return obj["kind"], obj["metadata"]["name"]


# Random at every offline render; in a cluster `lookup` returns the stored one (and Helm keeps it).
RANDOM_PER_RENDER = {("Secret", "demo-ragrail-prompt-tag")}


def changed_objects(a: Rendered, b: Rendered) -> set[tuple[str, str]]:
    before = {_key(o): o for o in a.objects}
    after = {_key(o): o for o in b.objects}
    assert before.keys() == after.keys(), "a values change must not add or remove objects here"
    return {k for k in before if before[k] != after[k]} - RANDOM_PER_RENDER


def ray_cluster_spec(r: Rendered) -> dict[str, Any]:
    return r.get("RayService")["spec"]["rayClusterConfig"]


def changed_apps(a: Rendered, b: Rendered) -> set[str]:
    before = {app["name"]: app for app in a.serve_config["applications"]}
    after = {app["name"]: app for app in b.serve_config["applications"]}
    return {name for name in before if before[name] != after[name]}


def serve_config_minus_apps(r: Rendered) -> dict[str, Any]:
    return {k: v for k, v in r.serve_config.items() if k != "applications"}


def with_config(base: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    values = copy.deepcopy(base)
    values.setdefault("config", {})
    for section, options in config.items():
        values["config"].setdefault(section, {}).update(options)
    return values


@pytest.fixture(scope="module", params=["default", "gpu"])
def base(request: pytest.FixtureRequest) -> tuple[dict[str, Any], Rendered]:
    chart_available()
    values = SCENARIOS[request.param]
    return values, render(values)


def test_one_services_option_redeploys_that_application_alone(base: tuple[dict, Rendered]) -> None:
    values, before = base
    after = render(with_config(values, {"generation": {"max_waiting": 17}}))
    # The ConfigMap (read by the init container) and the RayService's serveConfigV2, nothing else:
    # the gateway reads no generation option, so its pods do not roll either.
    assert changed_objects(before, after) == {("ConfigMap", "demo-ragrail-config"), ("RayService", "demo-ragrail")}
    assert ray_cluster_spec(before) == ray_cluster_spec(after), "a new RayCluster would double every worker"
    assert changed_apps(before, after) == {"generation"}
    assert serve_config_minus_apps(before) == serve_config_minus_apps(after)


def test_a_deployment_option_redeploys_that_application_alone(base: tuple[dict, Rendered]) -> None:
    values, before = base
    after = render(with_config(values, {"moderation": {"deployment": {"max_ongoing_requests": 33}}}))
    assert ray_cluster_spec(before) == ray_cluster_spec(after)
    assert changed_apps(before, after) == {"moderation"}


def test_a_gateway_only_option_touches_no_ray_object(base: tuple[dict, Rendered]) -> None:
    values, before = base
    after = render(with_config(values, {"gateway": {"reload_interval_s": 7.5}}))
    assert changed_objects(before, after) == {
        ("ConfigMap", "demo-ragrail-config"),
        ("Deployment", "demo-ragrail-gateway"),  # checksum/config: the gateway reads it at start
    }
    assert before.get("RayService") == after.get("RayService")


def test_a_shared_key_reaches_every_application(base: tuple[dict, Rendered]) -> None:
    # models_dir is read by every service: all four redeploy (still in place, same RayCluster).
    values, before = base
    after = render({**copy.deepcopy(values), "models": {**values.get("models", {}), "mountPath": "/weights"}})
    assert changed_apps(before, after) == {"embedding", "retrieval", "generation", "moderation"}


def test_ray_pod_templates_carry_no_config_checksum() -> None:
    chart_available()
    r = render({})
    spec = ray_cluster_spec(r)
    templates = [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]
    for template in templates:
        annotations = template["metadata"].get("annotations") or {}
        assert not [k for k in annotations if k.startswith("checksum/")], annotations


def test_rotating_an_api_key_rolls_the_gateway_as_a_backstop_only() -> None:
    chart_available()
    entry = dict(SCENARIOS["tls"]["gateway"]["auth"]["keys"][0])
    before = render({"gateway": {"auth": {"keys": [entry]}}})
    after = render({"gateway": {"auth": {"keys": [{**entry, "sha256": "c" * 64}]}}})
    assert changed_objects(before, after) == {("Secret", "demo-ragrail-gateway-keys"), ("Deployment", "demo-ragrail-gateway")}
    annotations = [r.get("Deployment", "demo-ragrail-gateway")["spec"]["template"]["metadata"]["annotations"]
                   for r in (before, after)]
    assert annotations[0]["checksum/keys"] != annotations[1]["checksum/keys"]
    assert annotations[0]["checksum/config"] == annotations[1]["checksum/config"]
    keys = yaml.safe_load(after.get("Secret", "demo-ragrail-gateway-keys")["stringData"]["keys.yaml"])
    assert keys["keys"][0]["sha256"] == "c" * 64


def test_the_prompt_tag_secret_is_kept_and_read_by_every_gateway_pod() -> None:
    chart_available()
    r = render({})
    secret = r.get("Secret", "demo-ragrail-prompt-tag")
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert len(secret["data"]["prompt-tag-secret"]) >= 48
    [container] = r.get("Deployment", "demo-ragrail-gateway")["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    from ragrail.cli.main import PROMPT_TAG_SECRET_ENV

    ref = env[PROMPT_TAG_SECRET_ENV]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "demo-ragrail-prompt-tag", "key": "prompt-tag-secret"}
    own = render({"gateway": {"promptTag": {"existingSecret": "tags", "key": "k"}}})
    assert not own.all("Secret", "demo-ragrail-prompt-tag")
