"""The blocking client."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Optional, TypeVar, Union

import grpc

from ragrail_client import _common
from ragrail_client._common import Deadline, Final, IncompleteStream, StreamEvent
from ragrail_client.errors import from_rpc_error
from ragrail_client.v1 import gateway_pb2 as pb
from ragrail_client.v1 import gateway_pb2_grpc

R = TypeVar("R")


class Client:
    """A connection to one gateway. Thread-safe; make one per process and reuse it.

    ``address``: ``host:port``, or any gRPC target (``dns:///gateway.example:50051`` spreads
    calls round-robin over every address the name has). ``api_key`` is sent as
    ``authorization: Bearer <key>``. ``tls``: False (plaintext), True (the system's roots), or
    ``grpc.ssl_channel_credentials(...)`` for a private CA or mTLS. ``timeout``: the default
    deadline of every call, in seconds; each method takes its own ``timeout`` too.
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
            grpc.secure_channel(address, creds, options=merged)
            if creds is not None
            else grpc.insecure_channel(address, options=merged)
        )
        self._stub = gateway_pb2_grpc.GatewayServiceStub(self._channel)
        self._metadata = _common.auth_metadata(api_key)
        self.timeout = timeout

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    # -- the calls -----------------------------------------------------------------------

    def run(
        self, query: str, pipeline: str = "rag", *, session_id: str = "", timeout: Optional[float] = None
    ) -> pb.RunResponse:
        """Runs ``pipeline`` ("rag", or "rag@1") on ``query``. A fallback is an answer, not an
        error: check ``fallback`` and ``fallback_reason``. ``session_id`` keeps one caller on
        one version of a traffic split."""
        request = pb.RunRequest(pipeline=pipeline, query=query, session_id=session_id)
        return self._unary(self._stub.Run, request, timeout)

    def run_stream(
        self, query: str, pipeline: str = "rag", *, session_id: str = "", timeout: Optional[float] = None
    ) -> Iterator[StreamEvent]:
        """Yields ``Delta`` events, then exactly one ``Final``; raises if the stream ends without
        it. The deadline covers the whole stream. Breaking out of the loop cancels the call
        (the gateway stops the model at its next token)."""
        request = pb.RunStreamRequest(pipeline=pipeline, query=query, session_id=session_id)
        deadline = Deadline(self._timeout(timeout))
        attempt = 0
        while True:
            attempt += 1
            call = self._stub.RunStream(request, timeout=deadline.remaining(), metadata=self._metadata)
            received = False
            try:
                for message in call:
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
                time.sleep(delay)
            finally:
                call.cancel()  # no-op when finished; stops the model when the caller stopped early

    def ingest(
        self,
        documents: Sequence[Union[pb.Document, tuple[str, str], tuple[str, str, str]]],
        *,
        timeout: Optional[float] = None,
    ) -> pb.IngestResponse:
        """Stores documents (``pb.Document`` or ``(document_id, text[, source])``); re-ingesting
        an id replaces it. Needs a key with ``ingest: true`` when auth is on."""
        request = pb.IngestRequest(documents=_common.documents(documents))
        return self._unary(self._stub.Ingest, request, timeout)

    def feedback(
        self, request_id: str, rating: int, comment: str = "", *, timeout: Optional[float] = None
    ) -> pb.FeedbackResponse:
        """Rates an answer (1 bad .. 5 good) by its ``request_id``. Never retried on UNAVAILABLE."""
        request = pb.FeedbackRequest(request_id=request_id, rating=rating, comment=comment)
        return self._unary(self._stub.Feedback, request, timeout)

    def pipelines(self, *, timeout: Optional[float] = None) -> list[pb.PipelineInfo]:
        """Every served pipeline version."""
        return list(self._unary(self._stub.ListPipelines, pb.ListPipelinesRequest(), timeout).pipelines)

    def status(self, *, timeout: Optional[float] = None) -> pb.StatusResponse:
        """Pipelines, traffic splits, circuit breakers, services, collections."""
        return self._unary(self._stub.Status, pb.StatusRequest(), timeout)

    # -- plumbing ------------------------------------------------------------------------

    def _timeout(self, timeout: Optional[float]) -> float:
        return self.timeout if timeout is None else timeout

    def _unary(self, method: Callable[..., R], request: Any, timeout: Optional[float]) -> R:
        deadline = Deadline(self._timeout(timeout))
        attempt = 0
        while True:
            attempt += 1
            try:
                return method(request, timeout=deadline.remaining(), metadata=self._metadata)
            except grpc.RpcError as exc:
                error = from_rpc_error(exc)
                delay = _common.retry_delay(error, attempt, deadline)
                if delay is None:
                    raise error from exc
                time.sleep(delay)
