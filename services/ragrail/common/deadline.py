"""One overall deadline per request; every downstream call gets what is left."""

from __future__ import annotations

import time

from ragrail.common.errors import DeadlineExceeded


class Deadline:
    def __init__(self, seconds: float, *, caller_bound: bool = False) -> None:
        self._clock = time.monotonic
        self.expires_at = self._clock() + seconds
        # True when the caller's own deadline is the binding one: once it passes
        # the caller has given up, so a canned answer would reach nobody.
        self.caller_bound = caller_bound

    @classmethod
    def within(cls, budget_s: float, caller_remaining_s: float | None) -> "Deadline":
        """The smaller of the caller's remaining time and our own budget."""
        if caller_remaining_s is None or budget_s < caller_remaining_s:
            return cls(budget_s)
        return cls(caller_remaining_s, caller_bound=True)

    def expired(self) -> bool:
        return self.remaining() <= 0

    def remaining(self) -> float:
        return self.expires_at - self._clock()

    def timeout(self, stage: str) -> float:
        """Seconds left for a stage; raises DeadlineExceeded when none are."""
        left = self.remaining()
        if left <= 0:
            raise DeadlineExceeded(f"deadline exceeded before stage {stage}")
        return left
