"""Unit tests for ragrail.gateway.registry: name and version lookup, traffic splits,
and building registries from a spec folder (RegistryLoader)."""

from __future__ import annotations

import shutil
from collections import Counter
from importlib import resources
from pathlib import Path

import pytest

from ragrail.common.errors import InvalidArgument, NotFound
from ragrail.gateway.admission import Admission
from ragrail.gateway.backends import Backends
from ragrail.gateway.pipeline import Pipeline, build_pipeline
from ragrail.gateway.registry import PipelineRegistry, RegistryLoader, pick_version
from ragrail.gateway.specs import PipelineSpec, SpecError
from tests.unit.fakes import FakeStack, make_runner

PACKAGED = Path(str(resources.files("ragrail").joinpath("pipelines")))


def make(name: str, version: int) -> Pipeline:
    spec = PipelineSpec(name=name, version=version, kind="rag", max_input_chars=100)
    return build_pipeline(spec, FakeStack().backends, make_runner())


@pytest.fixture
def pipelines() -> dict[str, Pipeline]:
    # Listed out of order on purpose: the default must not depend on config order.
    return {"rag@2": make("rag", 2), "rag@1": make("rag", 1), "rag@10": make("rag", 10), "qa@1": make("qa", 1)}


@pytest.fixture
def registry(pipelines: dict[str, Pipeline]) -> PipelineRegistry:
    return PipelineRegistry(list(pipelines.values()))


# --- resolution without routes --------------------------------------------------------


def test_bare_name_resolves_to_the_highest_version(registry: PipelineRegistry, pipelines: dict) -> None:
    assert registry.resolve("rag") is pipelines["rag@10"]  # numeric, not lexical: 10 > 2
    assert registry.resolve("qa") is pipelines["qa@1"]
    assert registry.resolve("  rag \n") is pipelines["rag@10"]
    assert registry.resolve("rag", "any caller") is pipelines["rag@10"]


def test_is_default_marks_only_the_highest_version(registry: PipelineRegistry, pipelines: dict) -> None:
    assert [k for k, p in pipelines.items() if registry.is_default(p)] == ["rag@10", "qa@1"]


@pytest.mark.parametrize("ref", ["rag@1", "rag@2", "rag@10", "qa@1"])
def test_name_at_version_resolves_exactly(registry: PipelineRegistry, pipelines: dict, ref: str) -> None:
    assert registry.resolve(ref) is pipelines[ref]
    assert registry.resolve(f" {ref} ") is pipelines[ref]


def test_all_is_sorted_by_name_then_version(registry: PipelineRegistry) -> None:
    assert [(p.name, p.version) for p in registry.all()] == [
        ("qa", 1),
        ("rag", 1),
        ("rag", 2),
        ("rag", 10),
    ]


@pytest.mark.parametrize("ref", ["nope", "nope@1", "RAG", "@1"])
def test_unknown_name_is_not_found(registry: PipelineRegistry, ref: str) -> None:
    with pytest.raises(NotFound):
        registry.resolve(ref)


def test_unknown_name_lists_the_known_ones(registry: PipelineRegistry) -> None:
    with pytest.raises(NotFound, match="qa, rag"):
        registry.resolve("nope")


def test_an_empty_registry_says_so() -> None:
    with pytest.raises(NotFound, match="none"):
        PipelineRegistry([]).resolve("rag")


@pytest.mark.parametrize("ref", ["rag@3", "rag@0", "qa@2"])
def test_unknown_version_is_not_found(registry: PipelineRegistry, ref: str) -> None:
    with pytest.raises(NotFound, match=ref):
        registry.resolve(ref)


@pytest.mark.parametrize(
    "ref", ["rag@", "rag@x", "rag@1.0", "rag@-1", "rag@ 1", "rag@v1", "rag@²", "rag@1@2", "rag@١"]
)
def test_non_numeric_version_is_invalid(registry: PipelineRegistry, ref: str) -> None:
    with pytest.raises(InvalidArgument):
        registry.resolve(ref)


@pytest.mark.parametrize("ref", ["", "   ", "\n"])
def test_empty_reference_is_invalid(registry: PipelineRegistry, ref: str) -> None:
    with pytest.raises(InvalidArgument, match="must not be empty"):
        registry.resolve(ref)


# --- traffic splits -------------------------------------------------------------------


@pytest.fixture
def routed(pipelines: dict[str, Pipeline]) -> PipelineRegistry:
    return PipelineRegistry(list(pipelines.values()), routes={"rag": {1: 90, 2: 10}})


def test_a_route_is_sticky_per_caller(routed: PipelineRegistry) -> None:
    for caller in ("alice", "bob", "session-123", "k" * 200):
        first = routed.resolve("rag", caller)
        assert all(routed.resolve("rag", caller) is first for _ in range(20))
        assert first.version in (1, 2)


def test_a_route_splits_callers_by_weight(routed: PipelineRegistry) -> None:
    counts = Counter(routed.resolve("rag", f"caller-{i}").version for i in range(4000))
    assert set(counts) == {1, 2}, "rag@10 has no route weight, so a bare name never reaches it"
    assert 0.07 < counts[2] / 4000 < 0.13


def test_a_route_without_a_caller_key_is_random_by_weight(routed: PipelineRegistry) -> None:
    counts = Counter(routed.resolve("rag").version for _ in range(4000))
    assert set(counts) == {1, 2}
    assert 0.07 < counts[2] / 4000 < 0.13


def test_an_explicit_version_ignores_the_route(routed: PipelineRegistry, pipelines: dict) -> None:
    assert routed.resolve("rag@10", "alice") is pipelines["rag@10"]


def test_names_without_a_route_still_get_the_highest(routed: PipelineRegistry, pipelines: dict) -> None:
    assert routed.resolve("qa", "alice") is pipelines["qa@1"]


