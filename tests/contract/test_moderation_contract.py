"""CATEGORY_PII over gRPC: the real regex backend behind the real servicer, called through the stubs
and through the gateway's moderation client (toxicity and prompt injection stay fakes here)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc
import pytest
import pytest_asyncio

from ragrail.common.server import ServiceBinding
from ragrail.gateway.clients import ModerationClient
from ragrail.moderation.core import Category, Moderator, RegexPiiScorer
from ragrail.moderation.servicer import ModerationServicer
from ragrail.moderation.v1 import moderation_pb2 as pb
from ragrail.moderation.v1 import moderation_pb2_grpc

pytestmark = pytest.mark.asyncio(loop_scope="session")

MODERATION = pb.DESCRIPTOR.services_by_name["ModerationService"].full_name
LEAK = "Her card is 4111 1111 1111 1111; mail jane@example.com or call +44 20 7946 0958."


class KeywordScorer:
    def __init__(self, keyword: str) -> None:
        self.keyword = keyword

    def score(self, texts: Sequence[str]) -> list[float]:
        return [0.97 if self.keyword in t else 0.02 for t in texts]


async def _serve(grpc_server: Any, moderator: Moderator) -> grpc.aio.Channel:
    running = await grpc_server(
        [ServiceBinding(ModerationServicer(moderator), moderation_pb2_grpc.add_ModerationServiceServicer_to_server, MODERATION)]
    )
    return running.channel


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def channel(grpc_server: Any) -> grpc.aio.Channel:
    moderator = Moderator(
        {
            Category.TOXICITY: KeywordScorer("idiot"),
            Category.PROMPT_INJECTION: KeywordScorer("ignore previous"),
            Category.PII: RegexPiiScorer(allow=["0800 555 0140"]),
        },
        {Category.TOXICITY: 0.8, Category.PROMPT_INJECTION: 0.9, Category.PII: 0.5},
    )
    return await _serve(grpc_server, moderator)


@pytest.fixture
def stub(channel: grpc.aio.Channel) -> moderation_pb2_grpc.ModerationServiceStub:
    return moderation_pb2_grpc.ModerationServiceStub(channel)


async def test_every_category_is_scored_pii_included(stub: moderation_pb2_grpc.ModerationServiceStub) -> None:
    reply = await stub.Moderate(pb.ModerateRequest(texts=["When does the last train leave?", LEAK]))
    clean, leak = reply.results
    expected = [pb.CATEGORY_TOXICITY, pb.CATEGORY_PROMPT_INJECTION, pb.CATEGORY_PII]
    assert [s.category for s in clean.scores] == expected
    assert not clean.flagged and not clean.pii_types
    assert leak.flagged and list(leak.flagged_categories) == [pb.CATEGORY_PII]
    assert list(leak.pii_types) == ["email", "phone", "card"]
    pii = leak.scores[2]
    assert (pii.score, round(pii.threshold, 3), pii.flagged) == (1.0, 0.5, True)


async def test_pii_alone_and_in_batch_order(stub: moderation_pb2_grpc.ModerationServiceStub) -> None:
    texts = [
        "SSN 123-45-6789",
        "card 4111 1111 1111 1112",  # fails Luhn
        "IBAN DE89 3704 0044 0532 0130 00",
        "on 2024-01-15, €1,190",
        "NI AB 12 34 56 C",
        "assistance on 0800 555 0140",  # allowed: a published line
    ]
    reply = await stub.Moderate(pb.ModerateRequest(texts=texts, categories=[pb.CATEGORY_PII]))
    assert [list(r.pii_types) for r in reply.results] == [["ssn"], [], ["iban"], [], ["uk_nino"], []]
    assert [r.flagged for r in reply.results] == [True, False, True, False, True, False]
    assert all([s.category for s in r.scores] == [pb.CATEGORY_PII] for r in reply.results)


async def test_pii_types_stay_empty_when_pii_is_not_asked_for(stub: moderation_pb2_grpc.ModerationServiceStub) -> None:
    reply = await stub.Moderate(pb.ModerateRequest(texts=[LEAK], categories=[pb.CATEGORY_TOXICITY]))
    (result,) = reply.results
    assert not result.flagged and not result.pii_types


async def test_the_gateway_client_names_the_pii_category(channel: grpc.aio.Channel) -> None:
    client = ModerationClient(channel)
    clean, leak, both = await client.moderate(
        ["a fine answer", LEAK, "you idiot, jane@example.com"], ["toxicity", "pii"], timeout=5
    )
    assert not clean.flagged
    assert leak.flagged and leak.categories == ("pii",)
    assert both.categories == ("toxicity", "pii")


@pytest.mark.parametrize(
    ("request_", "fragment"),
    [
        (pb.ModerateRequest(texts=["x"], categories=[99]), "unknown moderation category 99"),
        (pb.ModerateRequest(texts=["x"], categories=[pb.CATEGORY_UNSPECIFIED]), "unknown moderation category 0"),
    ],
)
async def test_unknown_category_is_invalid_argument(
    stub: moderation_pb2_grpc.ModerationServiceStub, request_: pb.ModerateRequest, fragment: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Moderate(request_)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert fragment in (info.value.details() or "") and "\n" not in (info.value.details() or "")


async def test_a_server_without_pii_says_so(grpc_server: Any) -> None:
    moderator = Moderator({Category.TOXICITY: KeywordScorer("idiot")}, {Category.TOXICITY: 0.8})
    stub = moderation_pb2_grpc.ModerationServiceStub(await _serve(grpc_server, moderator))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Moderate(pb.ModerateRequest(texts=["x"], categories=[pb.CATEGORY_PII]))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == "category pii is not configured"
