"""The local stack: a private Ray cluster with the four services on Serve's gRPC proxy.

The same application builders (``ragrail.<service>.deployment:build_app``) are
what a RayService's serveConfigV2 points at in Kubernetes.
"""

from __future__ import annotations

import contextlib
import importlib
import ipaddress
import logging
import os
import random
import shutil
import signal
import socket
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ragrail.common.config import Settings
from ragrail.common.errors import FailedPrecondition

log = logging.getLogger(__name__)

SERVICES = ("embedding", "retrieval", "generation", "moderation")
REQUIRED_SERVICES = ("embedding", "retrieval")  # the gateway cannot even create its collection without them
# Import paths Serve's proxy uses to register each generated servicer.
SERVICER_FUNCTIONS = [
    "ragrail.embedding.v1.embedding_pb2_grpc.add_EmbeddingServiceServicer_to_server",
    "ragrail.retrieval.v1.retrieval_pb2_grpc.add_RetrievalServiceServicer_to_server",
    "ragrail.generation.v1.generation_pb2_grpc.add_GenerationServiceServicer_to_server",
    "ragrail.moderation.v1.moderation_pb2_grpc.add_ModerationServiceServicer_to_server",
]
# Replicas need no model hub, ever: weights come from packages or folders.
REPLICA_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
# Serve's fast path (serve.fast_path): set on every node before Ray starts.
FAST_PATH_ENV = {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}
# A loopback-only Ray node (serve.host on loopback). On Linux, Ray gives every process it starts
# (GCS, raylet, dashboard and runtime-env agents, the metrics endpoint, each worker's gRPC server)
# the node's routable address, and most of them then bind all interfaces; passing 127.0.0.1 to
# ray.init is no help, it is "resolved" to that address. This switch is what makes Ray 2.60 keep
# a node on loopback (its purpose: single-machine Ray on macOS and Windows,
# ray/_private/services.py get_node_ip_address). Read when ray is first imported, and inherited
# by every process Ray starts.
LOOPBACK_NODE_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def app_import_path(service: str) -> str:
    return f"ragrail.{service}.deployment:build_app"


def build_app(service: str, args: dict[str, Any]) -> Any:
    module, _, attr = app_import_path(service).partition(":")
    return getattr(importlib.import_module(module), attr)(args)


@dataclass
class LocalStack:
    """A Ray cluster this process started and owns; stop() ends all of it."""

    settings: Settings
    temp_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="ragrail-ray-")))
    started: bool = False
    extra_dirs: list[Path] = field(default_factory=list)

    def start(self, timeout_s: float | None = None) -> None:
        s = self.settings.serve
        loopback = is_loopback(s.host)
        os.environ.update(REPLICA_ENV)
        if loopback:
            os.environ.update(LOOPBACK_NODE_ENV)  # before ray is imported
        if s.fast_path:
            os.environ.update(self.fast_path_env())

        import ray
        from ray import serve
        from ray.serve.config import HTTPOptions, gRPCOptions

        ray.init(
            address="local",  # never join someone else's cluster
            num_cpus=s.num_cpus,
            include_dashboard=False,
            _metrics_export_port=s.metrics_export_port,  # Ray's /metrics: Serve's and ragrail_service_*
            _temp_dir=str(self.temp_dir),
            runtime_env={"env_vars": REPLICA_ENV},
            logging_level=logging.WARNING,
            log_to_driver=False,
            configure_logging=True,
        )
        self.started = True
        if loopback:
            self._check_node_on_loopback()
        serve.start(
            # HAProxy's HTTP and gRPC frontends, replicas' direct-ingress HTTP servers and the
            # fallback proxy's HTTP port all bind this host (gRPCOptions has no host of its own).
            http_options=HTTPOptions(host=s.host, port=s.http_port),
            grpc_options=gRPCOptions(
                port=s.grpc_port,
                grpc_servicer_functions=SERVICER_FUNCTIONS,
                request_timeout_s=s.request_timeout_s,
            ),
            logging_config={"enable_access_log": False, "log_level": "WARNING"},
        )
        self.deploy()
        self.wait_until_running(timeout_s or s.startup_timeout_s)

    def _check_node_on_loopback(self) -> None:
        """Ray read LOOPBACK_NODE_ENV only if it was imported after it was set: say so, never expose."""
        import ray

        node_ip = ray.util.get_node_ip_address()
        if not is_loopback(node_ip):
            self.stop()
            raise FailedPrecondition(
                f"serve.host is {self.settings.serve.host} but Ray's node address is {node_ip}: ray was "
                "imported before the local stack started, so it did not see RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0"
            )

    def fast_path_env(self) -> dict[str, str]:
        """Serve's fast path, with this stack's own HAProxy files and free loopback ports,
        so two stacks on one machine do not collide (the defaults are fixed /tmp paths and ports)."""
        # HAProxy caps socket paths at 97 characters and Ray adds a 56-character
        # folder below this base: keep the base short.
        haproxy = Path(tempfile.mkdtemp(prefix="rgh", dir="/tmp"))
        self.extra_dirs.append(haproxy)
        grpc_ports = free_port_block(2 * PORT_BLOCK)  # gRPC, then HTTP
        http_ports = grpc_ports + PORT_BLOCK
        log.info("fast path: HAProxy files in %s, replica ports %d-%d", haproxy, grpc_ports, http_ports + PORT_BLOCK - 1)
        return FAST_PATH_ENV | {
            # A stopping replica waits this long (default 30 s) for an external load balancer
            # to let go of it; here only our own HAProxy routes, and Ctrl-C would take 30 s.
            "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2",
            "RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT": str(grpc_ports),
            "RAY_SERVE_DIRECT_INGRESS_MAX_GRPC_PORT": str(grpc_ports + PORT_BLOCK - 1),
            "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(http_ports),
            "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(http_ports + PORT_BLOCK - 1),
            "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(haproxy / "haproxy.cfg"),
            "RAY_SERVE_HAPROXY_SOCKET_PATH": str(haproxy / "admin.sock"),
            "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(haproxy),
            "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(haproxy / "server-state"),
            "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()),
            "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()),
            "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(free_port()),
            "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT": str(free_port()),
        }

    def deploy(self) -> None:
        from ray import serve
        from ray.serve.api import RunTarget

        args = self.settings.model_dump(mode="json")
        targets = [
            RunTarget(build_app(name, args), name=name, route_prefix=f"/{name}") for name in SERVICES
        ]
        serve.run_many(targets, wait_for_applications_running=False)

    def wait_until_running(self, timeout_s: float) -> None:
        wait_until_running(timeout_s)

    def stop(self) -> None:
        if not self.started:
            return
        import ray
        from ray import serve

        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            self.started = False
            # When Serve's controller misses its own shutdown deadline (seen on a loaded
            # machine), its HAProxy outlives the cluster holding the ingress ports.
            for pid in stop_processes_using([self.temp_dir, *self.extra_dirs]):
                log.warning("process %d of this stack outlived Ray's shutdown; stopped it", pid)
            for folder in [self.temp_dir, *self.extra_dirs]:
                shutil.rmtree(folder, ignore_errors=True)

    @property
    def log_dir(self) -> Path:
        return self.temp_dir / "session_latest" / "logs"


