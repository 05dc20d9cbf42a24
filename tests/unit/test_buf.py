"""`buf lint`, `buf format` and `buf breaking` over protos/, with the pinned buf from npm.

scripts/install_client_tools.sh (run by `make test` through scripts/install_tools.sh) installs
buf 1.75.0 into .tools/buf; where npm cannot, these tests skip saying so. `buf breaking` compares
against the newest release tag (`v*`) when there is one, else against the main branch's committed
protos (a developer's uncommitted change; in CI, where HEAD is main, it compares main to itself).
The language options every .proto must carry are checked without buf.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROTOS = sorted((ROOT / "protos").rglob("*.proto"))
BUF_VERSION = "1.75.0"
LANGUAGE_OPTIONS = ("go_package", "java_package", "java_multiple_files", "java_outer_classname", "csharp_namespace")


def find_buf() -> str | None:
    local = ROOT / ".tools" / "buf" / "node_modules" / ".bin" / "buf"
    return str(local) if local.exists() else shutil.which("buf")


@pytest.fixture(scope="module")
def buf() -> str:
    found = find_buf()
    if not found:
        pytest.skip("buf not installed: run scripts/install_client_tools.sh (needs npm and the npm registry)")
    return found


def run_buf(buf: str, *args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([buf, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_buf_is_the_pinned_version(buf: str) -> None:
    if buf != str(ROOT / ".tools" / "buf" / "node_modules" / ".bin" / "buf"):
        pytest.skip(f"using buf from PATH ({buf}), not the pinned one")
    assert run_buf(buf, "--version").stdout.strip() == BUF_VERSION


def test_buf_lint_is_clean(buf: str) -> None:
    done = run_buf(buf, "lint")
    assert done.returncode == 0, done.stdout + done.stderr


def test_buf_format_has_no_diff(buf: str) -> None:
    done = run_buf(buf, "format", "--diff", "--exit-code")
    assert done.returncode == 0, "run `buf format -w`:\n" + done.stdout + done.stderr


def against() -> str:
    tags = subprocess.run(
        ["git", "tag", "--list", "v*", "--sort=-v:refname"], cwd=ROOT, capture_output=True, text=True
    ).stdout.split()
    return f".git#tag={tags[0]},subdir=protos" if tags else ".git#branch=main,subdir=protos"


def test_buf_breaking_against_the_last_release(buf: str) -> None:
    if not (ROOT / ".git").exists() or shutil.which("git") is None:
        pytest.skip("not a git checkout: nothing to compare against")
    has_main = subprocess.run(["git", "rev-parse", "--verify", "-q", "main"], cwd=ROOT, capture_output=True)
    if has_main.returncode != 0 and "tag=" not in against():
        pytest.skip("no release tag and no main branch in this clone")
    done = run_buf(buf, "breaking", "--against", against())
    assert done.returncode == 0, f"breaking changes against {against()}:\n" + done.stdout + done.stderr


def test_lint_and_breaking_configs_catch_violations(buf: str, tmp_path: Path) -> None:
    """The repo's buf.yaml on a scratch module: an uncommented, badly named proto fails lint; a
    renumbered field fails breaking."""
    old, new = tmp_path / "old", tmp_path / "new"
    for folder, number in ((old, 1), (new, 2)):
        (folder / "protos" / "demo" / "v1").mkdir(parents=True)
        shutil.copy(ROOT / "buf.yaml", folder / "buf.yaml")
        (folder / "protos" / "demo" / "v1" / "demo.proto").write_text(
            f'syntax = "proto3";\n\npackage demo.v1;\n\nmessage Thing {{\n  string name = {number};\n}}\n'
        )
    lint = run_buf(buf, "lint", cwd=new)
    assert lint.returncode != 0 and "should have a non-empty comment" in lint.stdout, lint.stdout + lint.stderr
    breaking = run_buf(buf, "breaking", "--against", str(old), cwd=new)
    assert breaking.returncode != 0 and "name" in breaking.stdout, breaking.stdout + breaking.stderr


@pytest.mark.parametrize("proto", PROTOS, ids=lambda p: str(p.relative_to(ROOT / "protos")))
def test_every_proto_carries_language_options(proto: Path) -> None:
    text = proto.read_text()
    missing = [o for o in LANGUAGE_OPTIONS if not re.search(rf"^option {o} = ", text, re.M)]
    assert not missing, f"{proto.name}: add option lines {missing} (see the other protos)"
    service = proto.parent.parent.name
    assert f'option go_package = "ragrail/gen/go/ragrail/{service}/v1;{service}v1";' in text
