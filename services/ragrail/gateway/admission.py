"""Admission control: bounded in-flight work and a bounded queue, per pipeline and per class of
RPC (``ragrail.gateway.interceptors``: all RPCs, queries, ingest).

Beyond both bounds a request is refused at once with RESOURCE_EXHAUSTED and a
retry-after hint, never queued without bound and never left hanging.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from ragrail.common.errors import ResourceExhausted


class Admission:
    def __init__(
        self, name: str, max_in_flight: int, max_queue: int, retry_after_s: float = 1.0, *, what: str = "pipeline"
    ) -> None:
        self.name = name
        self.what = what  # how messages name it: "pipeline rag@1", "the gateway's ingest class"
        self.max_in_flight = max_in_flight
        self.max_queue = max_queue
        self.retry_after_s = retry_after_s
        self._slots = asyncio.Semaphore(max_in_flight)
        self.in_flight = 0
        self.queued = 0

    @property
    def full(self) -> bool:
        """True when a request arriving now would be refused at once (every slot taken, queue full).

        A hint for refusing before a request is even read; ``slot`` still decides.
        """
        return self._slots.locked() and self.queued >= self.max_queue

    def refusal(self) -> ResourceExhausted:
        return ResourceExhausted(
            f"{self.what} {self.name} is at capacity ({self.max_in_flight} running, {self.queued} queued); retry later",
            retry_after_s=self.retry_after_s,
        )

    @asynccontextmanager
    async def slot(self, wait_s: float) -> AsyncIterator[None]:
        """Holds one in-flight slot; waits at most wait_s (the request's remaining time)."""
        if self._slots.locked():
            if self.queued >= self.max_queue:
                raise self.refusal()
            self.queued += 1
            try:
                await asyncio.wait_for(self._slots.acquire(), timeout=max(wait_s, 0.0))
            except TimeoutError:
                raise ResourceExhausted(
                    f"{self.what} {self.name} had no free slot before the deadline",
                    retry_after_s=self.retry_after_s,
                ) from None
            finally:
                self.queued -= 1
        else:
            await self._slots.acquire()
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1
            self._slots.release()