def wait_until_running(timeout_s: float) -> None:
    """Waits for every app; a replica that cannot be scheduled is named, not waited on forever.

    Ingestion needs embedding and retrieval, so those must run. Another
    service still pending at the timeout (e.g. asking for a GPU this machine
    lacks) is logged and left pending: the gateway answers its stages with a
    canned BACKEND_UNAVAILABLE / STAGE_TIMEOUT, and `ragrail status` says why.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        statuses = {name: state.status for name, state in service_statuses(placements=False).items()}
        failed = {k: v for k, v in statuses.items() if v.startswith("DEPLOY_FAILED")}
        if failed:
            raise FailedPrecondition(f"services failed to deploy: {failed}")
        if all(v == "RUNNING" for v in statuses.values()) and len(statuses) == len(SERVICES):
            return
        if time.monotonic() > deadline:
            missing = {k: v for k, v in statuses.items() if v != "RUNNING"}
            if any(statuses.get(name) != "RUNNING" for name in REQUIRED_SERVICES):
                raise FailedPrecondition(f"services not running after {timeout_s:.0f} s: {missing}")
            log.warning("starting without services that are not running yet: %s", missing)
            return
        time.sleep(0.5)


@dataclass
class ClusterStack:
    """The four services on a Ray cluster someone else runs (``ragrail up --cluster``).

    The path a RayService takes: KubeRay PUTs ``serveConfigV2`` to the dashboard, whose handler
    starts Serve with the config's proxy options and deploys the applications by import path;
    here the same mapping (ragrail.kube.serve_config_v2) goes the same way from a driver, so the
    dashboard may stay off. The controller imports ``ragrail.<service>.deployment:build_app`` on
    the cluster: ragrail must be importable on its nodes (installed, or PYTHONPATH when they
    started). Applications other than ragrail's that were deployed from a config are kept. stop()
    deletes the four applications and disconnects; Serve and the cluster keep running.
    """

    settings: Settings
    address: str
    started: bool = False
    deployed: bool = False

    def start(self, timeout_s: float | None = None) -> None:
        import ray

        host = self.address.removeprefix("ray://").rpartition(":")[0]
        ray.init(
            address=self.address,
            # Nodes on loopback (several on one machine): the driver must say it is on loopback too,
            # or Ray looks for a node at the machine's routable address and finds none.
            _node_ip_address=host if is_loopback(host) and not self.address.startswith("ray://") else None,
            logging_level=logging.WARNING,
            log_to_driver=False,
            configure_logging=True,
        )
        self.started = True
        try:
            self.deploy()
            self.wait_until_running(timeout_s or self.settings.serve.startup_timeout_s)
        except BaseException:
            self.stop()
            raise

    def deploy(self) -> None:
        from ray.serve._private.api import serve_start
        from ray.serve.context import _get_global_client
        from ray.serve.schema import ServeDeploySchema

        from ragrail.kube import serve_config_v2

        config = serve_config_v2(self.settings, proxy_host=self.settings.serve.host)
        ours = {app["name"] for app in config["applications"]}
        running = _get_global_client(raise_if_no_controller_running=False)
        if running is not None:  # a config deploy replaces every config-deployed app: keep the others
            details = running.get_serve_details().get("applications") or {}
            config["applications"] += [
                app["deployed_app_config"]
                for name, app in details.items()
                if name not in ours and app.get("deployed_app_config")
            ]
        schema = ServeDeploySchema.model_validate(config)
        # What the dashboard's PUT /api/serve/applications/ does (ray/dashboard/modules/serve/serve_head.py).
        client = serve_start(
            http_options=schema.http_options.model_dump(),
            grpc_options=schema.grpc_options.model_dump(),
            proxy_location=schema.proxy_location,
            global_logging_config=schema.logging_config,
        )
        client.deploy_apps(schema)
        self.deployed = True

    def wait_until_running(self, timeout_s: float) -> None:
        wait_until_running(timeout_s)

    def stop(self) -> None:
        if not self.started:
            return
        import ray

        try:
            if self.deployed:
                from ray.serve.context import _get_global_client

                client = _get_global_client(raise_if_no_controller_running=False)
                if client is not None:
                    present = set(client.get_serve_details().get("applications") or {})
                    client.delete_apps([name for name in SERVICES if name in present], blocking=True)
                self.deployed = False
        finally:
            ray.shutdown()
            self.started = False

    @property
    def log_dir(self) -> Path:
        return Path("(the cluster's nodes: <temp dir>/session_latest/logs on each)")


def stop_processes_using(folders: list[Path], wait_s: float = 3.0) -> list[int]:
    """Stops processes whose command line names one of ``folders`` (this stack's own temp
    folders, so only processes it started); returns their pids."""
    needles = [str(f).encode() for f in folders]
    found = []
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else []:
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if any(n in cmdline for n in needles):
            found.append(int(entry.name))
    for pid in found:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + wait_s
    while any(Path(f"/proc/{p}").exists() for p in found) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in found:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return found


@dataclass(frozen=True)
class NodeInfo:
    """A Ray node as `ragrail status` shows it."""

    node_id: str
    ip: str
    head: bool = False
    labels: dict[str, str] = field(default_factory=dict)  # its own (ray start --labels), not ray.io/*
    resources: dict[str, float] = field(default_factory=dict)  # totals: CPU, GPU, memory, custom

    def describe(self) -> str:
        """``1a2b3c4d 127.0.0.1 head CPU 1 GPU 1 accelerator_type:demo 1 pool=gpu``: short, for a terminal."""
        shown = {k: v for k, v in self.resources.items() if k in ("CPU", "GPU") or not _ray_internal_resource(k)}
        parts = [self.node_id[:8], self.ip, *(["head"] if self.head else [])]
        parts += [f"{k} {v:g}" for k, v in sorted(shown.items())]
        parts += [f"{k}={v}" for k, v in sorted(self.labels.items())]
        return " ".join(parts)


@dataclass(frozen=True)
class ReplicaPlacement:
    replica_id: str
    state: str
    node: NodeInfo | None  # None while the replica waits for a node


@dataclass(frozen=True)
class ServiceState:
    status: str  # RUNNING, or the status and the messages that say why not
    replicas: dict[str, int]  # replica state -> count, summed over the app's deployments
    placements: tuple[ReplicaPlacement, ...] = ()  # each replica and its node


def service_statuses(placements: bool = True) -> dict[str, ServiceState]:
    """Per ragrail service: RUNNING, or the deployment statuses and messages that explain why
    not (e.g. replicas that cannot be scheduled because nothing offers the GPU they ask for),
    with the node of each replica. Other applications on a shared cluster are left out."""
    from ray import serve

    where_all = service_placements() if placements else {}
    out: dict[str, ServiceState] = {}
    for name, app in serve.status().applications.items():
        if name not in SERVICES:
            continue
        replicas: dict[str, int] = {}
        for dep in app.deployments.values():
            for state, count in dep.replica_states.items():
                key = str(getattr(state, "value", state))
                replicas[key] = replicas.get(key, 0) + count
        where = tuple(where_all.get(name, ()))
        if app.status == "RUNNING":
            out[name] = ServiceState("RUNNING", replicas, where)
            continue
        details = [
            f"{dep_name}: {_value(dep.status)} {_first_line(dep.message)}".strip()
            for dep_name, dep in app.deployments.items()
            if dep.status != "HEALTHY"
        ]
        status = f"{_value(app.status)} ({'; '.join(details) or _first_line(app.message)})"
        out[name] = ServiceState(status, replicas, where)
    return out


def ray_nodes() -> dict[str, NodeInfo]:
    """Live nodes of the connected cluster by id (from the GCS: works with the dashboard off)."""
    import ray

    nodes = {}
    for node in ray.nodes():
        if not node.get("Alive"):
            continue
        resources = {k: float(v) for k, v in (node.get("Resources") or {}).items()}
        labels = {k: str(v) for k, v in (node.get("Labels") or {}).items() if not k.startswith("ray.io/")}
        nodes[node["NodeID"]] = NodeInfo(
            node_id=node["NodeID"],
            ip=node.get("NodeManagerAddress", ""),
            head="node:__internal_head__" in resources,
            labels=labels,
            resources=resources,
        )
    return nodes


def service_placements() -> dict[str, list[ReplicaPlacement]]:
    """Per app, each replica and its node, from Serve's controller (the details the dashboard's
    /api/serve/applications/ serves; `serve.status()` has counts only, and the state API needs
    the dashboard, which the local stack keeps off)."""
    from ray.serve.context import _get_global_client

    client = _get_global_client(raise_if_no_controller_running=False)
    if client is None:
        return {}
    nodes = ray_nodes()
    out: dict[str, list[ReplicaPlacement]] = {}
    for app_name, app in (client.get_serve_details().get("applications") or {}).items():
        for deployment in (app.get("deployments") or {}).values():
            for replica in deployment.get("replicas") or []:
                node_id = replica.get("node_id") or ""
                node = nodes.get(node_id) or (NodeInfo(node_id, replica.get("node_ip") or "") if node_id else None)
                out.setdefault(app_name, []).append(
                    ReplicaPlacement(str(replica.get("replica_id", "")), _value(replica.get("state", "")), node)
                )
    return out


def _ray_internal_resource(name: str) -> bool:
    """node:<ip>, node:__internal_head__, object_store_memory, memory: not what placement asks for."""
    return name.startswith("node:") or name in ("object_store_memory", "memory")


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 (also as ::ffff:127.0.0.1) or localhost."""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host.strip("[]").split("%")[0])
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or bool(mapped and mapped.is_loopback)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# Direct-ingress ports per stack: blocks below Linux's ephemeral range (32768+).
PORT_BLOCK = 64
PORT_BLOCKS_FROM, PORT_BLOCKS_TO = 20_000, 32_000


