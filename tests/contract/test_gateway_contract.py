"""The real gateway gRPC server (port 0) over the unit fakes, called through the generated stub.

Each test starts its own gateway with its own pipelines folder and data dir
(see gateway_fixtures.py): auth and rate limits, TLS and mTLS, admission,
feedback, status and circuits, hot reload, streaming and deadlines.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
import yaml

from ragrail.gateway.auth import hash_key
from ragrail.gateway.feedback import FeedbackStore
from ragrail.gateway.v1 import gateway_pb2 as pb
from ragrail.common.errors import Unavailable
from tests.contract.gateway_fixtures import COLLECTION, GatewayFactory, Harness, make_pki, spec, write_spec
from tests.unit.fakes import FakeGeneration, FakeStack

pytestmark = pytest.mark.asyncio(loop_scope="session")

QUERY = "What is the capital of France?"
ANSWER = "A scripted answer."
KEY_A = "rg_contract_key_a"
KEY_B = "rg_contract_key_b"
KEY_C = "rg_contract_key_c"
KEY_D = "rg_contract_key_d"  # may ingest


@pytest_asyncio.fixture(loop_scope="session")
async def gateways(tmp_path: Path) -> AsyncIterator[GatewayFactory]:
    factory = GatewayFactory(tmp_path)
    yield factory
    await factory.close()


def run(pipeline: str = "rag", query: str = QUERY) -> pb.RunRequest:
    return pb.RunRequest(pipeline=pipeline, query=query)


def bearer(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


async def rpc_error(call: Awaitable[Any]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value


def assert_clean_error(err: grpc.aio.AioRpcError, code: grpc.StatusCode, *fragments: str) -> None:
    assert err.code() == code, f"{err.code()}: {err.details()}"
    details = err.details() or ""
    assert details and "\n" not in details and "Traceback" not in details, details
    for fragment in fragments:
        assert fragment in details, details


def retry_after(err: grpc.aio.AioRpcError) -> int:
    values = [v for k, v in (err.trailing_metadata() or ()) if k == "retry-after"]
    assert len(values) == 1, err.trailing_metadata()
    assert values[0].isdigit(), values
    return int(values[0])


async def eventually(condition: Callable[[], bool], timeout_s: float = 3.0) -> None:
    end = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > end:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


# -- 1. auth -----------------------------------------------------------------------------


def key_entry(name: str, secret: str, pipelines: list[str], *, rate_per_s: float, burst: int) -> dict[str, Any]:
    return {"name": name, "sha256": hash_key(secret), "pipelines": pipelines, "rate_per_s": rate_per_s, "burst": burst}


@pytest_asyncio.fixture(loop_scope="session")
async def auth_gw(gateways: GatewayFactory, tmp_path: Path) -> Harness:
    keys = tmp_path / "keys.yaml"
    keys.write_text(
        yaml.safe_dump(
            {
                "keys": [
                    key_entry("alpha", KEY_A, ["rag"], rate_per_s=1000, burst=1000),
                    key_entry("bravo", KEY_B, ["other"], rate_per_s=1000, burst=1000),
                    key_entry("charlie", KEY_C, ["rag"], rate_per_s=1, burst=2),
                    {**key_entry("delta", KEY_D, ["rag"], rate_per_s=1000, burst=1000), "ingest": True},
                ]
            }
        )
    )
    return await gateways([spec("rag")], gateway={"auth": {"enabled": True, "keys_file": str(keys)}})


async def test_auth_rejects_missing_and_wrong_keys(auth_gw: Harness) -> None:
    stub = auth_gw.stub()
    err = await rpc_error(stub.Run(run(), timeout=5))
    assert_clean_error(err, grpc.StatusCode.UNAUTHENTICATED, "authorization")
    err = await rpc_error(stub.Run(run(), metadata=bearer("rg_not_a_key"), timeout=5))
    assert_clean_error(err, grpc.StatusCode.UNAUTHENTICATED, "invalid API key")
    err = await rpc_error(stub.Status(pb.StatusRequest(), timeout=5))
    assert_clean_error(err, grpc.StatusCode.UNAUTHENTICATED)
    assert auth_gw.stack.generation.faults.attempts == 0


async def test_auth_authorizes_per_pipeline(auth_gw: Harness) -> None:
    stub = auth_gw.stub()
    err = await rpc_error(stub.Run(run(), metadata=bearer(KEY_B), timeout=5))
    assert_clean_error(err, grpc.StatusCode.PERMISSION_DENIED, "bravo", "rag")
    assert KEY_B not in (err.details() or "")

    response = await stub.Run(run(), metadata=bearer(KEY_A), timeout=5)
    assert (response.answer, response.pipeline, response.pipeline_version) == (ANSWER, "rag", 1)
    assert not response.fallback

    err = await rpc_error(
        stub.Ingest(
            pb.IngestRequest(documents=[pb.Document(document_id="x.md", text="Some text.")]),
            metadata=bearer(KEY_A),
            timeout=5,
        )
    )
    assert_clean_error(err, grpc.StatusCode.PERMISSION_DENIED, "ingest")


async def test_auth_rate_limit_sends_retry_after(auth_gw: Harness) -> None:
    stub = auth_gw.stub()
    for _ in range(2):  # the burst
        response = await stub.Run(run(), metadata=bearer(KEY_C), timeout=5)
        assert response.answer == ANSWER
    err = await rpc_error(stub.Run(run(), metadata=bearer(KEY_C), timeout=5))
    assert_clean_error(err, grpc.StatusCode.RESOURCE_EXHAUSTED, "rate limit", "charlie")
    assert retry_after(err) >= 1
    # Another key is not affected by charlie's bucket.
    assert (await stub.Run(run(), metadata=bearer(KEY_A), timeout=5)).answer == ANSWER


# -- 2. TLS and mTLS ------------------------------------------------------------------------


def tls_channel(
    h: Harness, ca: Path, cert: Path | None = None, key: Path | None = None
) -> grpc.aio.Channel:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca.read_bytes(),
        private_key=key.read_bytes() if key else None,
        certificate_chain=cert.read_bytes() if cert else None,
    )
    channel = grpc.aio.secure_channel(
        h.address, credentials, options=[("grpc.ssl_target_name_override", "localhost")]
    )
    h.channels.append(channel)
    return channel


async def test_tls_serves_trusting_clients_and_refuses_plaintext(gateways: GatewayFactory, tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    h = await gateways(
        [spec("rag")], gateway={"tls": {"cert_file": str(pki.server_cert), "key_file": str(pki.server_key)}}
    )
    secure = h.stub(tls_channel(h, pki.ca_cert))
    response = await secure.Run(run(), timeout=5)
    assert response.answer == ANSWER

    err = await rpc_error(h.stub().Run(run(), timeout=5))  # plaintext
    assert err.code() == grpc.StatusCode.UNAVAILABLE, err


async def test_mtls_requires_a_client_certificate_from_the_ca(gateways: GatewayFactory, tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    h = await gateways(
        [spec("rag")],
        gateway={
            "tls": {
                "cert_file": str(pki.server_cert),
                "key_file": str(pki.server_key),
                "client_ca_file": str(pki.ca_cert),
            }
        },
    )
    err = await rpc_error(h.stub(tls_channel(h, pki.ca_cert)).Run(run(), timeout=5))
    assert err.code() == grpc.StatusCode.UNAVAILABLE, err
    stranger = tls_channel(h, pki.ca_cert, pki.other_client_cert, pki.other_client_key)
    err = await rpc_error(h.stub(stranger).Run(run(), timeout=5))
    assert err.code() == grpc.StatusCode.UNAVAILABLE, err

    client = tls_channel(h, pki.ca_cert, pki.client_cert, pki.client_key)
    response = await h.stub(client).Run(run(), timeout=5)
    assert response.answer == ANSWER
    assert h.stack.generation.calls == 1


async def test_tls_gateway_health_port_answers_health_only_in_plaintext(
    gateways: GatewayFactory, tmp_path: Path
) -> None:
    """The port Kubernetes' gRPC probes use when the gateway port speaks TLS (mTLS here)."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    from ragrail.common.server import mark_not_serving, mark_serving
    from ragrail.gateway.server import SERVICE_NAME
    from ragrail.gateway.v1 import gateway_pb2_grpc

    pki = make_pki(tmp_path / "pki")
    h = await gateways(
        [spec("rag")],
        gateway={
            "tls": {
                "cert_file": str(pki.server_cert),
                "key_file": str(pki.server_key),
                "client_ca_file": str(pki.ca_cert),
            }
        },
        health_port=0,
    )
    assert h.gateway.health_port and h.gateway.health_port != h.gateway.port
    plain = grpc.aio.insecure_channel(f"127.0.0.1:{h.gateway.health_port}")
    h.channels.append(plain)
    health = health_pb2_grpc.HealthStub(plain)
    serving = health_pb2.HealthCheckResponse.SERVING
    assert (await health.Check(health_pb2.HealthCheckRequest(), timeout=5)).status == serving
    assert (await health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=5)).status == serving

    # Nothing but health: every gateway method, and reflection, is UNIMPLEMENTED there.
    gateway = gateway_pb2_grpc.GatewayServiceStub(plain)
    for call in (
        gateway.Run(run(), timeout=5),
        gateway.ListPipelines(pb.ListPipelinesRequest(), timeout=5),
        gateway.Status(pb.StatusRequest(), timeout=5),
    ):
        assert (await rpc_error(call)).code() == grpc.StatusCode.UNIMPLEMENTED
    stream = gateway.RunStream(run(), timeout=5)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for _ in stream:
            pass
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    reflect = reflection_pb2_grpc.ServerReflectionStub(plain).ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for _ in reflect:
            pass
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED

    # One status for both ports: a gateway going down is NOT_SERVING on the health port too.
    await mark_not_serving(h.gateway.health, [SERVICE_NAME])  # type: ignore[arg-type]
    check = await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert check.status == health_pb2.HealthCheckResponse.NOT_SERVING
    await mark_serving(h.gateway.health, [SERVICE_NAME])  # type: ignore[arg-type]

    # The gateway port itself still speaks TLS only, and serves mTLS clients.
    err = await rpc_error(h.stub().Run(run(), timeout=5))
    assert err.code() == grpc.StatusCode.UNAVAILABLE, err
    client = tls_channel(h, pki.ca_cert, pki.client_cert, pki.client_key)
    assert (await h.stub(client).Run(run(), timeout=5)).answer == ANSWER


