"""What a platform engineer runs into: scoped alerts with runbooks, the documented commands,
the headless Service, the pre-upgrade spec check, the GPU profile, the LICENSE."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.chart.conftest import CHART, NAMESPACE, ROOT, SCENARIOS, chart_available, render
from tests.chart.test_observability import dashboard_exprs, metric_names, promtool, rule_exprs

RULES_FILE = CHART / "files" / "prometheus" / "ragrail-rules.yaml"
DASHBOARD_FILE = CHART / "files" / "dashboards" / "ragrail.json"
RUNBOOK = ROOT / "docs" / "runbook.md"
APPS = 'application=~"embedding|retrieval|generation|moderation"'
SCOPED_PREFIXES = ("ragrail_gateway_", "ray_serve_", "ray_ragrail_service_", "ray_node_")


def github_anchor(heading: str) -> str:
    """The anchor GitHub (and most Markdown renderers) give a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def selectors(expr: str) -> list[tuple[str, str]]:
    """(metric, its label matchers) for every metric selector in ``expr``."""
    return [(m.group(1), m.group(2) or "") for m in re.finditer(r"\b([a-zA-Z_:][\w:]*)(?:\{([^}]*)\})?", expr)
            if m.group(1) in metric_names(expr)]


# -- alerts: runbooks and scope ------------------------------------------------------------------


def test_every_alert_links_to_a_runbook_section_that_exists() -> None:
    anchors = {github_anchor(line.lstrip("#")) for line in RUNBOOK.read_text().splitlines() if line.startswith("#")}
    groups = yaml.safe_load(RULES_FILE.read_text())
    alerts = [rule for group in groups["groups"] for rule in group["rules"] if "alert" in rule]
    assert alerts
    for rule in alerts:
        url = rule["annotations"]["runbook_url"]
        path, _, anchor = url.partition("#")
        assert path == "docs/runbook.md" and anchor in anchors, (rule["alert"], url)


def test_the_chart_makes_runbook_urls_absolute_and_scopes_rules_to_the_namespace() -> None:
    chart_available()
    base = "https://git.example.com/ragrail/-/blob/main/"
    rules = render({"monitoring": {"runbookBaseUrl": base}}).get("PrometheusRule")["spec"]
    for group in rules["groups"]:
        for rule in group["rules"]:
            assert rule["annotations"]["runbook_url"].startswith(base + "docs/runbook.md#")
    for name, expr in rule_exprs(rules):
        for metric, matchers in selectors(expr):
            assert f'namespace="{NAMESPACE}"' in matchers, (name, metric)
            if metric.startswith("ray_serve_"):
                assert APPS in matchers, (name, metric)