def free_port_block(size: int = PORT_BLOCK, rng: random.Random | None = None) -> int:
    """First port of ``size`` consecutive ports nobody listens on (all interfaces), at random.

    Why: Ray 2.60 starts each replica's direct-ingress gRPC server from the same fixed base
    (40000) on every cluster, and asks gRPC to turn SO_REUSEPORT off with a string option
    that gRPC ignores: a second stack on the machine binds the *same* ports, and the kernel
    spreads one stack's calls over the other's replicas. Each stack gets its own block.
    """
    rng = rng or random.SystemRandom()
    starts = list(range(PORT_BLOCKS_FROM, PORT_BLOCKS_TO - size, size))
    rng.shuffle(starts)
    for start in starts:
        if all(_bindable(port) for port in range(start, start + size)):
            return start
    raise FailedPrecondition(f"no {size} free consecutive ports between {PORT_BLOCKS_FROM} and {PORT_BLOCKS_TO}")


def _bindable(port: int) -> bool:
    """Free on every interface, as gRPC binds ``[::]`` (IPv4 too), or ``0.0.0.0`` without IPv6."""
    try:
        sock = socket.socket(socket.AF_INET6)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        address: tuple[str, int] = ("::", port)
    except OSError:  # no IPv6 in this network namespace
        sock, address = socket.socket(socket.AF_INET), ("0.0.0.0", port)
    with sock:
        try:
            sock.bind(address)
        except OSError:
            return False
    return True


def _value(status: object) -> str:
    return str(getattr(status, "value", status))


def _first_line(message: str, limit: int = 400) -> str:
    """Serve's messages can carry a whole replica traceback; the status line needs its gist."""
    lines = [line.strip() for line in (message or "").splitlines() if line.strip()]
    if not lines:
        return ""
    gist = lines[0] if len(lines) == 1 else f"{lines[0]} … {lines[-1]}"
    return gist if len(gist) <= limit else gist[: limit - 1] + "…"
