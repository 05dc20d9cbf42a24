"""One factory for every plain grpc.aio server: production and tests on port 0.

Each server gets health checking (grpc.health.v1), reflection (so grpcurl works
without proto files), bounded message sizes and ``DecodeGuard`` (an undecodable request
is INVALID_ARGUMENT, not UNKNOWN with a logged traceback). ``create_health_server`` makes the
optional companion a TLS server needs for probes that speak plaintext only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from ragrail.common.interceptors import DecodeGuard


@dataclass(frozen=True)
class ServiceBinding:
    """A servicer, the generated function that registers it, and its full name."""

    servicer: Any
    add_to_server: Callable[[Any, grpc.aio.Server], None]
    full_name: str


def create_server(
    address: str,
    services: Sequence[ServiceBinding],
    *,
    max_message_bytes: int = 16 * 1024 * 1024,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    credentials: grpc.ServerCredentials | None = None,
    options: Sequence[tuple[str, int | str]] = (),
    maximum_concurrent_rpcs: int | None = None,
) -> tuple[grpc.aio.Server, int, health.aio.HealthServicer]:
    """Builds (not starts) a server; returns it, the bound port and its health servicer.

    ``options`` are extra gRPC channel arguments (keepalive, connection age).
    ``maximum_concurrent_rpcs``: grpc refuses calls beyond it (RESOURCE_EXHAUSTED, no retry-after)
    before any interceptor or read; None: no limit.
    """
    server = grpc.aio.server(
        maximum_concurrent_rpcs=maximum_concurrent_rpcs,
        # First, so it wraps the others: a request that cannot be decoded reaches none of them.
        interceptors=[DecodeGuard(), *interceptors],
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.so_reuseport", 0),
            *options,
        ],
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for binding in services:
        binding.add_to_server(binding.servicer, server)
    names = [b.full_name for b in services]
    reflection.enable_server_reflection([*names, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"could not bind gRPC server to {address}")
    return server, port, health_servicer


def create_health_server(
    address: str, health_servicer: health.aio.HealthServicer
) -> tuple[grpc.aio.Server, int]:
    """Builds (not starts) a plaintext server with grpc.health.v1 and nothing else.

    Kubernetes' gRPC probe cannot speak TLS, so a TLS server's probes need a plaintext
    port; this one answers ``Health/Check`` and ``Health/Watch`` only (no reflection, no
    other service: anything else is UNIMPLEMENTED). It shares ``health_servicer`` with the
    main server, so both always report the same status.
    """
    server = grpc.aio.server(
        interceptors=[DecodeGuard()],
        options=[
            # Health requests are a service name: nothing bigger needs to get in.
            ("grpc.max_receive_message_length", 4096),
            ("grpc.so_reuseport", 0),
        ],
    )
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"could not bind the health server to {address}")
    return server, port


def host_port(host: str, port: int) -> str:
    """``host:port`` for a gRPC bind address, with an IPv6 host in brackets."""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"


async def mark_serving(health_servicer: health.aio.HealthServicer, names: Sequence[str]) -> None:
    for name in ["", *names]:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)


async def mark_not_serving(health_servicer: health.aio.HealthServicer, names: Sequence[str]) -> None:
    for name in ["", *names]:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
