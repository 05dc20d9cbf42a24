"""Builds and runs the gateway: a grpc.aio server in its own process.

It sits in front of Ray Serve's gRPC proxy rather than inside Serve: measured
here, that adds ~0.5 ms per call where a Serve-hosted gateway adds ~3 ms.

With TLS on, an optional second port serves grpc.health.v1 alone in plaintext, for
probes that cannot speak TLS (Kubernetes' gRPC probe); off unless asked for.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from ragrail.common.config import Settings
from ragrail.common.deadline import Deadline
from ragrail.common.errors import RagrailError
from ragrail.common.metrics import serve_metrics
from ragrail.common.server import (
    ServiceBinding,
    create_health_server,
    create_server,
    host_port,
    mark_not_serving,
    mark_serving,
)
from ragrail.gateway.auth import Authenticator
from ragrail.gateway.backends import Backends
from ragrail.gateway.clients import grpc_backends
from ragrail.gateway.feedback import FeedbackStore
from ragrail.gateway.ingestion import Ingestor, Pipelining
from ragrail.gateway.interceptors import PUBLIC, GatewayInterceptor, MethodPolicy
from ragrail.gateway.metrics import GatewayMetrics
from ragrail.gateway.registry import RegistryLoader
from ragrail.gateway.resilience import CircuitBreaker, CircuitState, RetryBudget
from ragrail.gateway.servicer import GatewayServicer, GatewayState
from ragrail.gateway.specs import PipelineSpec
from ragrail.gateway.stages import StageRunner
from ragrail.gateway.tls import CertificateReloader, TlsFiles
from ragrail.gateway.v1 import gateway_pb2, gateway_pb2_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = gateway_pb2.DESCRIPTOR.services_by_name["GatewayService"].full_name

# How GatewayInterceptor treats each RPC of the gateway's server. Any method not listed (every
# GatewayService RPC, present and future) needs a key, takes a rate-limit token and an RPC slot;
# public methods are only the ones that must answer without a key (probes, grpcurl's listing).
METHOD_POLICIES: dict[str, MethodPolicy] = {
    "/grpc.health.v1.Health/Check": PUBLIC,
    "/grpc.health.v1.Health/Watch": PUBLIC,
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": PUBLIC,
    f"/{SERVICE_NAME}/Run": MethodPolicy(admission="query"),
    f"/{SERVICE_NAME}/RunStream": MethodPolicy(admission="query"),
    f"/{SERVICE_NAME}/Ingest": MethodPolicy(ingest_scope=True, admission="ingest"),
}
# grpc's own hard limit on concurrent RPCs sits this far above admission.max_concurrent_rpcs:
# the interceptor refuses first (with retry-after, health exempt); grpc's limit only catches a
# burst that arrives faster than the interceptor's count rises (it counts before any read).
GRPC_LIMIT_HEADROOM = 64
STARTUP_CALL_TIMEOUT_S = 60.0
# Without wait_ready: each start-up attempt's deadline, and the longest pause between attempts.
READY_ATTEMPT_TIMEOUT_S = 10.0
READY_RETRY_MAX_S = 5.0


@dataclass
class RunningGateway:
    server: grpc.aio.Server
    port: int
    metrics_port: int
    servicer: GatewayServicer
    loader: RegistryLoader
    channel: grpc.aio.Channel
    health: object
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    health_server: grpc.aio.Server | None = None  # the plaintext health-only port, when on
    health_port: int | None = None
    grace_s: float = 5.0  # default drain period of stop()
    interceptor: GatewayInterceptor | None = None  # refuses new calls once a drain begins
    _hurry: asyncio.Event = field(default_factory=asyncio.Event)  # a second stop() during the drain
    _stopped: bool = False

    def reload(self) -> bool:
        """Re-reads the spec folder; False (and the old registry kept) when it is broken."""
        registry = self.loader.try_reload()
        metrics = self.servicer.metrics
        if registry is None:
            metrics.pipeline_reloads.labels("rejected").inc()
            return False
        self.servicer.state.registry = registry
        metrics.pipeline_reloads.labels("applied").inc()
        log.info("pipelines reloaded: %s", ", ".join(f"{p.name}@{p.version}" for p in registry.all()))
        return True

    async def stop(self, grace_s: float | None = None) -> None:
        """Drains: NOT_SERVING at once, new calls refused (UNAVAILABLE, which clients retry), calls
        in flight get ``grace_s`` (default ``gateway.shutdown_grace_s``) to finish, then are cancelled.

        Calling it again while it drains (a second Ctrl-C, ``stop(0)``) shortens the wait.
        """
        grace = self.grace_s if grace_s is None else grace_s
        if self._stopped:
            self._hurry.set()
            await self.server.stop(grace)
            return
        self._stopped = True
        if self.interceptor is not None:
            # Before any await: every call that arrives from now on is refused by the interceptor
            # with UNAVAILABLE. grpc's own stop, racing a call on a new connection, could instead
            # end it CANCELLED, which clients do not retry.
            self.interceptor.draining = True
        for task in self.tasks:
            task.cancel()
        await mark_not_serving(self.health, [SERVICE_NAME])  # type: ignore[arg-type]
        started = time.monotonic()
        await self._calls_done(grace)
        await self.server.stop(max(0.0, grace - (time.monotonic() - started)))
        if self.health_server is not None:
            await self.health_server.stop(0)
        await self.channel.close()
        self.servicer.feedback.close()

    async def _calls_done(self, grace_s: float) -> None:
        """Waits until no call is in flight, ``grace_s`` passes, or a second stop() hurries it."""
        if self.interceptor is None:
            return
        deadline = time.monotonic() + grace_s
        while self.interceptor.rpcs.in_flight and time.monotonic() < deadline and not self._hurry.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._hurry.wait(), min(0.05, max(0.0, deadline - time.monotonic())))


def serve_channel_options(max_message_bytes: int) -> list[tuple[str, int]]:
    """The gateway's channel to Serve: detect a dead peer in seconds, reconnect within seconds.

    gRPC's defaults send no keepalive (a silently dropped connection is noticed only by a
    call's deadline) and back off reconnects up to 120 s: after a Serve restart the gateway
    answered BACKEND_UNAVAILABLE for up to two minutes.
    """
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", 20_000),
        ("grpc.keepalive_timeout_ms", 5_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.initial_reconnect_backoff_ms", 250),
        ("grpc.min_reconnect_backoff_ms", 250),
        ("grpc.max_reconnect_backoff_ms", 3_000),
    ]


def connection_age_options(max_age_s: float | None) -> list[tuple[str, int]]:
    """Server side: bound connection age (clients re-resolve and spread over new pods) and
    accept the clients' keepalive pings instead of answering them with GOAWAY."""
    options = [
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ]
    if max_age_s is not None:
        options += [
            ("grpc.max_connection_age_ms", int(max_age_s * 1000)),
            # A call in flight when the age is reached may still finish: streams run minutes.
            ("grpc.max_connection_age_grace_ms", 600_000),
        ]
    return options


