"""Continuous (iteration-level) batching: requests join and leave the running batch between steps.

One scheduler thread owns the model. Each iteration it
1. drops rows whose caller cancelled (deadline, disconnect, stop sequence),
2. admits waiting requests, oldest first, while the batch has room in rows
   (``max_batch_size``) and in reserved KV tokens (``max_batch_tokens``: a
   request reserves its prompt plus ``max_new_tokens``), and while the group of
   newcomers fits one prefill chunk (``prefill_chunk_tokens``, padding counted),
3. runs one chunk of the newcomers' prefill: a group that fits is prefilled in
   one step, a single prompt longer than the chunk over several, so running rows
   are delayed by one chunk per step, never by a whole burst of prompts; when the
   last chunk is done the newcomers get their first token and join the batch,
4. runs one decoding step for every running row.

Per step there is one device-to-host copy (the chosen tokens of every row);
rows finish on EOS, on their own ``max_new_tokens`` or when cancelled, and
leave at once. Tokens go to each caller's channel; callers on an asyncio loop
get one wake-up per loop per step, not one per token. Text is decoded on the
caller's side (``IncrementalDecoder``), which also applies stop sequences.

Beyond ``max_waiting`` queued requests, callers get RESOURCE_EXHAUSTED with a
retry-after. The same code runs on CPU and GPU; every tensor the engine builds
is created on the model's device.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ragrail.common.errors import ResourceExhausted, Unavailable
from ragrail.generation.core import (
    FinishReason,
    Generation,
    Message,
    PreparedPrompt,
    Sampling,
    StreamEvent,
    TextGenerator,
    build_generator,
    collect,
)
from ragrail.generation.detokenize import IncrementalDecoder
from ragrail.generation.kv_cache import check_supported, layers_of, new_cache
from ragrail.generation.sampling import BatchSampler, RowSampling, seen_tokens

if TYPE_CHECKING:
    from ragrail.common.config import GenerationSettings

log = logging.getLogger(__name__)

_GATHER_WAIT_CAP = 5  # from idle, the first request waits at most this many gather_wait_s for company
_BURST_CHUNKS = 4  # from idle, a step prefills up to this many chunks' worth of prompt tokens (default)

StepObserver = Callable[["StepStats"], None]


@dataclass(frozen=True)
class StepStats:
    """What one scheduler iteration did, for metrics."""

    running: int  # rows decoded this step
    prefill_tokens: int  # prompt tokens (padding included) prefilled this step
    waiting: int
    seconds: float


@dataclass(frozen=True)
class _Finished:
    reason: FinishReason
    error: BaseException | None = None


class _Channel:
    """Where a request's tokens go: a thread-safe queue, or an asyncio queue on the caller's loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.loop = loop
        self.sync: queue.SimpleQueue[int | _Finished] | None = queue.SimpleQueue() if loop is None else None
        self.aio: asyncio.Queue[int | _Finished] | None = asyncio.Queue() if loop is not None else None


@dataclass(eq=False)
class _Request:
    prompt: PreparedPrompt
    cancel: threading.Event
    channel: _Channel
    generator: torch.Generator | None = None
    generated: int = 0
    enqueued_at: float = field(default_factory=time.monotonic)

    @property
    def reserved_tokens(self) -> int:
        return self.prompt.token_count + self.prompt.max_new_tokens


class _Batch:
    """Rows decoding together: their cache, mask, positions and sampler, all on the device."""

    def __init__(
        self, rows: list[_Request], cache: Any, mask: torch.Tensor, positions: torch.Tensor,
        last: torch.Tensor, seen: torch.Tensor | None, sampler: BatchSampler,
    ) -> None:
        self.rows, self.cache, self.mask, self.positions = rows, cache, mask, positions
        self.last, self.seen, self.sampler = last, seen, sampler

    def __len__(self) -> int:
        return len(self.rows)


