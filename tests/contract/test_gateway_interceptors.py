"""Contract tests of ragrail.gateway.interceptors on a real gateway (port 0) over the unit fakes.

Every RPC is authenticated unless declared public, with nothing in its handler; overload is
refused fast, with retry-after, before a request is decoded; ingest cannot starve queries.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from ragrail.common.config import load_settings
from ragrail.common.grpc_errors import grpc_method
from ragrail.common.server import ServiceBinding, create_server
from ragrail.gateway.auth import ApiKeyEntry, Authenticator, hash_key
from ragrail.gateway.interceptors import GatewayInterceptor, current_call
from ragrail.gateway.metrics import GatewayMetrics
from ragrail.gateway.server import METHOD_POLICIES, SERVICE_NAME
from ragrail.gateway.v1 import gateway_pb2 as pb
from tests.contract.gateway_fixtures import GatewayFactory, Harness, spec

KEY = "rg_interceptor_key"
INGEST_KEY = "rg_interceptor_ingest_key"
SERVICE = pb.DESCRIPTOR.services_by_name["GatewayService"]
QUERY = "What is the capital of France?"


@pytest_asyncio.fixture(loop_scope="session")
async def gateways(tmp_path: Path) -> AsyncIterator[GatewayFactory]:
    factory = GatewayFactory(tmp_path)
    yield factory
    await factory.close()


def keys_file(tmp_path: Path) -> Path:
    path = tmp_path / "keys.yaml"
    entries = [
        {"name": "reader", "sha256": hash_key(KEY), "pipelines": ["*"], "rate_per_s": 1000, "burst": 1000},
        {
            "name": "indexer", "sha256": hash_key(INGEST_KEY), "pipelines": ["rag"], "ingest": True,
            "rate_per_s": 1000, "burst": 1000,
        },
    ]
    path.write_text(yaml.safe_dump({"keys": entries}))
    return path


def bearer(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


async def rpc_error(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value


async def raw_call(channel: grpc.aio.Channel, method: str, raw: bytes, *, streaming: bool, **kwargs: Any) -> Any:
    if streaming:
        return [r async for r in channel.unary_stream(method)(raw, timeout=5, **kwargs)]
    return await channel.unary_unary(method)(raw, timeout=5, **kwargs)


def retry_after(err: grpc.aio.AioRpcError) -> str | None:
    return dict(err.trailing_metadata() or ()).get("retry-after")


# -- every RPC needs a key, unless declared public ----------------------------------------------


def test_only_health_and_reflection_are_public() -> None:
    public = {method for method, policy in METHOD_POLICIES.items() if policy.public}
    assert public == {
        "/grpc.health.v1.Health/Check",
        "/grpc.health.v1.Health/Watch",
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    }
    assert not any(m.startswith(f"/{SERVICE_NAME}/") for m in public)


async def test_every_gateway_rpc_without_a_key_is_unauthenticated_before_its_handler(
    gateways: GatewayFactory, tmp_path: Path
) -> None:
    """Enumerates the service descriptor: an RPC added to the proto is covered with no code."""
    h = await gateways([spec("rag")], gateway={"auth": {"enabled": True, "keys_file": str(keys_file(tmp_path))}})
    channel = h.channel()
    attempts = (h.stack.embedding.faults.attempts, h.stack.moderation.faults.attempts)
    assert len(SERVICE.methods) >= 6
    for method in SERVICE.methods:
        # Not even a valid message: it is refused before anything reads it.
        err = await rpc_error(
            raw_call(channel, f"/{SERVICE.full_name}/{method.name}", b"\xff\xff\xff", streaming=method.server_streaming)
        )
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED, (method.name, err.details())
        assert "authorization" in (err.details() or "")
    assert (h.stack.embedding.faults.attempts, h.stack.moderation.faults.attempts) == attempts
    assert h.stack.generation.faults.attempts == 0
    assert h.sample("ragrail_gateway_rpcs_total", {"method": "Status", "code": "UNAUTHENTICATED"}) == 1

    # The declared public ones answer without a key.
    health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
    )
    services = [s.name async for r in reflection for s in r.list_services_response.service]
    assert SERVICE_NAME in services

    # With a key, the same RPCs run; the request id is the caller's.
    stub_status = await channel.unary_unary(
        f"/{SERVICE_NAME}/Status", response_deserializer=pb.StatusResponse.FromString
    )(b"", metadata=bearer(KEY), timeout=5)
    assert stub_status.pipelines
    response = await channel.unary_unary(f"/{SERVICE_NAME}/Run", response_deserializer=pb.RunResponse.FromString)(
        pb.RunRequest(pipeline="rag", query=QUERY).SerializeToString(),
        metadata=(*bearer(KEY), ("x-request-id", "rid-123")),
        timeout=5,
    )
    assert response.request_id == "rid-123" and response.answer
    assert h.sample("ragrail_gateway_rpcs_total", {"method": "Run", "code": "OK"}) == 1


async def test_ingest_needs_the_ingest_scope_before_the_request_is_read(
    gateways: GatewayFactory, tmp_path: Path
) -> None:
    h = await gateways([spec("rag")], gateway={"auth": {"enabled": True, "keys_file": str(keys_file(tmp_path))}})
    channel = h.channel()
    method = f"/{SERVICE_NAME}/Ingest"
    err = await rpc_error(raw_call(channel, method, b"\xff\xff\xff", streaming=False, metadata=bearer(KEY)))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED, err.details()
    err = await rpc_error(raw_call(channel, method, b"\xff\xff\xff", streaming=False, metadata=bearer(INGEST_KEY)))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()  # read, and found undecodable


class NewRpcs:
    """Stand-in for RPCs added to the gateway later: handlers with no auth code at all."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def Plain(self, request: bytes, context: Any) -> bytes:
        call = current_call.get()
        assert call is not None
        self.calls.append(call.principal.name)
        return b""

    async def Broken(self, request: bytes, context: Any) -> bytes:
        raise ValueError("/srv/secret/path.py: internals")

    @grpc_method(pb.StatusResponse)
    async def Decorated(self, request: bytes, grpc_context: Any = None) -> pb.StatusResponse:
        raise ValueError("boom")


