"""A private local stack to inject faults into: started, inspected and stopped by PID.

Used by the chaos suite (loadtest/chaos.py), the durable-ingestion test
(tests/integration/test_ingest_durable.py) and, for its extra `ragrail gateway` processes
(``GatewayProcess``), the shared feedback store test (tests/integration/test_feedback_stack.py). Replica processes are found by the
process title Ray gives each actor (``ray::ServeReplica:<app>:<deployment>``),
among the processes of this stack only: `ragrail up` and its descendants, plus any
process naming the stack's Ray temp dir. Ray's state API would need the dashboard,
which the local stack leaves off (it is one of the listeners issue 11 closed).
"""

from __future__ import annotations

import copy
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import grpc
import psutil
import yaml

from ragrail.gateway.v1 import gateway_pb2 as pb
from ragrail.gateway.v1 import gateway_pb2_grpc

READY = re.compile(r"ragrail ready: gateway on (\S+):(\d+)")
LOGS = re.compile(r"logs: (\S+)\)")
HAPROXY_DIR = re.compile(r"fast path: HAProxy files in (\S+),")
SERVICES = ("embedding", "retrieval", "generation", "moderation")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(root: Path, mutate: Callable[[dict[str, Any]], None] | None = None) -> tuple[Path, dict[str, Any]]:
    """The packaged config with free ports and a data dir under ``root``."""
    config = yaml.safe_load(resources.files("ragrail.config").joinpath("ragrail.yaml").read_text())
    grpc_port = free_port()
    config["data_dir"] = str(root / "data")
    config["models_dir"] = os.environ.get("RAGRAIL_MODELS_DIR") or os.path.expanduser("~/.local/share/ragrail/models")
    config["serve"].update(grpc_port=grpc_port, http_port=free_port(), metrics_export_port=free_port())
    config["gateway"].update(port=free_port(), metrics_port=free_port(), serve_address=f"127.0.0.1:{grpc_port}")
    if mutate:
        mutate(config)
    path = root / "ragrail.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, config


def stack_processes(root_pid: int, markers: list[str]) -> list[psutil.Process]:
    """`ragrail up` (``root_pid``) and its descendants, plus processes naming one of ``markers``
    (the Ray temp dir, HAProxy's folder) on their command line: orphans of a killed parent."""
    procs: dict[int, psutil.Process] = {}
    try:
        root = psutil.Process(root_pid)
        procs = {p.pid: p for p in [root, *root.children(recursive=True)]}
    except psutil.NoSuchProcess:
        pass
    markers = [m for m in markers if m]
    for proc in psutil.process_iter(["cmdline"]):
        if proc.pid not in procs and any(m in " ".join(proc.info["cmdline"] or ()) for m in markers):
            procs[proc.pid] = proc
    return list(procs.values())


def replica_pids(processes: list[psutil.Process], app: str) -> list[int]:
    """PIDs of the live Serve replicas of one application, by their Ray process title."""
    title = f"ray::ServeReplica:{app}:"
    found = []
    for proc in processes:
        try:
            cmdline = proc.cmdline()
            if cmdline and cmdline[0].startswith(title) and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc.pid)
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            continue
    return sorted(found)