async def test_health_port_is_off_unless_asked_for(gateways: GatewayFactory) -> None:
    h = await gateways([spec("rag")])
    assert h.gateway.health_port is None and h.gateway.health_server is None


# -- 3. admission --------------------------------------------------------------------------


async def test_admission_queues_one_then_refuses_with_retry_after(gateways: GatewayFactory) -> None:
    h = await gateways([spec("adm", admission={"max_in_flight": 1, "max_queue": 1})])
    generation = h.stack.generation
    generation.faults.hang()  # every generate blocks until release()
    admission = h.gateway.servicer.state.registry.admissions["adm@1"]
    stub = h.stub()

    first = asyncio.ensure_future(stub.Run(run("adm"), timeout=10))
    await eventually(lambda: generation.faults.hanging == 1)
    second = asyncio.ensure_future(stub.Run(run("adm"), timeout=10))
    await eventually(lambda: admission.queued == 1)

    err = await rpc_error(stub.Run(run("adm"), timeout=5))
    assert_clean_error(err, grpc.StatusCode.RESOURCE_EXHAUSTED, "adm@1", "capacity")
    assert retry_after(err) >= 1
    assert generation.faults.attempts == 1  # the refused call never reached a backend

    generation.faults.release()
    responses = await asyncio.wait_for(asyncio.gather(first, second), 5)
    assert [r.answer for r in responses] == [ANSWER, ANSWER]
    assert not any(r.fallback for r in responses)
    assert (admission.in_flight, admission.queued) == (0, 0)


