"""Prometheus helpers shared by every process that exposes /metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, start_http_server

# Latency buckets from 1 ms to 2 min: gateway stages span sub-ms lookups to
# multi-second CPU generation.
LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


def serve_metrics(registry: CollectorRegistry, host: str, port: int) -> int:
    """Starts the /metrics HTTP endpoint in a daemon thread; returns the port (0 = off)."""
    if port == 0:
        return 0
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return int(server.server_port)