def add_new_rpcs(servicer: NewRpcs, server: grpc.aio.Server) -> None:
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(getattr(servicer, name)) for name in ("Plain", "Broken", "Decorated")
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))


async def test_a_new_rpc_is_authenticated_and_mapped_without_doing_anything() -> None:
    servicer = NewRpcs()
    keys = [ApiKeyEntry(name="reader", sha256=hash_key(KEY), pipelines=["*"], rate_per_s=1000, burst=1000)]
    settings = load_settings(None)
    metrics = GatewayMetrics()
    interceptor = GatewayInterceptor(
        Authenticator(keys, enabled=True), METHOD_POLICIES, settings.gateway.admission, metrics
    )
    server, port, _ = create_server(
        "127.0.0.1:0", [ServiceBinding(servicer, add_new_rpcs, SERVICE_NAME)], interceptors=[interceptor]
    )
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            plain = channel.unary_unary(f"/{SERVICE_NAME}/Plain")
            err = await rpc_error(plain(b"", timeout=5))
            assert err.code() == grpc.StatusCode.UNAUTHENTICATED
            assert servicer.calls == []
            await plain(b"", metadata=bearer(KEY), timeout=5)
            assert servicer.calls == ["reader"]
            # An exception a handler lets escape is a clean INTERNAL, never UNKNOWN or a path.
            err = await rpc_error(channel.unary_unary(f"/{SERVICE_NAME}/Broken")(b"", metadata=bearer(KEY), timeout=5))
            assert err.code() == grpc.StatusCode.INTERNAL
            assert "incident" in (err.details() or "") and "/srv" not in (err.details() or "")
            err = await rpc_error(
                channel.unary_unary(f"/{SERVICE_NAME}/Decorated")(b"", metadata=bearer(KEY), timeout=5)
            )
            assert err.code() == grpc.StatusCode.INTERNAL
        sample = metrics.registry.get_sample_value
        assert sample("ragrail_gateway_rpcs_total", {"method": "Plain", "code": "UNAUTHENTICATED"}) == 1
        assert sample("ragrail_gateway_rpcs_total", {"method": "Plain", "code": "OK"}) == 1
        assert sample("ragrail_gateway_rpcs_total", {"method": "Broken", "code": "INTERNAL"}) == 1
        assert sample("ragrail_gateway_rpcs_total", {"method": "Decorated", "code": "INTERNAL"}) == 1
        assert sample("ragrail_gateway_in_flight_requests", {"method": "Plain"}) == 0
    finally:
        await server.stop(0)


# -- overload: refused fast, before decoding; ingest in its own class ---------------------------