def _credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS credentials that pick up renewed certificate files at the next handshake."""
    tls = settings.gateway.tls
    if not (tls.cert_file and tls.key_file):
        return None
    ca = Path(tls.client_ca_file) if tls.client_ca_file else None
    return CertificateReloader(TlsFiles(Path(tls.cert_file), Path(tls.key_file), ca)).credentials()


def build_gateway(
    settings: Settings,
    channel: grpc.aio.Channel,
    backends_for: Callable[[PipelineSpec], Backends] | None = None,
    metrics: GatewayMetrics | None = None,
) -> tuple[GatewayServicer, RegistryLoader]:
    g = settings.gateway
    metrics = metrics or GatewayMetrics()
    by_apps: dict[tuple[tuple[str, str], ...], Backends] = {}

    def grpc_backends_for(spec: PipelineSpec) -> Backends:
        apps = spec.services.model_dump()
        key = tuple(sorted(apps.items()))
        if key not in by_apps:
            by_apps[key] = grpc_backends(channel, apps)
        return by_apps[key]

    r = g.resilience
    runner = StageRunner(
        RetryBudget(r.retry_budget_ratio),
        lambda name: CircuitBreaker(
            name,
            failure_threshold=r.failure_threshold,
            cooldown_s=r.cooldown_s,
            on_change=lambda svc, state: metrics.circuit_state.labels(svc).set(int(state)),
        ),
    )
    tag_key = g.prompt_tag_secret.encode() if g.prompt_tag_secret else b""
    loader = RegistryLoader(settings.pipelines_path, backends_for or grpc_backends_for, runner, tag_key)
    registry = loader.load()  # a broken folder at startup is fatal: there is nothing to keep
    for name in ("embedding", "retrieval", "generation", "moderation"):
        runner.breaker(name)  # every service shows up in status and metrics from the start
        metrics.circuit_state.labels(name).set(int(CircuitState.CLOSED))
    default_backends = (backends_for or grpc_backends_for)(PipelineSpec(name="default", version=1, kind="rag"))
    ingestor = Ingestor(
        default_backends,
        runner=runner,  # the pipelines' breakers: one circuit per service for queries and ingests
        collection=g.collection,
        chunk_chars=g.chunk_chars,
        overlap_chars=g.chunk_overlap_chars,
        max_documents=g.max_documents,
        max_document_chars=g.max_document_chars,
        chunking=g.chunking,
        chunk_tokens=g.chunk_tokens,
        overlap_tokens=g.chunk_overlap_tokens,
        pipelining=Pipelining(
            enabled=g.ingest.pipelined,
            upsert_batch_bytes=g.ingest.upsert_batch_bytes,
            upsert_batch_points=g.ingest.upsert_batch_points,
            batches_in_flight=g.ingest.batches_in_flight,
            embed_calls_in_flight=g.ingest.embed_calls_in_flight,
            documents_in_flight=g.ingest.documents_in_flight,
        ),
    )
    auth = (
        Authenticator.from_file(g.auth.keys_file, enabled=True)
        if g.auth.enabled and g.auth.keys_file
        else Authenticator(None, enabled=g.auth.enabled)
    )
    feedback = FeedbackStore(settings.feedback_target, settings=g.feedback)
    # One line per process that says which store it shares: what an operator checks after setting
    # the database URL (deploy/helm/README.md, "Feedback store").
    log.info("feedback store: %s at %s (schema version %d)", feedback.backend, feedback.location, feedback.schema_version)
    state = GatewayState(registry=registry, runner=runner, last_reload_error=lambda: loader.last_error)
    return GatewayServicer(state, ingestor, metrics, auth, feedback), loader


async def ensure_collection(backends: Backends, collection: str, timeout_s: float = STARTUP_CALL_TIMEOUT_S) -> int:
    """Creates the collection with the embedding model's dimension; returns its size."""
    deadline = Deadline(timeout_s)
    [probe] = await backends.embedding.embed(["dimension probe"], deadline.timeout("embed"))
    await backends.retrieval.ensure_collection(collection, len(probe), deadline.timeout("collection"))
    return await backends.retrieval.count(collection, deadline.timeout("collection"))


