"""Dynamic batching: concurrent requests with the same decoding settings share
one ``generate`` call, which on CPU and GPU alike costs little more than one.

A scheduler thread takes the oldest waiting request, waits up to
``batch_wait_s`` for compatible ones (same max_new_tokens, sampling and seed),
and runs them as one left-padded batch; each request still streams, stops and
cancels on its own. Batches run one after another (static batching); the
waiting line is bounded, beyond it callers get RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence

from ragrail.common.errors import ResourceExhausted
from ragrail.common.service_metrics import service_metrics
from ragrail.generation.core import (
    _END,
    Generation,
    Message,
    Row,
    Sampling,
    StreamEvent,
    TextGenerator,
    collect,
    _Prompt,
)

log = logging.getLogger(__name__)


class BatchingGenerator:
    """Same interface as TextGenerator (prepare, generate, stream), batched underneath."""

    def __init__(
        self, generator: TextGenerator, *, max_batch_size: int = 4, batch_wait_s: float = 0.02, max_waiting: int = 64
    ) -> None:
        self.generator = generator
        self.max_batch_size = max_batch_size
        self.batch_wait_s = batch_wait_s
        self.max_waiting = max_waiting
        self._waiting: list[Row] = []
        self._cond = threading.Condition()
        self.batch_sizes: list[int] = []  # recent batch sizes, for metrics and tests
        self._thread = threading.Thread(target=self._loop, name="generate-batcher", daemon=True)
        self._thread.start()

    @property
    def name(self) -> str:
        return self.generator.name

    def prepare(self, messages: Sequence[Message], sampling: Sampling) -> _Prompt:
        return self.generator.prepare(messages, sampling)

    def stream(
        self, messages: Sequence[Message], sampling: Sampling, cancel: threading.Event | None = None
    ) -> Iterator[StreamEvent]:
        row = self.generator.new_row(self.prepare(messages, sampling), cancel)
        with self._cond:
            if len(self._waiting) >= self.max_waiting:
                raise ResourceExhausted(
                    f"generation queue is full ({self.max_waiting} waiting); retry later", retry_after_s=1.0
                )
            self._waiting.append(row)
            self._cond.notify()
        return self.generator.consume(row)

    def generate(
        self, messages: Sequence[Message], sampling: Sampling, cancel: threading.Event | None = None
    ) -> Generation:
        return collect(self.stream(messages, sampling, cancel))

    def _loop(self) -> None:
        while True:
            try:
                batch = self._next_batch()
            except Exception:  # the scheduler must outlive any bug: log it and go on
                log.exception("generation batcher failed to form a batch")
                continue
            self.batch_sizes = (self.batch_sizes + [len(batch)])[-100:]
            service_metrics("generation").observe_batch(len(batch), method="Generate")
            self.generator.run_batch(batch)

    def _next_batch(self) -> list[Row]:
        with self._cond:
            while not self._waiting:
                self._cond.wait()
            first = self._waiting[0]
            key = self.generator.sampling_key(first.prompt)
            deadline = time.monotonic() + self.batch_wait_s
            while True:
                batch = [r for r in self._waiting if self.generator.sampling_key(r.prompt) == key]
                left = deadline - time.monotonic()
                if len(batch) >= self.max_batch_size or left <= 0:
                    break
                self._cond.wait(timeout=left)
            batch = [r for r in batch if not r.cancel.is_set()][: self.max_batch_size] or batch[:1]
            for row in batch:
                self._waiting.remove(row)
            # Cancelled while waiting: drop them (their consumers already stopped).
            for row in [r for r in self._waiting if r.cancel.is_set()]:
                self._waiting.remove(row)
                row.tokens.put(_END)
            return batch