# -- 4. feedback ---------------------------------------------------------------------------


async def test_a_feedback_store_that_is_down_costs_answers_no_time_once_its_circuit_opens(
    gateways: GatewayFactory,
) -> None:
    h = await gateways([spec("rag")])
    tries = 0

    async def store_down(*_args: Any) -> None:
        nonlocal tries
        tries += 1
        await asyncio.sleep(0.2)  # a database that answers late, then not at all
        raise Unavailable("feedback store unreachable")

    h.gateway.servicer.feedback.remember_answer_async = store_down  # type: ignore[method-assign]
    stub = h.stub()
    answers = [await stub.Run(run(), timeout=5) for _ in range(8)]
    assert all(a.answer == ANSWER and not a.fallback for a in answers)  # every answer sent
    threshold = h.settings.gateway.resilience.failure_threshold
    assert tries == threshold  # then the circuit opened: the rest did not wait on the store
    assert h.sample("ragrail_gateway_feedback_store_errors_total", {"operation": "remember_answer_skipped"}) == (
        8 - threshold
    )
    status = await stub.Status(pb.StatusRequest(), timeout=5)
    assert {c.service: c.state for c in status.circuits}["feedback_store"] == "open"



async def test_feedback_is_matched_validated_and_stored(gateways: GatewayFactory) -> None:
    h = await gateways([spec("rag")])
    stub = h.stub()
    response = await stub.Run(run(), timeout=5)
    assert response.request_id

    fb = await stub.Feedback(pb.FeedbackRequest(request_id=response.request_id, rating=4, comment="ok"), timeout=5)
    assert fb.matched_request

    err = await rpc_error(stub.Feedback(pb.FeedbackRequest(request_id=response.request_id, rating=9), timeout=5))
    assert_clean_error(err, grpc.StatusCode.INVALID_ARGUMENT, "rating")

    fb = await stub.Feedback(pb.FeedbackRequest(request_id="no-such-request", rating=2), timeout=5)
    assert not fb.matched_request

    assert h.settings.feedback_path == h.data_dir / "feedback.sqlite3"
    with FeedbackStore(h.settings.feedback_path) as store:
        summary = {(s.pipeline, s.version): (s.count, s.mean_rating) for s in store.summary()}
    assert summary == {("rag", 1): (1, 4.0), (None, None): (1, 2.0)}
    assert h.sample("ragrail_gateway_feedback_total", {"pipeline": "rag", "version": "1", "rating": "4"}) == 1


# -- 5. status and circuits ------------------------------------------------------------------


