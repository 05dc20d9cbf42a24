"""Unit tests for versioned pipeline specs (ragrail.gateway.specs) and hot reload."""

from __future__ import annotations

import os
import shutil
from importlib import resources
from pathlib import Path

import pytest
from pydantic import ValidationError

from ragrail.common.config import load_settings
from ragrail.gateway.registry import RegistryLoader
from ragrail.gateway.specs import (
    ClassifySpec,
    GenerationSpec,
    PipelineSpec,
    Sampling,
    SpecError,
    load_pipeline_dir,
)
from tests.unit.fakes import FakeStack, make_runner

PACKAGED = Path(str(resources.files("ragrail").joinpath("pipelines")))
MINIMAL = "name: rag\nversion: 1\nkind: rag\n"


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    target = tmp_path / "pipelines"
    shutil.copytree(PACKAGED, target)
    return target


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text)
    return path


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path.name}"
    path.write_text(text.replace(old, new))


def only(folder: Path, *files: tuple[str, str]) -> Path:
    for existing in folder.iterdir():
        existing.unlink()
    for name, text in files:
        write(folder, name, text)
    return folder


# --- the packaged folder --------------------------------------------------------------


def test_the_packaged_folder_loads() -> None:
    loaded = load_pipeline_dir(PACKAGED)
    by_ref = {s.ref: s for s in loaded.specs}
    assert sorted(by_ref) == ["rag@1", "rag@2", "rag@3", "summarize_sentiment@1"]
    assert loaded.routes == {"rag": {1: 80, 2: 10, 3: 10}}  # rag@3: the grounded canary
    assert all(spec.kind is None for spec in by_ref.values()), "packaged specs are stage lists"
    assert by_ref["rag@1"].stage_names == by_ref["rag@2"].stage_names == (
        "moderate_input", "embed", "retrieve", "generate", "moderate_output"
    )
    assert by_ref["summarize_sentiment@1"].stage_names == ("moderate_input", "summarize", "classify")
    assert by_ref["rag@3"].stage_names == (
        "moderate_input", "embed", "retrieve", "generate", "ground", "moderate_output"
    )


def test_the_packaged_specs_are_reproducible() -> None:
    for spec in load_pipeline_dir(PACKAGED).specs:
        for stage in spec.stages:
            if isinstance(stage, Sampling):
                assert stage.temperature == 0, f"{spec.ref}: {stage.label}"


def test_the_packaged_rag_versions_differ_as_documented() -> None:
    by_ref = {s.ref: s for s in load_pipeline_dir(PACKAGED).specs}
    v1, v2 = by_ref["rag@1"], by_ref["rag@2"]
    r1, r2 = v1.stage("retrieve"), v2.stage("retrieve")
    assert (r1.top_k, r1.score_threshold) == (4, 0.35)
    assert (r2.top_k, r2.score_threshold) == (3, 0.4)
    assert v1.cache.ttl_s == 0 and v2.cache.ttl_s > 0
    assert v1.stage("generate").system_prompt != v2.stage("generate").system_prompt


def test_the_default_settings_point_at_the_packaged_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAGRAIL_DATA_DIR", raising=False)
    assert load_pipeline_dir(load_settings().pipelines_path).specs == load_pipeline_dir(PACKAGED).specs


def test_a_minimal_spec_takes_documented_defaults(folder: Path) -> None:
    only(folder, ("rag@1.yaml", MINIMAL))
    [spec] = load_pipeline_dir(folder).specs
    assert spec.ref == "rag@1"
    assert spec.generation.temperature == 0 and spec.generation.seed is None
    assert spec.cache.ttl_s == 0
    assert spec.retrieval.collection == "documents"
    assert spec.fallbacks.retrieval_miss == "I don't have information for that."


