"""The one way a stage call is made: its timeout inside the deadline, retries within a
budget, the backend's circuit breaker, cancellation, timing and tracing.

``StageRunner.run`` makes a unary call, ``StageRunner.stream`` a streaming one; the
pipeline engine and ingestion use nothing else. A stage call either returns, or
raises a ``StageFailure`` that the pipeline turns into a labelled canned answer (a
timeout, a backend that is down or whose circuit is open, an overloaded backend).
Caller mistakes (INVALID_ARGUMENT…) pass through unchanged: they stay errors.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, MutableMapping
from contextlib import contextmanager
from typing import TypeVar

from ragrail.common import tracing
from ragrail.common.deadline import Deadline
from ragrail.common.errors import DeadlineExceeded, RagrailError, ResourceExhausted, Unavailable
from ragrail.gateway.resilience import CircuitBreaker, CircuitState, RetryBudget, backoff_s

log = logging.getLogger(__name__)
T = TypeVar("T")


class StageFailure(Exception):
    """A stage could not deliver; ``reason`` names the canned answer to give."""

    reason = ""

    def __init__(self, stage: str, detail: str) -> None:
        super().__init__(f"{stage}: {detail}")
        self.stage = stage

    def as_error(self) -> RagrailError:
        """The status for a caller that gets no canned answer (ingestion)."""
        return Unavailable(str(self))


class StageTimeout(StageFailure):
    reason = "stage_timeout"

    def as_error(self) -> RagrailError:
        return DeadlineExceeded(str(self))


class BackendUnavailable(StageFailure):
    reason = "backend_unavailable"


class BackendOverloaded(StageFailure):
    reason = "overload"

    def __init__(self, stage: str, detail: str, retry_after_s: float | None = None) -> None:
        super().__init__(stage, detail)
        self.retry_after_s = retry_after_s

    def as_error(self) -> RagrailError:
        return ResourceExhausted(str(self), self.retry_after_s)


def timeout_error(stage: str, detail: str, deadline: Deadline) -> Exception:
    """A stage's own timeout is a canned answer; the caller's expired deadline is an error.

    When the caller's deadline is what ran out, the caller has stopped waiting:
    DEADLINE_EXCEEDED is the truthful status, and a canned answer would race it.
    """
    if deadline.caller_bound and deadline.remaining() <= 0.001:
        return DeadlineExceeded(f"deadline exceeded in stage {stage}")
    return StageTimeout(stage, detail)


class StageRunner:
    """Shared by all pipelines of a gateway: one breaker per backend application."""

    def __init__(
        self,
        retry_budget: RetryBudget,
        breaker_factory: Callable[[str], CircuitBreaker],
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.retry_budget = retry_budget
        self._breaker_factory = breaker_factory
        self.breakers: dict[str, CircuitBreaker] = {}
        self._sleep = sleep

    def breaker(self, backend: str) -> CircuitBreaker:
        if backend not in self.breakers:
            self.breakers[backend] = self._breaker_factory(backend)
        return self.breakers[backend]

    def refuse_if_open(self, stage: str, backend: str) -> None:
        """Fails now when ``backend``'s circuit is open (takes no half-open probe): for work
        that is wasted unless a later call to ``backend`` goes through."""
        if self.breaker(backend).state is CircuitState.OPEN:
            raise BackendUnavailable(stage, f"circuit for {backend} is open")

    def timeout(self, stage: str, stage_timeout_s: float, deadline: Deadline) -> float:
        """The smaller of the stage's own timeout and what is left of the deadline."""
        try:
            return min(stage_timeout_s, deadline.timeout(stage))
        except DeadlineExceeded:
            raise timeout_error(stage, "no time left before the deadline", deadline) from None

    async def run(
        self,
        stage: str,
        backend: str,
        fn: Callable[[float], Awaitable[T]],
        *,
        timeout_s: float,
        retries: int,
        deadline: Deadline,
        timings: MutableMapping[str, float] | None = None,
    ) -> T:
        """``call``, timed into ``timings[stage]`` (summed over calls) inside the stage's span."""
        with _timed(timings, stage), tracing.stage_span(stage, backend) as span:
            return await self.call(
                stage, backend, tracing.traced_attempts(span, fn),
                timeout_s=timeout_s, retries=retries, deadline=deadline,
            )

    async def stream(
        self,
        stage: str,
        backend: str,
        open_stream: Callable[[float], AsyncIterator[T]],
        *,
        timeout_s: float,
        deadline: Deadline,
        timings: MutableMapping[str, float] | None = None,
    ) -> AsyncIterator[T]:
        """Items of ``open_stream(timeout)``: ``timeout_s`` bounds the first item, the deadline
        the rest. Never retried (items may have gone out). Closing this generator early
        closes the backend stream, which cancels the call downstream."""
        breaker = self.breaker(backend)
        # The timeout first: a stream with no time left must not take the half-open probe.
        first_s = self.timeout(stage, timeout_s, deadline)
        if not breaker.allow():
            raise BackendUnavailable(stage, f"circuit for {backend} is open")
        stream = open_stream(deadline.timeout(stage))
        started = False
        start = time.perf_counter()
        span = tracing.start_stage_span(stage, backend)
        try:
            async with asyncio.timeout(first_s):
                with tracing.use_span(span):  # the call starts here: its metadata carries the span
                    item = await anext(stream, None)
            while item is not None:
                started = True
                yield item
                # After the first item only the deadline bounds the stream; a stalled one ends there.
                async with asyncio.timeout(deadline.timeout(stage)):
                    item = await anext(stream, None)
            breaker.record_success()
        except BaseException as exc:
            # Before the first item the stage's timeout applies; after it only the deadline,
            # which says something about the backend unless the caller chose it.
            cut_short = first_s < timeout_s if not started else deadline.caller_bound
            failure = self.settle(stage, backend, exc, deadline, "the stream did not finish in time", cut_short=cut_short)
            if failure is None:
                raise
            raise failure from None
        finally:
            await stream.aclose()  # type: ignore[attr-defined]  # cancels the backend call when we stop early
            if timings is not None:
                timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - start
            tracing.end_stage_span(span, sys.exc_info()[1])

    async def call(
        self,
        stage: str,
        backend: str,
        fn: Callable[[float], Awaitable[T]],
        *,
        timeout_s: float,
        retries: int,
        deadline: Deadline,
    ) -> T:
        """Calls ``fn(timeout)``; retries UNAVAILABLE while budget and deadline allow."""
        breaker = self.breaker(backend)
        self.retry_budget.deposit()  # every call earns a fraction of a retry
        attempt = 0
        while True:
            # The timeout first: a call with no time left must not take the half-open probe.
            timeout = self.timeout(stage, timeout_s, deadline)
            if not breaker.allow():
                raise BackendUnavailable(stage, f"circuit for {backend} is open")
            try:
                async with asyncio.timeout(timeout):  # also bounds a backend that ignores deadlines
                    result = await fn(timeout)
            except BaseException as exc:
                if isinstance(exc, Unavailable) and attempt < retries and self._may_retry(deadline):
                    breaker.record_failure()
                    attempt += 1
                    log.info("retrying %s on %s (attempt %d): %s", stage, backend, attempt + 1, exc.message)
                    await self._sleep(min(backoff_s(attempt), max(0.0, deadline.remaining())))
                    continue
                failure = self.settle(
                    stage, backend, exc, deadline, f"no answer from {backend} within {timeout:.2f} s",
                    cut_short=timeout < timeout_s,
                )
                if failure is None:
                    raise
                raise failure from None
            breaker.record_success()
            return result

    def settle(
        self,
        stage: str,
        backend: str,
        exc: BaseException,
        deadline: Deadline,
        timeout_detail: str,
        *,
        cut_short: bool = False,
    ) -> Exception | None:
        """Books a failed call on the backend's breaker; returns the StageFailure the
        pipeline should see, or None when ``exc`` itself should propagate.

        ``cut_short``: the deadline, not the stage's own timeout, bounded the call. Such a
        timeout says nothing about the backend; counting it would let callers with tight
        deadlines (or one slow earlier stage) open a circuit every pipeline shares.
        """
        breaker = self.breaker(backend)
        if isinstance(exc, TimeoutError | DeadlineExceeded):
            if cut_short:
                breaker.abandon_probe()  # no verdict: neither healthy nor failed
            else:
                breaker.record_failure()
            return timeout_error(stage, timeout_detail, deadline)
        if isinstance(exc, Unavailable):
            breaker.record_failure()
            return BackendUnavailable(stage, exc.message)
        if isinstance(exc, ResourceExhausted):
            breaker.abandon_probe()  # busy, not down: neither healthy nor failed
            return BackendOverloaded(stage, exc.message, exc.retry_after_s)
        if isinstance(exc, RagrailError):
            breaker.record_success()  # it answered: the caller's input was the problem
        else:
            breaker.abandon_probe()  # cancelled: neither healthy nor failed
        return None

    def _may_retry(self, deadline: Deadline) -> bool:
        return deadline.remaining() > 0.05 and self.retry_budget.try_withdraw()


@contextmanager
def _timed(timings: MutableMapping[str, float] | None, stage: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        if timings is not None:
            timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - start
