"""gRPC face of the generation service: converts protos, nothing else."""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator
from typing import Any

from ragrail.common.grpc_errors import grpc_method, grpc_stream_method
from ragrail.common.service_metrics import service_metrics
from ragrail.generation.core import FinishReason, GenerationEngine, Message, Sampling, acollect
from ragrail.generation.v1 import generation_pb2 as pb
from ragrail.generation.v1 import generation_pb2_grpc

_ROLES = {
    pb.ROLE_UNSPECIFIED: "user",
    pb.ROLE_USER: "user",
    pb.ROLE_SYSTEM: "system",
    pb.ROLE_ASSISTANT: "assistant",
}
_FINISH = {
    FinishReason.STOP: pb.FINISH_REASON_STOP,
    FinishReason.LENGTH: pb.FINISH_REASON_LENGTH,
    FinishReason.STOP_SEQUENCE: pb.FINISH_REASON_STOP_SEQUENCE,
    FinishReason.CANCELLED: pb.FINISH_REASON_UNSPECIFIED,
}


def messages_from_pb(messages: Any) -> list[Message]:
    return [Message(_ROLES.get(m.role, "invalid"), m.content) for m in messages]


def sampling_from_pb(s: pb.SamplingParams) -> Sampling:
    return Sampling(
        max_new_tokens=s.max_new_tokens,
        temperature=s.temperature,
        top_p=s.top_p or 1.0,
        top_k=s.top_k,
        repetition_penalty=s.repetition_penalty or 1.0,
        seed=s.seed if s.HasField("seed") else None,
        stop=tuple(s.stop),
    )


class GenerationServicer(generation_pb2_grpc.GenerationServiceServicer):
    def __init__(self, engine: GenerationEngine) -> None:
        self._engine = engine

    @grpc_method(pb.GenerateResponse)
    async def Generate(
        self, request: pb.GenerateRequest, grpc_context: Any = None
    ) -> pb.GenerateResponse:
        cancel = threading.Event()
        started = time.perf_counter()
        try:
            result = await acollect(
                self._engine.astream(messages_from_pb(request.messages), sampling_from_pb(request.sampling), cancel)
            )
        finally:
            cancel.set()  # deadline or client gone: the row leaves the batch at the next step
        _observe(started, result.completion_tokens, result.prompt_tokens)
        return pb.GenerateResponse(
            text=result.text,
            finish_reason=_FINISH[result.finish_reason],
            usage=pb.Usage(prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens),
            model=self._engine.name,
        )

    @grpc_stream_method
    async def GenerateStream(
        self, request: pb.GenerateStreamRequest, grpc_context: Any = None
    ) -> AsyncIterator[pb.GenerateStreamResponse]:
        cancel = threading.Event()
        started = time.perf_counter()
        # Validates and queues before the first response: bad input fails the call, not an open stream.
        events = self._engine.astream(messages_from_pb(request.messages), sampling_from_pb(request.sampling), cancel)
        try:
            async for event in events:
                if event.finish_reason is None:
                    yield pb.GenerateStreamResponse(delta=event.delta)
                    continue
                _observe(started, event.completion_tokens, event.prompt_tokens)
                yield pb.GenerateStreamResponse(
                    delta=event.delta,
                    finish_reason=_FINISH[event.finish_reason],
                    usage=pb.Usage(prompt_tokens=event.prompt_tokens, completion_tokens=event.completion_tokens),
                )
        finally:
            cancel.set()


def _observe(started: float, completion_tokens: int, prompt_tokens: int) -> None:
    elapsed = time.perf_counter() - started
    metrics = service_metrics("generation")
    metrics.observe_model(elapsed)
    metrics.observe_tokens(completion_tokens, elapsed, prompt_tokens)