# --- strictness -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("old", "new", "field"),
    [
        ("top_k: 4", "top_kk: 4", "rag@1.yaml:12: stages.2.top_kk"),
        ("budget_s: 60", "budget_s: 60\nbogus: 1", "rag@1.yaml:6: bogus"),
        ("max_new_tokens: 160", "max_new_tokens: 160\n    temprature: 0", "rag@1.yaml:16: stages.3.temprature"),
        ('retrieval_miss: "', 'retreival_miss: "', "rag@1.yaml:21: fallbacks.retreival_miss"),
        ("type: embed", "type: summon", "rag@1.yaml:9: stages.1: Input tag 'summon' found using 'type' does not match"),
        ("check: output", "check: outptu", "rag@1.yaml:19: stages.4.check: Input should be 'input' or 'output'"),
        # A category the moderation service does not have is refused here, not sent to fail there.
        ("check: output", "check: output\n    categories: [toxicity, spam]",
         "rag@1.yaml:20: stages.4.categories.1: Input should be 'toxicity', 'prompt_injection' or 'pii'"),
    ],
)
def test_an_unknown_key_is_rejected_with_file_and_field(folder: Path, old: str, new: str, field: str) -> None:
    edit(folder / "rag@1.yaml", old, new)
    with pytest.raises(SpecError) as caught:
        load_pipeline_dir(folder)
    message = str(caught.value)
    assert "rag@1.yaml" in message
    assert field in message
    assert "rag@2.yaml" not in message, "only the broken file is blamed"


def test_an_invalid_value_is_rejected_with_file_and_field(folder: Path) -> None:
    edit(folder / "rag@2.yaml", "top_k: 3", "top_k: 0")
    with pytest.raises(SpecError, match=r"rag@2\.yaml:12: stages\.2\.top_k: Input should be greater than or equal to 1"):
        load_pipeline_dir(folder)


@pytest.mark.parametrize("section", ["generation", "classify"])
def test_sampling_without_a_seed_is_rejected(folder: Path, section: str) -> None:
    only(folder, ("s@1.yaml", f"name: s\nversion: 1\nkind: summarize_sentiment\n{section}:\n  temperature: 0.7\n"))
    with pytest.raises(SpecError, match=rf"s@1\.yaml:4: {section}: .*seed"):
        load_pipeline_dir(folder)


def test_sampling_with_a_seed_is_accepted() -> None:
    spec = GenerationSpec(temperature=0.7, seed=3)
    assert (spec.temperature, spec.seed) == (0.7, 3)
    with pytest.raises(ValidationError, match="seed"):
        GenerationSpec(temperature=0.1)
    with pytest.raises(ValidationError, match="seed"):
        ClassifySpec(temperature=0.1)


@pytest.mark.parametrize("name", ["Rag", "1rag", "rag@1", "rag bot", "", "r" * 65, "rag/1"])
def test_a_bad_name_is_rejected(folder: Path, name: str) -> None:
    only(folder, ("x.yaml", f"name: '{name}'\nversion: 1\nkind: rag\n"))
    with pytest.raises(SpecError, match=r"x\.yaml:1: spec: .*name"):
        load_pipeline_dir(folder)
    with pytest.raises(ValidationError):
        PipelineSpec(name=name, version=1, kind="rag")


@pytest.mark.parametrize("name", ["rag", "r", "summarize_sentiment", "faq-v2", "r" * 64])
def test_good_names_are_accepted(name: str) -> None:
    assert PipelineSpec(name=name, version=1, kind="rag").ref == f"{name}@1"


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("name: rag\nversion: 0\nkind: rag\n", "version"),
        ("name: rag\nversion: 1\nkind: chat\n", "kind"),
        ("name: rag\nkind: rag\n", "version"),
        ("- a list\n", "mapping"),
        ("", "mapping"),
        ("name: [unclosed\n", "not valid YAML"),
    ],
)
def test_malformed_specs_are_rejected(folder: Path, text: str, needle: str) -> None:
    write(folder, "broken.yaml", text)
    with pytest.raises(SpecError, match=needle) as caught:
        load_pipeline_dir(folder)
    assert "broken.yaml" in str(caught.value)


def test_a_duplicate_ref_is_rejected(folder: Path) -> None:
    shutil.copy(folder / "rag@1.yaml", folder / "rag-copy.yaml")
    with pytest.raises(SpecError, match="rag@1 is defined twice"):
        load_pipeline_dir(folder)


def test_a_route_to_a_missing_version_is_rejected(folder: Path) -> None:
    write(folder, "routes.yaml", "rag: {1: 90, 9: 10}\n")
    with pytest.raises(SpecError, match=r"routes\.yaml: rag@9 has no spec"):
        load_pipeline_dir(folder)


