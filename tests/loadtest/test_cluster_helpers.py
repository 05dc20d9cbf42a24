"""The local multi-node cluster's pieces that need no Ray (loadtest/cluster.py): the config it
deploys, the `ray start` lines of its nodes, and the placement table `make cluster-demo` prints."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from loadtest import cluster as mod
from ragrail.common.config import deployment_options, load_settings


def test_the_gpu_profile_asks_gpus_for_generation_and_embedding_only(tmp_path: Path) -> None:
    local = mod.LocalCluster(root=tmp_path / "c")
    local.gcs_port = 6390
    path, config = mod.write_config(tmp_path, local)
    settings = load_settings(path)  # validated as `ragrail up` will
    assert settings.serve.cluster_address == "127.0.0.1:6390" and settings.serve.proxy_location == "HeadOnly"
    for service in ("generation", "embedding"):
        options = deployment_options(getattr(settings, service).deployment)
        assert options.gpus() > 0 and options.ray_actor_options and options.ray_actor_options.accelerator_type == "demo"
    for service in ("moderation", "retrieval"):
        assert deployment_options(getattr(settings, service).deployment).gpus() == 0
    assert config["gateway"]["serve_address"] == f"127.0.0.1:{config['serve']['grpc_port']}"


def test_each_node_gets_its_own_temp_dir_ports_resources_and_labels(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[list[str]] = []

    class FakeStart:
        def __init__(self, args: list[str], stdout: Any, **_: Any) -> None:
            started.append(args)
            stdout.write(f"{mod.STARTED}.\n".encode())
            self.pid = 0

        def poll(self) -> None:
            return None

    monkeypatch.setattr(subprocess, "Popen", FakeStart)
    local = mod.LocalCluster(root=tmp_path)
    local.start()
    head, gpu, cpu = ({a: args[i + 1] for i, a in enumerate(args[:-1]) if a.startswith("--")} for args in started)
    assert "--head" in started[0] and head["--port"] == str(local.gcs_port) and head["--num-cpus"] == "0"
    assert gpu["--address"] == cpu["--address"] == local.address
    assert gpu["--num-gpus"] == "1" and gpu["--resources"] == '{"accelerator_type:demo": 1}'
    assert gpu["--labels"] == "ragrail/node=gpu-worker,ragrail/pool=gpu" and cpu["--num-gpus"] == "0"
    assert len({n["--temp-dir"] for n in (head, gpu, cpu)}) == 3
    ports = [int(n[k]) for n in (head, gpu, cpu) for k in n if k.endswith("-port") and k != "--port"]
    blocks = [int(n["--min-worker-port"]) for n in (head, gpu, cpu)]
    assert len(ports) == len(set(ports)), "a port given to two nodes"
    assert all(abs(a - b) >= mod.WORKER_PORTS for a in blocks for b in blocks if a != b)


def test_placement_table_names_nodes_by_their_label() -> None:
    status = {"services": [
        {"name": "generation", "replica_nodes": [{
            "replica_id": "GenerationService#1", "state": "RUNNING", "node_id": "ab" * 16,
            "node_labels": {"ragrail/node": "gpu-worker"}, "node_resources": {"CPU": 2, "GPU": 1},
        }]},
        {"name": "moderation", "replica_nodes": [{"replica_id": "ModerationService#2", "state": "PENDING_ALLOCATION"}]},
    ]}
    assert mod.placements(status) == [
        ("generation", "GenerationService#1", "RUNNING", "gpu-worker", "CPU 2 GPU 1"),
        ("moderation", "ModerationService#2", "PENDING_ALLOCATION", "(none)", ""),
    ]
    lines = mod.placement_table(status).splitlines()
    assert lines[0].split() == ["service", "replica", "state", "node", "node", "offers"]
    assert "gpu-worker" in lines[2] and "(none)" in lines[3]
