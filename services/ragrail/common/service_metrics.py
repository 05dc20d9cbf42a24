"""Metrics of the model services: batch sizes, queue wait, model latency, tokens.

Inside Ray (a Serve replica) they are recorded through ``ray.util.metrics`` (Serve's flavour,
``ray.serve.metrics``, which adds the ``application``, ``deployment`` and ``replica`` labels),
so Ray's metrics agent exports them on each node's metrics port next to Serve's own
``ray_serve_*`` series. Ray prefixes every metric with ``ray_``: Prometheus sees
``ray_ragrail_service_model_latency_seconds_bucket`` and so on (:func:`exported_names`).
Anywhere else (tests, a service on a plain grpc.aio server) the same metrics live in the
prometheus_client registry :data:`REGISTRY` under their own names, which a process may
serve with ``ragrail.common.metrics.serve_metrics``.

What is measured, labelled by ``service`` (embedding, retrieval, generation, moderation)
and ``method`` (the RPC, e.g. ``Embed``, ``Search``; set by the servicer decorators):

- ``ragrail_service_batch_size``: items per model call (texts embedded or moderated together,
  requests merged into one generate call), and ``ragrail_service_batch_items_total`` their sum;
- ``ragrail_service_queue_wait_seconds``: from a request's arrival at the model to its call
  starting (a dynamic batch filling, the worker thread being free);
- ``ragrail_service_model_latency_seconds``: the model (or Qdrant) call itself;
- ``ragrail_service_generated_tokens_total`` and ``ragrail_service_prompt_tokens_total``:
  ``rate()`` of the first is the generation service's tokens per second;
- ``ragrail_service_generation_tokens_per_second``: each request's own decoding speed.

Servicers use :func:`service_metrics` (one object per service and process)::

    metrics = service_metrics("embedding")
    vectors = await metrics.to_thread(embedder.encode, texts, batch_size=len(texts))

and a dynamic batcher reports each batch it runs with ``observe_batch(size, queue_wait_s)``
plus ``observe_model(seconds)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Histogram

from ragrail.common.metrics import LATENCY_BUCKETS_S

T = TypeVar("T")

# The RPC being served (``Embed``, ``Search``...), set by ragrail.common.grpc_errors' decorators.
current_method: contextvars.ContextVar[str] = contextvars.ContextVar("ragrail_rpc_method", default="")

RAY_PREFIX = "ray_"
LABELS = ("service", "method")
# Half-integer bounds: a bucket holds whole sizes (le="1.5" is batches of 1). Ray exports a
# histogram's _sum rebuilt from bucket midpoints, which these keep right for small batches;
# the exact mean batch is rate(..._batch_items_total) / rate(..._batch_size_count).
BATCH_SIZE_BUCKETS = (0.5, 1.5, 2.5, 3.5, 4.5, 8.5, 16.5, 32.5, 64.5, 128.5, 256.5, 512.5, 1024.5)
QUEUE_WAIT_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
TOKENS_PER_S_BUCKETS = (1, 2, 5, 10, 20, 30, 50, 75, 100, 150, 200, 500, 1000, 2000)


@dataclass(frozen=True)
class MetricSpec:
    name: str
    kind: str  # counter or histogram
    description: str
    buckets: tuple[float, ...] = ()


BATCH_SIZE = MetricSpec(
    "ragrail_service_batch_size", "histogram", "Items per model call (texts, points or merged requests).",
    BATCH_SIZE_BUCKETS,
)
BATCH_ITEMS = MetricSpec(
    "ragrail_service_batch_items_total", "counter", "Items processed in model calls (the batch sizes' exact sum)."
)
QUEUE_WAIT = MetricSpec(
    "ragrail_service_queue_wait_seconds", "histogram",
    "Time from a request reaching the model's queue (dynamic batch, worker thread) to its call starting.",
    QUEUE_WAIT_BUCKETS_S,
)
MODEL_LATENCY = MetricSpec(
    "ragrail_service_model_latency_seconds", "histogram",
    "Duration of the model call itself (Qdrant's for retrieval), per service and RPC.",
    LATENCY_BUCKETS_S,
)
GENERATED_TOKENS = MetricSpec(
    "ragrail_service_generated_tokens_total", "counter", "Tokens generated (completion tokens)."
)
PROMPT_TOKENS = MetricSpec("ragrail_service_prompt_tokens_total", "counter", "Prompt tokens read by generation.")
TOKENS_PER_SECOND = MetricSpec(
    "ragrail_service_generation_tokens_per_second", "histogram",
    "Decoding speed of each generation request (completion tokens / generation time).",
    TOKENS_PER_S_BUCKETS,
)
SPECS = (BATCH_SIZE, BATCH_ITEMS, QUEUE_WAIT, MODEL_LATENCY, GENERATED_TOKENS, PROMPT_TOKENS, TOKENS_PER_SECOND)

# Where the metrics live outside Ray.
REGISTRY = CollectorRegistry()


def exported_names(prefix: str = RAY_PREFIX) -> set[str]:
    """Every sample name Prometheus sees, suffixes included (``ray_`` prefix: from Ray's endpoint)."""
    names: set[str] = set()
    for spec in SPECS:
        base = prefix + spec.name
        if spec.kind == "counter":
            names.add(base if base.endswith("_total") else base + "_total")
        else:
            names |= {base + "_bucket", base + "_sum", base + "_count"}
    return names


# -- backends --------------------------------------------------------------------------------


class _PrometheusBackend:
    """prometheus_client metrics in :data:`REGISTRY` (tests, processes without Ray)."""

    kind = "prometheus"

    def __init__(self, registry: CollectorRegistry) -> None:
        self._metrics: dict[str, Any] = {}
        for spec in SPECS:
            if spec.kind == "counter":
                metric: Any = Counter(spec.name, spec.description, LABELS, registry=registry)
            else:
                metric = Histogram(spec.name, spec.description, LABELS, buckets=spec.buckets, registry=registry)
            self._metrics[spec.name] = metric

    def record(self, spec: MetricSpec, value: float, service: str, method: str) -> None:
        child = self._metrics[spec.name].labels(service, method)
        if spec.kind == "counter":
            child.inc(value)
        else:
            child.observe(value)


class _RayBackend:
    """``ray.util.metrics`` (Serve's flavour inside a replica): exported by Ray's metrics agent."""

    kind = "ray"

    def __init__(self) -> None:
        from ray.serve import context as serve_context

        if serve_context._get_internal_replica_context() is not None:
            from ray.serve import metrics as ray_metrics  # adds application/deployment/replica
        else:
            from ray.util import metrics as ray_metrics  # type: ignore[no-redef]
        self._metrics: dict[str, Any] = {}
        for spec in SPECS:
            if spec.kind == "counter":
                metric: Any = ray_metrics.Counter(spec.name, spec.description, tag_keys=LABELS)
            else:
                metric = ray_metrics.Histogram(
                    spec.name, spec.description, boundaries=[float(b) for b in spec.buckets], tag_keys=LABELS
                )
            self._metrics[spec.name] = metric

    def record(self, spec: MetricSpec, value: float, service: str, method: str) -> None:
        metric = self._metrics[spec.name]
        tags = {"service": service, "method": method}
        if spec.kind == "counter":
            metric.inc(value, tags=tags)
        else:
            metric.observe(value, tags=tags)


_backend: _PrometheusBackend | _RayBackend | None = None
_backend_lock = threading.Lock()


def _in_ray() -> bool:
    ray = sys.modules.get("ray")  # never imported here: only a process that runs Ray has it
    return bool(ray is not None and getattr(ray, "is_initialized", lambda: False)())


def backend() -> _PrometheusBackend | _RayBackend:
    """Chosen once per process, on first use: Ray's metrics when Ray runs here."""
    global _backend
    if _backend is None:
        with _backend_lock:
            if _backend is None:
                _backend = _RayBackend() if _in_ray() else _PrometheusBackend(REGISTRY)
    return _backend


# -- the API servicers use -------------------------------------------------------------------


class ServiceMetrics:
    """Records one service's metrics; ``method`` defaults to the RPC being served."""

    def __init__(self, service: str) -> None:
        self.service = service

    def _record(self, spec: MetricSpec, value: float, method: str | None) -> None:
        backend().record(spec, value, self.service, method or current_method.get() or "unknown")

    def observe_batch(self, size: int, queue_wait_s: float | None = None, *, method: str | None = None) -> None:
        """One model call over ``size`` items; ``queue_wait_s``: how long its oldest item waited."""
        self._record(BATCH_SIZE, size, method)
        self._record(BATCH_ITEMS, size, method)
        if queue_wait_s is not None:
            self._record(QUEUE_WAIT, max(0.0, queue_wait_s), method)

    def observe_queue_wait(self, seconds: float, *, method: str | None = None) -> None:
        self._record(QUEUE_WAIT, max(0.0, seconds), method)

    def observe_model(self, seconds: float, *, method: str | None = None) -> None:
        self._record(MODEL_LATENCY, max(0.0, seconds), method)

    def observe_tokens(
        self, completion_tokens: int, seconds: float | None = None, prompt_tokens: int = 0, *, method: str | None = None
    ) -> None:
        """Tokens of one generation request; with ``seconds``, its decoding speed too."""
        if completion_tokens > 0:
            self._record(GENERATED_TOKENS, completion_tokens, method)
            if seconds and seconds > 0:
                self._record(TOKENS_PER_SECOND, completion_tokens / seconds, method)
        if prompt_tokens > 0:
            self._record(PROMPT_TOKENS, prompt_tokens, method)

    @contextlib.contextmanager
    def model_call(self, batch_size: int | None = None, *, method: str | None = None) -> Iterator[None]:
        """Times the block as a model call (recorded when it returns, not when it raises)."""
        start = time.perf_counter()
        yield
        self.observe_model(time.perf_counter() - start, method=method)
        if batch_size is not None:
            self.observe_batch(batch_size, method=method)

    async def to_thread(self, fn: Callable[..., T], /, *args: Any, batch_size: int | None = None, **kwargs: Any) -> T:
        """``asyncio.to_thread`` that records the wait for a thread and the call's duration."""
        return await self.run_in_executor(None, functools.partial(fn, *args, **kwargs), batch_size=batch_size)

    async def run_in_executor(
        self, executor: Executor | None, fn: Callable[[], T], *, batch_size: int | None = None
    ) -> T:
        """Runs ``fn`` in ``executor`` (the loop's default when None) in a copy of this context,
        recording the queue wait (until a worker thread starts it) and the model latency."""
        loop = asyncio.get_running_loop()
        ctx = contextvars.copy_context()
        times: list[float] = []
        submitted = time.perf_counter()

        def timed() -> T:
            times.append(time.perf_counter())
            try:
                return ctx.run(fn)
            finally:
                times.append(time.perf_counter())

        result = await loop.run_in_executor(executor, timed)
        method = ctx.get(current_method) or None
        self.observe_queue_wait(times[0] - submitted, method=method)
        self.observe_model(times[1] - times[0], method=method)
        if batch_size is not None:
            self.observe_batch(batch_size, method=method)
        return result


_instances: dict[str, ServiceMetrics] = {}


def service_metrics(service: str) -> ServiceMetrics:
    """The process's recorder for ``service`` (cheap to call per request)."""
    metrics = _instances.get(service)
    if metrics is None:
        metrics = _instances.setdefault(service, ServiceMetrics(service))
    return metrics

