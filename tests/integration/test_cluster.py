"""Past one machine, shown on one (issue 17): ragrail on a three-node Ray cluster.

A head (no CPUs for replicas: GCS, Serve's controller and its one proxy), a GPU node (one
logical GPU, the `demo` accelerator, label ragrail/pool=gpu) and a CPU node, each a `ray start`
of its own on 127.0.0.1 (loadtest/cluster.py); the services go on with `ragrail up` and
`serve.cluster_address` (the path a RayService takes) and the GPU profile
(loadtest/cluster-gpu.yaml). In order:

1. GPU-requesting deployments (generation, embedding) land on the GPU node only, CPU-only ones
   (moderation, retrieval) on the CPU node; the GPU-scheduled replicas say they run on CPU.
2. The CPU node is killed (SIGKILL to all its processes): its replicas move to the surviving
   node and the gateway answers again without a restart; the time to recover is printed.
3. The GPU node is killed: generation is unavailable and the gateway answers with canned
   fallbacks, each within its stage timeout (no hang), until the node returns; then it recovers.

Every wait is on a condition, bounded. Skipped, saying why, only where the machine cannot run
three Ray nodes (no `ray` CLI, no /proc, too little free memory). Times are printed (-s).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import psutil
import pytest
import yaml

from loadtest.cluster import RAY, Gateway, LocalCluster, placement_table, placements, write_config
from ragrail.gateway.v1 import gateway_pb2 as pb
from ragrail.gateway.v1 import gateway_pb2_grpc
from tests.integration.conftest import write_pipelines

pytestmark = pytest.mark.integration

MIN_FREE_MEMORY = 6 * 1024**3  # three raylets, four replicas with their models, the gateway
MISS = "What is the boiling point of tungsten?"  # moderate → embed → retrieve → canned RETRIEVAL_MISS
PLAIN_TIMEOUT_S = 12
# moderate → generate, with a short generate timeout: how long a gone generation service is waited for.
PLAIN_SPEC = {
    "name": "plain", "version": 1,
    "description": "generation alone behind input moderation, short timeout",
    "stages": [
        {"type": "moderate", "check": "input"},
        {"type": "generate", "name": "reply", "prompt": "plain", "system_prompt": "Reply in one short sentence.",
         "max_new_tokens": 8, "temperature": 0, "timeout_s": PLAIN_TIMEOUT_S},
    ],
}
UNAVAILABLE = (pb.FALLBACK_REASON_BACKEND_UNAVAILABLE, pb.FALLBACK_REASON_STAGE_TIMEOUT)
RECOVERY_LIMIT_S = 240


@dataclass
class OnCluster:
    cluster: LocalCluster
    gateway: Gateway
    channel: grpc.Channel

    def run(self, pipeline: str, query: str, timeout: float = 60) -> tuple[pb.RunResponse, float]:
        stub = gateway_pb2_grpc.GatewayServiceStub(self.channel)
        started = time.monotonic()
        response = stub.Run(pb.RunRequest(pipeline=pipeline, query=query), timeout=timeout)
        return response, time.monotonic() - started

    def where(self) -> dict[str, list[tuple[str, str]]]:
        """service -> [(state, node name)] per replica."""
        out: dict[str, list[tuple[str, str]]] = {}
        for service, _, state, node, _ in placements(self.gateway.status()):
            out.setdefault(service, []).append((state, node))
        return out


def _cannot_run_here() -> str:
    if not RAY.exists() and not shutil.which("ray"):
        return f"no `ray` command next to {RAY.parent} (pip install 'ray[serve]')"
    if not Path("/proc").is_dir():
        return "no /proc: the nodes' processes are found and killed through it (Linux only)"
    free = psutil.virtual_memory().available
    if free < MIN_FREE_MEMORY:
        return f"{free / 1024**3:.1f} GiB free; three Ray nodes and the models need {MIN_FREE_MEMORY / 1024**3:.0f}"
    return ""


def _test_config(config: dict[str, Any], folder: Path) -> None:
    pipelines = write_pipelines(folder)
    (pipelines / "plain@1.yaml").write_text(yaml.safe_dump(PLAIN_SPEC))
    config["gateway"]["pipelines_dir"] = str(pipelines)
    # A gone service opens its circuit after 3 failures; a probe 2 s later finds it back.
    config["gateway"]["resilience"] = {"failure_threshold": 3, "cooldown_s": 2, "retry_budget_ratio": 0.1}
    config["serve"]["startup_timeout_s"] = 300


@pytest.fixture(scope="module")
def on_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OnCluster]:
    reason = _cannot_run_here()
    if reason:
        pytest.skip(reason)
    folder = tmp_path_factory.mktemp("cluster")
    cluster = LocalCluster()
    gateway: Gateway | None = None
    started = time.monotonic()
    try:
        cluster.start()
        print(f"\n[cluster] three nodes up in {time.monotonic() - started:.1f} s at {cluster.address}", flush=True)
        config_path, _ = write_config(folder, cluster, lambda c: _test_config(c, folder))
        gateway = Gateway(config_path, folder / "up.log", cluster.env())
        deploy = time.monotonic()
        gateway.start()
        print(f"[cluster] ragrail up (serve.cluster_address) ready in {time.monotonic() - deploy:.1f} s", flush=True)
        with grpc.insecure_channel(gateway.address) as channel:
            yield OnCluster(cluster, gateway, channel)
    finally:
        code = gateway.stop() if gateway is not None else 0
        cluster.stop()
        left = cluster.leftovers()
        print(f"[cluster] stopped; whole module took {time.monotonic() - started:.1f} s", flush=True)
    assert code == 0, f"ragrail up exited with {code}:\n{gateway.log_path.read_text()[-3000:] if gateway else ''}"
    assert not left, f"processes left behind: {left}"


def _wait(condition: Callable[[], Any], limit_s: float, what: str, interval_s: float = 0.5) -> Any:
    """Polls ``condition`` until it returns something truthy, at most ``limit_s``."""
    deadline = time.monotonic() + limit_s
    last: Any = None
    while time.monotonic() < deadline:
        last = condition()
        if last:
            return last
        time.sleep(interval_s)
    pytest.fail(f"{what}: not within {limit_s:.0f} s (last: {last!r})")


def test_gpu_deployments_land_on_the_gpu_node_only(on_cluster: OnCluster) -> None:
    status = on_cluster.gateway.status()
    print("\n" + placement_table(status), flush=True)
    where = on_cluster.where()
    assert set(where) == {"embedding", "generation", "moderation", "retrieval"}, where
    for service in ("generation", "embedding"):
        assert where[service] and all(node == "gpu-worker" for _, node in where[service]), (service, where)
    for service in ("moderation", "retrieval"):
        # Ray's scheduler keeps CPU-only work off GPU nodes while another node fits it.
        assert where[service] and all(node == "cpu-worker" for _, node in where[service]), (service, where)
    for service, replicas in where.items():
        assert all(state == "RUNNING" for state, _ in replicas), (service, replicas)
    # device: auto with a logical GPU and no CUDA: the model runs on CPU, and the replica says so.
    gpu_logs = on_cluster.cluster.nodes["gpu-worker"].temp_dir
    said = [p for p in gpu_logs.rglob("*") if p.is_file() and p.suffix in (".log", ".err", ".out")
            and "CUDA is not available" in p.read_text(errors="replace")]
    assert said, f"no replica log under {gpu_logs} says it runs on CPU despite its GPU"

    response, _ = on_cluster.run("plain@1", "Say hello.")
    assert not response.fallback, response


def test_losing_the_cpu_node_moves_its_replicas_and_the_gateway_recovers(on_cluster: OnCluster) -> None:
    response, _ = on_cluster.run("rag@1", MISS)
    assert response.fallback_reason == pb.FALLBACK_REASON_RETRIEVAL_MISS, response  # all four answer

    killed_at = on_cluster.cluster.kill("cpu-worker")
    outages = 0
    longest = 0.0

    def recovered() -> bool:
        nonlocal outages, longest
        try:
            response, took = on_cluster.run("rag@1", MISS, timeout=30)
        except grpc.RpcError as error:  # never expected: the gateway answers fallbacks, not errors
            pytest.fail(f"the gateway failed a call while a node was down: {error.code()} {error.details()}")
        assert took < 30, f"a call took {took:.1f} s"
        longest = max(longest, took)
        if response.fallback_reason == pb.FALLBACK_REASON_RETRIEVAL_MISS:
            return True
        assert response.fallback_reason in UNAVAILABLE, response
        outages += 1
        return False

    _wait(recovered, RECOVERY_LIMIT_S, "the gateway answering again after the CPU node was lost", interval_s=0.5)
    recovery_s = time.monotonic() - killed_at
    where = on_cluster.where()
    print(f"\n[cluster] CPU node killed: gateway answering again after {recovery_s:.1f} s "
          f"({outages} canned fallbacks meanwhile, longest call {longest:.1f} s); replicas now:\n"
          + placement_table(on_cluster.gateway.status()), flush=True)
    for service in ("moderation", "retrieval"):
        running = [node for state, node in where[service] if state == "RUNNING"]
        assert running and all(node == "gpu-worker" for node in running), (service, where)
    assert on_cluster.gateway.process is not None and on_cluster.gateway.process.poll() is None  # never restarted

    on_cluster.cluster.restart("cpu-worker")  # back to three nodes for what follows


def test_losing_the_gpu_node_gives_canned_generation_fallbacks_until_it_returns(on_cluster: OnCluster) -> None:
    response, _ = on_cluster.run("plain@1", "Say hello.")
    assert not response.fallback, response

    killed_at = on_cluster.cluster.kill("gpu-worker")

    def generation_down() -> pb.RunResponse | None:
        # Moderation, if it had moved to the GPU node, comes back on the CPU node first.
        response, took = on_cluster.run("plain@1", "Say hello.", timeout=60)
        assert took < PLAIN_TIMEOUT_S + 10, f"a call took {took:.1f} s: a hang, not a fallback"
        assert response.fallback and response.fallback_reason in UNAVAILABLE, response
        return response if response.failed_stage == "reply" else None

    down = _wait(generation_down, RECOVERY_LIMIT_S, "generation's canned fallback while the GPU node is gone")
    seen_down_s = time.monotonic() - killed_at
    assert down.answer  # the spec's canned text, not an error
    fallbacks = []
    for _ in range(3):  # and it stays so, each answer bounded, while the node is away
        response, took = on_cluster.run("plain@1", "Say hello.", timeout=60)
        assert response.fallback and response.failed_stage == "reply" and response.fallback_reason in UNAVAILABLE
        fallbacks.append(took)
    where = on_cluster.where()
    assert all(state != "RUNNING" for state, _ in where.get("generation", [])), where
    assert all(node != "gpu-worker" for _, node in where.get("generation", [])), where

    returned_at = time.monotonic()
    on_cluster.cluster.restart("gpu-worker")
    node_back_s = time.monotonic() - returned_at

    def answered() -> bool:
        response, _ = on_cluster.run("plain@1", "Say hello.", timeout=60)
        return not response.fallback

    _wait(answered, RECOVERY_LIMIT_S, "generation answering after the GPU node returned", interval_s=1)
    recovery_s = time.monotonic() - returned_at
    print(f"\n[cluster] GPU node killed: generation's canned fallback seen after {seen_down_s:.1f} s, "
          f"fallback calls took {', '.join(f'{t:.2f}' for t in fallbacks)} s; node rejoined in {node_back_s:.1f} s, "
          f"generation answering {recovery_s:.1f} s after the restart began; replicas now:\n"
          + placement_table(on_cluster.gateway.status()), flush=True)

    def back_on_the_gpu_node() -> bool:
        where = on_cluster.where()
        return all(
            where.get(service) and all(state == "RUNNING" and node == "gpu-worker" for state, node in where[service])
            for service in ("generation", "embedding")
        )

    _wait(back_on_the_gpu_node, RECOVERY_LIMIT_S, "generation and embedding running on the GPU node again")