def test_is_default_is_the_heaviest_route(routed: PipelineRegistry, pipelines: dict) -> None:
    assert [k for k, p in pipelines.items() if routed.is_default(p)] == ["rag@1", "qa@1"]
    tie = PipelineRegistry(list(pipelines.values()), routes={"rag": {1: 50, 2: 50}})
    assert [k for k, p in pipelines.items() if tie.is_default(p)] == ["rag@2", "qa@1"]  # ties: the higher


def test_pick_version_is_deterministic_and_skips_zero_weights() -> None:
    assert pick_version({1: 1, 2: 1}, "rag", "alice") == pick_version({1: 1, 2: 1}, "rag", "alice")
    assert {pick_version({1: 0, 2: 5, 3: 0}, "rag", f"c{i}") for i in range(200)} == {2}
    assert {pick_version({1: 0, 2: 5}, "rag", "") for _ in range(200)} == {2}
    # The name is part of the hash: one caller is not pinned to "the first version" everywhere.
    assert len({pick_version({1: 1, 2: 1}, f"name{i}", "alice") for i in range(50)}) == 2


# --- RegistryLoader -------------------------------------------------------------------


def copy_packaged(tmp_path: Path) -> Path:
    folder = tmp_path / "pipelines"
    shutil.copytree(PACKAGED, folder)
    return folder


def make_loader(folder: Path) -> tuple[RegistryLoader, list[PipelineSpec]]:
    seen: list[PipelineSpec] = []
    backends = FakeStack().backends

    def backends_for(spec: PipelineSpec) -> Backends:
        seen.append(spec)
        return backends

    return RegistryLoader(folder, backends_for, make_runner()), seen


def test_loader_builds_the_packaged_pipelines() -> None:
    loader, seen = make_loader(PACKAGED)
    registry = loader.load()

    assert [(p.name, p.version) for p in registry.all()] == [
        ("rag", 1),
        ("rag", 2),
        ("rag", 3),
        ("summarize_sentiment", 1),
    ]
    assert registry.resolve("rag@1").stages == ("moderate_input", "embed", "retrieve", "generate", "moderate_output")
    assert registry.resolve("summarize_sentiment").stages == ("moderate_input", "summarize", "classify")
    assert registry.routes == {"rag": {1: 80, 2: 10, 3: 10}}
    assert registry.resolve("rag@3").stages == (
        "moderate_input", "embed", "retrieve", "generate", "ground", "moderate_output",
    )
    assert {p.version for p in (registry.resolve("rag", f"c{i}") for i in range(200))} == {1, 2, 3}
    assert registry.is_default(registry.resolve("rag@1")) and not registry.is_default(registry.resolve("rag@2"))
    assert sorted(s.ref for s in seen) == ["rag@1", "rag@2", "rag@3", "summarize_sentiment@1"]
    assert loader.last_error == "" and not loader.changed()


def test_every_pipeline_shares_the_runner_and_the_prompt_key() -> None:
    loader, _ = make_loader(PACKAGED)
    registry = loader.load()
    assert {id(p.runner) for p in registry.all()} == {id(loader.runner)}
    assert {p.tag_key for p in registry.all()} == {loader.tag_key}
    assert {p.tag_key for p in loader.load().all()} == {loader.tag_key}, "stable across reloads"


def test_each_pipeline_has_its_admission(tmp_path: Path) -> None:
    loader, _ = make_loader(PACKAGED)
    registry = loader.load()
    for p in registry.all():
        admission = registry.admission(p)
        assert isinstance(admission, Admission)
        assert admission.name == f"{p.name}@{p.version}"
        assert (admission.max_in_flight, admission.max_queue) == (
            p.spec.admission.max_in_flight,
            p.spec.admission.max_queue,
        )


def test_a_reload_keeps_admissions_whose_limits_did_not_change(tmp_path: Path) -> None:
    folder = copy_packaged(tmp_path)
    loader, _ = make_loader(folder)
    before = loader.load()
    path = folder / "rag@2.yaml"
    path.write_text(path.read_text() + "admission:\n  max_in_flight: 2\n  max_queue: 1\n")

    after = loader.try_reload()

    assert after is not None
    assert after.admission(after.resolve("rag@1")) is before.admission(before.resolve("rag@1"))
    new = after.admission(after.resolve("rag@2"))
    assert new is not before.admission(before.resolve("rag@2"))
    assert (new.max_in_flight, new.max_queue) == (2, 1)
    assert after.resolve("rag@2") is not before.resolve("rag@2"), "a reload builds new pipelines"


def test_a_broken_reload_keeps_nothing_and_a_fixed_one_clears_the_error(tmp_path: Path) -> None:
    folder = copy_packaged(tmp_path)
    loader, _ = make_loader(folder)
    loader.load()
    good = (folder / "rag@1.yaml").read_text()
    (folder / "rag@1.yaml").write_text(good.replace("top_k: 4", "top_kk: 4"))

    assert loader.try_reload() is None
    assert "rag@1.yaml:12: stages.2.top_kk: Extra inputs are not permitted" in loader.last_error

    (folder / "rag@1.yaml").write_text(good)
    registry = loader.try_reload()
    assert registry is not None and loader.last_error == ""
    assert registry.resolve("rag@1").spec.stage("retrieve").top_k == 4


def test_load_raises_on_a_broken_folder(tmp_path: Path) -> None:
    folder = copy_packaged(tmp_path)
    (folder / "routes.yaml").write_text("rag: {1: 90, 9: 10}\n")
    loader, seen = make_loader(folder)
    with pytest.raises(SpecError, match="rag@9"):
        loader.load()
    assert seen == [], "nothing is built from a rejected folder"