async def test_status_lists_pipelines_routes_and_opens_circuits(gateways: GatewayFactory) -> None:
    h = await gateways(
        [spec("rag", 1), spec("rag", 2)],
        routes={"rag": {1: 90, 2: 10}},
        gateway={"resilience": {"failure_threshold": 2, "cooldown_s": 60}},
    )
    stub = h.stub()
    status = await stub.Status(pb.StatusRequest(), timeout=5)
    assert [(p.name, p.version, p.is_default) for p in status.pipelines] == [("rag", 1, True), ("rag", 2, False)]
    assert [(r.name, dict(r.weights)) for r in status.routes] == [("rag", {1: 90, 2: 10})]
    assert {c.service: c.state for c in status.circuits} == {
        s: "closed" for s in ("embedding", "generation", "moderation", "retrieval", "feedback_store")
    }  # the feedback store's: every answer's attribution is written there
    assert status.last_reload_error == ""

    embedding = h.stack.embedding
    embedding.faults.unavailable()  # from now on
    response = await stub.Run(run("rag@1"), timeout=5)
    assert response.fallback_reason == pb.FALLBACK_REASON_BACKEND_UNAVAILABLE
    assert response.failed_stage == "embed"
    for _ in range(3):  # the retry budget may or may not allow the retry that reaches the threshold
        status = await stub.Status(pb.StatusRequest(), timeout=5)
        if {c.service: c.state for c in status.circuits}["embedding"] == "open":
            break
        await stub.Run(run("rag@1"), timeout=5)
    states = {c.service: c.state for c in status.circuits}
    assert states == {
        "embedding": "open", "generation": "closed", "moderation": "closed", "retrieval": "closed",
        "feedback_store": "closed",
    }
    assert h.sample("ragrail_gateway_circuit_state", {"service": "embedding"}) == 2
    assert h.sample("ragrail_gateway_circuit_state", {"service": "generation"}) == 0

    attempts = embedding.faults.attempts
    response = await stub.Run(run("rag@2"), timeout=5)
    assert response.fallback and response.fallback_reason == pb.FALLBACK_REASON_BACKEND_UNAVAILABLE
    assert response.answer == "The service is temporarily unavailable. Please try again shortly."
    assert embedding.faults.attempts == attempts  # the open circuit answered, not the backend
    assert h.stack.generation.faults.attempts == 0


# -- 6. reload -----------------------------------------------------------------------------


async def test_reload_applies_good_folders_and_rejects_broken_ones(gateways: GatewayFactory) -> None:
    h = await gateways([spec("rag", 1)])
    stub = h.stub()
    h.stack.generation.respond = lambda messages, params: f"tokens={params.max_new_tokens}"
    assert (await stub.Run(run("rag"), timeout=5)).pipeline_version == 1
    err = await rpc_error(stub.Run(run("rag@2"), timeout=5))
    assert_clean_error(err, grpc.StatusCode.NOT_FOUND, "rag@2")

    write_spec(h.pipelines_dir, spec("rag", 2, generation={"max_new_tokens": 42}))
    assert h.gateway.reload() is True
    response = await stub.Run(run("rag"), timeout=5)
    assert (response.pipeline_version, response.answer) == (2, "tokens=42")
    assert h.sample("ragrail_gateway_pipeline_reloads_total", {"result": "applied"}) == 1

    rejected = h.sample("ragrail_gateway_pipeline_reloads_total", {"result": "rejected"})
    (h.pipelines_dir / "broken@1.yaml").write_text("name: broken\nversion: 1\nkind: rag\nbogus_field: 1\n")
    assert h.gateway.reload() is False
    status = await stub.Status(pb.StatusRequest(), timeout=5)
    assert "broken@1.yaml" in status.last_reload_error
    assert "\n" not in status.last_reload_error
    assert [(p.name, p.version) for p in status.pipelines] == [("rag", 1), ("rag", 2)]
    assert h.sample("ragrail_gateway_pipeline_reloads_total", {"result": "rejected"}) == rejected + 1
    for ref, version in (("rag@1", 1), ("rag@2", 2), ("rag", 2)):
        assert (await stub.Run(run(ref), timeout=5)).pipeline_version == version
    err = await rpc_error(stub.Run(run("broken"), timeout=5))
    assert err.code() == grpc.StatusCode.NOT_FOUND

    (h.pipelines_dir / "broken@1.yaml").unlink()
    assert h.gateway.reload() is True
    assert (await stub.Status(pb.StatusRequest(), timeout=5)).last_reload_error == ""


# -- 7. streaming --------------------------------------------------------------------------


async def test_run_stream_yields_deltas_then_one_final(gateways: GatewayFactory) -> None:
    stack = FakeStack(generation=FakeGeneration(stream_deltas=["Paris ", "is ", "the ", "capital."]))
    h = await gateways([spec("rag")], stack=stack)
    events = [e async for e in h.stub().RunStream(pb.RunStreamRequest(pipeline="rag", query=QUERY), timeout=5)]
    assert [e.WhichOneof("event") for e in events] == ["delta", "final"]
    assert events[0].delta == "Paris is the capital."  # shorter than a window: released once checked
    final = events[-1]
    assert final.final.answer == "Paris is the capital."
    assert (final.final.pipeline, final.final.pipeline_version, final.final.fallback) == ("rag", 1, False)
    assert final.final.request_id
    assert stack.generation.streams[-1].finished