def test_the_rendered_rules_ignore_other_namespaces_and_other_serve_apps(tmp_path: Path) -> None:
    """promtool on the chart's PrometheusRule: ours fire, another team's never do."""
    tool = promtool()
    chart_available()
    rules = render({}).get("PrometheusRule")["spec"]
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule["annotations"] = {}
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rules))
    wanted = {"alertname": "RagrailServeApplicationNotRunning", "severity": "warning"}
    cases = {
        "rule_files": ["rules.yaml"],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [
                {"series": f'ray_serve_application_status{{namespace="{NAMESPACE}",application="generation"}}', "values": "5x30"},
                {"series": 'ray_serve_application_status{namespace="other-team",application="generation"}', "values": "5x30"},
                {"series": f'ray_serve_application_status{{namespace="{NAMESPACE}",application="their-app"}}', "values": "1x30"},
                {"series": 'ragrail_gateway_circuit_state{namespace="other-team",service="generation"}', "values": "2x30"},
            ],
            "alert_rule_test": [
                {"eval_time": "20m", "alertname": "RagrailServeApplicationNotRunning", "exp_alerts": [
                    {"exp_labels": {**wanted, "namespace": NAMESPACE, "application": "generation"}}]},
                {"eval_time": "20m", "alertname": "RagrailCircuitOpen", "exp_alerts": []},
            ],
        }],
    }
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(cases, sort_keys=False))
    result = subprocess.run([tool, "test", "rules", "tests.yaml"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


# -- the dashboard ---------------------------------------------------------------------------


def test_every_dashboard_query_is_scoped_to_the_namespace_variable() -> None:
    dashboard = json.loads(DASHBOARD_FILE.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["namespace"]["type"] == "query"
    assert "namespace" in variables["namespace"]["definition"]
    for where, expr in dashboard_exprs(dashboard):
        if where == "$namespace":
            continue
        for metric, matchers in selectors(expr):
            if metric.startswith(SCOPED_PREFIXES):
                assert 'namespace=~"$namespace"' in matchers, (where, metric)
            if metric.startswith("ray_serve_"):
                assert APPS in matchers, (where, metric)


def test_dashboard_has_per_pipeline_version_panels() -> None:
    panels = {p["title"]: p for p in json.loads(DASHBOARD_FILE.read_text())["panels"]}
    for title, metric in [
        ("Traffic by pipeline version", "ragrail_gateway_requests_total"),
        ("Fallbacks by version and reason", "ragrail_gateway_fallbacks_total"),
        ("Feedback score by version", "ragrail_gateway_feedback_total"),
    ]:
        exprs = [t["expr"] for t in panels[title]["targets"]]
        assert any(metric in e and "version" in e for e in exprs), title


def test_feedback_score_is_the_mean_rating(tmp_path: Path) -> None:
    tool = promtool()
    [panel] = [p for p in json.loads(DASHBOARD_FILE.read_text())["panels"] if p["title"] == "Feedback score by version"]
    mean = panel["targets"][0]["expr"].replace("$namespace", NAMESPACE).replace("$pipeline", ".*").replace("$__rate_interval", "5m")
    series = 'ragrail_gateway_feedback_total{{namespace="{ns}",pipeline="rag",version="2",rating="{r}"}}'
    cases = {"rule_files": [], "evaluation_interval": "1m", "tests": [{
        "interval": "1m",
        # 3 ratings of 5 and 1 of 1 per minute (no 2, 3 or 4 yet): mean (15 + 1) / 4 = 4.
        "input_series": [
            {"series": series.format(ns=NAMESPACE, r=5), "values": "0+3x10"},
            {"series": series.format(ns=NAMESPACE, r=1), "values": "0+1x10"},
            {"series": series.format(ns="other-team", r=1), "values": "0+50x10"},
        ],
        "promql_expr_test": [{"expr": mean, "eval_time": "8m",
                              "exp_samples": [{"labels": '{pipeline="rag",version="2"}', "value": 4}]}],
    }]}
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(cases, sort_keys=False))
    result = subprocess.run([tool, "test", "rules", "t.yaml"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


# -- documented commands ------------------------------------------------------------------------


@pytest.mark.parametrize("doc", ["README.md", "deploy/helm/README.md"])
def test_documented_port_forward_names_the_rendered_gateway_service(doc: str) -> None:
    chart_available()
    text = (ROOT / doc).read_text()
    [install] = re.findall(r"helm (?:upgrade --)?install (\S+) deploy/helm/ragrail -n (\S+)", text)[:1]
    release, namespace = install
    forwards = re.findall(r"kubectl -n (\S+) port-forward svc/(\S+) (\d+):(\d+)", text)
    assert forwards, f"{doc}: no port-forward command"
    import copy

    import helm_python

    with helm_python.Chart.load(CHART) as loaded:
        manifests = loaded.render(copy.deepcopy({}), name=release, namespace=namespace, is_install=True)
    services = {
        d["metadata"]["name"]: d
        for path, text in manifests.items() if path.endswith(".yaml")
        for d in yaml.safe_load_all(text) if d and d["kind"] == "Service"
    }
    for ns, name, _, remote in forwards:
        assert ns == namespace and name in services, f"{doc}: svc/{name} is not rendered ({sorted(services)})"
        assert int(remote) in [p["port"] for p in services[name]["spec"]["ports"]]


def test_license_is_the_apache_2_license_pyproject_declares() -> None:
    import tomllib

    assert tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["license"] == "Apache-2.0"
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text and "APPENDIX: How to apply the Apache License" in text


# -- objects added for scale-out, upgrades and GPUs --------------------------------------------


def test_headless_gateway_service_for_client_side_balancing() -> None:
    chart_available()
    r = render({})
    headless = r.get("Service", "demo-ragrail-gateway-headless")["spec"]
    assert headless["clusterIP"] == "None" and headless["publishNotReadyAddresses"] is False
    assert headless["selector"] == r.get("Service", "demo-ragrail-gateway")["spec"]["selector"]
    assert [p["port"] for p in headless["ports"]] == [50051]
    assert not render({"gateway": {"service": {"headless": False}}}).all("Service", "demo-ragrail-gateway-headless")


def test_pre_upgrade_hook_validates_the_specs_being_deployed(tmp_path: Path) -> None:
    chart_available()
    broken = {"rag_9.yaml": "name: rag\nversion: 9\nkind: rag\nretrieval: {top_k: -3}\n"}
    r = render({"pipelines": broken})
    cm = r.get("ConfigMap", "demo-ragrail-pipelines-check")
    job = r.get("Job", "demo-ragrail-pipelines-check")
    for obj in (cm, job):
        assert obj["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert int(cm["metadata"]["annotations"]["helm.sh/hook-weight"]) < int(job["metadata"]["annotations"]["helm.sh/hook-weight"])
    # Same specs as the release's ConfigMap will hold, so the check sees what gateways would load.
    assert cm["data"] == r.get("ConfigMap", "demo-ragrail-pipelines")["data"]
    [container] = job["spec"]["template"]["spec"]["containers"]
    assert container["command"][:3] == ["ragrail", "pipelines", "validate"]
    [mount] = [m for m in container["volumeMounts"] if m["name"] == "pipelines"]
    # The command run on those specs fails on the broken one and passes without it.
    from ragrail.cli.main import main

    folder = tmp_path / "specs"
    folder.mkdir()
    for name, text in cm["data"].items():
        (folder / name).write_text(text)
    assert container["command"][3] == mount["mountPath"]
    assert main(["pipelines", "validate", str(folder)]) != 0
    (folder / "rag_9.yaml").unlink()
    assert main(["pipelines", "validate", str(folder)]) == 0


def test_gpu_profile() -> None:
    chart_available()
    values = SCENARIOS["gpu-profile"]
    r = render(values)
    spec = r.get("RayService")["spec"]
    groups = {g["groupName"]: g for g in spec["rayClusterConfig"]["workerGroupSpecs"]}
    gpu = groups["gpu"]["template"]["spec"]
    [worker] = gpu["containers"]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert gpu["nodeSelector"] and gpu["tolerations"] and gpu["affinity"]
    assert groups["cpu"]["template"]["spec"]["nodeSelector"] != gpu["nodeSelector"]
    apps = {a["name"]: a for a in yaml.safe_load(spec["serveConfigV2"])["applications"]}
    for name in ("generation", "embedding"):
        [deployment] = apps[name]["deployments"]
        assert deployment["ray_actor_options"]["num_gpus"] > 0
        assert deployment["autoscaling_config"]["max_replicas"] > deployment["autoscaling_config"]["min_replicas"]
        assert apps[name]["args"][name]["device"] == "cuda"
    # One GPU per generation replica: the GPU group can hold generation's max replicas.
    assert groups["gpu"]["maxReplicas"] >= apps["generation"]["deployments"][0]["autoscaling_config"]["max_replicas"]
    assert apps["generation"]["args"]["generation"]["max_batch_size"] > 8  # raised from the CPU default
    assert "num_replicas" not in apps["retrieval"]["deployments"][0]  # scales out over the Qdrant server
    ft = spec["rayClusterConfig"]["gcsFaultToleranceOptions"]
    assert ft["redisAddress"] and ft["redisPassword"]["valueFrom"]["secretKeyRef"]["name"]
    assert spec["upgradeStrategy"] == {"type": "None"}
    assert values["qdrant"]["replicaCount"] >= 3 and values["qdrant"]["config"]["cluster"]["enabled"]


def test_ray_containers_export_their_cpu_limit_for_cpu_threads() -> None:
    from ragrail.common.serving import CPU_LIMIT_ENV

    chart_available()
    spec = render(SCENARIOS["gpu-profile"]).get("RayService")["spec"]["rayClusterConfig"]
    for template in [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]:
        for container in template["spec"]["containers"]:
            [env] = [e for e in container["env"] if e["name"] == CPU_LIMIT_ENV]
            assert env["valueFrom"]["resourceFieldRef"] == {"resource": "limits.cpu", "divisor": "1"}


async def test_documented_client_config_balances_and_retries_on_a_real_server() -> None:
    """The README's client snippet, run as written against a local gRPC server that answers
    UNAVAILABLE once: the channel accepts the service config and the retry policy retries."""
    import asyncio

    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    text = (ROOT / "deploy" / "helm" / "README.md").read_text()
    [code] = [block for block in re.findall(r"```python\n(.*?)```", text, re.S) if "SERVICE_CONFIG" in block]

    calls = 0

    class FlakyHealth(health_pb2_grpc.HealthServicer):
        async def Check(self, request, context):  # noqa: N802 (gRPC's name)
            nonlocal calls
            calls += 1
            if calls == 1:
                await context.abort(grpc.StatusCode.UNAVAILABLE, "draining")
            return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)

    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(FlakyHealth(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        # The snippet itself, pointed at the local server (the service name in methodConfig is
        # the gateway's; add the health service so this call is covered by the same policy).
        scope: dict = {"json": json, "grpc": grpc}
        exec(code.replace("dns:///ragrail-gateway-headless.ragrail.svc.cluster.local:50051", f"dns:///localhost:{port}")
             .replace('[{"service": "ragrail.gateway.v1.GatewayService"}]',
                      '[{"service": "ragrail.gateway.v1.GatewayService"}, {"service": "grpc.health.v1.Health"}]'), scope)
        policy = json.loads(scope["SERVICE_CONFIG"])
        assert policy["loadBalancingConfig"] == [{"round_robin": {}}]
        assert policy["methodConfig"][0]["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]
        channel = scope["channel"]
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING and calls == 2  # retried once
        await channel.close()
    finally:
        await asyncio.wait_for(server.stop(0), 10)
