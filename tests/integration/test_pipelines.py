"""Versioned pipelines and fallbacks as outcomes, through the real services."""

from __future__ import annotations

import time

import grpc
import pytest
import yaml

from ragrail.gateway.v1 import gateway_pb2 as pb
from ragrail.gateway.v1 import gateway_pb2_grpc
from tests.integration.conftest import Stack
from tests.unit.sample_questions import ANSWERABLE, OFF_TOPIC

pytestmark = pytest.mark.integration

REVIEW = (
    "I travelled with Northwind Rail last week and it was wonderful. The train left on time, "
    "the staff were friendly and helpful, the seats were comfortable and clean, and we arrived "
    "early. I loved the view of the coast and would happily take this trip again."
)


def stub(channel: grpc.Channel) -> gateway_pb2_grpc.GatewayServiceStub:
    return gateway_pb2_grpc.GatewayServiceStub(channel)


def run(channel: grpc.Channel, pipeline: str, query: str, session_id: str = "", timeout: float = 60) -> pb.RunResponse:
    return stub(channel).Run(pb.RunRequest(pipeline=pipeline, query=query, session_id=session_id), timeout=timeout)


def test_explicit_versions_answer_and_say_which_version(gateway_channel: grpc.Channel) -> None:
    question = ANSWERABLE[4][0]
    for version in (1, 2):
        response = run(gateway_channel, f"rag@{version}", question)
        assert (response.pipeline, response.pipeline_version) == ("rag", version)


def test_same_question_same_version_same_answer(gateway_channel: grpc.Channel) -> None:
    first = run(gateway_channel, "rag@1", ANSWERABLE[2][0])
    second = run(gateway_channel, "rag@1", ANSWERABLE[2][0])
    assert first.answer == second.answer and not first.fallback


def test_rag_at_2_caches_answers(gateway_channel: grpc.Channel) -> None:
    question = ANSWERABLE[3][0]
    first = run(gateway_channel, "rag@2", question)
    again = run(gateway_channel, "rag@2", "  " + question.upper())
    assert again.cached and again.answer == first.answer


def test_canary_split_is_sticky_per_session(gateway_channel: grpc.Channel) -> None:
    versions = {
        session: {run(gateway_channel, "rag", OFF_TOPIC[0], session_id=session).pipeline_version for _ in range(2)}
        for session in (f"user-{i}" for i in range(12))
    }
    assert all(len(v) == 1 for v in versions.values()), versions  # sticky
    assert {next(iter(v)) for v in versions.values()} <= {1, 2, 3}


def test_stage_timeout_is_a_labelled_fallback_within_the_budget(gateway_channel: grpc.Channel) -> None:
    start = time.monotonic()
    response = run(gateway_channel, "slow", ANSWERABLE[0][0])
    elapsed = time.monotonic() - start
    assert response.fallback and response.fallback_reason == pb.FALLBACK_REASON_STAGE_TIMEOUT
    assert response.failed_stage == "generate"
    assert elapsed < 3.0, elapsed  # 50 ms generation timeout: no waiting for the model


def test_missing_service_is_a_backend_unavailable_fallback(gateway_channel: grpc.Channel) -> None:
    response = run(gateway_channel, "orphan", ANSWERABLE[0][0])
    assert response.fallback and response.fallback_reason == pb.FALLBACK_REASON_BACKEND_UNAVAILABLE
    assert response.answer.startswith("The service is temporarily unavailable")


def test_caller_deadline_shorter_than_the_work_is_honoured(gateway_channel: grpc.Channel) -> None:
    start = time.monotonic()
    with pytest.raises(grpc.RpcError) as caught:
        run(gateway_channel, "rag@1", ANSWERABLE[1][0], timeout=0.5)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - start < 1.5


def test_summarize_sentiment_chain(gateway_channel: grpc.Channel) -> None:
    response = run(gateway_channel, "summarize_sentiment", REVIEW, timeout=90)
    assert (response.pipeline, response.pipeline_version) == ("summarize_sentiment", 1)
    if response.fallback:  # a 135M model may fail to give a label twice: then it must say so
        assert response.fallback_reason == pb.FALLBACK_REASON_INVALID_OUTPUT
        assert not response.outputs
    else:
        assert response.outputs["sentiment"] in {"positive", "negative", "neutral"}
        assert response.answer == response.outputs["sentiment"]
        assert response.outputs["summary"]


def test_list_pipelines_shows_every_version_and_the_canary_default(gateway_channel: grpc.Channel) -> None:
    listed = stub(gateway_channel).ListPipelines(pb.ListPipelinesRequest(), timeout=5).pipelines
    refs = {(p.name, p.version): p.is_default for p in listed}
    assert refs[("rag", 1)] is True and refs[("rag", 2)] is False  # 90/10 split
    assert ("summarize_sentiment", 1) in refs


def test_status_reports_routes_circuits_and_services(gateway_channel: grpc.Channel) -> None:
    status = stub(gateway_channel).Status(pb.StatusRequest(), timeout=10)
    assert {r.name: dict(r.weights) for r in status.routes} == {"rag": {1: 80, 2: 10, 3: 10}}
    circuits = {c.service: c.state for c in status.circuits}
    assert circuits["embedding"] == "closed"
    assert {s.name: s.status for s in status.services} == {
        name: "RUNNING" for name in ("embedding", "generation", "moderation", "retrieval")
    }


def test_spec_edits_reload_without_restart_and_broken_specs_are_rejected(
    stack: Stack, gateway_channel: grpc.Channel
) -> None:
    new_spec = stack.pipelines_dir / "rag@7.yaml"
    new_spec.write_text(yaml.safe_dump({"name": "rag", "version": 7, "kind": "rag", "description": "hot"}))
    try:
        assert _eventually(lambda: run(gateway_channel, "rag@7", OFF_TOPIC[2]).pipeline_version == 7)
        broken = stack.pipelines_dir / "zz-broken@1.yaml"
        broken.write_text("name: zz\nversion: 1\nkind: rag\nbogus_key: 1\n")
        try:
            assert _eventually(lambda: "bogus_key" in stub(gateway_channel).Status(pb.StatusRequest(), timeout=5).last_reload_error)
            assert run(gateway_channel, "rag@7", OFF_TOPIC[2]).pipeline_version == 7  # still serving
        finally:
            broken.unlink()
    finally:
        new_spec.unlink()
    assert _eventually(lambda: _not_found(gateway_channel, "rag@7"))


def _not_found(channel: grpc.Channel, ref: str) -> bool:
    try:
        run(channel, ref, OFF_TOPIC[2])
    except grpc.RpcError as exc:
        return exc.code() == grpc.StatusCode.NOT_FOUND
    return False


def _eventually(check, timeout_s: float = 10.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if check():
                return True
        except grpc.RpcError:
            pass
        time.sleep(0.3)
    return False


def test_stream_cancelled_by_the_client_stops_downstream(gateway_channel: grpc.Channel) -> None:
    call = stub(gateway_channel).RunStream(pb.RunStreamRequest(pipeline="rag@1", query=ANSWERABLE[0][0]), timeout=60)
    first = next(call)
    assert first.WhichOneof("event") in {"delta", "final"}
    call.cancel()
    # The gateway keeps serving and the generation replica is free again at once.
    start = time.monotonic()
    assert run(gateway_channel, "rag@1", ANSWERABLE[4][0]).answer
    assert time.monotonic() - start < 15
