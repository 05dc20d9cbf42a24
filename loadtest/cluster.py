"""A multi-node Ray cluster on one machine: a head and worker nodes, each a `ray start` of its own.

Used by `make cluster-demo` (loadtest/cluster_demo.py) and the integration test
(tests/integration/test_cluster.py). Ray schedules a node's declared resources exactly as it
would a real machine's: `--num-gpus 1` is a logical GPU (Ray hands the replica a device id,
CUDA finds none, `device: auto` runs the model on CPU and says so), `--resources` adds custom
resources (`accelerator_type:<name>` is what `accelerator_type: <name>` asks for) and
`--labels` node labels for `label_selector`.

Each node has its own temp dir, its own free ports (GCS, node manager, object manager, agents,
metrics, a block of worker ports) and binds 127.0.0.1. A node is one `ray start --block`
process, owned here by PID; every Ray process of a node names the node's temp dir on its
command line, so `kill()` ends exactly that node's processes (a hard node loss) and `stop()`
everything this cluster started. Nothing here runs `ray stop`, which would stop every Ray
node of the user on the machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ragrail.stack import free_port, free_port_block, stop_processes_using

ROOT = Path(__file__).resolve().parents[1]
RAY = Path(sys.executable).with_name("ray")
STARTED = "Ray runtime started"
START_TIMEOUT_S = 120
# A node's loss is noticed by the GCS's health checks of its raylet: Ray's defaults (every 3 s,
# 10 s timeout, 5 failures) take up to ~30 s; these (1 s, 1 s, 3) about 3-5 s. Set on every node.
FAST_FAILURE_DETECTION = {
    "RAY_health_check_initial_delay_ms": "1000",
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_timeout_ms": "1000",
    "RAY_health_check_failure_threshold": "3",
}
WORKER_PORTS = 48  # ports per node for worker processes (each replica, each task worker)


@dataclass(frozen=True)
class NodeSpec:
    """What a node declares: `ray start` resources and labels."""

    name: str
    num_cpus: int
    num_gpus: int = 0
    resources: dict[str, float] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)


# The demo's three nodes. The head keeps replicas off (num_cpus 0, as the chart's head does): it
# holds the GCS, Serve's controller and the one ingress proxy. The GPU node declares one GPU, the
# accelerator resource the GPU profile asks for and a pool label; the CPU node only CPUs.
# Ray keeps CPU-only replicas off GPU nodes while another node fits them (its scheduler
# avoids GPU nodes), so they land on the CPU node, and move to the GPU node when it goes.
DEMO_NODES = (
    NodeSpec("head", num_cpus=0, labels={"ragrail/node": "head"}),
    NodeSpec(
        "gpu-worker", num_cpus=2, num_gpus=1, resources={"accelerator_type:demo": 1},
        labels={"ragrail/node": "gpu-worker", "ragrail/pool": "gpu"},
    ),
    NodeSpec("cpu-worker", num_cpus=2, labels={"ragrail/node": "cpu-worker", "ragrail/pool": "cpu"}),
)


@dataclass
class Node:
    spec: NodeSpec
    temp_dir: Path
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


@dataclass
class LocalCluster:
    """A head and workers on 127.0.0.1; ``address`` is the GCS, what `ragrail up --cluster` takes."""

    specs: tuple[NodeSpec, ...] = DEMO_NODES
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="rgc-", dir="/tmp")))
    object_store_bytes: int = 100 * 1024 * 1024  # the models are not in it; keep the machine's memory
    nodes: dict[str, Node] = field(default_factory=dict)
    gcs_port: int = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    def __post_init__(self) -> None:
        self._ports: set[int] = set()
        self._blocks: set[int] = set()

    def env(self) -> dict[str, str]:
        """The environment of this cluster's nodes and of a driver joining it: node_env() plus
        token authentication with a token of this cluster's own (Ray 2.60 turns token auth on
        for a head that finds ~/.ray/auth_token, and a worker node then needs the token; a
        private one keeps the user's out of it)."""
        token = self.root / "auth_token"
        if not token.exists():
            token.write_text(secrets.token_hex(32))
            token.chmod(0o600)
        return node_env() | {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}

    def start(self) -> None:
        self.gcs_port = self._port()
        try:
            for spec in self.specs:  # the first is the head
                self.start_node(spec)
        except BaseException:
            self.stop()
            raise

    def start_node(self, spec: NodeSpec) -> Node:
        """Starts (or, after kill(), restarts) one node and waits until it has joined."""
        head = spec.name == self.specs[0].name
        # Socket paths live under the temp dir and are capped at 107 characters: keep it short.
        temp_dir = Path(tempfile.mkdtemp(prefix=f"{spec.name[:3]}", dir=self.root))
        log_path = self.root / f"{spec.name}.log"
        workers = self._port_block()
        port = self._port
        args = [
            str(RAY), "start", "--block", "--disable-usage-stats",
            "--node-ip-address", "127.0.0.1",
            "--temp-dir", str(temp_dir),
            "--num-cpus", str(spec.num_cpus),
            "--num-gpus", str(spec.num_gpus),
            "--object-store-memory", str(self.object_store_bytes),
            "--node-manager-port", str(port()),
            "--object-manager-port", str(port()),
            "--metrics-export-port", str(port()),
            "--runtime-env-agent-port", str(port()),
            "--dashboard-agent-listen-port", str(port()),
            "--dashboard-agent-grpc-port", str(port()),
            "--min-worker-port", str(workers),
            "--max-worker-port", str(workers + WORKER_PORTS - 1),
        ]
        if spec.resources:
            args += ["--resources", json.dumps(spec.resources)]
        if spec.labels:
            args += ["--labels", ",".join(f"{k}={v}" for k, v in spec.labels.items())]
        if head:
            args += [
                "--head", "--port", str(self.gcs_port), "--include-dashboard", "false",
                "--ray-client-server-port", str(port()),
            ]
        else:
            args += ["--address", self.address]
        offset = len(log_path.read_text(errors="replace")) if log_path.exists() else 0
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, env=self.env(), start_new_session=True
            )
        node = Node(spec, temp_dir, log_path, process)
        self.nodes[spec.name] = node
        self._wait_started(node, offset)
        return node

    def _port(self) -> int:
        """A free port no node of this cluster was given yet (a port is only reserved once bound)."""
        while (found := free_port()) in self._ports:
            pass
        self._ports.add(found)
        return found

    def _port_block(self) -> int:
        """A block of free worker ports, distinct from the other nodes' (not bound until workers start)."""
        while True:
            start = free_port_block(WORKER_PORTS)
            if all(abs(start - taken) >= WORKER_PORTS for taken in self._blocks):
                self._blocks.add(start)
                return start

    def _wait_started(self, node: Node, offset: int) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            text = node.log_path.read_text(errors="replace")[offset:]  # a restarted node appends
            if STARTED in text:
                return
            if not node.alive:
                raise RuntimeError(f"ray start of {node.spec.name} exited:\n{text[-3000:]}")
            time.sleep(0.2)
        raise RuntimeError(f"{node.spec.name} did not start in {START_TIMEOUT_S} s:\n{node.log_path.read_text()[-3000:]}")

    def kill(self, name: str) -> float:
        """A hard node loss: SIGKILL to every process of the node (its raylet, agents and the
        workers holding its replicas). Returns when they are gone; the monotonic time of the kill."""
        node = self.nodes[name]
        killed_at = time.monotonic()
        _kill_processes_naming(node.temp_dir)  # the raylet and its workers at once, found first
        if node.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(node.process.pid, signal.SIGKILL)
        if node.process is not None:
            node.process.wait(timeout=30)
        return killed_at

    def restart(self, name: str) -> Node:
        """The node comes back (a new raylet with the same resources and labels, new ports)."""
        return self.start_node(self.nodes[name].spec)

    def stop(self) -> None:
        """Stops every node (workers first), then removes the temp dirs."""
        for node in reversed(list(self.nodes.values())):
            if node.alive:
                assert node.process is not None
                node.process.send_signal(signal.SIGTERM)  # `ray start --block` stops its node
        for node in reversed(list(self.nodes.values())):
            if node.process is not None:
                try:
                    node.process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(node.process.pid, signal.SIGKILL)
        stop_processes_using([node.temp_dir for node in self.nodes.values()])
        for pid in self.leftovers():  # renamed workers whose raylet went first
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.root, ignore_errors=True)

    def leftovers(self) -> list[int]:
        """PIDs of this cluster's processes still running (none after stop()): those naming its
        folder on their command line or in their environment (every node process, worker and
        driver inherits RAY_AUTH_TOKEN_PATH under it, renamed workers included)."""
        needle = str(self.root).encode()
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and int(entry.name) != os.getpid():
                with contextlib.suppress(OSError):
                    if needle in (entry / "cmdline").read_bytes() or needle in (entry / "environ").read_bytes():
                        if (entry / "stat").read_text().split(") ", 1)[1][:1] != "Z":  # zombies hold nothing
                            found.append(int(entry.name))
        return found


