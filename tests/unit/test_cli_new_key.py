"""`ragrail new-key`: no default scope, an explicit flag for Ingest, an entry the gateway loads."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ragrail.cli.main import main
from ragrail.gateway.auth import Authenticator


def new_key(capsys: pytest.CaptureFixture[str], tmp_path: Path, *args: str) -> tuple[str, dict]:
    """Runs the command; returns the printed key and its entry, checked by loading it as a keys file."""
    assert main(["new-key", *args]) == 0
    out = capsys.readouterr().out
    first, _, rest = out.partition("\n")
    key = first.rsplit(" ", 1)[-1]
    [entry] = yaml.safe_load(rest.partition("\n")[2])
    path = tmp_path / "keys.yaml"
    path.write_text(yaml.safe_dump({"keys": [entry]}))
    assert Authenticator.from_file(path).authenticate([("authorization", f"Bearer {key}")]).name == entry["name"]
    return key, entry


def test_new_key_without_a_scope_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["new-key", "billing"]) == 2
    out, err = capsys.readouterr()
    assert "rg_" not in out  # no key was handed out
    assert "--pipelines" in err and "--ingest" in err
    assert main(["new-key", "billing", "--pipelines", " , "]) == 2


def test_new_key_for_pipelines_does_not_grant_ingest(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    _, entry = new_key(capsys, tmp_path, "ops", "--pipelines", "*")
    assert entry["pipelines"] == ["*"] and entry["ingest"] is False
    _, entry = new_key(capsys, tmp_path, "billing", "--pipelines", "rag, qa", "--rate", "2", "--burst", "4")
    assert (entry["pipelines"], entry["ingest"], entry["rate_per_s"], entry["burst"]) == (["rag", "qa"], False, 2.0, 4)


def test_new_key_ingest_flag(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    _, entry = new_key(capsys, tmp_path, "indexer", "--ingest")
    assert (entry["pipelines"], entry["ingest"]) == ([], True)
    _, entry = new_key(capsys, tmp_path, "both", "--pipelines", "rag", "--ingest")
    assert (entry["pipelines"], entry["ingest"]) == (["rag"], True)
