"""Circuit breakers, a retry budget and jittered backoff for stage calls."""

from __future__ import annotations

import enum
import random
import threading
import time
from collections.abc import Callable


class CircuitState(enum.IntEnum):
    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


class CircuitBreaker:
    """Per backend: opens after consecutive failures, probes once after a cooldown.

    Only failures that say "the backend is unwell" count (UNAVAILABLE, timeouts);
    a caller's bad input never opens a circuit.
    """

    def __init__(
        self,
        name: str,
        *,
        failure_threshold: int = 5,
        cooldown_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[str, CircuitState], None] | None = None,
    ) -> None:
        self.name = name
        self.failure_threshold = failure_threshold
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._on_change = on_change
        self._state = CircuitState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probe_in_flight = False

    @property
    def state(self) -> CircuitState:
        if self._state is CircuitState.OPEN and self._clock() - self._opened_at >= self.cooldown_s:
            self._set(CircuitState.HALF_OPEN)
        return self._state

    def allow(self) -> bool:
        """Whether a call may go out now; in half-open, exactly one probe may."""
        state = self.state
        if state is CircuitState.CLOSED:
            return True
        if state is CircuitState.HALF_OPEN and not self._probe_in_flight:
            self._probe_in_flight = True
            return True
        return False

    def record_success(self) -> None:
        self._failures = 0
        self._probe_in_flight = False
        if self._state is not CircuitState.CLOSED:
            self._set(CircuitState.CLOSED)

    def record_failure(self) -> None:
        self._probe_in_flight = False
        self._failures += 1
        if self._state is CircuitState.HALF_OPEN or self._failures >= self.failure_threshold:
            self._opened_at = self._clock()
            self._set(CircuitState.OPEN)

    def abandon_probe(self) -> None:
        """A call that ended without a verdict (cancelled) frees the half-open probe."""
        self._probe_in_flight = False

    def retry_after_s(self) -> float:
        return max(0.0, self.cooldown_s - (self._clock() - self._opened_at))

    def _set(self, state: CircuitState) -> None:
        self._state = state
        if self._on_change:
            self._on_change(self.name, state)


class RetryBudget:
    """Retries may add at most ``ratio`` extra load: each request earns a fraction of a retry.

    Same idea as gRPC's retry throttling and Finagle's retry budget: under a
    broad outage retries stop instead of multiplying the load.
    """

    def __init__(self, ratio: float = 0.1, min_tokens: float = 3.0, max_tokens: float = 20.0) -> None:
        self.ratio = ratio
        self.max_tokens = max_tokens
        self._tokens = min_tokens
        self._lock = threading.Lock()

    def deposit(self) -> None:
        with self._lock:
            self._tokens = min(self.max_tokens, self._tokens + self.ratio)

    def try_withdraw(self) -> bool:
        with self._lock:
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return True
            return False


def backoff_s(attempt: int, base_s: float = 0.05, cap_s: float = 1.0, rng: random.Random | None = None) -> float:
    """Full-jitter exponential backoff: uniform in [0, min(cap, base * 2^attempt)]."""
    return (rng or random).uniform(0, min(cap_s, base_s * (2**attempt)))