def node_env() -> dict[str, str]:
    """The environment of every node: this checkout importable by the workers (the Serve
    controller imports ragrail.<service>.deployment:build_app on the cluster), no inherited
    RAY_* switches, failure detection in seconds, and the multi-node switch on (the local
    stack's loopback switch would refuse worker nodes)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    paths = [str(ROOT / "services"), str(ROOT / "clients" / "python" / "src"), str(ROOT)]
    env["PYTHONPATH"] = os.pathsep.join([*paths, *filter(None, [os.environ.get("PYTHONPATH")])])
    env.update(FAST_FAILURE_DETECTION)
    env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "1"
    return env


def _kill_processes_naming(folder: Path) -> None:
    """SIGKILL to the processes naming ``folder`` and all their descendants: a worker renames
    itself (``ray::ServeReplica:...``, so its command line no longer names the temp dir) but
    stays the raylet's child."""
    import psutil

    needle = str(folder).encode()
    pids: set[int] = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            with contextlib.suppress(OSError):
                if needle in (entry / "cmdline").read_bytes():
                    pids.add(int(entry.name))
    for pid in list(pids):
        with contextlib.suppress(psutil.Error):
            pids.update(child.pid for child in psutil.Process(pid).children(recursive=True))
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{p}").exists() for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)


