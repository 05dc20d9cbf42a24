"""Graceful drain: on shutdown the gateway refuses new calls and lets calls in flight finish."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio

from ragrail.gateway.v1 import gateway_pb2 as pb
from tests.contract.gateway_fixtures import GatewayFactory, Harness, spec
from tests.unit.fakes import FakeGeneration, FakeStack

pytestmark = pytest.mark.asyncio(loop_scope="session")

DELTAS = ["Paris ", "is ", "the ", "capital ", "of ", "France."]


@pytest_asyncio.fixture(loop_scope="session")
async def gateways(tmp_path: Path) -> AsyncIterator[GatewayFactory]:
    factory = GatewayFactory(tmp_path)
    yield factory
    await factory.close()


async def slow_stream_gateway(gateways: GatewayFactory) -> Harness:
    # Output moderation off: deltas go out as they come, so the stream is visibly in flight.
    generation = FakeGeneration("".join(DELTAS), stream_deltas=DELTAS, stream_delay_s=0.3)
    return await gateways(
        [spec(moderation={"output": False})], stack=FakeStack(generation=generation),
    )


async def read_rest(call: grpc.aio.UnaryStreamCall) -> list[pb.RunStreamResponse]:  # type: ignore[type-arg]
    events = []
    while (event := await call.read()) is not grpc.aio.EOF:
        events.append(event)
    return events


async def test_a_stream_in_flight_finishes_while_new_calls_are_refused(gateways: GatewayFactory) -> None:
    h = await slow_stream_gateway(gateways)
    call = h.stub().RunStream(pb.RunStreamRequest(pipeline="rag", query="What is the capital of France?"), timeout=30)
    first = await call.read()
    assert first.delta
    draining = asyncio.create_task(h.gateway.stop(grace_s=20))
    await asyncio.sleep(0)  # let the drain begin
    late = h.stub(grpc.aio.insecure_channel(h.address))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await late.Run(pb.RunRequest(pipeline="rag", query="Another question?"), timeout=5)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    rest = await read_rest(call)
    assert rest[-1].final.answer.startswith("Paris"), "the stream in flight ran to its final event"
    assert first.delta + "".join(e.delta for e in rest[:-1]) == "".join(DELTAS)
    await asyncio.wait_for(draining, 20)


async def test_without_grace_a_stream_in_flight_is_cut(gateways: GatewayFactory) -> None:
    h = await slow_stream_gateway(gateways)
    call = h.stub().RunStream(pb.RunStreamRequest(pipeline="rag", query="What is the capital of France?"), timeout=30)
    assert (await call.read()).delta
    await h.gateway.stop(grace_s=0)
    with pytest.raises(grpc.aio.AioRpcError):
        await read_rest(call)
