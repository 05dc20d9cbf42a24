"""ragrail-client against an in-process gRPC server over its own generated stubs.

The server is scripted per method (a response, or a status with trailing metadata), and
records what each attempt carried: metadata, deadline. Covers the sync and asyncio clients,
the error classes, the deadline, the retry rules (gRPC's policy for UNAVAILABLE, the client's
own for RESOURCE_EXHAUSTED + retry-after), round-robin, and streaming's final-event contract.
"""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict, deque
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest

import ragrail_client
from ragrail_client import (
    AsyncClient,
    Client,
    Delta,
    Final,
    IncompleteStream,
    InternalError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    RagrailError,
    ResourceExhausted,
    Unavailable,
)
from ragrail_client import pb
from ragrail_client.v1 import gateway_pb2_grpc


@dataclass
class Abort:
    code: grpc.StatusCode
    details: str = "nope"
    trailing: tuple[tuple[str, str], ...] = ()


@dataclass
class Attempt:
    request: Any
    metadata: dict[str, str]
    time_remaining: float | None


@dataclass
class Script:
    """What each method answers, attempt by attempt (the last entry repeats)."""

    answers: dict[str, deque[Any]] = field(default_factory=lambda: defaultdict(deque))
    attempts: dict[str, list[Attempt]] = field(default_factory=lambda: defaultdict(list))
    cancelled: threading.Event = field(default_factory=threading.Event)

    def then(self, method: str, *answers: Any) -> Script:
        self.answers[method].extend(answers)
        return self

    def next(self, method: str) -> Any:
        queue = self.answers[method]
        return queue.popleft() if len(queue) > 1 else queue[0]


RUN_OK = pb.RunResponse(answer="Margit Halvorsen founded it.", pipeline="rag", pipeline_version=1, request_id="r1")


