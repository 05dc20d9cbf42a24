"""Builds and runs the gateway: a grpc.aio server in its own process.

It sits in front of Ray Serve's gRPC proxy rather than inside Serve: measured
here, that adds ~0.5 ms per call where a Serve-hosted gateway adds ~3 ms.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import grpc

from ragrail.common.config import Settings
from ragrail.common.deadline import Deadline
from ragrail.common.metrics import serve_metrics
from ragrail.common.server import ServiceBinding, create_server, mark_not_serving, mark_serving
from ragrail.gateway.backends import Backends
from ragrail.gateway.clients import grpc_backends
from ragrail.gateway.ingestion import Ingestor
from ragrail.gateway.metrics import GatewayMetrics
from ragrail.gateway.pipeline import RagPipeline
from ragrail.gateway.servicer import GatewayServicer, PipelineRegistry
from ragrail.gateway.v1 import gateway_pb2, gateway_pb2_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = gateway_pb2.DESCRIPTOR.services_by_name["GatewayService"].full_name
STARTUP_CALL_TIMEOUT_S = 60.0


def build_servicer(settings: Settings, backends: Backends, metrics: GatewayMetrics) -> GatewayServicer:
    g = settings.gateway
    pipelines = [
        RagPipeline(name, spec, backends, collection=g.collection, max_query_chars=g.max_query_chars)
        for name, spec in g.pipelines.items()
    ]
    ingestor = Ingestor(
        backends,
        collection=g.collection,
        chunk_chars=g.chunk_chars,
        overlap_chars=g.chunk_overlap_chars,
        max_documents=g.max_documents,
        max_document_chars=g.max_document_chars,
    )
    return GatewayServicer(PipelineRegistry(pipelines), ingestor, metrics)


@dataclass
class RunningGateway:
    server: grpc.aio.Server
    port: int
    metrics_port: int
    servicer: GatewayServicer
    channel: grpc.aio.Channel
    health: object

    async def stop(self, grace_s: float = 5.0) -> None:
        await mark_not_serving(self.health, [SERVICE_NAME])  # type: ignore[arg-type]
        await self.server.stop(grace_s)
        await self.channel.close()


async def ensure_collection(backends: Backends, collection: str) -> int:
    """Creates the collection with the embedding model's dimension; returns its size."""
    deadline = Deadline(STARTUP_CALL_TIMEOUT_S)
    [probe] = await backends.embedding.embed(["dimension probe"], deadline.timeout("embed"))
    await backends.retrieval.ensure_collection(collection, len(probe), deadline.timeout("collection"))
    return await backends.retrieval.count(collection, deadline.timeout("collection"))


async def start_gateway(settings: Settings, backends: Backends | None = None) -> RunningGateway:
    """Starts serving; health says SERVING once the collection is ready."""
    g = settings.gateway
    channel = grpc.aio.insecure_channel(
        g.serve_address,
        options=[
            ("grpc.max_receive_message_length", g.max_message_bytes),
            ("grpc.max_send_message_length", g.max_message_bytes),
        ],
    )
    backends = backends or grpc_backends(channel)
    metrics = GatewayMetrics()
    servicer = build_servicer(settings, backends, metrics)
    server, port, health = create_server(
        f"{g.host}:{g.port}",
        [ServiceBinding(servicer, gateway_pb2_grpc.add_GatewayServiceServicer_to_server, SERVICE_NAME)],
        max_message_bytes=g.max_message_bytes,
    )
    await mark_not_serving(health, [SERVICE_NAME])
    await server.start()
    metrics_port = serve_metrics(metrics.registry, g.host, g.metrics_port)
    await ensure_collection(backends, g.collection)
    await mark_serving(health, [SERVICE_NAME])
    return RunningGateway(server, port, metrics_port, servicer, channel, health)
