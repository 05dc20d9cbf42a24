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