async def wait_until(condition: Any, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


ADMISSION = {
    "max_concurrent_rpcs": 3,
    "retry_after_s": 2.0,
    "query": {"max_in_flight": 2, "max_queue": 0, "max_wait_s": 5},
    "ingest": {"max_in_flight": 1, "max_queue": 0, "max_wait_s": 5},
}


async def test_a_bulk_ingest_does_not_take_the_query_slots(gateways: GatewayFactory) -> None:
    h: Harness = await gateways([spec("rag")], gateway={"admission": ADMISSION})
    stub = h.stub()
    h.stack.moderation.faults.hang(1)  # the first moderation call (the ingest's chunks) hangs
    ingest = asyncio.ensure_future(
        stub.Ingest(pb.IngestRequest(documents=[pb.Document(document_id="big.md", text="Some text.")]), timeout=10)
    )
    await wait_until(lambda: h.stack.moderation.faults.hanging == 1)

    start = time.monotonic()
    err = await rpc_error(
        stub.Ingest(pb.IngestRequest(documents=[pb.Document(document_id="b.md", text="More.")]), timeout=5)
    )
    refused_in = time.monotonic() - start
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.details()
    assert "ingest" in (err.details() or "")
    assert retry_after(err) == "2"
    assert refused_in < 0.5, refused_in  # refused at once (100 ms on an idle machine; CI is busy)

    answered = await stub.Run(pb.RunRequest(pipeline="rag", query=QUERY), timeout=5)  # queries still run
    assert answered.answer and not answered.fallback

    h.stack.moderation.faults.release()
    assert (await ingest).documents[0].document_id == "big.md"


async def test_past_max_concurrent_rpcs_calls_are_refused_before_decoding_but_health_answers(
    gateways: GatewayFactory,
) -> None:
    h = await gateways([spec("rag", budget_s=30, generation={"timeout_s": 20})], gateway={"admission": ADMISSION})
    stub = h.stub()
    h.stack.moderation.faults.hang(1)  # an ingest holds the ingest slot...
    ingest = asyncio.ensure_future(
        stub.Ingest(pb.IngestRequest(documents=[pb.Document(document_id="big.md", text="Some text.")]), timeout=10)
    )
    await wait_until(lambda: h.stack.moderation.faults.hanging == 1)
    h.stack.generation.faults.hang()  # ...and two queries the query slots: 3 RPCs, the maximum
    held = [asyncio.ensure_future(stub.Run(pb.RunRequest(pipeline="rag", query=QUERY), timeout=10)) for _ in range(2)]
    await wait_until(lambda: h.stack.generation.faults.hanging == 2)

    # Undecodable bytes with no key: RESOURCE_EXHAUSTED, not INVALID_ARGUMENT: nothing was read.
    start = time.monotonic()
    err = await rpc_error(raw_call(h.channel(), f"/{SERVICE_NAME}/Status", b"\xff\xff\xff", streaming=False))
    refused_in = time.monotonic() - start
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.details()
    assert retry_after(err) == "2"
    assert refused_in < 0.5, refused_in
    health = await health_pb2_grpc.HealthStub(h.channel()).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert health.status == health_pb2.HealthCheckResponse.SERVING  # probes are exempt

    h.stack.generation.faults.clear()
    h.stack.generation.faults.release()
    h.stack.moderation.faults.release()
    for call in [*held, ingest]:
        await call
    await wait_until(
        lambda: sum(h.sample("ragrail_gateway_in_flight_requests", {"method": m}) for m in ("Run", "Ingest")) == 0
    )
    assert (await stub.Status(pb.StatusRequest(), timeout=5)).pipelines  # capacity is back


STEERED = {
    "retry_after_s": 2.0,
    "query": {"max_in_flight": 6, "max_queue": 6, "max_wait_s": 5, "min_in_flight": 1},
}


async def test_slow_runs_shrink_the_query_limit_so_the_excess_is_refused_at_once(gateways: GatewayFactory) -> None:
    """Overload is not failure: once runs come back slow, the gateway admits fewer at once and
    refuses the rest at the door, instead of admitting them all to time out together."""
    h = await gateways(
        [spec("rag", generation={"timeout_s": 0.3}, admission={"target_latency_s": 10})],
        gateway={"admission": STEERED},
    )
    stub = h.stub()
    def limit() -> float:
        return h.sample("ragrail_gateway_admission_limit", {"class": "query"})

    def waiting() -> float:
        return h.sample("ragrail_gateway_in_flight_requests", {"method": "Run"}) - limit()

    assert limit() == 1  # a cold start admits one run, then learns
    for _ in range(3):  # fast runs: slow start, one more slot each while the limit is in use
        assert not (await stub.Run(pb.RunRequest(pipeline="rag", query=QUERY), timeout=5)).fallback
    assert limit() == 3  # one run at a time never used a third slot: no fourth

    h.stack.generation.faults.hang(1)  # a generate stage times out: a slow run
    answer = await stub.Run(pb.RunRequest(pipeline="rag", query=QUERY), timeout=5)
    assert answer.fallback_reason == pb.FALLBACK_REASON_STAGE_TIMEOUT
    assert limit() == 2  # 3 x 0.75

    h.stack.generation.faults.hang(None)  # the model stalls: two runs hold every slot...
    held = [asyncio.ensure_future(stub.Run(pb.RunRequest(pipeline="rag", query=QUERY), timeout=5)) for _ in range(2)]
    await wait_until(lambda: h.stack.generation.faults.hanging == 2)
    queued = [asyncio.ensure_future(stub.Run(pb.RunRequest(pipeline="rag", query=QUERY), timeout=5)) for _ in range(2)]
    await wait_until(lambda: waiting() == 2)  # ...at most one limit's worth waits (max_queue is 6)...
    start = time.monotonic()
    err = await rpc_error(stub.Run(pb.RunRequest(pipeline="rag", query=QUERY), timeout=5))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.details()  # ...and the next is refused
    assert time.monotonic() - start < 0.5  # at once (a few ms idle; CI is busy)
    assert retry_after(err) == "2"
    h.stack.generation.faults.clear()
    h.stack.generation.faults.release()
    await asyncio.gather(*held, *queued)