# -- ragrail on the cluster -------------------------------------------------------------------

PROFILE = Path(__file__).with_name("cluster-gpu.yaml")
READY = re.compile(r"ragrail ready: gateway on (\S+):(\d+)")
UP_TIMEOUT_S = 420


def write_config(
    folder: Path, cluster: LocalCluster, mutate: Callable[[dict[str, Any]], None] | None = None
) -> tuple[Path, dict[str, Any]]:
    """The packaged config with the GPU profile laid over it, free ports, a data dir in ``folder``
    and the cluster's address (serve.cluster_address: what `--cluster` sets)."""
    from importlib import resources

    from ragrail.common.config import _deep_merge

    config = yaml.safe_load(resources.files("ragrail.config").joinpath("ragrail.yaml").read_text())
    _deep_merge(config, yaml.safe_load(PROFILE.read_text()))
    grpc_port = free_port()
    config["data_dir"] = str(folder / "data")
    config["models_dir"] = os.environ.get("RAGRAIL_MODELS_DIR") or os.path.expanduser("~/.local/share/ragrail/models")
    config["serve"].update(grpc_port=grpc_port, http_port=free_port(), cluster_address=cluster.address)
    config["gateway"].update(port=free_port(), metrics_port=0, serve_address=f"127.0.0.1:{grpc_port}")
    if mutate:
        mutate(config)
    path = folder / "ragrail.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, config


@dataclass
class Gateway:
    """`ragrail up --cluster` as a subprocess: the gateway, and the driver that deployed the services."""

    config_path: Path
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)  # the cluster's (LocalCluster.env())
    process: subprocess.Popen[str] | None = None
    address: str = ""

    def start(self, extra_args: tuple[str, ...] = ()) -> str:
        env = dict(self.env or node_env())
        env.pop("RAGRAIL_DATA_DIR", None)
        env.pop("RAGRAIL_MODELS_DIR", None)
        with self.log_path.open("w") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "ragrail.cli.main", "up", "--config", str(self.config_path), *extra_args],
                stdout=log, stderr=subprocess.STDOUT, env=env, text=True,
            )
        deadline = time.monotonic() + UP_TIMEOUT_S
        while time.monotonic() < deadline:
            text = self.log_path.read_text(errors="replace")
            ready = READY.search(text)
            if ready:
                self.address = f"{ready.group(1)}:{ready.group(2)}"
                return self.address
            if self.process.poll() is not None:
                raise RuntimeError(f"ragrail up --cluster exited with {self.process.returncode}:\n{text[-4000:]}")
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"ragrail up --cluster not ready in {UP_TIMEOUT_S} s:\n{self.log_path.read_text()[-4000:]}")

    def stop(self, timeout_s: float = 90) -> int:
        """Ctrl-C: the gateway stops and the services are removed from the cluster."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGINT)
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            return -9

    def status(self) -> dict[str, Any]:
        """`ragrail status --json` of this gateway (exit 3 when unhealthy still prints the document)."""
        out = subprocess.run(
            [sys.executable, "-m", "ragrail.cli.main", "status", "--json", "--address", self.address],
            capture_output=True, text=True, timeout=60, env=node_env(),
        )
        return dict(json.loads(out.stdout.splitlines()[-1]))


def placements(status: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """(service, replica, state, node name, what the node offers) per replica, from `status --json`."""
    rows = []
    for service in status.get("services", []):
        for replica in service.get("replica_nodes", []):
            labels = replica.get("node_labels") or {}
            node = labels.get("ragrail/node") or (replica.get("node_id", "")[:8] or "(none)")
            offers = " ".join(f"{k} {v:g}" for k, v in sorted((replica.get("node_resources") or {}).items()))
            rows.append((service["name"], replica["replica_id"], replica["state"], node, offers))
    return sorted(rows)


def placement_table(status: dict[str, Any]) -> str:
    rows = [("service", "replica", "state", "node", "node offers")] + placements(status)
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
