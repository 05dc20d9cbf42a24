"""The gateway's Prometheus metrics (names follow Prometheus conventions)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ragrail.common.metrics import LATENCY_BUCKETS_S


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.requests = Counter(
            "ragrail_gateway_requests_total",
            "Pipeline requests by outcome (answered, fallback, error) and gRPC code.",
            ["pipeline", "version", "outcome", "code"],
            registry=self.registry,
        )
        self.request_duration = Histogram(
            "ragrail_gateway_request_duration_seconds",
            "End-to-end latency of pipeline requests.",
            ["pipeline", "version", "outcome"],
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.stage_duration = Histogram(
            "ragrail_gateway_stage_duration_seconds",
            "Latency of each pipeline stage.",
            ["pipeline", "version", "stage"],
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.fallbacks = Counter(
            "ragrail_gateway_fallbacks_total",
            "Canned answers given instead of generated ones, by reason.",
            ["pipeline", "version", "reason"],
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "ragrail_gateway_in_flight_requests",
            "Requests being processed.",
            ["method"],
            registry=self.registry,
        )
        self.ingested_chunks = Counter(
            "ragrail_gateway_ingested_chunks_total",
            "Document chunks stored or dropped (flagged by moderation) at ingestion.",
            ["result"],
            registry=self.registry,
        )
