"""Service metrics (ragrail.common.service_metrics) outside Ray: the prometheus_client fallback.

Inside Ray the same calls go to ray.util.metrics; tests/integration/test_observe.py checks
that they reach Prometheus from Ray's metrics endpoint.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

from ragrail.common import service_metrics as sm
from ragrail.moderation.core import Category, Moderator
from ragrail.moderation.servicer import ModerationServicer
from ragrail.moderation.v1 import moderation_pb2 as pb


def sample(name: str, **labels: str) -> float:
    return sm.REGISTRY.get_sample_value(name, labels) or 0.0


class SlowScorer:
    def score(self, texts: Sequence[str]) -> list[float]:
        time.sleep(0.02)
        return [0.0 for _ in texts]


def test_outside_ray_the_prometheus_registry_is_used() -> None:
    assert sm.backend().kind == "prometheus"


async def test_a_servicer_call_records_batch_queue_wait_and_model_latency() -> None:
    labels = {"service": "moderation", "method": "Moderate"}
    before = {
        name: sample(name, **labels)
        for name in ("ragrail_service_batch_size_sum", "ragrail_service_batch_size_count",
                     "ragrail_service_model_latency_seconds_sum", "ragrail_service_queue_wait_seconds_count")
    }
    servicer = ModerationServicer(Moderator({c: SlowScorer() for c in Category}, {c: 0.5 for c in Category}))
    await servicer.Moderate(pb.ModerateRequest(texts=["one", "two", "three"]))
    assert sample("ragrail_service_batch_size_sum", **labels) - before["ragrail_service_batch_size_sum"] == 3
    assert sample("ragrail_service_batch_size_count", **labels) - before["ragrail_service_batch_size_count"] == 1
    # Every category's scorer sleeps 20 ms: the model call took at least that.
    model = sample("ragrail_service_model_latency_seconds_sum", **labels) - before["ragrail_service_model_latency_seconds_sum"]
    assert model >= 0.02 * len(Category)
    assert sample("ragrail_service_queue_wait_seconds_count", **labels) - before["ragrail_service_queue_wait_seconds_count"] == 1


async def test_queue_wait_is_the_time_until_a_worker_thread_starts() -> None:
    from concurrent.futures import ThreadPoolExecutor

    metrics = sm.service_metrics("retrieval")
    labels = {"service": "retrieval", "method": "Search"}
    before = sample("ragrail_service_queue_wait_seconds_sum", **labels)
    release = threading.Event()
    with ThreadPoolExecutor(max_workers=1) as one_thread:
        blocker = one_thread.submit(release.wait)  # the only thread is busy...
        token = sm.current_method.set("Search")
        try:
            threading.Timer(0.1, release.set).start()  # ...for 100 ms
            assert await metrics.run_in_executor(one_thread, lambda: 42) == 42
        finally:
            sm.current_method.reset(token)
        blocker.result()
    assert sample("ragrail_service_queue_wait_seconds_sum", **labels) - before >= 0.09


def test_tokens_count_and_speed() -> None:
    metrics = sm.service_metrics("generation")
    labels = {"service": "generation", "method": "Generate"}
    before = sample("ragrail_service_generated_tokens_total", **labels)
    before_prompt = sample("ragrail_service_prompt_tokens_total", **labels)
    before_speed = sample("ragrail_service_generation_tokens_per_second_sum", **labels)
    metrics.observe_tokens(40, 2.0, prompt_tokens=100, method="Generate")
    assert sample("ragrail_service_generated_tokens_total", **labels) - before == 40
    assert sample("ragrail_service_prompt_tokens_total", **labels) - before_prompt == 100
    assert sample("ragrail_service_generation_tokens_per_second_sum", **labels) - before_speed == 20.0


def test_batch_observed_by_a_batcher_thread() -> None:
    labels = {"service": "generation", "method": "Generate"}
    before = sample("ragrail_service_batch_size_count", **labels)
    thread = threading.Thread(target=lambda: sm.service_metrics("generation").observe_batch(4, 0.01, method="Generate"))
    thread.start()
    thread.join()
    assert sample("ragrail_service_batch_size_count", **labels) - before == 1


def test_names_follow_prometheus_conventions() -> None:
    for spec in sm.SPECS:
        assert spec.name.startswith("ragrail_service_")
        if spec.kind == "counter":
            assert spec.name.endswith("_total")
        elif "seconds" in spec.name:
            assert spec.name.endswith("_seconds") or spec.name.endswith("_per_second")
    exported = sm.exported_names()
    assert "ray_ragrail_service_model_latency_seconds_bucket" in exported
    assert "ray_ragrail_service_generated_tokens_total" in exported
    assert all(n.startswith("ray_ragrail_service_") for n in exported)
    # Outside Ray the registry holds the same metrics, unprefixed (client_python keeps a
    # counter's family name without its _total).
    assert {f.name for f in sm.REGISTRY.collect()} == {spec.name.removesuffix("_total") for spec in sm.SPECS}
