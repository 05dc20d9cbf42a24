"""What `ragrail up` listens on: loopback only, but for the binds Ray 2.60 hard-codes.

Lists every listening TCP socket of the stack's processes (the `ragrail up` process, GCS, the
raylet, Ray's agents, the Serve controller, proxies, replicas, HAProxy) and checks its address.
Ray 2.60 hard-codes a few binds to all interfaces with no option to change them: those are named
one by one in KNOWN_RAY_BINDS, recognised precisely, and still counted by the strict-xfail test
below, so the day Ray offers a way to bind them the xfail turns into a failure that says so.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import psutil
import pytest

from ragrail.gateway.v1 import gateway_pb2 as pb
from ragrail.gateway.v1 import gateway_pb2_grpc
from ragrail.stack import SERVICES
from tests.integration.conftest import Stack

pytestmark = pytest.mark.integration

SETTLE_TIMEOUT_S = 240


@dataclass(frozen=True)
class Listener:
    pid: int
    process: str  # name, or a Ray worker's title such as ray::ServeReplica:retrieval:RetrievalService
    ip: str
    port: int
    env: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    def __str__(self) -> str:
        host = f"[{self.ip}]" if ":" in self.ip else self.ip
        return f"pid {self.pid} {self.process}: {host}:{self.port}"

    @property
    def on_loopback(self) -> bool:
        address = ipaddress.ip_address(self.ip.split("%")[0])
        mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1, an IPv6 socket bound to IPv4 loopback
        return address.is_loopback or bool(mapped and mapped.is_loopback)


def _env_port(listener: Listener, name: str, default: int) -> int:
    return int(listener.env.get(name) or default)


def _ephemeral_low() -> int:
    return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])


INTER_DEPLOYMENT = "replica inter-deployment gRPC: `[::]:0` (replica.py, _on_initialized; Ray-token authenticated)"
# Binds Ray 2.60 makes on all interfaces whatever its options say (paths under ray/serve/_private/).
# Each entry recognises one kind of socket in one kind of process, by the port Ray was told to use.
KNOWN_RAY_BINDS: dict[str, Callable[[Listener], bool]] = {
    "HAProxy stats: `bind *:{stats_port}` (haproxy_templates.py, `listen stats`)":
        lambda s: s.process == "haproxy" and s.port == _env_port(s, "RAY_SERVE_HAPROXY_STATS_PORT", 8404),
    "HAProxy Prometheus: `bind :{metrics_port}` (haproxy_templates.py, `frontend prometheus`)":
        lambda s: s.process == "haproxy" and s.port == _env_port(s, "RAY_SERVE_HAPROXY_METRICS_PORT", 9101),
    "replica direct-ingress gRPC: `[::]:{port}` (grpc_util.py, start_grpc_server; gRPCOptions has no host)":
        lambda s: "ServeReplica" in s.process
        and _env_port(s, "RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT", 40000) <= s.port
        <= _env_port(s, "RAY_SERVE_DIRECT_INGRESS_MAX_GRPC_PORT", 41000),
    INTER_DEPLOYMENT:  # port 0: the kernel picks one in the ephemeral range
        lambda s: "ServeReplica" in s.process and s.port >= _ephemeral_low(),
    "fallback proxy gRPC: `[::]:{RAY_SERVE_FALLBACK_PROXY_GRPC_PORT}` (grpc_util.py, start_grpc_server)":
        lambda s: "ProxyActor" in s.process and s.port == _env_port(s, "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT", 9500),
}


def known_ray_bind(listener: Listener) -> str | None:
    return next((why for why, matches in KNOWN_RAY_BINDS.items() if matches(listener)), None)


def stack_processes(stack: Stack) -> list[psutil.Process]:
    """`ragrail up` and everything below it, plus any stack process that lost its parent
    (found, as the fixture's teardown does, by the Ray or HAProxy folder on its command line)."""
    root = psutil.Process(stack.pid)
    procs = {p.pid: p for p in [root, *root.children(recursive=True)]}
    markers = [m for m in (stack.ray_temp_dir, stack.haproxy_dir) if m]
    for proc in psutil.process_iter(["cmdline"]):
        if proc.pid not in procs and any(m in " ".join(proc.info["cmdline"] or ()) for m in markers):
            procs[proc.pid] = proc
    return list(procs.values())


def listeners_of(procs: list[psutil.Process]) -> list[Listener]:
    found: list[Listener] = []
    for proc in procs:
        try:
            with proc.oneshot():
                cmdline = proc.cmdline()
                title = cmdline[0] if cmdline and cmdline[0].startswith("ray::") else proc.name()
                env = proc.environ()
                sockets = proc.net_connections(kind="tcp")
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue  # e.g. a HAProxy worker replaced by a reload
        found += [
            Listener(proc.pid, title, s.laddr.ip, s.laddr.port, env)
            for s in sockets
            if s.status == psutil.CONN_LISTEN
        ]
    return found


@pytest.fixture(scope="module")
def listeners(stack: Stack, gateway_channel: grpc.Channel) -> list[Listener]:
    """The stack's listeners once every service runs (a replica opens its ports before it is RUNNING)."""
    stub = gateway_pb2_grpc.GatewayServiceStub(gateway_channel)
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while True:
        statuses = {s.name: s.status for s in stub.Status(pb.StatusRequest(), timeout=10).services}
        if len(statuses) == len(SERVICES) and all(v == "RUNNING" for v in statuses.values()):
            break
        assert time.monotonic() < deadline, f"services not running after {SETTLE_TIMEOUT_S} s: {statuses}"
        time.sleep(1)
    found = listeners_of(stack_processes(stack))
    print("\n".join(["listening:", *sorted(map(str, found))]))
    return found


def _report(title: str, listeners: list[Listener]) -> str:
    lines = [f"{x}  <- {known_ray_bind(x) or 'no known reason'}" for x in sorted(listeners, key=str)]
    return "\n".join([title, *lines])


def test_the_listing_sees_the_whole_stack(stack: Stack, listeners: list[Listener]) -> None:
    ports = {x.port for x in listeners}
    expected = {
        "gateway": int(stack.gateway_address.rsplit(":", 1)[1]),
        "Serve gRPC ingress": int(stack.serve_address.rsplit(":", 1)[1]),
        "Ray metrics": int(stack.ray_metrics_address.rsplit(":", 1)[1]),
    }
    missing = {name: port for name, port in expected.items() if port not in ports}
    assert not missing, f"not among the stack's listeners: {missing}"
    replicas = {x.pid for x in listeners if "ServeReplica" in x.process}
    assert len(replicas) >= len(SERVICES), f"only {len(replicas)} Serve replicas seen listening"
    assert any(x.process == "raylet" for x in listeners) and any(x.process == "gcs_server" for x in listeners)


def test_nothing_but_rays_hard_coded_binds_leaves_loopback(listeners: list[Listener]) -> None:
    exposed = [x for x in listeners if not x.on_loopback]
    offenders = [x for x in exposed if known_ray_bind(x) is None]
    assert not offenders, _report("listening beyond loopback (pid process: address:port):", offenders)
    # One inter-deployment server per replica: a second ephemeral port on a replica is something new.
    inter = [x.pid for x in exposed if known_ray_bind(x) == INTER_DEPLOYMENT]
    assert len(inter) == len(set(inter)), _report("more than one inter-deployment server in a replica:", exposed)


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,  # a stack that fails to start is an error, not this expected failure
    reason="Ray 2.60 binds replica gRPC servers, the fallback proxy's gRPC port and HAProxy's "
    "stats/metrics ports to all interfaces with no option (KNOWN_RAY_BINDS); when this passes, "
    "drop the entries Ray now lets us bind",
)
def test_nothing_at_all_leaves_loopback(listeners: list[Listener]) -> None:
    exposed = [x for x in listeners if not x.on_loopback]
    assert not exposed, _report("listening beyond loopback (pid process: address:port):", exposed)
