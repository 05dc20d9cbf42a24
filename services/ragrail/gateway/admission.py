"""Admission control: bounded in-flight work and a bounded queue, per pipeline and per class of
RPC (``ragrail.gateway.interceptors``: all RPCs, queries, ingest).

Beyond both bounds a request is refused at once with RESOURCE_EXHAUSTED and a
retry-after hint, never queued without bound and never left hanging.

The gateway's query class may steer its limit by latency (``LatencyLimit``): a fixed limit is
right for one machine only, and on a slower one (or with a busier model) the admitted requests
would all finish late together, time out and open the circuits. The limit shrinks when runs
come back slower than their pipeline's target and grows back while they are fast, so the
excess is refused at the door rather than admitted to time out inside: overload stays
overload, not failure. One limit for all pipelines, because they share the model services.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from ragrail.common.errors import ResourceExhausted


class LatencyLimit:
    """An AIMD concurrency limit steered by how long admitted runs take.

    It starts at ``floor`` and grows by one slot per fast run (slow start, as TCP's) until the
    first slow one, then by about one slot per ``limit`` fast runs; growth needs the limit to be
    in use. A run slower than ``target_s``, or ended overloaded, cuts it by ``backoff``, at most
    once per generation of runs: a run admitted before the last cut says nothing about the limit
    that cut set (TCP's once-per-window rule). Starting low matters: a cold start at the ceiling
    would admit a burst whose timeouts open the circuits before the limit could learn.
    """

    def __init__(self, ceiling: int, floor: int = 1, backoff: float = 0.75) -> None:
        self.ceiling = ceiling
        self.floor = min(floor, ceiling)
        self.backoff = backoff
        self.value = float(self.floor)
        self._slow_start = True
        self._last_decrease = float("-inf")

    @property
    def slots(self) -> int:
        return max(self.floor, int(self.value))

    def record(self, started: float, slow: bool, in_flight: int) -> None:
        """One finished run: admitted at ``started`` (monotonic), ``in_flight`` others still running."""
        if slow:
            if started >= self._last_decrease:
                self.value = max(float(self.floor), self.value * self.backoff)
                self._last_decrease = time.monotonic()
                self._slow_start = False
        elif 2 * (in_flight + 1) >= self.slots:  # only a limit in use has earned a raise
            step = 1.0 if self._slow_start else 1.0 / self.value
            self.value = min(float(self.ceiling), self.value + step)


@dataclass
class Ticket:
    """One admitted request. Whoever ran it gives the verdict a latency limit learns from:
    ``slow`` True (over its target, or ended overloaded) or False; None (refused, bad input,
    cancelled) teaches nothing."""

    started: float
    slow: bool | None = None


# The query-class ticket of the RPC being handled: the interceptor admits, the servicer judges.
current_ticket: contextvars.ContextVar[Ticket | None] = contextvars.ContextVar("admission_ticket", default=None)


class Admission:
    def __init__(
        self,
        name: str,
        max_in_flight: int,
        max_queue: int,
        retry_after_s: float = 1.0,
        *,
        what: str = "pipeline",
        latency_limit: LatencyLimit | None = None,
        max_queue_wait_s: float | None = None,
    ) -> None:
        self.name = name
        self.what = what  # how messages name it: "pipeline rag@1", "the gateway's ingest class"
        self.max_in_flight = max_in_flight
        self.max_queue = max_queue
        self.retry_after_s = retry_after_s
        self.latency_limit = latency_limit
        self.max_queue_wait_s = max_queue_wait_s
        self.in_flight = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    @property
    def limit(self) -> int:
        """Slots right now: max_in_flight, or less while a latency limit holds it down."""
        return self.latency_limit.slots if self.latency_limit else self.max_in_flight

    @property
    def queue_bound(self) -> int:
        """Requests that may wait: max_queue, and with a latency limit no more than its slots, so
        a waiter is served within about one run's time instead of waiting out its deadline."""
        return min(self.max_queue, self.latency_limit.slots) if self.latency_limit else self.max_queue

    @property
    def queued(self) -> int:
        return len(self._waiters)

    @property
    def full(self) -> bool:
        """True when a request arriving now would be refused at once (every slot taken, queue full).

        A hint for refusing before a request is even read; ``slot`` still decides.
        """
        return self.in_flight >= self.limit and self.queued >= self.queue_bound

    def refusal(self) -> ResourceExhausted:
        return ResourceExhausted(
            f"{self.what} {self.name} is at capacity ({self.limit} running, {self.queued} queued); retry later",
            retry_after_s=self.retry_after_s,
        )

    @asynccontextmanager
    async def slot(self, wait_s: float) -> AsyncIterator[Ticket]:
        """Holds one in-flight slot; waits at most wait_s (the request's remaining time), and at
        most max_queue_wait_s when set."""
        if self.in_flight < self.limit and not self._waiters:
            self.in_flight += 1
        else:
            if self.queued >= self.queue_bound:
                raise self.refusal()
            if self.max_queue_wait_s is not None:
                wait_s = min(wait_s, self.max_queue_wait_s)
            await self._wait_turn(wait_s)
        ticket = Ticket(time.monotonic())
        try:
            yield ticket
        finally:
            self.in_flight -= 1
            if self.latency_limit and ticket.slow is not None:
                self.latency_limit.record(ticket.started, ticket.slow, self.in_flight)
            self._wake()

    async def _wait_turn(self, wait_s: float) -> None:
        """Returns holding a slot: ``_wake`` counts it in ``in_flight`` as it hands it over, so
        an arrival between the hand-over and this waiter resuming cannot take it."""
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(turn)
        try:
            async with asyncio.timeout(max(wait_s, 0.0)):
                await turn
        except (TimeoutError, asyncio.CancelledError) as exc:
            if turn.done() and not turn.cancelled():  # handed a slot just as it gave up: pass it on
                self.in_flight -= 1
                self._wake()
            elif turn in self._waiters:
                self._waiters.remove(turn)
            if isinstance(exc, TimeoutError):
                raise ResourceExhausted(
                    f"{self.what} {self.name} had no free slot before the deadline", retry_after_s=self.retry_after_s
                ) from None
            raise

    def _wake(self) -> None:
        while self._waiters and self.in_flight < self.limit:
            turn = self._waiters.popleft()
            if not turn.done():
                self.in_flight += 1
                turn.set_result(None)