def test_a_route_for_a_missing_name_is_rejected(folder: Path) -> None:
    write(folder, "routes.yaml", "chat: {1: 100}\n")
    with pytest.raises(SpecError, match="chat@1 has no spec"):
        load_pipeline_dir(folder)


def test_a_route_with_only_zero_weights_is_rejected(folder: Path) -> None:
    write(folder, "routes.yaml", "rag: {1: 0, 2: 0}\n")
    with pytest.raises(SpecError, match="must not all be 0"):
        load_pipeline_dir(folder)


def test_a_zero_weight_beside_a_positive_one_is_allowed(folder: Path) -> None:
    write(folder, "routes.yaml", "rag: {1: 0, 2: 100}\n")
    assert load_pipeline_dir(folder).routes == {"rag": {1: 0, 2: 100}}


@pytest.mark.parametrize(
    "text",
    ["rag: {1: -5, 2: 10}\n", "rag: {'1': 90}\n", "rag: {1: 0.5}\n", "rag: {}\n", "rag: 1\n", "- rag\n"],
)
def test_malformed_routes_are_rejected(folder: Path, text: str) -> None:
    write(folder, "routes.yaml", text)
    with pytest.raises(SpecError, match=r"routes\.yaml"):
        load_pipeline_dir(folder)


def test_no_routes_file_means_no_routes(folder: Path) -> None:
    (folder / "routes.yaml").unlink()
    assert load_pipeline_dir(folder).routes == {}


def test_one_broken_file_rejects_the_whole_folder(folder: Path) -> None:
    edit(folder / "summarize_sentiment@1.yaml", "retries_on_invalid: 1", "retries_on_invalid: 9")
    with pytest.raises(SpecError) as caught:
        load_pipeline_dir(folder)
    assert "summarize_sentiment@1.yaml" in str(caught.value)
    assert "stages.2.retries_on_invalid" in str(caught.value)


def test_every_problem_is_reported_at_once(folder: Path) -> None:
    edit(folder / "rag@1.yaml", "top_k: 4", "top_kk: 4")
    edit(folder / "rag@2.yaml", "top_k: 3", "top_k: 99")
    with pytest.raises(SpecError) as caught:
        load_pipeline_dir(folder)
    assert "rag@1.yaml" in str(caught.value) and "rag@2.yaml" in str(caught.value)


def test_an_empty_or_missing_folder_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="no pipeline specs"):
        load_pipeline_dir(tmp_path)
    with pytest.raises(SpecError, match="not a directory"):
        load_pipeline_dir(tmp_path / "missing")


def test_classify_examples_must_use_known_labels() -> None:
    with pytest.raises(ValidationError, match="labels"):
        ClassifySpec(labels=("yes", "no"))  # the default examples are positive/negative/neutral
    spec = ClassifySpec(labels=("yes", "no"), examples=[{"text": "Is it raining? It is.", "label": "yes"}])
    assert spec.labels == ("yes", "no")


# --- reload ---------------------------------------------------------------------------


def make_loader(folder: Path) -> RegistryLoader:
    backends = FakeStack().backends
    return RegistryLoader(folder, lambda spec: backends, make_runner())


def bump_mtime(path: Path) -> None:
    """Coarse file-system clocks must not hide an edit from changed()."""
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 2_000_000_000))


def test_try_reload_keeps_none_and_the_error_on_a_broken_folder(folder: Path) -> None:
    loader = make_loader(folder)
    packaged = {path.stem for path in folder.glob("*@*.yaml")}
    assert {p.spec.ref for p in loader.load().all()} == packaged  # every spec of the folder, built
    edit(folder / "rag@2.yaml", "temperature: 0", "temperature: 0.9")

    assert loader.try_reload() is None
    assert "rag@2.yaml" in loader.last_error and "seed" in loader.last_error
    assert not loader.changed(), "the broken folder was seen; it is not retried until edited again"

    edit(folder / "rag@2.yaml", "temperature: 0.9", "temperature: 0.9\n    seed: 7")
    bump_mtime(folder / "rag@2.yaml")
    assert loader.changed()
    registry = loader.try_reload()
    assert registry is not None and loader.last_error == ""
    assert registry.resolve("rag@2").spec.stage("generate").seed == 7


