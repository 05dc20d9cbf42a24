"""One real stack for the integration tier, started the way a user starts it.

`ragrail up` runs as a subprocess with a private config (free ports, a temp data
dir, the shared model cache) and is stopped with SIGINT at the end, which also
checks that Ctrl-C leaves no Ray process behind.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import grpc
import pytest
import yaml

READY = re.compile(r"ragrail ready: gateway on (\S+):(\d+)")
LOGS = re.compile(r"logs: (\S+)\)")
HAPROXY_DIR = re.compile(r"fast path: HAProxy files in (\S+),")
START_TIMEOUT_S = 300


@dataclass
class Stack:
    gateway_address: str
    serve_address: str
    metrics_url: str
    config_path: Path
    pipelines_dir: Path
    log_path: Path
    env: dict[str, str]
    ray_metrics_address: str = ""  # Ray's Prometheus endpoint (serve.metrics_export_port)
    pid: int = 0  # the `ragrail up` process: the Ray driver, parent of GCS and the raylet
    ray_temp_dir: str = ""  # named on every Ray process's command line
    haproxy_dir: str = ""  # the fast path's HAProxy files, on HAProxy's command line ("" without it)

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "ragrail.cli.main", *args, "--address", self.gateway_address],
            capture_output=True, text=True, timeout=timeout, env=self.env,
        )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def default_models_dir() -> str:
    return os.environ.get("RAGRAIL_MODELS_DIR") or os.path.expanduser("~/.local/share/ragrail/models")


HURRIED_GENERATE_TIMEOUT_S = 8

# Extra specs that make failures happen on purpose, next to the packaged ones.
TEST_SPECS = {
    "slow@1.yaml": {
        "name": "slow", "version": 1, "kind": "rag",
        "description": "generation timeout far below what the model needs",
        "generation": {"timeout_s": 0.05, "max_new_tokens": 64},
    },
    "orphan@1.yaml": {
        "name": "orphan", "version": 1, "kind": "rag",
        "description": "generation points at a Serve application that does not exist",
        "services": {"generation": "generation-missing"},
        "generation": {"timeout_s": 5},
    },
    "hurried@1.yaml": {
        "name": "hurried", "version": 1, "kind": "rag",
        "description": "rag with a short generate timeout: how long a pending generation service is waited for",
        "generation": {"timeout_s": HURRIED_GENERATE_TIMEOUT_S},
    },
}


# The tier checks what answers say, not how fast a shared 2-core machine produces them: the packaged
# specs' generate stages get most of the 60 s budget instead of 30 s (the `slow` spec owns timeouts).
CI_GENERATE_TIMEOUT_S = 50


def patient_generation(text: str) -> str:
    spec = yaml.safe_load(text)
    for stage in spec.get("stages") or []:
        if stage.get("type") == "generate" and "timeout_s" not in stage:
            stage["timeout_s"] = CI_GENERATE_TIMEOUT_S
    return yaml.safe_dump(spec, sort_keys=False)


def write_pipelines(tmp: Path) -> Path:
    folder = tmp / "pipelines"
    folder.mkdir()
    for spec in resources.files("ragrail").joinpath("pipelines").iterdir():
        if spec.name.endswith(".yaml"):
            (folder / spec.name).write_text(patient_generation(spec.read_text()))
    for name, spec in TEST_SPECS.items():
        (folder / name).write_text(yaml.safe_dump(spec))
    return folder


def write_config(tmp: Path) -> tuple[Path, dict]:
    config = yaml.safe_load(resources.files("ragrail.config").joinpath("ragrail.yaml").read_text())
    config["gateway"]["pipelines_dir"] = str(write_pipelines(tmp))
    config["gateway"]["reload_interval_s"] = 0.5
    grpc_port = free_port()
    config["data_dir"] = str(tmp / "data")
    config["models_dir"] = default_models_dir()  # conversion happens once per machine
    config["serve"].update(grpc_port=grpc_port, http_port=free_port(), metrics_export_port=free_port())
    config["gateway"].update(port=free_port(), metrics_port=free_port(), serve_address=f"127.0.0.1:{grpc_port}")
    path = tmp / "ragrail.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, config


def ray_processes(temp_dir: str) -> list[str]:
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if temp_dir in line]


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    yield from running_stack(tmp_path_factory.mktemp("stack"))


def running_stack(tmp: Path, mutate: Callable[[dict], None] | None = None) -> Iterator[Stack]:
    """Runs `ragrail up` with a private config (changed by ``mutate``) until the generator closes."""
    config_path, config = write_config(tmp)
    if mutate:
        mutate(config)
        config_path.write_text(yaml.safe_dump(config))
    log_path = tmp / "up.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.pop("RAGRAIL_DATA_DIR", None)
    env.pop("RAGRAIL_MODELS_DIR", None)
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ragrail.cli.main", "up", "--config", str(config_path)],
            stdout=log, stderr=subprocess.STDOUT, env=env, text=True,
        )
    ready, ray_temp = _wait_ready(proc, log_path)
    haproxy_dir = HAPROXY_DIR.search(log_path.read_text())
    yield Stack(
        gateway_address=f"{ready.group(1)}:{ready.group(2)}",
        serve_address=config["gateway"]["serve_address"],
        metrics_url=f"http://127.0.0.1:{config['gateway']['metrics_port']}/metrics",
        config_path=config_path,
        pipelines_dir=Path(config["gateway"]["pipelines_dir"]),
        log_path=log_path,
        env=env,
        ray_metrics_address=f"127.0.0.1:{config['serve']['metrics_export_port']}",
        pid=proc.pid,
        ray_temp_dir=ray_temp,
        haproxy_dir=haproxy_dir.group(1) if haproxy_dir else "",
    )
    proc.send_signal(signal.SIGINT)
    try:
        code = proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"ragrail up did not stop within 60 s of SIGINT; log:\n{log_path.read_text()[-3000:]}")
    assert code == 0, f"ragrail up exited with {code}; log:\n{log_path.read_text()[-3000:]}"
    time.sleep(1)
    leftovers = ray_processes(ray_temp)
    # HAProxy (the fast path) runs from its own folder, named in the log: it must be gone too.
    haproxy = HAPROXY_DIR.search(log_path.read_text())
    if haproxy:
        leftovers += ray_processes(haproxy.group(1))
    assert not leftovers, f"processes left after Ctrl-C: {leftovers}"


def _wait_ready(proc: subprocess.Popen[str], log_path: Path) -> tuple[re.Match[str], str]:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        text = log_path.read_text()
        ready = READY.search(text)
        logs = LOGS.search(text)
        if ready and logs:
            return ready, logs.group(1)
        if proc.poll() is not None:
            pytest.fail(f"ragrail up exited with {proc.returncode} before ready:\n{text[-4000:]}")
        time.sleep(0.5)
    proc.kill()
    pytest.fail(f"ragrail up not ready in {START_TIMEOUT_S} s:\n{log_path.read_text()[-4000:]}")


@pytest.fixture(scope="session")
def gateway_channel(stack: Stack) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(stack.gateway_address) as channel:
        yield channel


@pytest.fixture(scope="session")
def serve_channel(stack: Stack) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(stack.serve_address) as channel:
        yield channel
