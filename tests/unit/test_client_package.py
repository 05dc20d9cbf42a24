"""`pip install ./clients/python` into a fresh virtualenv: no torch, no Ray, no server code.

The helpers create a venv from the base interpreter (not .venv), install the package from the
checkout (grpcio and protobuf from the package index: 13 s on an idle machine here, 50 s with
the cores busy) and run a caller script in it. The test that uses them runs in the integration
tier, against the real gateway (tests/integration/test_client_gateway.py), so the unit tier
stays fast.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CLIENT = ROOT / "clients" / "python"

# Runs inside the fresh venv: argv = address, query.
CALLER = """
import importlib.util, json, sys
for heavy in ("torch", "ray", "ragrail", "transformers"):
    assert importlib.util.find_spec(heavy) is None, heavy + " is installed"
from ragrail_client import Client, Final
with Client(sys.argv[1], timeout=120) as client:
    r = client.run(sys.argv[2])
    final = [e for e in client.run_stream(sys.argv[2]) if isinstance(e, Final)][0].response
    names = sorted({p.name for p in client.pipelines()})
print(json.dumps({"answer": r.answer, "pipeline": r.pipeline, "version": r.pipeline_version,
                  "fallback": r.fallback, "stream_answer": final.answer, "pipelines": names}))
"""


def fresh_venv(folder: Path) -> Path:
    """A new venv with only ragrail-client (and its two dependencies) installed; its python."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True, env=env, timeout=120)
    python = folder / "bin" / "python"
    installed = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(CLIENT)],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    return python


def installed(python: Path) -> set[str]:
    """Distribution names in the venv, less the packaging tools venv puts there itself."""
    listed = subprocess.run([str(python), "-m", "pip", "list", "--format=json"], capture_output=True, text=True)
    names = {p["name"].lower().replace("_", "-") for p in json.loads(listed.stdout)}
    return names - {"pip", "setuptools", "wheel", "typing-extensions"}


def call_from(python: Path, address: str, query: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    done = subprocess.run(
        [str(python), "-c", CALLER, address, query], capture_output=True, text=True, env=env, timeout=300, cwd="/"
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)


@pytest.mark.parametrize("name", ["pyproject.toml", "README.md", "src/ragrail_client/py.typed"])
def test_package_files_exist(name: str) -> None:
    assert (CLIENT / name).is_file()