async def test_token_usage_is_returned_and_counted_once_per_generation(gateways: GatewayFactory) -> None:
    stack = FakeStack(generation=FakeGeneration(answer="Paris is the capital."))
    h = await gateways([spec("rag", cache={"ttl_s": 300})], stack=stack)
    stub = h.stub()
    labels = {"pipeline": "rag", "version": "1"}

    answered = await stub.Run(pb.RunRequest(pipeline="rag", query=QUERY), timeout=5)
    prompt_words = sum(len(m.content.split()) for m in stack.generation.prompts[-1])  # the fake counts words
    assert (answered.usage.prompt_tokens, answered.usage.completion_tokens) == (prompt_words, 4)
    assert h.sample("ragrail_gateway_tokens_total", labels | {"kind": "prompt"}) == prompt_words
    assert h.sample("ragrail_gateway_tokens_total", labels | {"kind": "completion"}) == 4

    cached = await stub.Run(pb.RunRequest(pipeline="rag", query=QUERY), timeout=5)
    assert cached.cached and cached.usage.completion_tokens == 0  # no model ran
    assert h.sample("ragrail_gateway_tokens_total", labels | {"kind": "completion"}) == 4

    events = [e async for e in stub.RunStream(pb.RunStreamRequest(pipeline="rag", query="Another question?"),
                                              timeout=5)]
    assert events[-1].final.usage.completion_tokens == 4
    assert h.sample("ragrail_gateway_tokens_total", labels | {"kind": "completion"}) == 8


async def test_cancelling_run_stream_cancels_the_generation_stream(gateways: GatewayFactory) -> None:
    stack = FakeGeneration(stream_deltas=["one ", "two ", "three "], stream_stall_after=1)
    # Output moderation off: tokens go out as they come, so the client sees one before the stall.
    h = await gateways([spec("rag", moderation={"output": False})], stack=FakeStack(generation=stack))
    call = h.stub().RunStream(pb.RunStreamRequest(pipeline="rag", query=QUERY), timeout=10)
    first = await call.read()
    assert first.delta == "one"  # its trailing space goes out with the next piece
    call.cancel()
    await eventually(lambda: bool(stack.streams) and (stack.streams[-1].cancelled or stack.streams[-1].closed))
    record = stack.streams[-1]
    assert record.yielded == 1 and not record.finished
    await eventually(
        lambda: h.sample("ragrail_gateway_in_flight_requests", {"method": "RunStream"}) == 0
    )


async def read_stream(call: Any) -> tuple[list[str], pb.RunResponse]:
    events = [e async for e in call]
    assert [e.WhichOneof("event") for e in events][-1:] == ["final"], events
    assert all(e.WhichOneof("event") == "delta" for e in events[:-1]), events
    return [e.delta for e in events[:-1]], events[-1].final


WORDS = [f"w{i:02d} " for i in range(60)]  # 240 characters: a dozen windows of 20


async def test_run_stream_never_sends_text_output_moderation_flags(gateways: GatewayFactory) -> None:
    deltas_in = list(WORDS)
    deltas_in[30] = "toxicword "
    stack = FakeStack(generation=FakeGeneration(stream_deltas=deltas_in))
    h = await gateways([spec("rag", moderation={"stream_window_chars": 20})], stack=stack)
    deltas, final = await read_stream(h.stub().RunStream(pb.RunStreamRequest(pipeline="rag", query=QUERY), timeout=5))

    assert deltas, "the windows before the flagged one are released"
    assert "toxi" not in "".join(deltas)
    assert (final.fallback, final.fallback_reason) == (True, pb.FALLBACK_REASON_OUTPUT_FLAGGED)
    assert final.failed_stage == "moderate_output" and final.replace_streamed
    assert final.answer == "I can't help with that request."


@pytest.mark.parametrize(
    ("fault", "reason"),
    [("unavailable", pb.FALLBACK_REASON_BACKEND_UNAVAILABLE), ("hang", pb.FALLBACK_REASON_STAGE_TIMEOUT)],
)
async def test_run_stream_fails_closed_when_output_moderation_fails_mid_stream(
    gateways: GatewayFactory, caplog: pytest.LogCaptureFixture, fault: str, reason: int
) -> None:
    caplog.set_level(logging.INFO)
    stack = FakeStack(generation=FakeGeneration(stream_deltas=WORDS))
    getattr(stack.moderation.faults.succeed(2), fault)()  # the query and the first window pass
    h = await gateways([spec("rag", moderation={"stream_window_chars": 20, "timeout_s": 0.2})], stack=stack)
    deltas, final = await read_stream(h.stub().RunStream(pb.RunStreamRequest(pipeline="rag", query=QUERY), timeout=5))

    assert len(deltas) == 1 and "".join(deltas) in "".join(WORDS)[:60]  # the one window that passed
    assert (final.fallback, final.fallback_reason, final.failed_stage) == (True, reason, "moderate_output")
    assert final.replace_streamed
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR], caplog.text


