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
        self.answer_modes = Counter(
            "ragrail_gateway_answer_modes_total",
            "Answers by mode: generated, extractive (quoted passages: a ground stage held the model's answer "
            "back) or canned.",
            ["pipeline", "version", "mode"],
            registry=self.registry,
        )
        self.tokens = Counter(
            "ragrail_gateway_tokens_total",
            "Model tokens used by pipeline runs: kind=prompt (read) or completion (generated).",
            ["pipeline", "version", "kind"],
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "ragrail_gateway_in_flight_requests",
            "Requests being processed.",
            ["method"],
            registry=self.registry,
        )
        self.rpcs = Counter(
            "ragrail_gateway_rpcs_total",
            "Gateway RPCs (health and reflection aside) by method and final gRPC code, refusals included.",
            ["method", "code"],
            registry=self.registry,
        )
        self.moderation_flags = Counter(
            "ragrail_gateway_moderation_flags_total",
            "Texts flagged by moderation, by stage (moderate_input/moderate_output) and category.",
            ["pipeline", "version", "stage", "category"],
            registry=self.registry,
        )
        self.retrieval_best_score = Histogram(
            "ragrail_gateway_retrieval_best_score",
            "Best cosine similarity among retrieved passages of answered requests.",
            ["pipeline", "version"],
            buckets=(0.2, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.7, 0.8, 0.9, 1.0),
            registry=self.registry,
        )
        self.cache_hits = Counter(
            "ragrail_gateway_cache_hits_total",
            "Answers served from the response cache.",
            ["pipeline", "version"],
            registry=self.registry,
        )
        self.circuit_state = Gauge(
            "ragrail_gateway_circuit_state",
            "Circuit breaker per service: 0 closed, 1 half-open, 2 open.",
            ["service"],
            registry=self.registry,
        )
        self.admission_limit = Gauge(
            "ragrail_gateway_admission_limit",
            "RPCs of an admission class (query, ingest) admitted at once right now: the latency-steered "
            "limit where the class has one, else its fixed max_in_flight.",
            ["class"],
            registry=self.registry,
        )
        self.queued = Gauge(
            "ragrail_gateway_queued_requests",
            "Requests waiting for an admission slot, per pipeline version.",
            ["pipeline"],
            registry=self.registry,
        )
        self.pipeline_reloads = Counter(
            "ragrail_gateway_pipeline_reloads_total",
            "Pipeline spec reloads by result (applied or rejected).",
            ["result"],
            registry=self.registry,
        )
        self.feedback = Counter(
            "ragrail_gateway_feedback_total",
            "Feedback ratings received, per pipeline version and rating.",
            ["pipeline", "version", "rating"],
            registry=self.registry,
        )
        self.feedback_store_errors = Counter(
            "ragrail_gateway_feedback_store_errors_total",
            "Feedback store calls that failed (database down or too slow), by operation: submit (the rating "
            "was refused with UNAVAILABLE), remember_answer (the answer was sent, its rating will be unattributed) or "
            "remember_answer_skipped (the same, not even tried: the feedback_store circuit was open).",
            ["operation"],
            registry=self.registry,
        )
        self.ingested_chunks = Counter(
            "ragrail_gateway_ingested_chunks_total",
            "Document chunks stored or dropped (flagged by moderation) at ingestion.",
            ["result"],
            registry=self.registry,
        )
