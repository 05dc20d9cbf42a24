"""The example clients in clients/examples/: built with their own toolchains, run against an
in-process gateway (the integration tier runs the Node one against the real gateway).

Node/TypeScript: dependencies from scripts/install_client_tools.sh (npm ci); `npm run build`
generates the types from the .proto and type-checks with tsc. Go: vetted, built and run where
Debian's Go packages are installed (scripts/install_client_tools.sh, offline: build_offline.sh) or
where Go, buf and the two Go plugins can fetch go.mod's modules; skipped with the reason elsewhere.
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


DEBIAN_GRPC_GO = Path("/usr/share/gocode/src/google.golang.org/grpc")


def built_go_example(tmp_path: Path) -> Path:
    """Vets and builds the Go example; returns the binary.

    With Debian's Go packages (scripts/install_client_tools.sh installs them where apt works) it is
    built offline by build_offline.sh: Debian's Go 1.19, grpc-go 1.33 and protobuf-go 1.28 in
    GOPATH mode, as CI has no Go module proxy. Elsewhere, with a Go toolchain and buf, it is built
    the way its README tells users to (buf generate, go mod tidy, go build), which needs the proxy.
    """
    binary = tmp_path / "gatewayclient"
    offline_tools = ("go", "protoc", "protoc-gen-go", "protoc-gen-go-grpc")
    if all(shutil.which(tool) for tool in offline_tools) and DEBIAN_GRPC_GO.is_dir():
        done = subprocess.run(
            ["bash", str(GO_EXAMPLE / "build_offline.sh"), str(binary)],
            capture_output=True, text=True, timeout=600,
        )
        assert done.returncode == 0, f"build_offline.sh:\n{done.stdout}{done.stderr}"
        return binary
    if shutil.which("go") is None:
        pytest.skip(
            "no Go toolchain: the Go example is not compiled (scripts/install_client_tools.sh installs Debian's "
            "golang-go, golang-google-grpc-dev, protoc-gen-go and protoc-gen-go-grpc where apt-get works)"
        )
    from tests.unit.test_buf import find_buf

    buf = find_buf()
    missing = [tool for tool in ("protoc-gen-go", "protoc-gen-go-grpc") if shutil.which(tool) is None]
    if buf is None or missing:
        pytest.skip(f"Go is installed but not {', '.join(missing + ([] if buf else ['buf']))}: the Go example is not compiled")
    for command in ([buf, "generate"], ["go", "mod", "tidy"], ["go", "vet", "."], ["go", "build", "-o", str(binary), "."]):
        done = subprocess.run(command, cwd=GO_EXAMPLE, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{' '.join(command)}:\n{done.stdout}{done.stderr}"
    return binary


def run_go_example(
    binary: Path, address: str, *args: str, api_key: str = "", timeout_s: int = 20
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, RAGRAIL_ADDRESS=address, RAGRAIL_API_KEY=api_key, RAGRAIL_TIMEOUT=str(timeout_s))
    return subprocess.run([str(binary), *args], capture_output=True, text=True, env=env, timeout=timeout_s + 60)


def test_go_example_builds_and_calls_run_with_a_deadline_and_key(tmp_path: Path) -> None:
    binary = built_go_example(tmp_path)
    unavailable = Abort(grpc.StatusCode.UNAVAILABLE, "draining", (("retry-after", "1"),))
    busy = Abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "rate limit", (("retry-after", "2"),))
    script = Script().then("Run", RUN_OK, busy, unavailable)
    server, port = start_server(script)
    try:
        ok = run_go_example(binary, f"127.0.0.1:{port}", "Who founded Northwind Rail?", "rag@1", api_key="rg_go")
        refused = run_go_example(binary, f"127.0.0.1:{port}", "again")
        down = run_go_example(binary, f"127.0.0.1:{port}", "and again")
    finally:
        server.stop(0)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert json.loads(ok.stdout) == {
        "answer": RUN_OK.answer, "pipeline": "rag", "pipeline_version": 1, "fallback": False,
        "fallback_reason": "FALLBACK_REASON_UNSPECIFIED", "request_id": "r1",
    }
    first = script.attempts["Run"][0]
    assert first.request == pb.RunRequest(pipeline="rag@1", query="Who founded Northwind Rail?")
    assert first.metadata["authorization"] == "Bearer rg_go"
    assert first.time_remaining is not None and 0 < first.time_remaining <= 20.1
    assert script.attempts["Run"][1].request.pipeline == "rag"  # the default
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "ResourceExhausted: rate limit [2]" in refused.stderr
    assert down.returncode == 3 and "Unavailable: draining" in down.stderr, down.stdout + down.stderr
