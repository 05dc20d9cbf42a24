"""One overall deadline per request; every downstream call gets what is left."""

from __future__ import annotations

import time

from ragrail.common.errors import DeadlineExceeded


class Deadline:
    def __init__(self, seconds: float) -> None:
        self._clock = time.monotonic
        self.expires_at = self._clock() + seconds

    @classmethod
    def within(cls, budget_s: float, caller_remaining_s: float | None) -> "Deadline":
        """The smaller of the caller's remaining time and our own budget."""
        if caller_remaining_s is None:
            return cls(budget_s)
        return cls(min(budget_s, caller_remaining_s))

    def remaining(self) -> float:
        return self.expires_at - self._clock()

    def timeout(self, stage: str) -> float:
        """Seconds left for a stage; raises DeadlineExceeded when none are."""
        left = self.remaining()
        if left <= 0:
            raise DeadlineExceeded(f"deadline exceeded before stage {stage}")
        return left
