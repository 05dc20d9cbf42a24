"""helm lint --strict (Kubernetes 1.32), and that breaking the chart or its values is caught."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chart.conftest import CHART, KUBE_VERSION, SCENARIOS, chart_available, render

# The Qdrant subchart is declared in Chart.yaml but downloaded by `helm dependency update`
# (no network here, and it is not vendored). Lint reports that as a warning, which --strict
# makes an error; it is the one finding allowed, and only while charts/ lacks the archive.
MISSING_QDRANT = "chart directory is missing these dependencies: qdrant"
WARNING = 2


def _findings(report: dict) -> list[str]:
    vendored = any((CHART / "charts").glob("qdrant-*.tgz"))
    problems = [m["error"] for m in report["messages"] if m["severity"] >= WARNING]
    problems += report["errors"]
    return sorted({p for p in problems if vendored or p != MISSING_QDRANT})


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_lint_strict_is_clean(scenario: str) -> None:
    chart_available()
    import helm_python

    report = helm_python.lint(CHART, SCENARIOS[scenario], strict=True, kube_version=f"v{KUBE_VERSION}")
    assert _findings(report) == []


def test_the_only_tolerated_lint_finding_is_the_undownloaded_subchart() -> None:
    chart_available()
    import helm_python

    deps = {d["name"]: d for d in helm_python.dependency_list(CHART)}
    assert deps["qdrant"]["version"] == "1.19.0"
    assert deps["qdrant"]["repository"] == "https://qdrant.github.io/qdrant-helm"
    if deps["qdrant"]["status"] != "ok":
        report = helm_python.lint(CHART, {}, strict=True, kube_version=f"v{KUBE_VERSION}")
        assert MISSING_QDRANT in report["errors"]


def test_a_broken_template_fails_lint_and_render(chart_copy: Path) -> None:
    chart_available()
    import helm_python

    template = chart_copy / "templates" / "gateway-service.yaml"
    template.write_text(template.read_text() + "\n  broken: {{ .Values.gateway.service.port \n")
    report = helm_python.lint(chart_copy, {}, strict=True, kube_version=f"v{KUBE_VERSION}")
    assert any("gateway-service.yaml" in e for e in report["errors"]), report["errors"]
    with pytest.raises(helm_python.HelmError):
        render({}, chart=chart_copy)


def test_a_template_producing_invalid_yaml_fails_lint(chart_copy: Path) -> None:
    chart_available()
    import helm_python

    template = chart_copy / "templates" / "gateway-pdb.yaml"
    template.write_text(template.read_text().replace("  selector:", "  selector:\n   - oops: [", 1))
    report = helm_python.lint(chart_copy, {}, strict=True, kube_version=f"v{KUBE_VERSION}")
    assert any("unable to parse YAML" in e for e in _findings(report)), report


@pytest.mark.parametrize(
    ("values", "where"),
    [
        ({"gateway": {"replicas": "two"}}, "/gateway/replicas"),
        ({"gateway": {"replica": 2}}, "'replica'"),
        ({"config": {"gateway": {"prot": 50051}}}, "'prot'"),
        ({"config": {"gateway": {"port": "50051"}}}, "/config/gateway/port"),
        (
            {"config": {"moderation": {"categories": {"toxicity": {"threshold": 2}}}}},
            "/config/moderation/categories/toxicity/threshold",
        ),
        ({"rayService": {"workerGroups": [{"name": "gpu", "replicas": 1, "minReplicas": 0, "maxReplicas": 2, "gpus": "one"}]}}, "gpus"),
        ({"gateway": {"auth": {"keys": [{"name": "x", "sha256": "not-a-hash", "pipelines": ["*"], "rate_per_s": 1, "burst": 1}]}}}, "sha256"),
        ({"gateway": {"auth": {"keys": [{"name": "x", "sha256": "a" * 64, "pipelines": [], "rate_per_s": 1, "burst": 1}]}}}, "pipelines"),
        ({"gateway": {"auth": {"keys": [{"name": "x", "sha256": "a" * 64, "pipelines": ["*"], "ingest": "yes", "rate_per_s": 1, "burst": 1}]}}}, "ingest"),
        ({"pipelines": {"rag@3.yaml": "name: rag"}}, "rag@3.yaml"),
        ({"monitoring": {"serviceMonitor": {"interval": "often"}}}, "interval"),
        ({"gateway": {"healthPort": 0}}, "/gateway/healthPort"),
        ({"networkPolicy": {"gateway": {"healthFrom": "nodes"}}}, "/networkPolicy/gateway/healthFrom"),
    ],
)
def test_invalid_values_are_rejected(values: dict, where: str) -> None:
    chart_available()
    import helm_python

    with helm_python.Chart.load(CHART) as chart, pytest.raises(helm_python.HelmValuesError) as caught:
        chart.validate_schema(values)
    assert where in str(caught.value)
    # ...and so does an install: Helm validates the values before rendering.
    with pytest.raises(helm_python.HelmValuesError):
        render(values)
    report = helm_python.lint(CHART, values, strict=True, kube_version=f"v{KUBE_VERSION}")
    assert any(where in e for e in report["errors"])


def test_every_default_value_is_described_by_the_schema() -> None:
    """additionalProperties is false on every chart-owned mapping: walking the defaults, each
    key must be declared (the schema check passing would not prove it for open objects)."""
    chart_available()
    import helm_python

    with helm_python.Chart.load(CHART) as chart:
        schema, values = chart.schema, chart.values
    assert schema is not None
    defs = schema["$defs"]

    def resolve(node: dict) -> dict:
        while "$ref" in node:
            node = defs[node["$ref"].split("/")[-1]]
        return node

    def walk(value: object, node: dict, path: str) -> None:
        node = resolve(node)
        if not isinstance(value, dict) or "properties" not in node:
            return
        for key, sub in value.items():
            if key in node["properties"]:
                walk(sub, node["properties"][key], f"{path}.{key}")
            else:
                assert node.get("additionalProperties") not in (False, None), f"{path}.{key} is not in the schema"

    walk(values, schema, "")
    open_objects = []

    def find_open(node: dict, path: str) -> None:
        node = resolve(node)
        if node.get("type") == "object" and "properties" in node and node.get("additionalProperties") is not False:
            open_objects.append(path)
        for key, sub in node.get("properties", {}).items():
            find_open(sub, f"{path}.{key}")

    find_open(schema, "")
    # Only the subchart's values pass through unchecked (they are the qdrant chart's to validate).
    assert open_objects == [".qdrant"]