def test_changed_notices_an_edited_added_or_removed_file(folder: Path) -> None:
    loader = make_loader(folder)
    loader.load()
    assert not loader.changed()

    path = folder / "rag@1.yaml"
    path.write_text(path.read_text() + "# a comment\n")
    bump_mtime(path)
    assert loader.changed()
    loader.load()
    assert not loader.changed()

    write(folder, "rag@3.yaml", "name: rag\nversion: 3\nkind: rag\n")
    assert loader.changed()
    assert loader.try_reload() is not None
    assert not loader.changed()

    (folder / "rag@3.yaml").unlink()
    assert loader.changed()


def test_changed_ignores_files_that_are_not_specs(folder: Path) -> None:
    loader = make_loader(folder)
    loader.load()
    write(folder, "README.md", "notes")
    assert not loader.changed()


# --- the published JSON schema ---------------------------------------------------------------


def test_the_json_schema_accepts_every_spec_the_loader_accepts_and_rejects_unknown_stages() -> None:
    import jsonschema
    import yaml

    from ragrail.gateway.specs import pipeline_json_schema

    validator = jsonschema.Draft202012Validator(pipeline_json_schema())
    examples = Path(__file__).parent / "data" / "examples"
    for path in [*PACKAGED.glob("*@*.yaml"), *examples.glob("*.yaml")]:
        raw = yaml.safe_load(path.read_text())
        assert not list(validator.iter_errors(raw)), path.name
    raw = yaml.safe_load((PACKAGED / "rag@1.yaml").read_text())
    raw["stages"].append({"type": "summon", "top_n": 2})
    assert list(validator.iter_errors(raw))
    raw["stages"][-1] = {"type": "embed", "bogus": 1}
    assert list(validator.iter_errors(raw))


def test_kind_and_stages_together_are_rejected(folder: Path) -> None:
    only(folder, ("x@1.yaml", "name: x\nversion: 1\nkind: rag\nstages:\n  - {type: embed}\n"))
    with pytest.raises(SpecError, match=r"x@1\.yaml:1: spec: .*stages or kind"):
        load_pipeline_dir(folder)


@pytest.mark.parametrize(
    ("stages", "reason"),
    [
        ("  - {type: retrieve}\n", "needs an embed stage before it"),
        ("  - {type: generate}\n", "grounded prompt needs a retrieve stage"),
        ("  - {type: generate, prompt: plain, stream: true}\n  - {type: classify}\n",
         "only output moderate stages may follow a streaming generate"),
        ("  - {type: moderate, check: input}\n  - {type: moderate, check: input}\n", "used twice"),
        ("  - {type: classify, input: query}\n  - {type: route, routes: {positive: {answer: sure}}}\n",
         "no route for labels"),
        ("  - {type: classify, input: query, labels: [a, b], examples: []}\n"
         "  - {type: route, routes: {a: {pipeline: nowhere@1}}, default: {answer: x}}\n", "nowhere@1: no such"),
    ],
)
def test_stage_lists_are_checked_as_a_whole(folder: Path, stages: str, reason: str) -> None:
    only(folder, ("x@1.yaml", f"name: x\nversion: 1\nstages:\n{stages}"))
    with pytest.raises(SpecError, match=reason) as caught:
        load_pipeline_dir(folder)
    assert "x@1.yaml" in str(caught.value)


def test_routes_that_loop_are_rejected(folder: Path) -> None:
    route = "  - {{type: classify, input: query, labels: [a, b], examples: []}}\n  - {{type: route, routes: {{a: {{pipeline: {0}}}}}, default: {{answer: x}}}}\n"
    only(
        folder,
        ("x@1.yaml", "name: x\nversion: 1\nstages:\n" + route.format("y@1")),
        ("y@1.yaml", "name: y\nversion: 1\nstages:\n" + route.format("x@1")),
    )
    with pytest.raises(SpecError, match=r"routes form a loop: x@1 -> y@1 -> x@1"):
        load_pipeline_dir(folder)