class ScriptedGateway(gateway_pb2_grpc.GatewayServiceServicer):
    def __init__(self, script: Script) -> None:
        self.script = script

    def _answer(self, method: str, request: Any, context: grpc.ServicerContext) -> Any:
        self.script.attempts[method].append(
            Attempt(request, dict(context.invocation_metadata()), context.time_remaining())
        )
        answer = self.script.next(method)
        if isinstance(answer, Abort):
            context.set_trailing_metadata(answer.trailing)
            context.abort(answer.code, answer.details)
        return answer

    def Run(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._answer("Run", request, context)

    def Ingest(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._answer("Ingest", request, context)

    def Feedback(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._answer("Feedback", request, context)

    def ListPipelines(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._answer("ListPipelines", request, context)

    def Status(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._answer("Status", request, context)

    def RunStream(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        context.add_callback(self.script.cancelled.set)
        events = self._answer("RunStream", request, context)
        for event in events:
            if isinstance(event, Abort):
                context.set_trailing_metadata(event.trailing)
                context.abort(event.code, event.details)
            if event == "hang":  # wait until the client goes away (bounded)
                self.script.cancelled.wait(10)
                return
            yield event


def start_server(script: Script) -> tuple[grpc.Server, int]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    gateway_pb2_grpc.add_GatewayServiceServicer_to_server(ScriptedGateway(script), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


@pytest.fixture
def script() -> Iterator[Script]:
    yield Script()


@pytest.fixture
def address(script: Script) -> Iterator[str]:
    server, port = start_server(script)
    yield f"127.0.0.1:{port}"
    server.stop(0)


@pytest.fixture
def client(address: str) -> Iterator[Client]:
    with Client(address, api_key="rg_test", timeout=5) as c:
        yield c


def delta(text: str) -> pb.RunStreamResponse:
    return pb.RunStreamResponse(delta=text)


def final(answer: str, **fields: Any) -> pb.RunStreamResponse:
    return pb.RunStreamResponse(final=pb.RunResponse(answer=answer, **fields))


# -- unary calls -------------------------------------------------------------------------


def test_run_sends_the_key_and_a_deadline(client: Client, script: Script) -> None:
    script.then("Run", RUN_OK)
    response = client.run("Who founded Northwind Rail?", "rag@1", session_id="s-1", timeout=3)
    assert response == RUN_OK
    [attempt] = script.attempts["Run"]
    assert (attempt.request.pipeline, attempt.request.query, attempt.request.session_id) == (
        "rag@1", "Who founded Northwind Rail?", "s-1",
    )
    assert attempt.metadata["authorization"] == "Bearer rg_test"
    assert attempt.time_remaining is not None and 0 < attempt.time_remaining <= 3.1  # grpc rounds the timeout up on the wire


def test_every_call_has_the_clients_default_deadline(address: str, script: Script) -> None:
    script.then("Status", pb.StatusResponse(last_reload_error="x"))
    script.then("ListPipelines", pb.ListPipelinesResponse(pipelines=[pb.PipelineInfo(name="rag", version=1)]))
    script.then("Feedback", pb.FeedbackResponse(matched_request=True))
    script.then("Ingest", pb.IngestResponse(documents=[pb.DocumentResult(document_id="a", chunks_stored=2)]))
    with Client(address, timeout=7) as c:  # no key: no authorization header
        assert c.status().last_reload_error == "x"
        assert [(p.name, p.version) for p in c.pipelines()] == [("rag", 1)]
        assert c.feedback("r1", 5, "spot on").matched_request
        result = c.ingest([("a", "text a"), ("b", "text b", "b.md"), pb.Document(document_id="c", text="t")])
        assert result.documents[0].chunks_stored == 2
    sent = script.attempts["Ingest"][0].request.documents
    assert [(d.document_id, d.text, d.source) for d in sent] == [
        ("a", "text a", ""), ("b", "text b", "b.md"), ("c", "t", ""),
    ]
    assert script.attempts["Feedback"][0].request == pb.FeedbackRequest(request_id="r1", rating=5, comment="spot on")
    for method in ("Status", "ListPipelines", "Feedback", "Ingest"):
        [attempt] = script.attempts[method]
        assert "authorization" not in attempt.metadata
        assert attempt.time_remaining is not None and 3 < attempt.time_remaining <= 7.1, method


@pytest.mark.parametrize(
    ("code", "error"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, InvalidArgument),
        (grpc.StatusCode.NOT_FOUND, NotFound),
        (grpc.StatusCode.PERMISSION_DENIED, PermissionDenied),
        (grpc.StatusCode.INTERNAL, InternalError),
        (grpc.StatusCode.UNKNOWN, InternalError),
    ],
)
def test_statuses_become_typed_errors(client: Client, script: Script, code: grpc.StatusCode, error: type) -> None:
    script.then("Run", Abort(code, "unknown pipeline 'nope'"))
    with pytest.raises(error) as raised:
        client.run("q", "nope")
    assert isinstance(raised.value, RagrailError)
    assert raised.value.code == code and raised.value.details == "unknown pipeline 'nope'"
    assert raised.value.retry_after_s is None
    assert len(script.attempts["Run"]) == 1  # never retried


def test_an_empty_address_is_refused_at_once() -> None:
    with pytest.raises(ValueError, match="address is empty"):
        Client("")
    with pytest.raises(ValueError, match="address is empty"):
        AsyncClient("")


def test_a_missed_deadline_is_deadline_exceeded(client: Client, script: Script) -> None:
    script.then("RunStream", [delta("a"), "hang"])
    with pytest.raises(ragrail_client.DeadlineExceeded):
        list(client.run_stream("q", timeout=0.3))


# -- retries -------------------------------------------------------------------------------


def test_resource_exhausted_waits_for_retry_after_then_retries(client: Client, script: Script) -> None:
    script.then("Run", Abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "rate limit", (("retry-after", "0.2"),)), RUN_OK)
    started = time.monotonic()
    assert client.run("q") == RUN_OK
    assert time.monotonic() - started >= 0.2
    first, second = script.attempts["Run"]
    assert second.time_remaining is not None and first.time_remaining is not None
    assert second.time_remaining < first.time_remaining  # one deadline over both attempts


def test_retry_after_beyond_the_deadline_raises_at_once(client: Client, script: Script) -> None:
    script.then("Run", Abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full", (("retry-after", "30"),)))
    started = time.monotonic()
    with pytest.raises(ResourceExhausted) as raised:
        client.run("q", timeout=10)
    assert time.monotonic() - started < 8  # did not wait: 30 s would not leave time for the call
    assert raised.value.retry_after_s == 30
    assert len(script.attempts["Run"]) == 1


def test_resource_exhausted_gives_up_after_three_attempts(client: Client, script: Script) -> None:
    script.then("Status", Abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "busy", (("retry-after", "0.01"),)))
    with pytest.raises(ResourceExhausted):
        client.status()
    assert len(script.attempts["Status"]) == 3


def test_resource_exhausted_without_retry_after_is_not_retried(client: Client, script: Script) -> None:
    script.then("Run", Abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "busy"))
    with pytest.raises(ResourceExhausted):
        client.run("q")
    assert len(script.attempts["Run"]) == 1


def test_unavailable_is_retried_by_the_channel_except_for_feedback(client: Client, script: Script) -> None:
    script.then("Run", Abort(grpc.StatusCode.UNAVAILABLE, "restarting"), RUN_OK)
    assert client.run("q") == RUN_OK
    assert len(script.attempts["Run"]) == 2
    script.then("Feedback", Abort(grpc.StatusCode.UNAVAILABLE, "restarting"), pb.FeedbackResponse())
    with pytest.raises(Unavailable):
        client.feedback("r1", 4)
    assert len(script.attempts["Feedback"]) == 1  # a landed rating must not count twice


def test_service_config_names_real_methods() -> None:
    config = json.loads(ragrail_client.service_config())
    methods = {m.name for m in pb.DESCRIPTOR.services_by_name["GatewayService"].methods}
    named = {n["method"] for c in config["methodConfig"] for n in c["name"]}
    assert named == methods - {"Feedback"}
    assert {n["service"] for c in config["methodConfig"] for n in c["name"]} == {"ragrail.gateway.v1.GatewayService"}
    assert config["loadBalancingConfig"] == [{"round_robin": {}}]


def test_calls_spread_round_robin_over_every_address() -> None:
    scripts = [Script().then("Run", RUN_OK), Script().then("Run", RUN_OK)]
    servers = [start_server(s) for s in scripts]
    try:
        target = "ipv4:" + ",".join(f"127.0.0.1:{port}" for _, port in servers)
        with Client(target, timeout=5) as c:
            for _ in range(10):
                c.run("q")
        counts = [len(s.attempts["Run"]) for s in scripts]
        # pick_first (gRPC's default) would send all ten to one; round-robin uses both (the
        # first calls may all go to whichever address connected first).
        assert sum(counts) == 10 and min(counts) >= 2, counts
    finally:
        for server, _ in servers:
            server.stop(0)


# -- streaming ---------------------------------------------------------------------------


def test_run_stream_yields_deltas_then_one_final(client: Client, script: Script) -> None:
    script.then("RunStream", [delta("Margit "), delta("Halvorsen."), final("Margit Halvorsen.", request_id="r2")])
    events = list(client.run_stream("Who founded it?", session_id="s"))
    assert events[:2] == [Delta("Margit "), Delta("Halvorsen.")]
    assert isinstance(events[2], Final) and events[2].response.answer == "Margit Halvorsen."
    assert script.attempts["RunStream"][0].request.session_id == "s"


def test_a_stream_without_final_raises(client: Client, script: Script) -> None:
    script.then("RunStream", [delta("half an ans")])
    with pytest.raises(IncompleteStream):
        list(client.run_stream("q"))


def test_a_stream_is_retried_only_before_its_first_event(client: Client, script: Script) -> None:
    busy = Abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full", (("retry-after", "0.05"),))
    script.then("RunStream", [busy], [final("ok")])
    assert [type(e) for e in client.run_stream("q")] == [Final]
    assert len(script.attempts["RunStream"]) == 2

    script.answers["RunStream"].clear()
    script.attempts["RunStream"].clear()
    script.then("RunStream", [delta("tok"), Abort(grpc.StatusCode.UNAVAILABLE, "gone")])
    seen = []
    with pytest.raises(Unavailable):
        for event in client.run_stream("q"):
            seen.append(event)
    assert seen == [Delta("tok")]
    assert len(script.attempts["RunStream"]) == 1  # never after a streamed token


def test_leaving_a_stream_early_cancels_the_call(client: Client, script: Script) -> None:
    script.then("RunStream", [delta("first"), "hang"])
    for event in client.run_stream("q"):
        assert event == Delta("first")
        break
    assert script.cancelled.wait(5), "the server never saw the call end"


# -- asyncio -------------------------------------------------------------------------------


async def test_async_client_runs_streams_and_raises_typed_errors(address: str, script: Script) -> None:
    script.then("Run", Abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "rate", (("retry-after", "0.05"),)), RUN_OK)
    script.then("RunStream", [delta("a"), delta("b"), final("ab")])
    script.then("ListPipelines", pb.ListPipelinesResponse(pipelines=[pb.PipelineInfo(name="rag", version=2)]))
    script.then("Status", Abort(grpc.StatusCode.PERMISSION_DENIED, "key may not call Status"))
    async with AsyncClient(address, api_key="rg_async", timeout=4) as c:
        assert await c.run("q", session_id="s") == RUN_OK
        events = [e async for e in c.run_stream("q")]
        assert events == [Delta("a"), Delta("b"), Final(pb.RunResponse(answer="ab"))]
        assert [p.version for p in await c.pipelines()] == [2]
        with pytest.raises(PermissionDenied) as raised:
            await c.status()
    assert raised.value.details == "key may not call Status"
    assert len(script.attempts["Run"]) == 2
    for attempt in script.attempts["Run"] + script.attempts["RunStream"]:
        assert attempt.metadata["authorization"] == "Bearer rg_async"
        assert attempt.time_remaining is not None and 0 < attempt.time_remaining <= 4.1


async def test_async_stream_without_final_raises(address: str, script: Script) -> None:
    script.then("RunStream", [delta("x")])
    async with AsyncClient(address, timeout=4) as c:
        with pytest.raises(IncompleteStream):
            [e async for e in c.run_stream("q")]


async def test_async_unavailable_retried_by_the_channel(address: str, script: Script) -> None:
    script.then("Ingest", Abort(grpc.StatusCode.UNAVAILABLE, "restarting"), pb.IngestResponse())
    async with AsyncClient(address, timeout=4) as c:
        await c.ingest([("a", "text")])
    assert len(script.attempts["Ingest"]) == 2
