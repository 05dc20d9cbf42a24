"""Resources and scale on this machine: an unschedulable service, and autoscaling.

A second, private stack whose generation service asks for a GPU that is not
here, and whose embedding service scales at one ongoing request per replica.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import grpc
import pytest

from ragrail.embedding.v1 import embedding_pb2, embedding_pb2_grpc
from ragrail.gateway.v1 import gateway_pb2 as pb
from ragrail.gateway.v1 import gateway_pb2_grpc
from tests.integration.conftest import HURRIED_GENERATE_TIMEOUT_S, Stack, running_stack
from tests.unit.sample_questions import ANSWERABLE

pytestmark = pytest.mark.integration


def _constrain(config: dict) -> None:
    config["serve"]["startup_timeout_s"] = 30
    config["generation"]["deployment"]["ray_actor_options"]["num_gpus"] = 1  # none here
    config["embedding"]["deployment"]["autoscaling_config"] = {
        "min_replicas": 1,
        "max_replicas": 2,
        "target_ongoing_requests": 1,
        "upscale_delay_s": 0.5,
        "downscale_delay_s": 600,
        "metrics_interval_s": 0.5,
        "look_back_period_s": 2,
    }


@pytest.fixture(scope="module")
def scale_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    yield from running_stack(tmp_path_factory.mktemp("scale"), _constrain)


def _status(stack: Stack) -> pb.StatusResponse:
    with grpc.insecure_channel(stack.gateway_address) as channel:
        return gateway_pb2_grpc.GatewayServiceStub(channel).Status(pb.StatusRequest(), timeout=10)


def test_unschedulable_service_is_reported_and_answered_with_a_fallback(scale_stack: Stack) -> None:
    services = {s.name: s for s in _status(scale_stack).services}
    assert services["embedding"].status == "RUNNING"
    generation = services["generation"]
    assert generation.status != "RUNNING"
    assert "RUNNING" not in generation.replicas
    cli = scale_stack.cli("status")
    assert cli.returncode == 3 and "generation:" in cli.stdout, cli.stdout  # non-zero: not healthy

    start = time.monotonic()
    with grpc.insecure_channel(scale_stack.gateway_address) as channel:
        response = gateway_pb2_grpc.GatewayServiceStub(channel).Run(
            pb.RunRequest(pipeline="hurried@1", query=ANSWERABLE[0][0]), timeout=60
        )
    assert response.fallback
    assert response.fallback_reason in (pb.FALLBACK_REASON_STAGE_TIMEOUT, pb.FALLBACK_REASON_BACKEND_UNAVAILABLE)
    assert response.failed_stage == "generate"
    # bounded by the generate stage's own timeout (plus the stages before it on a busy machine), not a hang
    assert time.monotonic() - start < HURRIED_GENERATE_TIMEOUT_S + 12


def test_embedding_autoscales_under_load(scale_stack: Stack) -> None:
    stop = threading.Event()

    def caller() -> None:
        with grpc.insecure_channel(scale_stack.serve_address) as channel:
            stub = embedding_pb2_grpc.EmbeddingServiceStub(channel)
            request = embedding_pb2.EmbedRequest(texts=["autoscaling load " * 40] * 32)
            while not stop.is_set():
                try:
                    stub.Embed(request, metadata=(("application", "embedding"),), timeout=30)
                except grpc.RpcError:
                    time.sleep(0.1)

    callers = [threading.Thread(target=caller, daemon=True) for _ in range(6)]
    for thread in callers:
        thread.start()
    try:
        deadline = time.monotonic() + 60
        running = 0
        while time.monotonic() < deadline:
            embedding = {s.name: s for s in _status(scale_stack).services}["embedding"]
            running = embedding.replicas.get("RUNNING", 0)
            if running >= 2:
                break
            time.sleep(1)
        assert running >= 2, f"embedding did not scale out: {embedding}"
    finally:
        stop.set()
        for thread in callers:
            thread.join(timeout=35)
