"""The asyncio client (grpc.aio): the same methods as ``Client``, as coroutines."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Optional, TypeVar, Union

import grpc
import grpc.aio

from ragrail_client import _common
from ragrail_client._common import Deadline, Final, IncompleteStream, StreamEvent
from ragrail_client.errors import from_rpc_error
from ragrail_client.v1 import gateway_pb2 as pb
from ragrail_client.v1 import gateway_pb2_grpc

R = TypeVar("R")


class AsyncClient:
    """A grpc.aio connection to one gateway; create it inside the event loop that uses it.

    Arguments as for ``ragrail_client.Client``.
    """

    def __init__(
        self,
        address: str,
        *,
        api_key: Optional[str] = None,
        tls: Union[bool, grpc.ChannelCredentials] = False,
        timeout: float = _common.DEFAULT_TIMEOUT_S,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        if not address:
            raise ValueError("address is empty: give host:port or a gRPC target (dns:///name:port)")
        merged = _common.channel_options() + list(options)
        creds = _common.credentials(tls)
        self._channel = (
            grpc.aio.secure_channel(address, creds, options=merged)
            if creds is not None
            else grpc.aio.insecure_channel(address, options=merged)
        )
        self._stub = gateway_pb2_grpc.GatewayServiceStub(self._channel)
        self._metadata = _common.auth_metadata(api_key)
        self.timeout = timeout

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def run(
        self, query: str, pipeline: str = "rag", *, session_id: str = "", timeout: Optional[float] = None
    ) -> pb.RunResponse:
        """See ``Client.run``."""
        request = pb.RunRequest(pipeline=pipeline, query=query, session_id=session_id)
        return await self._unary(self._stub.Run, request, timeout)

    async def run_stream(
        self, query: str, pipeline: str = "rag", *, session_id: str = "", timeout: Optional[float] = None
    ) -> AsyncIterator[StreamEvent]:
        """See ``Client.run_stream``: ``Delta`` events, then one ``Final``."""
        request = pb.RunStreamRequest(pipeline=pipeline, query=query, session_id=session_id)
        deadline = Deadline(self._timeout(timeout))
        attempt = 0
        while True:
            attempt += 1
            call = self._stub.RunStream(request, timeout=deadline.remaining(), metadata=self._metadata)
            received = False
            try:
                async for message in call:
                    received = True
                    item = _common.event(message)
                    if item is not None:
                        yield item
                        if isinstance(item, Final):
                            return
                raise IncompleteStream()
            except grpc.RpcError as exc:
                error = from_rpc_error(exc)
                delay = None if received else _common.retry_delay(error, attempt, deadline)
                if delay is None:
                    raise error from exc
                await asyncio.sleep(delay)
            finally:
                call.cancel()

    async def ingest(
        self,
        documents: Sequence[Union[pb.Document, tuple[str, str], tuple[str, str, str]]],
        *,
        timeout: Optional[float] = None,
    ) -> pb.IngestResponse:
        """See ``Client.ingest``."""
        request = pb.IngestRequest(documents=_common.documents(documents))
        return await self._unary(self._stub.Ingest, request, timeout)

    async def feedback(
        self, request_id: str, rating: int, comment: str = "", *, timeout: Optional[float] = None
    ) -> pb.FeedbackResponse:
        """See ``Client.feedback``."""
        request = pb.FeedbackRequest(request_id=request_id, rating=rating, comment=comment)
        return await self._unary(self._stub.Feedback, request, timeout)

    async def pipelines(self, *, timeout: Optional[float] = None) -> list[pb.PipelineInfo]:
        """See ``Client.pipelines``."""
        return list((await self._unary(self._stub.ListPipelines, pb.ListPipelinesRequest(), timeout)).pipelines)

    async def status(self, *, timeout: Optional[float] = None) -> pb.StatusResponse:
        """See ``Client.status``."""
        return await self._unary(self._stub.Status, pb.StatusRequest(), timeout)

    def _timeout(self, timeout: Optional[float]) -> float:
        return self.timeout if timeout is None else timeout

    async def _unary(self, method: Callable[..., Awaitable[R]], request: Any, timeout: Optional[float]) -> R:
        deadline = Deadline(self._timeout(timeout))
        attempt = 0
        while True:
            attempt += 1
            try:
                return await method(request, timeout=deadline.remaining(), metadata=self._metadata)
            except grpc.RpcError as exc:
                error = from_rpc_error(exc)
                delay = _common.retry_delay(error, attempt, deadline)
                if delay is None:
                    raise error from exc
                await asyncio.sleep(delay)