async def test_run_stream_ends_cleanly_when_generation_fails_mid_stream(
    gateways: GatewayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    stack = FakeStack(generation=FakeGeneration(stream_deltas=WORDS, stream_fail_after=30))
    h = await gateways([spec("rag", moderation={"stream_window_chars": 20})], stack=stack)
    deltas, final = await read_stream(h.stub().RunStream(pb.RunStreamRequest(pipeline="rag", query=QUERY), timeout=5))
    stack.generation.faults.unavailable()
    unary = await h.stub().Run(run(), timeout=5)  # generation down in Run: the same canned answer

    assert deltas and len("".join(deltas)) < 30 * 4
    assert (final.fallback, final.fallback_reason) == (True, pb.FALLBACK_REASON_BACKEND_UNAVAILABLE)
    assert final.failed_stage == "generate" and final.replace_streamed
    assert (final.answer, final.fallback_reason) == (unary.answer, unary.fallback_reason)
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR], caplog.text
    labels = {"pipeline": "rag", "version": "1", "outcome": "fallback", "code": "OK"}
    assert h.sample("ragrail_gateway_requests_total", labels) == 2


async def test_a_missing_collection_is_failed_precondition_never_cached_and_shown_in_status(
    gateways: GatewayFactory,
) -> None:
    h = await gateways(
        [spec("rag"), spec("gone", retrieval={"collection": "gone"}, cache={"ttl_s": 300})],
        stack=FakeStack(generation=FakeGeneration(ANSWER)),
    )
    stub = h.stub()
    for _ in range(2):  # a cached answer would hide the error the second time
        err = await rpc_error(stub.Run(run("gone"), timeout=5))
        assert_clean_error(err, grpc.StatusCode.FAILED_PRECONDITION, "collection 'gone' does not exist", "ingest")
    err = await rpc_error(stub.RunStream(pb.RunStreamRequest(pipeline="gone", query=QUERY), timeout=5).read())
    assert_clean_error(err, grpc.StatusCode.FAILED_PRECONDITION, "collection 'gone' does not exist")
    labels = {"pipeline": "gone", "version": "1", "outcome": "error", "code": "FAILED_PRECONDITION"}
    assert h.sample("ragrail_gateway_requests_total", labels) == 3

    status = await stub.Status(pb.StatusRequest(), timeout=5)
    collections = {c.name: c for c in status.collections}
    assert set(collections) == {COLLECTION, "gone"}
    assert (collections[COLLECTION].state, collections[COLLECTION].points) == ("ready", 2)
    assert list(collections[COLLECTION].pipelines) == ["rag@1"]
    gone = collections["gone"]
    assert (gone.state, gone.service, list(gone.pipelines)) == ("missing", "retrieval", ["gone@1"])
    assert "collection 'gone' does not exist" in gone.detail

    await h.stack.add_texts("gone", {"paris.md": "Paris is the capital of France."})
    answered = await stub.Run(run("gone"), timeout=5)
    assert (answered.answer, answered.fallback, answered.cached) == (ANSWER, False, False)
    status = await stub.Status(pb.StatusRequest(), timeout=5)
    assert {c.name: c.state for c in status.collections} == {COLLECTION: "ready", "gone": "ready"}


async def test_status_says_unknown_when_retrieval_does_not_answer(gateways: GatewayFactory) -> None:
    h = await gateways([spec("rag")])
    h.stack.retrieval.faults.unavailable()
    status = await h.stub().Status(pb.StatusRequest(), timeout=5)
    [collection] = status.collections
    assert (collection.name, collection.state) == (COLLECTION, "unknown")
    assert collection.detail == "backend is down"


# -- 8. deadlines --------------------------------------------------------------------------


async def test_hung_stage_times_out_into_a_canned_answer(gateways: GatewayFactory) -> None:
    h = await gateways([spec("slow", generation={"timeout_s": 0.3})])
    h.stack.generation.faults.hang()
    start = time.perf_counter()
    response = await h.stub().Run(run("slow"), timeout=5)
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0, elapsed
    assert response.fallback_reason == pb.FALLBACK_REASON_STAGE_TIMEOUT
    assert response.failed_stage == "generate"
    assert response.answer == "Sorry, that took too long. Please try again."
    assert h.stack.generation.faults.cancelled == 1


async def test_caller_deadline_bounds_the_request_and_cancels_the_backend(gateways: GatewayFactory) -> None:
    h = await gateways([spec("slow", generation={"timeout_s": 5})])
    generation = h.stack.generation
    generation.faults.hang()
    start = time.perf_counter()
    err = await rpc_error(h.stub().Run(run("slow"), timeout=0.2))
    elapsed = time.perf_counter() - start
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED, err
    assert elapsed < 0.6, elapsed
    await eventually(lambda: generation.faults.cancelled == 1 and generation.faults.hanging == 0)


async def test_caller_deadline_during_a_stream_is_deadline_exceeded(gateways: GatewayFactory) -> None:
    generation = FakeGeneration(stream_deltas=["never "], stream_stall_after=0)
    h = await gateways([spec("slow", generation={"timeout_s": 5})], stack=FakeStack(generation=generation))
    start = time.perf_counter()
    call = h.stub().RunStream(pb.RunStreamRequest(pipeline="slow", query=QUERY), timeout=0.2)
    err = await rpc_error(call.read())
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED, err
    assert time.perf_counter() - start < 0.6
    await eventually(lambda: bool(generation.streams) and generation.streams[-1].cancelled)


