"""The chart carries copies of what the code owns; they must match (`make chart` rewrites them)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from tests.chart.conftest import CHART, ROOT

SCRIPT = ROOT / "scripts" / "sync_chart_config.py"


def _sync_module():
    spec = importlib.util.spec_from_file_location("sync_chart_config", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("sync_chart_config", module)
    spec.loader.exec_module(module)
    return module


def test_packaged_config_copy_is_byte_identical() -> None:
    from importlib import resources

    packaged = resources.files("ragrail.config").joinpath("ragrail.yaml").read_bytes()
    copy = (CHART / "files" / "ragrail.yaml").read_bytes()
    assert copy == packaged, (
        "deploy/helm/ragrail/files/ragrail.yaml differs from services/ragrail/config/ragrail.yaml: "
        "run `make chart`"
    )


def test_every_generated_chart_file_is_up_to_date() -> None:
    diff = _sync_module().differences()
    assert not diff, f"chart copies out of date: {', '.join(diff)}: run `make chart`"


def test_sync_script_check_mode_agrees(tmp_path: Path) -> None:
    # The Makefile's `chart-check` target runs the script; it must say the same as the test.
    assert _sync_module().main(["--check"]) == 0, "run `make chart`"


def test_pipeline_reference_has_a_row_per_option_of_every_stage_type() -> None:
    """docs/pipeline-spec.md: a section per stage type, each option with its description."""
    from typing import get_args

    from ragrail.gateway.specs import Stage

    text = (ROOT / "docs" / "pipeline-spec.md").read_text()
    [union, _] = get_args(Stage)
    for model in get_args(union):
        stage_type = model.model_fields["type"].annotation.__args__[0]
        section = text.split(f"\n### `{stage_type}`\n", 1)[1].split("\n### ", 1)[0]
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name}: give its Field a description"
            assert f"| `{name}` |" in section and field.description.split("\n")[0] in section, (stage_type, name)


def test_a_stale_pipeline_reference_fails_the_check(monkeypatch) -> None:
    """A description changed in specs.py and docs/pipeline-spec.md not regenerated."""
    module = _sync_module()
    render = module.pipeline_reference

    def edited_models(schema: dict) -> str:
        schema["$defs"]["RetrieveStage"]["properties"]["top_k"]["description"] = "passages to fetch"
        return render(schema)

    monkeypatch.setattr(module, "pipeline_reference", edited_models)
    assert module.differences() == ["docs/pipeline-spec.md"]
    assert module.main(["--check"]) == 1


def test_a_stage_option_without_a_description_is_refused(monkeypatch) -> None:
    module = _sync_module()
    from ragrail.gateway.specs import pipeline_json_schema

    schema = pipeline_json_schema()
    del schema["$defs"]["RetrieveStage"]["properties"]["top_k"]["description"]
    try:
        module.pipeline_reference(schema)
    except ValueError as error:
        assert "RetrieveStage.top_k has no description" in str(error)
    else:
        raise AssertionError("a stage option without a description was rendered")
