"""What the sync and asyncio clients share: channel settings, requests, the retry decision."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional, Union

import grpc

from ragrail_client.errors import RagrailError, ResourceExhausted
from ragrail_client.v1 import gateway_pb2 as pb

SERVICE = "ragrail.gateway.v1.GatewayService"
DEFAULT_TIMEOUT_S = 60.0
# Calls that may run twice without harm. Feedback is left out: a retried Feedback whose first
# attempt did land would count the rating twice.
IDEMPOTENT_METHODS = ("Run", "RunStream", "ListPipelines", "Ingest", "Status")
MAX_ATTEMPTS = 3


def service_config() -> str:
    """gRPC service config: round-robin over every address a name resolves to; UNAVAILABLE
    retried by gRPC itself (jittered exponential backoff, within the call's deadline, never
    after a response message arrived, so never after a streamed token), capped by a retry
    budget of ~10 % of successful calls, like the gateway's own retries downstream.

    RESOURCE_EXHAUSTED is retried by the client instead (``retry_delay``): gRPC's policy would
    retry it on its own short backoff and ignore the gateway's ``retry-after``.
    """
    return json.dumps(
        {
            "loadBalancingConfig": [{"round_robin": {}}],
            "methodConfig": [
                {
                    "name": [{"service": SERVICE, "method": m} for m in IDEMPOTENT_METHODS],
                    "retryPolicy": {
                        "maxAttempts": MAX_ATTEMPTS,
                        "initialBackoff": "0.2s",
                        "maxBackoff": "2s",
                        "backoffMultiplier": 2,
                        "retryableStatusCodes": ["UNAVAILABLE"],
                    },
                }
            ],
            "retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1},
        }
    )


def channel_options(max_message_bytes: int = 16 * 1024 * 1024) -> list[tuple[str, Union[str, int]]]:
    """Keepalive every 20 s (a silently dropped connection is noticed in seconds, not at the
    next deadline; the gateway accepts pings every 10 s), reconnects within seconds after a
    gateway restart (gRPC's default backoff grows to 120 s), and the service config above."""
    return [
        ("grpc.service_config", service_config()),
        ("grpc.enable_retries", 1),
        ("grpc.keepalive_time_ms", 20_000),
        ("grpc.keepalive_timeout_ms", 5_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.initial_reconnect_backoff_ms", 250),
        ("grpc.min_reconnect_backoff_ms", 250),
        ("grpc.max_reconnect_backoff_ms", 5_000),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
    ]


def credentials(tls: Union[bool, grpc.ChannelCredentials]) -> Optional[grpc.ChannelCredentials]:
    """None for plaintext; the system's roots for ``tls=True``; or the caller's credentials."""
    if tls is True:
        return grpc.ssl_channel_credentials()
    if tls is False or tls is None:
        return None
    return tls


def auth_metadata(api_key: Optional[str]) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {api_key}"),) if api_key else ()


@dataclass(frozen=True)
class Delta:
    """New answer text since the previous event (already passed by output moderation)."""

    text: str


@dataclass(frozen=True)
class Final:
    """The last event of a stream: the whole outcome. ``response.answer`` is the full text;
    when ``response.replace_streamed`` is set, discard what the deltas showed and show it."""

    response: pb.RunResponse


StreamEvent = Union[Delta, Final]


def event(message: pb.RunStreamResponse) -> Optional[StreamEvent]:
    kind = message.WhichOneof("event")
    if kind == "delta":
        return Delta(message.delta)
    if kind == "final":
        return Final(message.final)
    return None  # an event kind newer than these stubs: skipped


class IncompleteStream(RagrailError):
    """The stream ended without its final event (the server broke the protocol)."""

    def __init__(self) -> None:
        super().__init__(grpc.StatusCode.UNKNOWN, "the stream ended without a final event")


def documents(docs: Sequence[Union[pb.Document, tuple[str, str], tuple[str, str, str]]]) -> list[pb.Document]:
    """Documents as messages; ``(document_id, text)`` or ``(document_id, text, source)`` too."""
    fields = ("document_id", "text", "source")
    return [doc if isinstance(doc, pb.Document) else pb.Document(**dict(zip(fields, doc))) for doc in docs]


class Deadline:
    """One deadline over every attempt of a call."""

    def __init__(self, timeout_s: float) -> None:
        self.expires = time.monotonic() + timeout_s

    def remaining(self) -> float:
        return max(0.0, self.expires - time.monotonic())


def retry_delay(error: RagrailError, attempt: int, deadline: Deadline) -> Optional[float]:
    """Seconds to wait before trying again, or None to give up.

    Only RESOURCE_EXHAUSTED with the gateway's ``retry-after`` is retried here, at most
    MAX_ATTEMPTS attempts in all, and only when the wait leaves time for the call itself.
    """
    if not isinstance(error, ResourceExhausted) or error.retry_after_s is None:
        return None
    if attempt >= MAX_ATTEMPTS or error.retry_after_s >= deadline.remaining():
        return None
    return error.retry_after_s