async def _watch(gateway: RunningGateway, interval_s: float) -> None:
    """Picks up spec changes and refreshes queue gauges."""
    while True:
        await asyncio.sleep(interval_s)
        if gateway.loader.changed():
            gateway.reload()
        registry = gateway.servicer.state.registry
        for ref, admission in registry.admissions.items():
            gateway.servicer.metrics.queued.labels(ref).set(admission.queued)


async def _sweep_feedback(store: FeedbackStore, interval_s: float) -> None:
    """Deletes expired ratings and attributions, a bounded batch per interval (on every replica:
    the batches are small, and a replica that finds nothing to delete costs two indexed queries)."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            deleted = await store.sweep_async()
        except RagrailError as exc:  # the store is down: the next sweep tries again
            log.warning("feedback sweep failed: %s", exc)
            continue
        if deleted:
            log.info("feedback sweep: %d expired row(s) deleted", deleted)


async def _become_ready(gateway: RunningGateway, collection: str) -> None:
    """Retries the start-up calls until Serve answers, then turns health SERVING.

    While a RayService warms up (minutes, on GPUs) the gateway stays up and NOT_SERVING:
    readiness keeps traffic away, the startup probe's budget decides when to give up.
    """
    delay, failures = 0.25, 0
    while True:
        try:
            await ensure_collection(gateway.servicer.ingestor.backends, collection, READY_ATTEMPT_TIMEOUT_S)
        except Exception as exc:  # unreachable, still deploying, or failing: all mean "not yet"
            failures += 1
            if failures == 1 or failures % 20 == 0:
                log.warning("waiting for Ray Serve (attempt %d, health NOT_SERVING): %s", failures, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, READY_RETRY_MAX_S)
            continue
        await mark_serving(gateway.health, [SERVICE_NAME])
        log.info("Ray Serve answers: health SERVING (after %d failed attempt(s))", failures)
        return


async def start_gateway(
    settings: Settings,
    *,
    backends_for: Callable[[PipelineSpec], Backends] | None = None,
    service_statuses: Callable[[], dict[str, object]] | None = None,
    health_port: int | None = None,
    health_host: str | None = None,
    wait_ready: bool = True,
) -> RunningGateway:
    """Starts serving; health says SERVING once the collection is ready.

    ``wait_ready`` (``ragrail up``, tests): returns once ready, or stops and raises when Serve
    does not answer within STARTUP_CALL_TIMEOUT_S. Without it (``ragrail gateway``, in
    Kubernetes): returns at once, NOT_SERVING, and keeps trying until Serve answers.

    ``health_port`` (0: any free port; None: off) adds a plaintext port that serves only
    grpc.health.v1, with the same status as the gateway port, on ``health_host``
    (default ``gateway.host``): for probes that cannot speak the gateway's TLS.
    """
    g = settings.gateway
    channel = grpc.aio.insecure_channel(g.serve_address, options=serve_channel_options(g.max_message_bytes))
    servicer, loader = build_gateway(settings, channel, backends_for)
    servicer.state.service_statuses = service_statuses
    interceptor = GatewayInterceptor(servicer.auth, METHOD_POLICIES, g.admission, servicer.metrics)
    server, port, health = create_server(
        host_port(g.host, g.port),
        [ServiceBinding(servicer, gateway_pb2_grpc.add_GatewayServiceServicer_to_server, SERVICE_NAME)],
        max_message_bytes=g.max_message_bytes,
        interceptors=[interceptor],
        maximum_concurrent_rpcs=g.admission.max_concurrent_rpcs + GRPC_LIMIT_HEADROOM,
        credentials=_credentials(settings),
        options=connection_age_options(g.max_connection_age_s),
    )
    health_server, bound_health_port = None, None
    if health_port is not None:
        health_server, bound_health_port = create_health_server(
            host_port(health_host or g.host, health_port), health
        )
    await mark_not_serving(health, [SERVICE_NAME])
    await server.start()
    if health_server is not None:
        await health_server.start()
    metrics_port = serve_metrics(servicer.metrics.registry, g.host, g.metrics_port)
    if wait_ready:
        try:
            await ensure_collection(servicer.ingestor.backends, g.collection)
        except BaseException:
            await server.stop(0)  # a half-started gateway must not outlive its failed start
            if health_server is not None:
                await health_server.stop(0)
            await channel.close()
            raise
        await mark_serving(health, [SERVICE_NAME])
    gateway = RunningGateway(
        server, port, metrics_port, servicer, loader, channel, health,
        health_server=health_server, health_port=bound_health_port, grace_s=g.shutdown_grace_s,
        interceptor=interceptor,
    )
    gateway.tasks.append(asyncio.create_task(_watch(gateway, g.reload_interval_s)))
    gateway.tasks.append(asyncio.create_task(_sweep_feedback(servicer.feedback, g.feedback.sweep_interval_s)))
    if not wait_ready:
        gateway.tasks.append(asyncio.create_task(_become_ready(gateway, g.collection)))
    if servicer.auth.keys_file is not None:  # revoked keys are refused within one interval
        gateway.tasks.append(asyncio.create_task(servicer.auth.watch(g.reload_interval_s)))
    return gateway


__all__ = ["RunningGateway", "build_gateway", "start_gateway"]