@dataclass
class ChaosStack:
    """A running `ragrail up`; ``pid`` is its process (the Ray driver and the gateway)."""

    proc: subprocess.Popen[str]
    config: dict[str, Any]
    config_path: Path
    log_path: Path
    env: dict[str, str]
    gateway_address: str = ""
    ray_temp_dir: str = ""
    haproxy_dir: str = ""
    extra_args: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def serve_address(self) -> str:
        return str(self.config["gateway"]["serve_address"])

    # -- processes

    def processes(self) -> list[psutil.Process]:
        return stack_processes(self.pid, [self.ray_temp_dir, self.haproxy_dir])

    def replica_pids(self, app: str) -> list[int]:
        return replica_pids(self.processes(), app)

    # -- the gateway's view

    def status(self, timeout: float = 5.0) -> pb.StatusResponse:
        with grpc.insecure_channel(self.gateway_address) as channel:
            return gateway_pb2_grpc.GatewayServiceStub(channel).Status(pb.StatusRequest(), timeout=timeout)

    def services_running(self) -> bool:
        try:
            services = {s.name: s for s in self.status().services}
        except grpc.RpcError:
            return False
        return all(
            name in services and services[name].status == "RUNNING"
            and dict(services[name].replicas).get("RUNNING", 0) >= 1
            for name in SERVICES
        )

    def wait_running(self, timeout_s: float) -> float:
        """Seconds until every service reports a RUNNING replica; TimeoutError past ``timeout_s``."""
        started = time.monotonic()
        while not self.services_running():
            if time.monotonic() - started > timeout_s:
                raise TimeoutError(f"services not RUNNING within {timeout_s:g} s: {self.last_log(1500)}")
            time.sleep(0.2)
        return time.monotonic() - started

    def last_log(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    # -- lifecycle

    def stop(self, timeout_s: float = 90.0) -> int:
        """Ctrl-C, as a user stops it; SIGKILL to the stack's processes if it hangs."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                return self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                for proc in self.processes():
                    try:
                        proc.kill()
                    except psutil.NoSuchProcess:
                        pass
                return self.proc.wait(timeout=10)
        return int(self.proc.returncode)


def start_stack(
    root: Path | None = None,
    *,
    mutate: Callable[[dict[str, Any]], None] | None = None,
    extra_args: list[str] | None = None,
    timeout_s: float = 300.0,
) -> ChaosStack:
    """Runs `ragrail up` with a private config under ``root`` (a new temp dir by default)."""
    root = root or Path(tempfile.mkdtemp(prefix="ragrail-chaos-"))
    config_path, config = write_config(root, mutate)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.pop("RAGRAIL_DATA_DIR", None)
    env.pop("RAGRAIL_MODELS_DIR", None)
    log_path = root / "up.log"
    args = extra_args or []
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ragrail.cli.main", "up", "--config", str(config_path), *args],
            stdout=log, stderr=subprocess.STDOUT, env=env, text=True,
        )
    stack = ChaosStack(proc, config, config_path, log_path, env, extra_args=args)
    _wait_ready(stack, timeout_s)
    return stack


def _wait_ready(stack: ChaosStack, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = stack.log_path.read_text(errors="replace")
        ready, logs = READY.search(text), LOGS.search(text)
        if ready and logs:
            stack.gateway_address = f"{ready.group(1)}:{ready.group(2)}"
            stack.ray_temp_dir = logs.group(1)
            haproxy = HAPROXY_DIR.search(text)
            stack.haproxy_dir = haproxy.group(1) if haproxy else ""
            return
        if stack.proc.poll() is not None:
            raise RuntimeError(f"ragrail up exited with {stack.proc.returncode} before ready:\n{text[-3000:]}")
        time.sleep(0.5)
    stack.stop()
    raise TimeoutError(f"ragrail up not ready in {timeout_s:g} s:\n{stack.last_log()}")


class GatewayProcess:
    """A `ragrail gateway` process (the Kubernetes topology: a gateway apart from Ray) on free ports,
    against a running stack's Serve.

    ``config`` is the stack's config (``ChaosStack.config``, or the integration tier's YAML), copied
    with new gateway ports and changed by ``mutate``; ``env`` is the stack's environment, plus
    ``extra_env`` (e.g. a secret the gateway reads from it). Files are ``root/<name>.yaml`` and
    ``root/<name>.log``; the port stays the same across ``stop``/``start``.
    """

    def __init__(
        self,
        config: Mapping[str, Any],
        env: Mapping[str, str],
        root: Path,
        *,
        name: str = "gateway",
        mutate: Callable[[dict[str, Any]], None] | None = None,
        extra_env: Mapping[str, str] | None = None,
    ) -> None:
        own = copy.deepcopy(dict(config))
        self.port = free_port()
        own["gateway"].update(port=self.port, metrics_port=free_port())
        if mutate:
            mutate(own)
        self.metrics_port = int(own["gateway"]["metrics_port"])
        self.config_path = root / f"{name}.yaml"
        self.config_path.write_text(yaml.safe_dump(own))
        self.log_path = root / f"{name}.log"
        self.env = {**env, **(extra_env or {})}
        self.proc: subprocess.Popen[str] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 120) -> float:
        """Starts the process; returns the seconds until its health check says SERVING."""
        started = time.monotonic()
        with self.log_path.open("a") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "ragrail.cli.main", "gateway", "--config", str(self.config_path)],
                stdout=log, stderr=subprocess.STDOUT, env=self.env, text=True,
            )
        while not self._serving():
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.proc.returncode}: {self.last_log(2000)}")
            if time.monotonic() - started > timeout_s:
                self.stop()
                raise TimeoutError(f"gateway not serving in {timeout_s:g} s: {self.last_log(2000)}")
            time.sleep(0.2)  # the polling interval
        return time.monotonic() - started

    def _serving(self) -> bool:
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        try:
            with grpc.insecure_channel(self.address) as channel:
                reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
                return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)
        except grpc.RpcError:
            return False

    def stop(self, timeout_s: float = 120) -> None:
        """SIGTERM (the gateway drains), SIGKILL past ``timeout_s``; by its pid only."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def last_log(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def in_flight(self) -> float:
        """The gateway's in-flight gauge summed over labels (0 when idle)."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        text = urllib.request.urlopen(url, timeout=5).read().decode()
        return sum(
            float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("ragrail_gateway_in_flight")
        )
