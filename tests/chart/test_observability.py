"""Alert rules and the Grafana dashboard: valid PromQL (promtool), and only metrics that exist."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from tests.chart.conftest import CHART, Rendered

RULES_FILE = CHART / "files" / "prometheus" / "ragrail-rules.yaml"
DASHBOARD_FILE = CHART / "files" / "dashboards" / "ragrail.json"
RAY_SPEC = importlib.util.find_spec("ray")  # located, not imported
RAY_PACKAGE = Path(RAY_SPEC.origin).parent if RAY_SPEC and RAY_SPEC.origin else Path("/nonexistent")

# Ray Serve / Ray metrics the rules and dashboard use, as Prometheus sees them (Ray prefixes
# every metric with `ray_`; counters get `_total`, histograms `_bucket`/`_sum`/`_count`), with
# where Ray 2.60 defines each one and the literal that defines it there (checked below).
RAY_METRICS = {
    "ray_serve_deployment_replica_healthy": ("serve/_private/deployment_state.py", '"serve_deployment_replica_healthy"'),
    "ray_serve_autoscaling_target_replicas": ("serve/_private/deployment_state.py", '"serve_autoscaling_target_replicas"'),
    "ray_serve_deployment_status": ("serve/_private/deployment_state.py", '"serve_deployment_status"'),
    "ray_serve_application_status": ("serve/_private/application_state.py", '"serve_application_status"'),
    "ray_serve_deployment_processing_latency_ms_bucket": ("serve/_private/replica.py", '"serve_deployment_processing_latency_ms"'),
    "ray_serve_deployment_request_counter_total": ("serve/_private/replica.py", '"serve_deployment_request_counter"'),
    "ray_serve_deployment_error_counter_total": ("serve/_private/replica.py", '"serve_deployment_error_counter"'),
    "ray_serve_replica_processing_queries": ("serve/_private/replica.py", '"serve_replica_processing_queries"'),
    "ray_serve_deployment_queued_queries": ("serve/_private/router.py", '"serve_deployment_queued_queries"'),
    "ray_serve_num_grpc_requests_total": ("serve/_private/request_ingress_metrics.py", 'f"serve_num_{protocol_name}_requests"'),
    "ray_serve_num_grpc_error_requests_total": ("serve/_private/request_ingress_metrics.py", 'f"serve_num_{protocol_name}_error_requests"'),
    "ray_serve_grpc_request_latency_ms_bucket": ("serve/_private/request_ingress_metrics.py", 'f"serve_{protocol_name}_request_latency_ms"'),
    "ray_node_gpus_utilization": ("dashboard/modules/reporter/reporter_agent.py", '"node_gpus_utilization"'),
    "ray_node_gram_used": ("dashboard/modules/reporter/reporter_agent.py", '"node_gram_used"'),
}
# Metrics of exporters that are neither ragrail nor Ray, as Prometheus sees them, with where
# each is documented. Not checkable offline: keep this list short and to well-known names.
# Panels using them must still show something without them (see the GPU panel's test).
EXTERNAL_METRICS = {
    "DCGM_FI_DEV_GPU_UTIL": "NVIDIA dcgm-exporter, default-counters.csv: GPU utilization (in %)",
    "DCGM_FI_DEV_FB_USED": "NVIDIA dcgm-exporter, default-counters.csv: framebuffer memory used (in MiB)",
}
PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool",
    "offset", "inf", "nan",
    # aggregation operators ("sum by (x) (...)" puts the clause between name and parenthesis)
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk",
    "topk", "quantile", "limitk", "limit_ratio",
}


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool not installed: run `bash scripts/install_tools.sh` (Debian's prometheus package)")
    return path


def gateway_metric_names() -> set[str]:
    """Every sample name GatewayMetrics exposes, suffixes included."""
    from ragrail.gateway.metrics import GatewayMetrics

    names: set[str] = set()
    for family in GatewayMetrics().registry.collect():
        suffixes = {
            "counter": ["_total", "_created"],
            "histogram": ["_bucket", "_sum", "_count", "_created"],
            "gauge": [""],
            "summary": ["", "_sum", "_count", "_created"],
            "info": ["_info"],
        }.get(family.type, [""])
        names |= {family.name + s for s in suffixes}
    return names


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression (or a Grafana one with $variables)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals (label values, regexes)
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # range selectors, $__rate_interval
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", r"\1", text)
    names = set()
    for match in re.finditer(r"(?<![\w$.])([a-zA-Z_:][a-zA-Z0-9_:]*)\b(\s*\()?", text):
        name, call = match.group(1), match.group(2)
        if call or name.lower() in PROMQL_WORDS:
            continue
        names.add(name)
    return names


def rule_exprs(groups: dict) -> Iterator[tuple[str, str]]:
    for group in groups["groups"]:
        for rule in group["rules"]:
            yield rule.get("alert") or rule.get("record"), rule["expr"]


def dashboard_exprs(dashboard: dict) -> Iterator[tuple[str, str]]:
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            yield f"${variable['name']}", variable["definition"].removeprefix("label_values(").rsplit(",", 1)[0]


# -- promtool -------------------------------------------------------------------------------


def test_promtool_accepts_the_rendered_prometheus_rule(rendered: Callable[[str], Rendered], tmp_path: Path) -> None:
    tool = promtool()
    spec = rendered("default").get("PrometheusRule")["spec"]
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": spec["groups"]}))
    result = subprocess.run([tool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {sum(len(g['rules']) for g in spec['groups'])} rules found" in result.stdout


def test_promtool_rejects_bad_promql(tmp_path: Path) -> None:
    tool = promtool()
    bad = yaml.safe_load(RULES_FILE.read_text())
    bad["groups"][0]["rules"][0]["expr"] = "sum by (pipeline (rate(ragrail_gateway_requests_total[5m]))"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    result = subprocess.run([tool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "parse error" in (result.stdout + result.stderr)


def test_alerts_fire_on_synthetic_series(tmp_path: Path) -> None:
    """promtool's rule unit tests: the alerts fire when they should, and not before."""
    tool = promtool()
    # The alerts' summaries are checked too (their templates render the values); descriptions
    # are static prose, dropped from the copy so the expectations stay short.
    groups = yaml.safe_load(RULES_FILE.read_text())
    for group in groups["groups"]:
        for rule in group["rules"]:
            rule["annotations"].pop("description", None)
            rule["annotations"].pop("runbook_url", None)  # checked on its own (test_runbook.py)
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump(groups))

    def fired(summary: str, **labels: str) -> dict:
        return {"exp_labels": labels, "exp_annotations": {"summary": summary}}
    cases = {
        "rule_files": [str(rules)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    # 10 req/s, of which 1 req/s INTERNAL errors: 10 % > 5 %.
                    {"series": 'ragrail_gateway_requests_total{pipeline="rag",version="1",outcome="answered",code="OK"}', "values": "0+540x40"},
                    {"series": 'ragrail_gateway_requests_total{pipeline="rag",version="1",outcome="error",code="INTERNAL"}', "values": "0+60x40"},
                    # Client mistakes never count.
                    {"series": 'ragrail_gateway_requests_total{pipeline="summarize_sentiment",version="1",outcome="error",code="INVALID_ARGUMENT"}', "values": "0+600x40"},
                    # Backend unavailable for 20 % of rag's requests.
                    {"series": 'ragrail_gateway_fallbacks_total{pipeline="rag",version="1",reason="backend_unavailable"}', "values": "0+120x40"},
                    {"series": 'ragrail_gateway_circuit_state{service="generation"}', "values": "0x5 2x20"},
                    # Serve wants 2 replicas of GenerationService, 1 is healthy (the other pending).
                    {"series": 'ray_serve_autoscaling_target_replicas{application="generation",deployment="GenerationService"}', "values": "2x40"},
                    {"series": 'ray_serve_deployment_replica_healthy{application="generation",deployment="GenerationService"}', "values": "1x40"},
                    # Embedding has no healthy replica series at all yet.
                    {"series": 'ray_serve_autoscaling_target_replicas{application="embedding",deployment="EmbeddingService"}', "values": "1x40"},
                    {"series": 'ray_serve_application_status{application="generation"}', "values": "5x40"},
                ],
                "alert_rule_test": [
                    {"eval_time": "8m", "alertname": "RagrailGatewayErrorRatioHigh", "exp_alerts": []},
                    {"eval_time": "20m", "alertname": "RagrailGatewayErrorRatioHigh", "exp_alerts": [
                        fired("ragrail pipeline rag: 10% of requests fail", severity="critical", pipeline="rag")]},
                    {"eval_time": "25m", "alertname": "RagrailFallbackRatioHigh", "exp_alerts": [
                        fired("ragrail pipeline rag: 20% canned answers (backend_unavailable)",
                              severity="warning", pipeline="rag", reason="backend_unavailable")]},
                    {"eval_time": "6m", "alertname": "RagrailCircuitOpen", "exp_alerts": []},
                    {"eval_time": "10m", "alertname": "RagrailCircuitOpen", "exp_alerts": [
                        fired("ragrail gateway: circuit to generation is open", severity="critical", service="generation")]},
                    {"eval_time": "15m", "alertname": "RagrailServeReplicasNotRunning", "exp_alerts": [
                        fired("Serve embedding/EmbeddingService: 1 replica(s) not running",
                              severity="warning", application="embedding", deployment="EmbeddingService"),
                        fired("Serve generation/GenerationService: 1 replica(s) not running",
                              severity="warning", application="generation", deployment="GenerationService"),
                    ]},
                    {"eval_time": "20m", "alertname": "RagrailServeApplicationNotRunning", "exp_alerts": [
                        fired("Serve application generation is not RUNNING (status 5)", severity="warning", application="generation")]},
                ],
            }
        ],
    }
    path = tmp_path / "tests.yaml"
    path.write_text(yaml.safe_dump(cases, sort_keys=False))
    result = subprocess.run([tool, "test", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


# -- metric names ---------------------------------------------------------------------------


def test_ray_metric_list_matches_the_ray_source() -> None:
    for exported, (source, literal) in RAY_METRICS.items():
        text = (RAY_PACKAGE / source).read_text()
        assert literal in text, f"{exported}: {literal} not found in ray/{source} (Ray upgraded?)"


def test_metric_name_extraction() -> None:
    expr = 'sum by (pipeline, le) (rate(a_total{x=~"b|c"}[5m])) / ignoring (reason) group_left scalar(b_count) > bool 0.5 or vector(0)'
    assert metric_names(expr) == {"a_total", "b_count"}
    assert metric_names("histogram_quantile(0.9, sum by (le) (rate(x_bucket[$__rate_interval]))) * 1000") == {"x_bucket"}


def service_metric_names() -> set[str]:
    """The model services' metrics as Ray's endpoint exports them (``ray_`` prefix)."""
    from ragrail.common.service_metrics import exported_names

    return exported_names()


@pytest.mark.parametrize("source", ["rules", "dashboard"])
def test_every_metric_used_exists(source: str) -> None:
    known_gateway = gateway_metric_names() | service_metric_names()
    assert "ragrail_gateway_requests_total" in known_gateway
    assert "ray_ragrail_service_model_latency_seconds_bucket" in known_gateway
    if source == "rules":
        exprs = list(rule_exprs(yaml.safe_load(RULES_FILE.read_text())))
    else:
        exprs = list(dashboard_exprs(json.loads(DASHBOARD_FILE.read_text())))
    assert exprs
    unknown = {}
    for where, expr in exprs:
        names = metric_names(expr)
        assert names, f"{where}: no metric found in {expr!r}"
        missing = {n for n in names if n not in known_gateway and n not in RAY_METRICS and n not in EXTERNAL_METRICS}
        if missing:
            unknown[where] = sorted(missing)
    assert not unknown, (
        f"metrics used but not exported by the gateway, the services, listed from Ray or as external: {unknown}"
    )


def test_external_metrics_cannot_stand_in_for_ragrail_or_ray_ones() -> None:
    """The external list must not become a way round the checks above: no ragrail or Ray names."""
    for name in EXTERNAL_METRICS:
        assert not name.lower().startswith(("ragrail", "ray_")), name
    assert not EXTERNAL_METRICS.keys() & (gateway_metric_names() | service_metric_names() | RAY_METRICS.keys())


def test_gpu_panel_prefers_dcgm_and_falls_back_to_ray(tmp_path: Path) -> None:
    """The GPU panel's queries on synthetic series: Ray's only without DCGM, DCGM's when present."""
    tool = promtool()
    dashboard = json.loads(DASHBOARD_FILE.read_text())
    [panel] = [p for p in dashboard["panels"] if p["title"] == "GPU utilisation"]
    # One target per (source, quantity); the legend says which source, "memory" goes right.
    by_legend = {
        (t["legendFormat"].rsplit("(", 1)[-1].rstrip(")"), t["legendFormat"].startswith("memory")): t["expr"]
        for t in panel["targets"]
    }
    assert len(by_legend) == len(panel["targets"]) == 4, by_legend
    # Grafana's $namespace as the dashboard's user picks it: "ai".
    by_legend = {k: v.replace("$namespace", "ai") for k, v in by_legend.items()}
    dcgm_util, dcgm_mem = by_legend["DCGM", False], by_legend["DCGM", True]
    ray_util, ray_mem = by_legend["Ray", False], by_legend["Ray", True]
    ray_series = [
        {"series": 'ray_node_gpus_utilization{namespace="ai",instance="10.0.0.7:8080",GpuIndex="0"}', "values": "42x10"},
        {"series": 'ray_node_gram_used{namespace="ai",instance="10.0.0.7:8080",GpuIndex="0"}', "values": "2048x10"},
        # Another team's Ray cluster: never on this dashboard.
        {"series": 'ray_node_gpus_utilization{namespace="other",instance="10.9.0.1:8080",GpuIndex="0"}', "values": "99x10"},
        {"series": 'ray_node_gram_used{namespace="other",instance="10.9.0.1:8080",GpuIndex="0"}', "values": "99x10"},
    ]
    dcgm_series = [
        {"series": 'DCGM_FI_DEV_GPU_UTIL{Hostname="gpu-node-1",gpu="0",UUID="GPU-1"}', "values": "40x10"},
        {"series": 'DCGM_FI_DEV_FB_USED{Hostname="gpu-node-1",gpu="0",UUID="GPU-1"}', "values": "2000x10"},
    ]
    ray_util_out = [{"labels": '{instance="10.0.0.7:8080",GpuIndex="0"}', "value": 42}]
    ray_mem_out = [{"labels": '{instance="10.0.0.7:8080",GpuIndex="0"}', "value": 2048}]

    def check(expr: str, expected: list[dict]) -> dict:
        return {"expr": expr, "eval_time": "5m", "exp_samples": expected}

    cases = {
        "rule_files": [],
        "evaluation_interval": "1m",
        "tests": [
            {   # Ray only (no DCGM exporter): Ray's series, nothing from DCGM.
                "interval": "1m",
                "input_series": ray_series,
                "promql_expr_test": [
                    check(ray_util, ray_util_out), check(ray_mem, ray_mem_out),
                    check(dcgm_util, []), check(dcgm_mem, []),
                ],
            },
            {   # Both: DCGM's series only, Ray's hidden.
                "interval": "1m",
                "input_series": ray_series + dcgm_series,
                "promql_expr_test": [
                    check(dcgm_util, [{"labels": '{Hostname="gpu-node-1",gpu="0"}', "value": 40}]),
                    check(dcgm_mem, [{"labels": '{Hostname="gpu-node-1",gpu="0"}', "value": 2000}]),
                    check(ray_util, []), check(ray_mem, []),
                ],
            },
        ],
    }
    path = tmp_path / "gpu.yaml"
    path.write_text(yaml.safe_dump(cases, sort_keys=False))
    result = subprocess.run([tool, "test", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_fallback_reasons_in_rules_exist() -> None:
    from ragrail.gateway.pipeline import FallbackReason

    reasons = {r.value for r in FallbackReason}
    used = set()
    for _, expr in rule_exprs(yaml.safe_load(RULES_FILE.read_text())):
        for match in re.finditer(r'reason=~?"([^"]*)"', expr):
            used |= set(match.group(1).split("|"))
    assert used and used <= reasons, used - reasons


# -- the dashboard itself ---------------------------------------------------------------------


def test_dashboard_is_well_formed() -> None:
    dashboard = json.loads(DASHBOARD_FILE.read_text())
    panels = dashboard["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    assert dashboard["uid"] and dashboard["title"]
    titles = set()
    for panel in panels:
        pos = panel["gridPos"]
        assert 0 <= pos["x"] and pos["x"] + pos["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        titles.add(panel["title"])
        assert panel["description"], f"{panel['title']}: every panel says what it shows"
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert [t["refId"] for t in panel["targets"]] == [chr(65 + i) for i in range(len(panel["targets"]))]
    # What the issue asks the dashboard to show.
    assert {
        "Traffic", "Error ratio", "Latency p50 / p95 / p99", "Stage latency p95", "Fallback ratio by reason",
        "Moderation flags", "Replicas per deployment", "GPU utilisation", "Qdrant latency",
        "Tokens per second", "Model latency p95", "Batch size and queue wait",
    } <= titles
