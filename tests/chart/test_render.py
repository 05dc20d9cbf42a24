"""Render every scenario and validate what Kubernetes, KubeRay and Ray Serve would accept."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.conftest import (
    CHART,
    KUBE_VERSION,
    NAMESPACE,
    PROMETHEUS_OPERATOR_KINDS,
    RELEASE,
    SCENARIOS,
    Rendered,
    render,
)

Render = Callable[[str], Rendered]
SCENARIO_NAMES = sorted(SCENARIOS)
# Custom resources: the RayService is checked against KubeRay's CRD, the Prometheus Operator's
# kinds against schemas generated from its CRDs (both below).
CUSTOM_KINDS = {
    ("ray.io/v1", "RayService"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PodMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
}
FULLNAME = f"{RELEASE}-ragrail"
GATEWAY = f"{FULLNAME}-gateway"
CONFIG_PATH = "/etc/ragrail/ragrail.yaml"
HEALTH_PORT = 8081  # values.yaml gateway.healthPort


def _containers(pod_spec: dict) -> dict[str, dict]:
    return {c["name"]: c for c in pod_spec.get("containers", []) + pod_spec.get("initContainers", [])}


def _ports(container: dict) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in container.get("ports", [])}


def _env(container: dict) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def _ray_pod_templates(rs: dict) -> list[tuple[str, dict]]:
    cluster = rs["spec"]["rayClusterConfig"]
    out = [("head", cluster["headGroupSpec"]["template"])]
    out += [(g["groupName"], g["template"]) for g in cluster["workerGroupSpecs"]]
    return out


def _gateway_pod(r: Rendered) -> dict:
    return r.get("Deployment", GATEWAY)["spec"]["template"]


# -- every object is valid -------------------------------------------------------------------


@pytest.mark.parametrize("scenario", SCENARIO_NAMES)
def test_builtin_objects_validate_strictly(rendered: Render, scenario: str) -> None:
    import kubernetes_validate

    r = rendered(scenario)
    kinds = set()
    for obj in r.objects:
        if (obj["apiVersion"], obj["kind"]) in CUSTOM_KINDS:
            continue
        kinds.add(obj["kind"])
        assert obj["metadata"].get("namespace") in (None, NAMESPACE)
        try:
            kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']}: {path}: {exc.message}")
        # SchemaNotFoundError (an unknown kind or apiVersion) propagates and fails the test.
    assert {"Deployment", "Service", "ConfigMap", "NetworkPolicy", "ServiceAccount"} <= kinds


@pytest.mark.parametrize("scenario", SCENARIO_NAMES)
def test_ray_pod_templates_validate_as_kubernetes_pods(rendered: Render, scenario: str) -> None:
    """The CRD embeds KubeRay's copy of the pod schema; check the templates against the
    cluster version's own schema too."""
    import kubernetes_validate

    for group, template in _ray_pod_templates(rendered(scenario).get("RayService")):
        wrapper = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": group}, "template": template}
        try:
            kubernetes_validate.validate(wrapper, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{group}: {'.'.join(str(p) for p in exc.path)}: {exc.message}")


@pytest.mark.parametrize("scenario", SCENARIO_NAMES)
def test_rayservice_validates_against_the_kuberay_crd(
    rendered: Render, scenario: str, rayservice_crd_schema: dict
) -> None:
    import jsonschema

    rs = rendered(scenario).get("RayService", FULLNAME)
    errors = sorted(jsonschema.Draft202012Validator(rayservice_crd_schema).iter_errors(rs), key=str)
    assert not errors, "\n".join(f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors[:10])


def test_the_crd_check_catches_an_unknown_field(rendered: Render, rayservice_crd_schema: dict) -> None:
    import copy

    import jsonschema

    rs = copy.deepcopy(rendered("default").get("RayService"))
    rs["spec"]["rayClusterConfig"]["headGroupSpec"]["rayStartParam"] = {}
    assert not jsonschema.Draft202012Validator(rayservice_crd_schema).is_valid(rs)


@pytest.mark.parametrize("scenario", SCENARIO_NAMES)
def test_monitoring_objects_validate_against_the_prometheus_operator_crds(
    rendered: Render, scenario: str, prometheus_operator_schemas: dict[str, dict]
) -> None:
    import jsonschema

    checked = 0
    for kind in PROMETHEUS_OPERATOR_KINDS:
        for obj in rendered(scenario).all(kind):
            validator = jsonschema.Draft202012Validator(prometheus_operator_schemas[kind])
            errors = sorted(validator.iter_errors(obj), key=str)
            assert not errors, f"{kind} {obj['metadata']['name']}:\n" + "\n".join(
                f"{'.'.join(map(str, e.path))}: {e.message[:200]}" for e in errors[:10]
            )
            checked += 1
    if scenario == "default":
        assert checked == len(PROMETHEUS_OPERATOR_KINDS)


@pytest.mark.parametrize(
    ("kind", "breakage"),
    [
        ("ServiceMonitor", lambda o: o["spec"]["endpoints"][0].update(interval_seconds=30)),  # a typo'd field
        ("PodMonitor", lambda o: o["spec"].update(podMetricsEndpoints={"port": "metrics"})),  # not a list
        ("PrometheusRule", lambda o: o["spec"]["groups"][0]["rules"][0].pop("expr")),  # required
    ],
)
def test_the_prometheus_operator_check_catches_broken_objects(
    rendered: Render, prometheus_operator_schemas: dict[str, dict], kind: str, breakage: Callable[[dict], Any]
) -> None:
    import copy

    import jsonschema

    obj = copy.deepcopy(rendered("default").get(kind))
    assert jsonschema.Draft202012Validator(prometheus_operator_schemas[kind]).is_valid(obj)
    breakage(obj)
    assert not jsonschema.Draft202012Validator(prometheus_operator_schemas[kind]).is_valid(obj)


# -- serveConfigV2: Ray's schema, and the same mapping as ragrail.kube -------------------------


@pytest.mark.parametrize("scenario", SCENARIO_NAMES)
def test_serve_config_is_valid_for_ray_serve(rendered: Render, scenario: str) -> None:
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate(rendered(scenario).serve_config)
    assert [a.name for a in schema.applications] == ["embedding", "retrieval", "generation", "moderation"]


@pytest.mark.parametrize("scenario", SCENARIO_NAMES)
def test_serve_config_equals_kube_serve_config_v2_of_the_same_config(rendered: Render, scenario: str) -> None:
    from ragrail.common.config import Settings
    from ragrail.kube import serve_config_v2

    r = rendered(scenario)
    settings = Settings.model_validate(r.config)  # the gateway's config is valid for the code
    expected = serve_config_v2(settings, extra_env=r.values.get("rayService", {}).get("serveEnv"))
    assert r.serve_config == expected
    # ...and every application gets its own section of that config (and the shared keys) only.
    for app in r.serve_config["applications"]:
        assert app["args"] == {k: r.config[k] for k in ("data_dir", "models_dir", app["name"])}


def test_default_config_is_the_packaged_one_plus_kubernetes_wiring(rendered: Render) -> None:
    from importlib import resources

    packaged = yaml.safe_load(resources.files("ragrail.config").joinpath("ragrail.yaml").read_text())
    config = rendered("default").config
    wired = {"data_dir", "models_dir", "serve.host", "serve.fast_path", "gateway.host", "gateway.serve_address",
             "gateway.pipelines_dir", "gateway.auth", "retrieval.qdrant_url"}

    def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in d.items():
            key = f"{prefix}{k}"
            if isinstance(v, dict) and v and key not in wired:
                out.update(flatten(v, key + "."))
            else:
                out[key] = v
        return out

    ours, theirs = flatten(config), flatten(packaged)
    assert {k: v for k, v in ours.items() if k not in wired} == {k: v for k, v in theirs.items() if k not in wired}
    assert config["gateway"]["serve_address"] == f"{FULLNAME}-serve-svc:9000"
    assert config["models_dir"] == "/models"
    assert config["retrieval"]["qdrant_url"] == f"http://{RELEASE}-qdrant:6333"
    assert config["gateway"]["auth"] == {"enabled": True, "keys_file": "/etc/ragrail/auth/keys.yaml"}
    assert config["serve"]["fast_path"] is False  # rayService.fastPath, off in the chart


@pytest.mark.parametrize(("scenario", "on"), [("default", False), ("gpu", True)])
def test_fast_path_value_sets_serve_env_on_every_ray_pod_and_the_config(
    rendered: Render, scenario: str, on: bool
) -> None:
    from ragrail.stack import FAST_PATH_ENV

    r = rendered(scenario)
    assert r.config["serve"]["fast_path"] is on
    for group, template in _ray_pod_templates(r.get("RayService")):
        env = _env(template["spec"]["containers"][0])
        assert {k: env.get(k) for k in FAST_PATH_ENV} == (FAST_PATH_ENV if on else dict.fromkeys(FAST_PATH_ENV)), group


# -- the gateway -----------------------------------------------------------------------------


@pytest.mark.parametrize("scenario", SCENARIO_NAMES)
def test_gateway_runs_the_gateway_command_on_the_chart_config(rendered: Render, scenario: str) -> None:
    r = rendered(scenario)
    pod = _gateway_pod(r)["spec"]
    gateway = _containers(pod)["gateway"]
    assert gateway["command"] == ["ragrail", "gateway", "--config", CONFIG_PATH]
    [mount] = [m for m in gateway["volumeMounts"] if m["mountPath"] == CONFIG_PATH]
    [volume] = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert volume["configMap"]["name"] == f"{FULLNAME}-config" and mount["subPath"] == "ragrail.yaml"
    ports = _ports(gateway)
    expected = {"grpc": r.config["gateway"]["port"], "metrics": r.config["gateway"]["metrics_port"]}
    if r.config["gateway"]["tls"]:
        expected["health"] = HEALTH_PORT
    assert ports == expected
    # Non-root, read-only root filesystem, no privilege escalation.
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert gateway["securityContext"]["readOnlyRootFilesystem"] is True
    assert gateway["securityContext"]["allowPrivilegeEscalation"] is False
    assert gateway["resources"]["requests"] and gateway["resources"]["limits"]


@pytest.mark.parametrize("scenario", SCENARIO_NAMES)
def test_gateway_probes(rendered: Render, scenario: str) -> None:
    r = rendered(scenario)
    gateway = _containers(_gateway_pod(r)["spec"])["gateway"]
    port = r.config["gateway"]["port"]
    env = _env(gateway)
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert "tcpSocket" not in gateway[probe] and "httpGet" not in gateway[probe] and "exec" not in gateway[probe]
        if r.config["gateway"]["tls"]:
            # The kubelet's gRPC probe cannot speak TLS: it asks the plaintext health-only port.
            assert gateway[probe]["grpc"] == {"port": HEALTH_PORT}
        else:
            assert gateway[probe]["grpc"] == {"port": port}
    if r.config["gateway"]["tls"]:
        # `ragrail gateway` serves that port from these variables, bound to the pod's address.
        assert env["RAGRAIL_GATEWAY_HEALTH_PORT"] == str(HEALTH_PORT)
        assert env["RAGRAIL_GATEWAY_HEALTH_HOST"] == {"fieldRef": {"fieldPath": "status.podIP"}}
        assert _ports(gateway)["health"] == HEALTH_PORT
        service = r.get("Service", GATEWAY)
        assert HEALTH_PORT not in [p.get("targetPort") for p in service["spec"]["ports"]]
        assert "health" not in [p.get("targetPort") for p in service["spec"]["ports"]]
    else:
        assert not env.keys() & {"RAGRAIL_GATEWAY_HEALTH_PORT", "RAGRAIL_GATEWAY_HEALTH_HOST"}
        assert "health" not in _ports(gateway)


def test_gateway_health_port_env_names_are_the_cli_ones() -> None:
    from ragrail.cli.main import HEALTH_HOST_ENV, HEALTH_PORT_ENV

    template = (CHART / "templates" / "gateway-deployment.yaml").read_text()
    assert f"name: {HEALTH_PORT_ENV}" in template and f"name: {HEALTH_HOST_ENV}" in template


def test_gateway_health_port_must_not_collide() -> None:
    import helm_python

    tls = {"enabled": True, "secretName": "tls"}
    with pytest.raises(helm_python.HelmError, match="gateway.healthPort"):
        _render_with({"gateway": {"tls": tls, "healthPort": 9464}})
    with pytest.raises(helm_python.HelmError, match="gateway.healthPort"):
        _render_with({"gateway": {"tls": tls, "healthPort": 50051}})
    # Without TLS the port is not used, so it cannot collide.
    _render_with({"gateway": {"healthPort": 50051}})


@pytest.mark.parametrize("scenario", SCENARIO_NAMES)
def test_gateway_service_hpa_and_pdb(rendered: Render, scenario: str) -> None:
    r = rendered(scenario)
    selector = r.get("Deployment", GATEWAY)["spec"]["selector"]["matchLabels"]
    pod_labels = _gateway_pod(r)["metadata"]["labels"]
    assert selector.items() <= pod_labels.items()
    svc = r.get("Service", GATEWAY)
    assert svc["spec"]["selector"] == selector
    assert [(p["name"], p["targetPort"]) for p in svc["spec"]["ports"]] == [("grpc", "grpc")]
    gw = SCENARIOS[scenario].get("gateway", {})
    if gw.get("autoscaling", {}).get("enabled", True):
        hpa = r.get("HorizontalPodAutoscaler", GATEWAY)
        assert hpa["apiVersion"] == "autoscaling/v2"
        assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": GATEWAY}
        assert "replicas" not in r.get("Deployment", GATEWAY)["spec"]
    else:
        assert not r.all("HorizontalPodAutoscaler")
        assert r.get("Deployment", GATEWAY)["spec"]["replicas"] == gw["replicas"]
    pdbs = r.all("PodDisruptionBudget")
    if gw.get("podDisruptionBudget", {}).get("enabled", True):
        assert pdbs[0]["spec"]["selector"]["matchLabels"] == selector
    else:
        assert not pdbs


def test_pipeline_specs_configmap_loads_as_a_spec_folder(rendered: Render, tmp_path: Path) -> None:
    from ragrail.gateway.specs import load_pipeline_dir

    for scenario in ("default", "cpu-embedded"):
        r = rendered(scenario)
        folder = tmp_path / scenario
        folder.mkdir()
        data = r.get("ConfigMap", f"{FULLNAME}-pipelines")["data"]
        for name, text in data.items():
            (folder / name).write_text(text)
        refs = {s.ref for s in load_pipeline_dir(folder).specs}
        packaged = {p.name.replace("@", "_") for p in (CHART / "files" / "pipelines").glob("*.yaml")}
        assert packaged <= set(data)
        assert {"rag@1", "rag@2"} <= refs
        if scenario == "cpu-embedded":
            assert "rag@3" in refs  # added through values.pipelines
        assert r.config["gateway"]["pipelines_dir"] == "/etc/ragrail/pipelines"


@pytest.mark.parametrize("scenario", ["default", "tls"])
def test_api_keys_secret_is_a_valid_keys_file(rendered: Render, scenario: str, tmp_path: Path) -> None:
    from ragrail.gateway.auth import load_keys

    r = rendered(scenario)
    secret = r.get("Secret", f"{FULLNAME}-gateway-keys")
    path = tmp_path / "keys.yaml"
    path.write_text(secret["stringData"]["keys.yaml"])
    entries = load_keys(path)
    assert [e.name for e in entries] == [k["name"] for k in SCENARIOS[scenario].get("gateway", {}).get("auth", {}).get("keys", [])]
    gateway = _containers(_gateway_pod(r)["spec"])["gateway"]
    assert {"name": "keys", "mountPath": "/etc/ragrail/auth", "readOnly": True} in gateway["volumeMounts"]


def test_auth_off_means_no_keys_secret(rendered: Render) -> None:
    r = rendered("cpu-embedded")
    assert [s["metadata"]["name"] for s in r.all("Secret")] == [f"{FULLNAME}-prompt-tag"]  # no keys Secret
    assert r.config["gateway"]["auth"] == {"enabled": False}


def test_tls_mounts_the_secret_and_points_the_config_at_it(rendered: Render) -> None:
    r = rendered("tls")
    assert r.config["gateway"]["tls"] == {
        "cert_file": "/etc/ragrail/tls/tls.crt",
        "key_file": "/etc/ragrail/tls/tls.key",
        "client_ca_file": "/etc/ragrail/tls/ca.crt",
    }
    pod = _gateway_pod(r)["spec"]
    assert {"name": "tls", "secret": {"secretName": "ragrail-gateway-tls"}} in pod["volumes"]
    assert r.get("Service", GATEWAY)["spec"]["type"] == "LoadBalancer"
    assert "-cacert ca.crt" in r.notes and "-plaintext" not in r.notes
    for other in ("default", "cpu-embedded"):
        assert rendered(other).config["gateway"]["tls"] == {}
        assert "grpcurl -plaintext 127.0.0.1:50051 list" in rendered(other).notes


# -- the RayService --------------------------------------------------------------------------


@pytest.mark.parametrize("scenario", SCENARIO_NAMES)
def test_head_exposes_serve_grpc_on_9000_and_ray_ports(rendered: Render, scenario: str) -> None:
    rs = rendered(scenario).get("RayService", FULLNAME)
    cluster = rs["spec"]["rayClusterConfig"]
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    ports = _ports(head)
    assert ports["serve-grpc"] == 9000
    assert {"gcs-server": 6379, "dashboard": 8265, "client": 10001, "metrics": 8080, "serve": 8000}.items() <= ports.items()
    assert cluster["enableInTreeAutoscaling"] is True
    assert cluster["rayVersion"] == "2.60.0"
    # The gateway dials KubeRay's serve Service on that port.
    assert rendered(scenario).config["gateway"]["serve_address"] == f"{FULLNAME}-serve-svc:9000"


@pytest.mark.parametrize("scenario", SCENARIO_NAMES)
def test_ray_pods_mount_config_and_models_where_the_config_says(rendered: Render, scenario: str) -> None:
    r = rendered(scenario)
    models_dir = r.config["models_dir"]
    for group, template in _ray_pod_templates(r.get("RayService")):
        spec = template["spec"]
        main = spec["containers"][0]
        mounts = {m["mountPath"]: m["name"] for m in main["volumeMounts"]}
        assert mounts[models_dir] == "models" and mounts["/etc/ragrail"] == "config", group
        assert template["metadata"]["labels"]["app.kubernetes.io/component"] == "ray"
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert _env(main)["HF_HOME"] == f"{models_dir}/huggingface"
        if group != "head":
            init = _containers(spec)["prepare-models"]
            assert init["command"] == ["ragrail", "prepare-models", "--config", CONFIG_PATH]


def test_gpu_worker_group(rendered: Render) -> None:
    from tests.chart.conftest import GPU_NODE, GPU_TOLERATION

    r = rendered("gpu")
    groups = {g["groupName"]: g for g in r.get("RayService")["spec"]["rayClusterConfig"]["workerGroupSpecs"]}
    assert set(groups) == {"cpu", "gpu"}
    gpu = groups["gpu"]
    assert (gpu["minReplicas"], gpu["maxReplicas"]) == (0, 4)
    spec = gpu["template"]["spec"]
    resources = spec["containers"][0]["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == 1 and resources["requests"]["nvidia.com/gpu"] == 1
    assert spec["nodeSelector"] == GPU_NODE and spec["tolerations"] == GPU_TOLERATION
    assert "nodeAffinity" in spec["affinity"]
    cpu_spec = groups["cpu"]["template"]["spec"]
    assert "nvidia.com/gpu" not in cpu_spec["containers"][0]["resources"]["limits"]
    assert "nodeSelector" not in cpu_spec
    # The generation deployment asks Serve for the GPU; the model is a hub id, downloads allowed.
    [generation] = [a for a in r.serve_config["applications"] if a["name"] == "generation"]
    assert generation["deployments"][0]["ray_actor_options"] == {"num_cpus": 2, "num_gpus": 1}
    assert generation["args"]["generation"]["model"] == "HuggingFaceTB/SmolLM2-1.7B-Instruct"
    assert generation["runtime_env"]["env_vars"]["HF_HUB_OFFLINE"] == "0"
    assert generation["runtime_env"]["env_vars"]["TOKENIZERS_PARALLELISM"] == "false"
    # Weights on a PVC the chart made (kept on uninstall), mounted at models_dir.
    pvc = r.get("PersistentVolumeClaim", f"{FULLNAME}-models")
    assert pvc["spec"]["storageClassName"] == "fast-rwx"
    assert pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert {"name": "models", "persistentVolumeClaim": {"claimName": f"{FULLNAME}-models"}} in spec["volumes"]


def test_gpu_profile_places_by_labels_and_spreads(rendered: Render) -> None:
    """values-gpu.yaml: the GPU services select the gpu group's label, the CPU ones spread; the
    groups carry the labels as KubeRay's `labels` (ray start --labels), custom resources likewise."""
    r = rendered("gpu-profile")
    cluster = r.get("RayService")["spec"]["rayClusterConfig"]
    groups = {g["groupName"]: g for g in cluster["workerGroupSpecs"]}
    assert groups["gpu"]["labels"] == {"ragrail/pool": "gpu"} and groups["cpu"]["labels"] == {"ragrail/pool": "cpu"}
    assert "labels" not in cluster["headGroupSpec"] and "resources" not in groups["gpu"]
    deployments = {a["name"]: a["deployments"][0] for a in r.serve_config["applications"]}
    for service in ("generation", "embedding"):
        options = deployments[service]["ray_actor_options"]
        assert options["num_gpus"] > 0 and options["label_selector"] == {"ragrail/pool": "gpu"}
    for service in ("moderation", "retrieval"):
        options = deployments[service]["ray_actor_options"]
        assert options["num_gpus"] == 0 and options["label_selector"] == {"ragrail/pool": "cpu"}
        assert options["fallback_strategy"] == [{"label_selector": {"ragrail/pool": "gpu"}}]
        assert deployments[service]["max_replicas_per_node"] == 2
    custom = copy.deepcopy(SCENARIOS["gpu-profile"])
    custom["rayService"]["workerGroups"][1]["rayResources"] = {"accelerator_type:L4": 1}
    [gpu] = [g for g in render(custom).get("RayService")["spec"]["rayClusterConfig"]["workerGroupSpecs"]
             if g["groupName"] == "gpu"]
    assert gpu["resources"] == {"accelerator_type:L4": "1"}


def test_cpu_default_requests_no_gpu(rendered: Render) -> None:
    rs = rendered("default").get("RayService")
    for _, template in _ray_pod_templates(rs):
        for container in template["spec"]["containers"]:
            assert "nvidia.com/gpu" not in json.dumps(container["resources"])
    for app in rendered("default").serve_config["applications"]:
        assert app["deployments"][0]["ray_actor_options"]["num_gpus"] == 0


# -- Qdrant ----------------------------------------------------------------------------------


def _ray_env(r: Rendered) -> dict[str, Any]:
    head = r.get("RayService")["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    return _env(head)


def test_qdrant_subchart_wiring(rendered: Render) -> None:
    r = rendered("default")
    assert r.config["retrieval"]["qdrant_url"] == f"http://{RELEASE}-qdrant:6333"
    assert "RAGRAIL_QDRANT_API_KEY" not in _ray_env(r)  # qdrant.apiKey is off by default
    policy = r.get("NetworkPolicy", f"{FULLNAME}-qdrant")
    assert policy["spec"]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "qdrant", "app.kubernetes.io/instance": RELEASE}
    with_key = _render_with({"qdrant": {"enabled": True, "apiKey": True}})
    assert _ray_env(with_key)["RAGRAIL_QDRANT_API_KEY"] == {"secretKeyRef": {"name": f"{RELEASE}-qdrant-apikey", "key": "api-key"}}


def test_external_qdrant_url_and_api_key_secret(rendered: Render) -> None:
    r = rendered("external-qdrant")
    assert r.config["retrieval"]["qdrant_url"] == "https://qdrant.example.internal:6333"
    assert "qdrant_api_key" not in r.config["retrieval"]  # never in a ConfigMap or the RayService
    assert "s3cr3t" not in yaml.safe_dump(r.get("RayService")) + yaml.safe_dump(r.get("ConfigMap", f"{FULLNAME}-config"))
    secret = r.get("Secret", f"{FULLNAME}-qdrant")
    assert secret["stringData"] == {"api-key": "s3cr3t"}
    assert _ray_env(r)["RAGRAIL_QDRANT_API_KEY"] == {"secretKeyRef": {"name": f"{FULLNAME}-qdrant", "key": "api-key"}}
    assert not r.all("NetworkPolicy", f"{FULLNAME}-qdrant")
    # null removed the embedded store's single replica; retrieval autoscales.
    [retrieval] = [a for a in r.serve_config["applications"] if a["name"] == "retrieval"]
    assert "num_replicas" not in retrieval["deployments"][0]
    assert retrieval["deployments"][0]["autoscaling_config"]["max_replicas"] == 6
    existing = _render_with({"qdrant": {"enabled": False}, "externalQdrant": {
        "url": "http://q:6334", "existingSecret": "my-qdrant", "existingSecretKey": "key"}})
    assert not existing.all("Secret", f"{FULLNAME}-qdrant")
    assert _ray_env(existing)["RAGRAIL_QDRANT_API_KEY"] == {"secretKeyRef": {"name": "my-qdrant", "key": "key"}}


def test_feedback_database_url_comes_from_an_existing_secret(rendered: Render) -> None:
    from ragrail.cli.main import FEEDBACK_URL_ENV

    r = rendered("external-qdrant")
    env = _env(_containers(_gateway_pod(r)["spec"])["gateway"])
    assert env[FEEDBACK_URL_ENV] == {"secretKeyRef": {"name": "ragrail-feedback-db", "key": "url"}}
    assert r.config["gateway"]["feedback"] == {"retention_days": 30, "per_key_limit": 100, "pool_size": 2}
    assert "url" not in r.config["gateway"]["feedback"]  # the URL (a password) is in no ConfigMap
    assert "feedback is stored per gateway pod" not in r.notes
    # By default: SQLite per pod, no variable, and the notes say what that costs with 2+ replicas.
    default = rendered("default")
    assert FEEDBACK_URL_ENV not in _env(_containers(_gateway_pod(default)["spec"])["gateway"])
    assert "feedback is stored per gateway pod" in default.notes
    assert "feedback is stored per gateway pod" not in rendered("cpu-embedded").notes  # one replica


def test_feedback_values_are_checked_by_the_schema() -> None:
    import helm_python

    from tests.chart.conftest import CHART

    with helm_python.Chart.load(CHART) as chart, pytest.raises(Exception, match="(?i)feedback|additional"):
        chart.validate_schema({"gateway": {"feedback": {"database": {"secretName": "typo"}}}})
    with helm_python.Chart.load(CHART) as chart, pytest.raises(Exception, match="(?i)retention_days|minimum|exclusive"):
        chart.validate_schema({"config": {"gateway": {"feedback": {"retention_days": 0}}}})


def test_embedded_qdrant_is_flagged_in_notes(rendered: Render) -> None:
    r = rendered("cpu-embedded")
    assert "qdrant_url" not in r.config["retrieval"]
    assert "WARNING: no Qdrant server" in r.notes
    assert "WARNING" not in rendered("default").notes


def _render_with(values: dict) -> Rendered:
    from tests.chart.conftest import render

    return render(values)


# -- monitoring, dashboards, network policy -------------------------------------------------


@pytest.mark.parametrize("scenario", SCENARIO_NAMES)
def test_monitors_select_what_exports_metrics(rendered: Render, scenario: str) -> None:
    r = rendered(scenario)
    release = SCENARIOS[scenario].get("monitoring", {}).get("release", "kube-prometheus-stack")
    sm = r.get("ServiceMonitor", GATEWAY)
    pm = r.get("PodMonitor", f"{FULLNAME}-ray")
    rule = r.get("PrometheusRule", FULLNAME)
    for obj in (sm, pm, rule):
        assert obj["apiVersion"] == "monitoring.coreos.com/v1"
        assert obj["metadata"]["labels"].get("release") == (release or None)
    # ServiceMonitor -> the metrics Service -> the gateway pods' metrics port.
    [metrics_svc] = [s for s in r.all("Service") if sm["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()]
    assert [p["name"] for p in metrics_svc["spec"]["ports"]] == ["metrics"]
    assert sm["spec"]["endpoints"][0]["port"] == "metrics" and sm["spec"]["endpoints"][0]["path"] == "/metrics"
    assert metrics_svc["spec"]["selector"].items() <= _gateway_pod(r)["metadata"]["labels"].items()
    assert sm["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    # PodMonitor -> every Ray pod, port "metrics" (Ray's metrics-export-port).
    for group, template in _ray_pod_templates(r.get("RayService")):
        assert pm["spec"]["selector"]["matchLabels"].items() <= template["metadata"]["labels"].items(), group
        assert _ports(template["spec"]["containers"][0])["metrics"] == 8080
    rs = r.get("RayService")["spec"]["rayClusterConfig"]
    assert rs["headGroupSpec"]["rayStartParams"]["metrics-export-port"] == "8080"
    assert pm["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"


def test_prometheus_rule_is_the_rules_file(rendered: Render) -> None:
    text = (CHART / "files" / "prometheus" / "ragrail-rules.yaml").read_text()
    # ...scoped to the release's namespace (the file matches any namespace).
    rules_file = yaml.safe_load(text.replace('namespace=~".*"', f'namespace="{NAMESPACE}"'))
    assert 'namespace=~".*"' in text
    assert rendered("default").get("PrometheusRule")["spec"] == rules_file


def test_grafana_dashboard_configmap(rendered: Render) -> None:
    r = rendered("default")
    cm = r.get("ConfigMap", f"{FULLNAME}-dashboards")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["ragrail.json"]) == json.loads((CHART / "files" / "dashboards" / "ragrail.json").read_text())


@pytest.mark.parametrize("scenario", SCENARIO_NAMES)
def test_network_policies(rendered: Render, scenario: str) -> None:
    r = rendered(scenario)
    gateway_labels = _gateway_pod(r)["metadata"]["labels"]
    gw = r.get("NetworkPolicy", GATEWAY)
    assert gw["spec"]["podSelector"]["matchLabels"].items() <= gateway_labels.items()
    # No rule names the TLS gateway's plaintext health port: only the pod's own node (the
    # kubelet's probes) reaches it, which a NetworkPolicy cannot block anyway.
    [public, metrics] = gw["spec"]["ingress"]
    assert public["ports"] == [{"port": "grpc", "protocol": "TCP"}]
    assert public.get("from", []) == SCENARIOS[scenario].get("networkPolicy", {}).get("gateway", {}).get("from", [])
    assert metrics["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]

    ray = r.get("NetworkPolicy", f"{FULLNAME}-ray")
    for _, template in _ray_pod_templates(r.get("RayService")):
        assert ray["spec"]["podSelector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
    rules = ray["spec"]["ingress"]
    assert all("from" in rule for rule in rules), "no Ray port may be open to everyone"
    from_gateway = [rule for rule in rules if rule["from"][0].get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/component") == "gateway"]
    assert from_gateway and from_gateway[0]["ports"] == [{"port": 9000, "protocol": "TCP"}]
    peers = [p for rule in rules for p in rule["from"]]
    assert {"podSelector": {"matchLabels": ray["spec"]["podSelector"]["matchLabels"]}} in peers


def test_health_port_peers_are_opt_in() -> None:
    node_cidr = [{"ipBlock": {"cidr": "10.0.0.0/16"}}]
    r = _render_with({
        "gateway": {"tls": {"enabled": True, "secretName": "tls"}},
        "networkPolicy": {"gateway": {"healthFrom": node_cidr}},
    })
    rules = r.get("NetworkPolicy", GATEWAY)["spec"]["ingress"]
    [health] = [rule for rule in rules if {"port": "health", "protocol": "TCP"} in rule["ports"]]
    assert health == {"ports": [{"port": "health", "protocol": "TCP"}], "from": node_cidr}
    # Without TLS there is no health port, so no rule either.
    r = _render_with({"networkPolicy": {"gateway": {"healthFrom": node_cidr}}})
    rules = r.get("NetworkPolicy", GATEWAY)["spec"]["ingress"]
    assert all(p["port"] != "health" for rule in rules for p in rule["ports"])


def test_notes_explain_grpcurl_over_port_forward(rendered: Render) -> None:
    notes = rendered("default").notes
    assert f"kubectl -n {NAMESPACE} port-forward svc/{GATEWAY} 50051:50051" in notes
    assert "ragrail.gateway.v1.GatewayService/Run" in notes
    assert 'authorization: Bearer' in notes


def test_strict_validation_catches_an_unknown_field(rendered: Render) -> None:
    import copy

    import kubernetes_validate

    deployment = copy.deepcopy(rendered("default").get("Deployment", GATEWAY))
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBE_VERSION, strict=True)


def test_a_deployment_name_in_config_is_refused_by_the_chart() -> None:
    import helm_python

    # The schema (the config's DeploymentOptions) refuses it before the template's own check.
    with pytest.raises(helm_python.HelmError, match="deployment': additional properties 'name' not allowed"):
        _render_with({"config": {"embedding": {"deployment": {"name": "Other"}}}})