class RecordingContext:
    """What the servicer sees of a grpc.aio context, with a deadline and no race with a client timer."""

    def __init__(self, remaining_s: float) -> None:
        self.deadline = time.monotonic() + remaining_s
        self.code: grpc.StatusCode | None = None
        self.details = ""

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return ()

    def time_remaining(self) -> float:
        return self.deadline - time.monotonic()

    def set_code(self, code: grpc.StatusCode) -> None:
        self.code = code

    def set_details(self, details: str) -> None:
        self.details = details

    def set_trailing_metadata(self, metadata: Any) -> None:
        pass


async def test_the_caller_deadline_is_an_error_and_the_budget_a_canned_answer(gateways: GatewayFactory) -> None:
    """Deterministic twin of the gRPC deadline tests: no client timer to race the reply."""
    h = await gateways(
        [
            spec("callerbound", generation={"timeout_s": 5}),
            spec("budgetbound", budget_s=0.3, generation={"timeout_s": 5}),
        ]
    )
    h.stack.generation.faults.hang()
    servicer = h.gateway.servicer

    context = RecordingContext(0.2)
    await servicer.Run(run("callerbound"), context)
    assert context.code == grpc.StatusCode.DEADLINE_EXCEEDED, context.details
    assert "\n" not in context.details

    context = RecordingContext(5.0)
    response = await servicer.Run(run("budgetbound"), context)
    assert context.code is None, context.details
    assert response.fallback_reason == pb.FALLBACK_REASON_STAGE_TIMEOUT
    assert response.failed_stage == "generate"
    assert h.stack.generation.faults.cancelled == 2


# -- 9. undecodable requests -------------------------------------------------------------------

GATEWAY = "/ragrail.gateway.v1.GatewayService"
MARK = "MARK"
NOT_UTF8 = b"\xff\xfe\xfd\xfc"  # as long as MARK: swapping it in keeps every length prefix right
CORRUPT = b"\xff\xff\xff"  # for messages without a string field: not even a valid wire format


def not_utf8(message: Any) -> bytes:
    raw = message.SerializeToString()
    assert raw.count(MARK.encode()) == 1
    return raw.replace(MARK.encode(), NOT_UTF8)


UNDECODABLE = [
    ("Run", "RunRequest", not_utf8(pb.RunRequest(pipeline="rag", query=MARK)), "bad UTF-8"),
    ("RunStream", "RunStreamRequest", not_utf8(pb.RunStreamRequest(pipeline="rag", query=MARK)), "bad UTF-8"),
    ("ListPipelines", "ListPipelinesRequest", CORRUPT, "corrupt"),
    (
        "Ingest",
        "IngestRequest",
        not_utf8(pb.IngestRequest(documents=[pb.Document(document_id="a.md", text=MARK)])),
        "bad UTF-8",
    ),
    ("Feedback", "FeedbackRequest", not_utf8(pb.FeedbackRequest(request_id=MARK, rating=3)), "bad UTF-8"),
    ("Status", "StatusRequest", CORRUPT, "corrupt"),
]


async def raw_call(
    channel: grpc.aio.Channel, method: str, raw: bytes, *, streaming: bool = False, metadata: Any = ()
) -> Any:
    """Sends ``raw`` as the request bytes: no client-side serializer to refuse them."""
    if streaming:
        return [r async for r in channel.unary_stream(method)(raw, metadata=metadata, timeout=5)]
    return await channel.unary_unary(method, request_serializer=None)(raw, metadata=metadata, timeout=5)


def assert_logged_once_without_traceback(caplog: pytest.LogCaptureFixture) -> None:
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR], caplog.text
    assert "Traceback" not in caplog.text and "DecodeError" not in caplog.text, caplog.text
    warnings = [r for r in caplog.records if r.name == "ragrail.common.interceptors"]
    assert [r.levelno for r in warnings] == [logging.WARNING], caplog.text
    assert "rejected an undecodable request" in warnings[0].getMessage()


