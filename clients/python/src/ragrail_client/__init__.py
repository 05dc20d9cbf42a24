"""Client for ragrail's gateway: ``Client`` (blocking) and ``AsyncClient`` (asyncio).

The generated messages are in ``ragrail_client.v1.gateway_pb2`` (also exported as ``pb``).
"""

from ragrail_client._client import Client
from ragrail_client._common import Delta, Final, IncompleteStream, StreamEvent, channel_options, service_config
from ragrail_client.aio import AsyncClient
from ragrail_client.errors import (
    Cancelled,
    DeadlineExceeded,
    FailedPrecondition,
    InternalError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    RagrailError,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from ragrail_client.v1 import gateway_pb2 as pb

__version__ = "0.1.0"

__all__ = [
    "AsyncClient",
    "Cancelled",
    "Client",
    "DeadlineExceeded",
    "Delta",
    "FailedPrecondition",
    "Final",
    "IncompleteStream",
    "InternalError",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "RagrailError",
    "ResourceExhausted",
    "StreamEvent",
    "Unauthenticated",
    "Unavailable",
    "channel_options",
    "pb",
    "service_config",
]