class _Prefill:
    """Newcomers being prefilled, left-padded to a common width, one column chunk per step."""

    def __init__(self, rows: list[_Request], input_ids: torch.Tensor, mask: torch.Tensor, cache: Any) -> None:
        self.rows, self.input_ids, self.mask, self.cache = rows, input_ids, mask, cache
        self.positions = (mask.cumsum(-1) - 1).clamp(min=0)
        self.done_columns = 0

    @property
    def width(self) -> int:
        return int(self.input_ids.shape[1])


class ContinuousBatcher:
    """A GenerationEngine: TextGenerator's model, shared by concurrent requests step by step."""

    def __init__(
        self,
        generator: TextGenerator,
        *,
        max_batch_size: int = 8,
        max_waiting: int = 64,
        max_batch_tokens: int = 16_384,
        prefill_chunk_tokens: int | None = None,
        prefill_burst_tokens: int | None = None,
        gather_wait_s: float = 0.01,
        observer: StepObserver | None = None,
        start: bool = True,
    ) -> None:
        """``start=False`` leaves stepping to the caller (``step()``), for tests that drive it."""
        self.generator = generator
        self.max_batch_size = max_batch_size
        self.max_waiting = max_waiting
        self.gather_wait_s = gather_wait_s
        # A request alone must always fit, or it would wait forever.
        self.max_batch_tokens = max(max_batch_tokens, generator.context_window)
        self._observer = observer
        self._model = generator.model
        self._device = generator.model.device
        self.prefill_chunk_tokens = max(1, prefill_chunk_tokens or _default_prefill_chunk(self._device))
        # From idle: a few chunks' worth (activation memory), within the KV budget.
        burst = prefill_burst_tokens or _BURST_CHUNKS * self.prefill_chunk_tokens
        self.prefill_burst_tokens = max(self.prefill_chunk_tokens, min(self.max_batch_tokens, burst))
        self._num_layers = check_supported(generator.model)
        self._cache_kwarg = _cache_keyword(generator.model)
        # Only the last position's logits are needed: skip the vocabulary projection of the rest.
        self._logits_kwargs = {"logits_to_keep": 1} if _accepts(generator.model, "logits_to_keep") else {}
        self._eos = frozenset(generator.eos_token_ids)
        self._suppress = tuple(generator.suppressed_token_ids)
        self._vocab = int(generator.model.get_output_embeddings().weight.shape[0])
        self._waiting: collections.deque[_Request] = collections.deque()
        self._cond = threading.Condition()
        self._running: _Batch | None = None
        self._prefill: _Prefill | None = None
        self._closed = False
        self._touched: list[_Request] = []  # rows the current step holds (failed together if it raises)
        self.steps = 0  # iterations run, for tests and metrics
        self._thread = threading.Thread(target=self._run, name="generation-engine", daemon=True)
        if start:
            self._thread.start()

    @property
    def name(self) -> str:
        return self.generator.name

    # -- the GenerationEngine interface ------------------------------------------------

    def prepare(self, messages: Sequence[Message], sampling: Sampling) -> PreparedPrompt:
        return self.generator.prepare(messages, sampling)

    def stream(
        self, messages: Sequence[Message], sampling: Sampling, cancel: threading.Event | None = None
    ) -> Iterator[StreamEvent]:
        """Validates and queues now (errors raise here, not mid-stream); yields as tokens arrive."""
        request = self._submit(self.prepare(messages, sampling), cancel, _Channel())
        return self._consume(request)

    def astream(
        self, messages: Sequence[Message], sampling: Sampling, cancel: threading.Event | None = None
    ) -> AsyncIterator[StreamEvent]:
        """Like ``stream`` for a caller on an asyncio loop (no thread per request or per token)."""
        request = self._submit(self.prepare(messages, sampling), cancel, _Channel(asyncio.get_running_loop()))
        return self._aconsume(request)

    def generate(
        self, messages: Sequence[Message], sampling: Sampling, cancel: threading.Event | None = None
    ) -> Generation:
        return collect(self.stream(messages, sampling, cancel))

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        else:
            self._fail_all(None)

    @property
    def idle(self) -> bool:
        return not (self._waiting or self._running or self._prefill)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def running(self) -> int:
        batch = self._running
        return len(batch) if batch is not None else 0

    # -- callers' side -------------------------------------------------------------------

    def _submit(self, prompt: PreparedPrompt, cancel: threading.Event | None, channel: _Channel) -> _Request:
        request = _Request(prompt, cancel or threading.Event(), channel, _row_generator(prompt.sampling, self._device))
        with self._cond:
            if self._closed:
                raise ResourceExhausted("generation engine is shutting down; retry on another replica", 1.0)
            if len(self._waiting) >= self.max_waiting:
                raise ResourceExhausted(
                    f"generation queue is full ({self.max_waiting} waiting); retry later", retry_after_s=1.0
                )
            self._waiting.append(request)
            self._cond.notify()
        return request

    def _consume(self, request: _Request) -> Iterator[StreamEvent]:
        reader = _Reader(request, self.generator.tokenizer)
        assert request.channel.sync is not None
        try:
            while not reader.done:
                yield from reader.feed(request.channel.sync.get())
        finally:
            request.cancel.set()  # also when the caller walks away: the row leaves at the next step

    async def _aconsume(self, request: _Request) -> AsyncIterator[StreamEvent]:
        reader = _Reader(request, self.generator.tokenizer)
        assert request.channel.aio is not None
        try:
            while not reader.done:
                for event in reader.feed(await request.channel.aio.get()):
                    yield event
        finally:
            request.cancel.set()

    # -- the scheduler thread ------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while not (self._closed or self._waiting or self._running or self._prefill):
                    self._cond.wait()
                if self._closed:
                    break
                self._gather_while_idle()
            try:
                self.step()
            except Exception as exc:  # a failed step fails its rows; the engine goes on
                log.exception("generation step failed; failing %d requests", self._in_flight())
                self._fail_all(exc)
        self._fail_all(None)

    def _gather_while_idle(self) -> None:
        """From idle, the first request waits a little for company (lock held).

        Requests that arrive together (a burst, a fan-out) then share one prefill instead
        of the first being prefilled alone while the rest wait for it. The wait ends
        ``gather_wait_s`` after the latest arrival (callers tokenizing one after another
        still count as one burst), at ``_GATHER_WAIT_CAP`` times that after the first, or
        as soon as a full batch waits.
        """
        if self._running or self._prefill or not self._waiting:
            return
        cap = self._waiting[0].enqueued_at + _GATHER_WAIT_CAP * self.gather_wait_s
        while len(self._waiting) < self.max_batch_size and not self._closed:
            left = min(cap, self._waiting[-1].enqueued_at + self.gather_wait_s) - time.monotonic()
            if left <= 0:
                return
            self._cond.wait(left)

    def step(self) -> None:
        """One iteration: drop cancelled rows, admit, one prefill chunk, one decoding step."""
        started = time.perf_counter()
        outbox: list[tuple[_Request, int | _Finished]] = []
        # Nothing of this step reaches a caller before _deliver: if it raises, every row it
        # touched (running, prefilling, admitted) must be told, or its caller waits forever.
        self._touched = self._rows_in_flight()
        self._drop_cancelled(outbox)
        if self._prefill is None:
            self._admit(outbox)
        prefill_tokens = self._prefill_chunk(outbox) if self._prefill is not None else 0
        running = len(self._running) if self._running is not None else 0
        if self._running is not None:
            self._decode(outbox)
        _deliver(outbox)
        self.steps += 1
        if self._observer is not None:
            self._observer(StepStats(running, prefill_tokens, len(self._waiting), time.perf_counter() - started))

    def _rows_in_flight(self) -> list[_Request]:
        return (list(self._running.rows) if self._running else []) + (list(self._prefill.rows) if self._prefill else [])

    def _in_flight(self) -> int:
        return len({id(r) for r in self._rows_in_flight() + self._touched})

    def _fail_all(self, exc: BaseException | None) -> None:
        error = exc if exc is not None else Unavailable("generation replica is shutting down; retry")
        finished = _Finished(FinishReason.CANCELLED, error)
        rows = list({id(r): r for r in self._touched + self._rows_in_flight()}.values())
        if exc is None:  # closing: the waiting line goes too
            with self._cond:
                rows += list(self._waiting)
                self._waiting.clear()
        self._running = self._prefill = None
        self._touched = []
        _deliver([(row, finished) for row in rows])

    def _drop_cancelled(self, outbox: list[tuple[_Request, int | _Finished]]) -> None:
        with self._cond:
            for row in [r for r in self._waiting if r.cancel.is_set()]:
                self._waiting.remove(row)
                outbox.append((row, _Finished(FinishReason.CANCELLED)))
        if self._running is not None:
            keep = [i for i, row in enumerate(self._running.rows) if not row.cancel.is_set()]
            outbox += [(r, _Finished(FinishReason.CANCELLED)) for r in self._running.rows if r.cancel.is_set()]
            self._running = self._select(self._running, keep)

    def _prefill_budget(self) -> int:
        """Prompt tokens per step: a chunk while rows decode (it bounds their stall); from
        idle nobody stalls, so a burst is prefilled in fewer, larger steps."""
        if self._running is not None:
            return self.prefill_chunk_tokens
        return self.prefill_burst_tokens

    def _admit(self, outbox: list[tuple[_Request, int | _Finished]]) -> None:
        rows = list(self._running.rows) if self._running is not None else []
        budget = self._prefill_budget()
        reserved = sum(r.reserved_tokens for r in rows)
        admitted: list[_Request] = []
        width = 0
        with self._cond:
            while self._waiting and len(rows) + len(admitted) < self.max_batch_size:
                head = self._waiting[0]
                if reserved + head.reserved_tokens > self.max_batch_tokens:
                    break  # oldest first: a big request is not overtaken forever by small ones
                grown = max(width, head.prompt.token_count)
                if admitted and grown * (len(admitted) + 1) > budget:
                    break  # the next group takes it, one step later
                admitted.append(self._waiting.popleft())
                self._touched.append(head)
                reserved += head.reserved_tokens
                width = grown
        if admitted:
            self._prefill = self._start_prefill(admitted)

    def _start_prefill(self, rows: list[_Request]) -> _Prefill:
        width = max(r.prompt.token_count for r in rows)
        device = self._device
        input_ids = torch.full((len(rows), width), self.generator.pad_token_id, dtype=torch.long, device=device)
        mask = torch.zeros((len(rows), width), dtype=torch.long, device=device)
        for i, row in enumerate(rows):  # once per admission, not per step
            ids = row.prompt.input_ids.reshape(-1)
            input_ids[i, width - len(ids) :] = ids.to(device)
            mask[i, width - len(ids) :] = 1
        return _Prefill(rows, input_ids, mask, new_cache(self._num_layers))

    def _prefill_chunk(self, outbox: list[tuple[_Request, int | _Finished]]) -> int:
        p = self._prefill
        assert p is not None
        columns = max(1, self._prefill_budget() // len(p.rows))
        start, end = p.done_columns, min(p.width, p.done_columns + columns)
        logits = self._forward(p.input_ids[:, start:end], p.mask[:, :end], p.positions[:, start:end], p.cache)
        p.done_columns = end
        prefilled = len(p.rows) * (end - start)
        if end < p.width:
            return prefilled
        self._prefill = None
        seen = None
        sampler = self._sampler(p.rows)
        if sampler.uses_penalty:
            seen = seen_tokens([r.prompt.input_ids.reshape(-1) for r in p.rows], self._vocab, self._device)
        first = sampler(logits, seen)
        newcomers = _Batch(p.rows, p.cache, p.mask, p.positions[:, -1] + 1, first, seen, sampler)
        newcomers = self._after_sampling(newcomers, first, outbox)
        self._running = self._merge(self._running, newcomers)
        return prefilled

    def _decode(self, outbox: list[tuple[_Request, int | _Finished]]) -> None:
        b = self._running
        assert b is not None
        b.mask = torch.cat([b.mask, b.mask.new_ones((len(b), 1))], dim=1)
        logits = self._forward(b.last[:, None], b.mask, b.positions[:, None], b.cache)
        b.positions = b.positions + 1
        chosen = b.sampler(logits, b.seen)
        self._running = self._after_sampling(b, chosen, outbox)

    def _after_sampling(
        self, batch: _Batch, chosen: torch.Tensor, outbox: list[tuple[_Request, int | _Finished]]
    ) -> _Batch | None:
        """Routes each row's token (the one host copy per step) and removes finished rows."""
        batch.last = chosen
        if batch.seen is not None:
            batch.seen[torch.arange(len(batch), device=self._device), chosen] = True
        keep: list[int] = []
        for i, (row, token) in enumerate(zip(batch.rows, chosen.tolist(), strict=True)):
            if row.cancel.is_set():
                outbox.append((row, _Finished(FinishReason.CANCELLED)))
            elif token in self._eos:
                outbox.append((row, _Finished(FinishReason.STOP)))
            else:
                row.generated += 1
                outbox.append((row, token))
                if row.generated >= row.prompt.max_new_tokens:
                    outbox.append((row, _Finished(FinishReason.LENGTH)))
                else:
                    keep.append(i)
        return self._select(batch, keep)

    # -- batch membership ---------------------------------------------------------------

    def _select(self, batch: _Batch, keep: list[int]) -> _Batch | None:
        if not keep:
            return None
        if len(keep) == len(batch):
            return batch
        index = torch.tensor(keep, dtype=torch.long, device=self._device)
        mask = batch.mask.index_select(0, index)
        # Columns that are padding for every remaining row go (one host copy, on leave only).
        drop_left = int((mask.sum(dim=0) == 0).long().cumprod(dim=0).sum().item())
        for layer in layers_of(batch.cache):
            layer.select(index, drop_left)
        rows = [batch.rows[i] for i in keep]
        seen = batch.seen.index_select(0, index) if batch.seen is not None else None
        return _Batch(
            rows, batch.cache, mask[:, drop_left:], batch.positions.index_select(0, index),
            batch.last.index_select(0, index), seen, self._sampler(rows),
        )

    def _merge(self, running: _Batch | None, newcomers: _Batch | None) -> _Batch | None:
        if running is None or newcomers is None:
            return running or newcomers
        width = max(running.mask.shape[1], newcomers.mask.shape[1])
        for mine, theirs in zip(layers_of(running.cache), layers_of(newcomers.cache), strict=True):
            mine.concat(theirs)
        rows = running.rows + newcomers.rows
        mask = torch.cat([_left_pad(running.mask, width), _left_pad(newcomers.mask, width)])
        seen = _cat_optional(running.seen, newcomers.seen, len(running), len(newcomers), self._vocab, self._device)
        return _Batch(
            rows, running.cache, mask, torch.cat([running.positions, newcomers.positions]),
            torch.cat([running.last, newcomers.last]), seen, self._sampler(rows),
        )

    def _sampler(self, rows: list[_Request]) -> BatchSampler:
        return BatchSampler(
            [_row_sampling(r.prompt.sampling) for r in rows], self._device,
            suppress_tokens=self._suppress, generators=[r.generator for r in rows],
        )

    @torch.inference_mode()
    def _forward(
        self, input_ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: Any
    ) -> torch.Tensor:
        """Last position's logits [rows, vocab]; the cache grows by ``input_ids``' columns."""
        out = self._model(
            input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True,
            **{self._cache_kwarg: cache}, **self._logits_kwargs,
        )
        return out.logits[:, -1, :]


class _Reader:
    """The caller's side of a request: tokens in, text deltas and one final event out."""

    def __init__(self, request: _Request, tokenizer: Any) -> None:
        self._request = request
        self._decoder = IncrementalDecoder(tokenizer, request.prompt.sampling.stop)
        self.done = False

    def feed(self, item: int | _Finished) -> list[StreamEvent]:
        if isinstance(item, _Finished):
            if item.error is not None:
                self.done = True
                raise item.error
            return self._final(item.reason, self._decoder.flush())
        if self._request.cancel.is_set():  # the caller cancelled: nothing more but the end
            return self._final(FinishReason.CANCELLED, "")
        delta = self._decoder.add(item)
        if self._decoder.stopped:
            self._request.cancel.set()  # the engine drops the row at its next step
            return self._final(FinishReason.STOP_SEQUENCE, delta)
        return [StreamEvent(delta)] if delta else []

    def _final(self, reason: FinishReason, delta: str) -> list[StreamEvent]:
        self.done = True
        prompt = self._request.prompt
        return [StreamEvent(delta, reason, prompt.token_count, self._decoder.token_count)]


def _deliver(outbox: list[tuple[_Request, int | _Finished]]) -> None:
    """Hands tokens to callers: directly to thread queues, one wake-up per asyncio loop."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Request, int | _Finished]]] = {}
    for request, item in outbox:
        loop = request.channel.loop
        if request.channel.sync is not None:
            request.channel.sync.put(item)
        elif loop is not None:
            by_loop.setdefault(loop, []).append((request, item))
    for loop, items in by_loop.items():
        try:
            loop.call_soon_threadsafe(_put_all, items)
        except RuntimeError:  # the caller's loop is gone: nobody is listening
            for request, _ in items:
                request.cancel.set()


def _put_all(items: list[tuple[_Request, int | _Finished]]) -> None:
    for request, item in items:
        assert request.channel.aio is not None
        request.channel.aio.put_nowait(item)


def _row_sampling(s: Sampling) -> RowSampling:
    return RowSampling(s.temperature, s.top_p, s.top_k, s.repetition_penalty, s.seed)


def _row_generator(s: Sampling, device: torch.device) -> torch.Generator | None:
    if s.seed is None or s.temperature <= 0:
        return None
    generator = torch.Generator(device=device)
    generator.manual_seed(s.seed)
    return generator


def _left_pad(mask: torch.Tensor, width: int) -> torch.Tensor:
    missing = width - mask.shape[1]
    return torch.cat([mask.new_zeros((mask.shape[0], missing)), mask], dim=1) if missing else mask


def _cat_optional(
    a: torch.Tensor | None, b: torch.Tensor | None, rows_a: int, rows_b: int, vocab: int, device: torch.device
) -> torch.Tensor | None:
    """Joins two batches' seen-token masks; a batch without one (no penalty) gets an empty one."""
    if a is None and b is None:
        return None
    a = a if a is not None else torch.zeros((rows_a, vocab), dtype=torch.bool, device=device)
    b = b if b is not None else torch.zeros((rows_b, vocab), dtype=torch.bool, device=device)
    return torch.cat([a, b])


def _cache_keyword(model: torch.nn.Module) -> str:
    """transformers renamed ``past_key_values`` to ``cache`` (5.2x); use what this version takes."""
    return "cache" if _accepts(model, "cache") else "past_key_values"


def _accepts(model: torch.nn.Module, keyword: str) -> bool:
    import inspect

    return keyword in inspect.signature(model.forward).parameters


def _default_prefill_chunk(device: torch.device) -> int:
    """A GPU prefills thousands of tokens in about the time of one decoding step (8192 is
    also vLLM's default step budget on large GPUs); a CPU core needs ~1 ms per token of a
    135M model, so there a chunk is kept short."""
    return 8192 if device.type == "cuda" else 512


def build_engine(settings: GenerationSettings, models_dir: Path, observer: StepObserver | None = None) -> ContinuousBatcher:
    return ContinuousBatcher(
        build_generator(settings, models_dir),
        max_batch_size=settings.max_batch_size,
        max_waiting=settings.max_waiting,
        max_batch_tokens=settings.max_batch_tokens,
        prefill_chunk_tokens=settings.prefill_chunk_tokens,
        prefill_burst_tokens=settings.prefill_burst_tokens,
        gather_wait_s=settings.gather_wait_s,
        observer=observer,
    )