async def test_undecodable_requests_are_invalid_argument_after_auth(
    auth_gw: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """Every gateway RPC: without a key it is refused before its bytes are decoded (issue 11:
    no 16 MiB decode for strangers); with one, decoding says what is wrong in one line."""
    channel = auth_gw.channel()
    stack = auth_gw.stack
    calls_before = (stack.embedding.faults.attempts, stack.moderation.faults.attempts)  # the startup probe
    caplog.set_level(logging.DEBUG)
    for rpc, message, raw, reason in UNDECODABLE:
        method, streaming = f"{GATEWAY}/{rpc}", rpc == "RunStream"
        err = await rpc_error(raw_call(channel, method, raw, streaming=streaming))
        assert_clean_error(err, grpc.StatusCode.UNAUTHENTICATED, "authorization")
        err = await rpc_error(raw_call(channel, method, raw, streaming=streaming, metadata=bearer(KEY_D)))
        assert_clean_error(
            err, grpc.StatusCode.INVALID_ARGUMENT, f"request is not a valid ragrail.gateway.v1.{message}: ", reason
        )
        assert "DecodeError" not in (err.details() or "") and "<class" not in (err.details() or ""), rpc
    # Six floods' worth of bad requests, one log line (the rest are counted in the next one).
    assert_logged_once_without_traceback(caplog)
    assert (stack.embedding.faults.attempts, stack.moderation.faults.attempts) == calls_before
    assert stack.generation.faults.attempts == 0
    # The same RPCs still work when the bytes are good.
    response = await auth_gw.stub(channel).Run(run(), metadata=bearer(KEY_A), timeout=5)
    assert response.answer == ANSWER


async def test_undecodable_requests_to_health_and_reflection_are_invalid_argument(
    gateways: GatewayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """The shared server factory guards every service on the server, streamed requests too."""
    h = await gateways([spec("rag")], health_port=0)
    caplog.set_level(logging.DEBUG)
    bad_service = b"\x0a\x04" + NOT_UTF8  # HealthCheckRequest.service / ServerReflectionRequest.host
    check = "/grpc.health.v1.Health/Check"
    for port in (h.gateway.port, h.gateway.health_port):
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        h.channels.append(channel)
        err = await rpc_error(raw_call(channel, check, bad_service))
        assert_clean_error(
            err, grpc.StatusCode.INVALID_ARGUMENT, "request is not a valid grpc.health.v1.HealthCheckRequest"
        )
    reflect = h.channel().stream_stream("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo")
    call = reflect(iter([bad_service]), timeout=5)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for _ in call:
            pass
    assert_clean_error(
        info.value,
        grpc.StatusCode.INVALID_ARGUMENT,
        "request is not a valid grpc.reflection.v1alpha.ServerReflectionRequest",
    )
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR], caplog.text


# -- 10. ingestion -------------------------------------------------------------------------------


def stored_chunks(h: Harness, document_id: str) -> list[dict[str, Any]]:
    return [p for p in h.stack.retrieval.payloads(COLLECTION) if p["document_id"] == document_id]


async def test_reingesting_blank_text_is_rejected_and_keeps_the_document(gateways: GatewayFactory) -> None:
    h = await gateways([spec("rag")])
    stub = h.stub()
    before = stored_chunks(h, "paris.md")
    assert before
    for blank in (" \n\t ", ""):
        request = pb.IngestRequest(documents=[pb.Document(document_id="paris.md", text=blank)])
        err = await rpc_error(stub.Ingest(request, timeout=5))
        assert_clean_error(err, grpc.StatusCode.INVALID_ARGUMENT, "documents[0].text is empty")
    assert stored_chunks(h, "paris.md") == before


@pytest.mark.parametrize(
    "document,field,limit",
    [
        (pb.Document(document_id="a.md", text="Some text.", source="s" * 1025), "documents[0].source", 1024),
        (pb.Document(document_id="d" * 513, text="Some text."), "documents[0].document_id", 512),
    ],
    ids=["source", "document_id"],
)
async def test_fields_copied_into_every_chunk_are_bounded(
    gateways: GatewayFactory, document: pb.Document, field: str, limit: int
) -> None:
    h = await gateways([spec("rag")])
    stub = h.stub()
    err = await rpc_error(stub.Ingest(pb.IngestRequest(documents=[document]), timeout=5))
    assert_clean_error(err, grpc.StatusCode.INVALID_ARGUMENT, field, f"the limit is {limit}")
    assert h.stack.moderation.faults.attempts == 0  # refused before the first stage
    ok = pb.Document(document_id="a.md", text="Some text.", source="s" * 1024)
    response = await stub.Ingest(pb.IngestRequest(documents=[ok]), timeout=5)
    assert response.documents[0].chunks_stored == 1
    assert stored_chunks(h, "a.md")[0]["source"] == "s" * 1024


# -- 11. the ingest scope --------------------------------------------------------------------


async def test_ingest_needs_its_own_scope_which_star_does_not_grant(gateways: GatewayFactory, tmp_path: Path) -> None:
    keys = tmp_path / "scoped-keys.yaml"
    indexer = key_entry("indexer", KEY_B, [], rate_per_s=1000, burst=1000) | {"ingest": True}
    keys.write_text(
        yaml.safe_dump({"keys": [key_entry("ops", KEY_A, ["*"], rate_per_s=1000, burst=1000), indexer]})
    )
    h = await gateways([spec("rag")], gateway={"auth": {"enabled": True, "keys_file": str(keys)}})
    stub = h.stub()
    request = pb.IngestRequest(documents=[pb.Document(document_id="x.md", text="Some text.")])

    err = await rpc_error(stub.Ingest(request, metadata=bearer(KEY_A), timeout=5))
    assert_clean_error(err, grpc.StatusCode.PERMISSION_DENIED, "'ops'", "ingest")
    assert not stored_chunks(h, "x.md")
    assert (await stub.Run(run(), metadata=bearer(KEY_A), timeout=5)).answer == ANSWER

    response = await stub.Ingest(request, metadata=bearer(KEY_B), timeout=5)
    assert response.documents[0].chunks_stored == 1
    err = await rpc_error(stub.Run(run(), metadata=bearer(KEY_B), timeout=5))
    assert_clean_error(err, grpc.StatusCode.PERMISSION_DENIED, "'indexer'", "rag")
