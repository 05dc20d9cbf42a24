"""gRPC face of the moderation service: converts protos, nothing else."""

from __future__ import annotations

from typing import Any

from ragrail.common.errors import InvalidArgument
from ragrail.common.grpc_errors import grpc_method
from ragrail.common.service_metrics import service_metrics
from ragrail.moderation.core import Category, Moderator, Verdict
from ragrail.moderation.v1 import moderation_pb2 as pb
from ragrail.moderation.v1 import moderation_pb2_grpc

_TO_PB = {
    Category.TOXICITY: pb.CATEGORY_TOXICITY,
    Category.PROMPT_INJECTION: pb.CATEGORY_PROMPT_INJECTION,
    Category.PII: pb.CATEGORY_PII,
}
_FROM_PB = {v: k for k, v in _TO_PB.items()}


def category_from_pb(value: int) -> Category:
    if value not in _FROM_PB:
        raise InvalidArgument(f"unknown moderation category {value}")
    return _FROM_PB[value]


def verdict_to_pb(verdict: Verdict) -> pb.ModerationResult:
    return pb.ModerationResult(
        scores=[
            pb.CategoryScore(
                category=_TO_PB[s.category], score=s.score, threshold=s.threshold, flagged=s.flagged
            )
            for s in verdict.scores
        ],
        flagged=verdict.flagged,
        flagged_categories=[_TO_PB[c] for c in verdict.flagged_categories],
        pii_types=list(verdict.pii_types),
    )


class ModerationServicer(moderation_pb2_grpc.ModerationServiceServicer):
    def __init__(self, moderator: Moderator) -> None:
        self._moderator = moderator

    @grpc_method(pb.ModerateResponse)
    async def Moderate(
        self, request: pb.ModerateRequest, grpc_context: Any = None
    ) -> pb.ModerateResponse:
        categories = [category_from_pb(c) for c in request.categories]
        verdicts = await service_metrics("moderation").to_thread(
            self._moderator.moderate, list(request.texts), categories, batch_size=len(request.texts)
        )
        return pb.ModerateResponse(results=[verdict_to_pb(v) for v in verdicts])
