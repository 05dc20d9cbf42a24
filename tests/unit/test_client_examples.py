"""The example clients in clients/examples/: built with their own toolchains, run against an
in-process gateway (the integration tier runs the Node one against the real gateway).

Node/TypeScript: dependencies from scripts/install_client_tools.sh (npm ci); `npm run build`
generates the types from the .proto and type-checks with tsc. Go: built only where `go`,
protoc-gen-go and protoc-gen-go-grpc are on PATH (not on this project's machines).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import grpc
import pytest

from ragrail_client import pb
from tests.unit.test_client import RUN_OK, Abort, Script, start_server

ROOT = Path(__file__).resolve().parents[2]
NODE_EXAMPLE = ROOT / "clients" / "examples" / "node"
GO_EXAMPLE = ROOT / "clients" / "examples" / "go"


def built_node_example() -> Path:
    """Builds the TypeScript example (types generated, tsc); returns its compiled entry point."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("Node.js/npm not installed: the TypeScript example is not checked")
    if not (NODE_EXAMPLE / "node_modules" / ".bin" / "tsc").exists():
        pytest.skip("the TypeScript example's dependencies are missing: run scripts/install_client_tools.sh")
    build = subprocess.run(["npm", "run", "build"], cwd=NODE_EXAMPLE, capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stdout + build.stderr
    return NODE_EXAMPLE / "dist" / "src" / "run.js"


def run_node_example(
    entry: Path, address: str, *args: str, api_key: str = "", timeout_s: int = 20
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, RAGRAIL_ADDRESS=address, RAGRAIL_API_KEY=api_key, RAGRAIL_TIMEOUT=str(timeout_s))
    return subprocess.run(["node", str(entry), *args], capture_output=True, text=True, env=env, timeout=120)


def test_typescript_example_type_checks_and_calls_run_with_a_deadline_and_key() -> None:
    entry = built_node_example()
    busy = Abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "rate limit", (("retry-after", "2"),))
    script = Script().then("Run", RUN_OK, busy)
    server, port = start_server(script)
    try:
        ok = run_node_example(entry, f"127.0.0.1:{port}", "Who founded Northwind Rail?", "rag@1", api_key="rg_node")
        refused = run_node_example(entry, f"127.0.0.1:{port}", "again")
    finally:
        server.stop(0)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert json.loads(ok.stdout) == {
        "answer": RUN_OK.answer, "pipeline": "rag", "pipeline_version": 1, "fallback": False,
        "fallback_reason": "FALLBACK_REASON_UNSPECIFIED", "request_id": "r1", "citations": [],
    }
    first = script.attempts["Run"][0]
    assert first.request == pb.RunRequest(pipeline="rag@1", query="Who founded Northwind Rail?")
    assert first.metadata["authorization"] == "Bearer rg_node"
    assert first.time_remaining is not None and 0 < first.time_remaining <= 20.1
    assert refused.returncode == 1 and "RESOURCE_EXHAUSTED: rate limit (retry after 2 s)" in refused.stderr


def test_go_example_builds() -> None:
    missing = [tool for tool in ("go", "protoc-gen-go", "protoc-gen-go-grpc") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"no Go toolchain here ({', '.join(missing)} not on PATH): the Go example is not compiled")
    from tests.unit.test_buf import find_buf

    buf = find_buf()
    if buf is None:
        pytest.skip("buf not installed: run scripts/install_client_tools.sh")
    for command in ([buf, "generate"], ["go", "mod", "tidy"], ["go", "build", "-o", "gatewayclient", "."]):
        done = subprocess.run(command, cwd=GO_EXAMPLE, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{' '.join(command)}:\n{done.stdout}{done.stderr}"
