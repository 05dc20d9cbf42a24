"""Where each replica runs: the gateway's Status carries it and `ragrail status` prints it.

No Ray here: the placements are built as ragrail.stack builds them from Serve's controller.
"""

from __future__ import annotations

import pytest

from ragrail.cli.main import main
from ragrail.gateway.servicer import replica_info
from ragrail.stack import NodeInfo, ReplicaPlacement
from ragrail_client import pb
from tests.unit.test_client import Script
from tests.unit.test_cli_scripts import gateway, script  # noqa: F401  (fixtures)

GPU_NODE = NodeInfo(
    node_id="5f3a9c0e11aa22bb33cc44dd55ee66ff",
    ip="127.0.0.1",
    labels={"ragrail/pool": "gpu"},
    resources={
        "CPU": 1.0, "GPU": 1.0, "accelerator_type:demo": 1.0, "memory": 1e9, "object_store_memory": 1e8,
        "node:127.0.0.1": 1.0,
    },
)


def test_a_replica_and_its_node_become_a_replica_info() -> None:
    info = replica_info(ReplicaPlacement("GenerationService#abc", "RUNNING", GPU_NODE))
    assert info.replica_id == "GenerationService#abc" and info.state == "RUNNING"
    assert (info.node_id, info.node_ip, info.head) == (GPU_NODE.node_id, "127.0.0.1", False)
    assert dict(info.node_labels) == {"ragrail/pool": "gpu"}
    # What placement asks for; Ray's bookkeeping resources are left out.
    assert dict(info.node_resources) == {"CPU": 1.0, "GPU": 1.0, "accelerator_type:demo": 1.0}


def test_a_pending_replica_has_no_node() -> None:
    info = replica_info(ReplicaPlacement("GenerationService#def", "PENDING_ALLOCATION", None))
    assert info.state == "PENDING_ALLOCATION" and info.node_id == "" and not info.node_resources


def test_node_description_is_short() -> None:
    text = GPU_NODE.describe()
    assert text == "5f3a9c0e 127.0.0.1 CPU 1 GPU 1 accelerator_type:demo 1 ragrail/pool=gpu"


def test_status_prints_the_node_of_every_replica(
    gateway: str, script: Script, capsys: pytest.CaptureFixture[str]  # noqa: F811
) -> None:
    running = pb.ReplicaInfo(
        replica_id="GenerationService#abc", state="RUNNING", node_id=GPU_NODE.node_id, node_ip="127.0.0.1",
        node_labels={"ragrail/pool": "gpu"}, node_resources={"CPU": 1, "GPU": 1},
    )
    pending = pb.ReplicaInfo(replica_id="GenerationService#def", state="PENDING_ALLOCATION")
    script.then("Status", pb.StatusResponse(services=[
        pb.ServiceInfo(name="generation", status="RUNNING", replicas={"RUNNING": 1, "PENDING_ALLOCATION": 1},
                       replica_nodes=[running, pending]),
    ]))
    assert main(["status"]) == 0
    out = capsys.readouterr().out
    assert "GenerationService#abc  running" in out
    assert "node 5f3a9c0e 127.0.0.1 CPU 1 GPU 1 ragrail/pool=gpu" in out
    assert "GenerationService#def  pending_allocation" in out and "no node yet" in out
