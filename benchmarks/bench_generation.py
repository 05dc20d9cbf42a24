"""Benchmark 3, generation: time to first token and tokens/s, service vs raw model.generate.

    .venv/bin/python benchmarks/bench_generation.py [--quick] [--serve-address 127.0.0.1:9000]

The service is called with GenerateStream through Serve's gRPC proxy
(application=generation): sequentially, then 4 streams at once. The baseline
is the same weights (the configured model and dtype) loaded with
AutoModelForCausalLM in this process and driven by a raw ``model.generate``
(greedy, same chat-templated prompts, same max_new_tokens): sequentially, then
4 generate() calls in 4 threads at once (what a replica does with 4 requests),
and, for reference, one batched generate() of the 4 prompts.

Per request: TTFT (first streamed text) and tokens/s (completion tokens /
request time). For 4 at once also the aggregate tokens/s (all tokens / wall
time). Ratios are service / in-process: below 1 for tokens/s, or above 1 for
TTFT, is what serving costs.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from dataclasses import dataclass

import _common as c

BENCH = "3 generation"


@dataclass
class Sample:
    ttft: float      # seconds to the first token (text)
    total: float     # seconds for the whole request
    tokens: int      # completion tokens

    @property
    def rate(self) -> float:
        return self.tokens / self.total if self.total > 0 else float("nan")


@dataclass
class Result:
    samples: list[Sample]
    wall: float      # seconds for the whole round(s)

    def ttft_p50(self) -> float:
        return c.percentile([s.ttft for s in self.samples], 50) * 1000

    def rate_p50(self) -> float:
        return c.percentile([s.rate for s in self.samples], 50)

    def aggregate(self) -> float:
        return sum(s.tokens for s in self.samples) / self.wall if self.wall else float("nan")


# -- the service ------------------------------------------------------------------------


async def _stream(stub, question: str, max_tokens: int) -> Sample:  # type: ignore[no-untyped-def]
    from ragrail.generation.v1 import generation_pb2 as pb

    request = pb.GenerateStreamRequest(
        messages=[pb.ChatMessage(role=pb.ROLE_USER, content=question)],
        sampling=pb.SamplingParams(max_new_tokens=max_tokens, temperature=0),
    )
    start = time.perf_counter()
    first = None
    tokens = 0
    async for message in stub.GenerateStream(request, timeout=300, metadata=(("application", "generation"),)):
        if first is None and message.delta:
            first = time.perf_counter()
        if message.HasField("usage"):
            tokens = message.usage.completion_tokens
    end = time.perf_counter()
    return Sample((first or end) - start, end - start, tokens)


# -- raw model.generate in this process ---------------------------------------------------


class _FirstToken:
    """A streamer that notes when the first generated token arrives (put() gets the prompt first)."""

    def __init__(self) -> None:
        self.calls = 0
        self.first: float | None = None

    def put(self, value) -> None:  # type: ignore[no-untyped-def]
        self.calls += 1
        if self.calls == 2 and self.first is None:
            self.first = time.perf_counter()

    def end(self) -> None:
        pass


class Raw:
    def __init__(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from ragrail.common.config import load_settings
        from ragrail.common.models import pick_dtype, resolve_model

        c.quiet_transformers()
        settings = load_settings(None)
        location = resolve_model(settings.generation.model, settings.models_path)
        dtype = pick_dtype(settings.generation.dtype, "cpu")  # the service's dtype on this (CPU) machine
        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(location)
        self.model = AutoModelForCausalLM.from_pretrained(location, dtype=dtype).eval()
        eos = self.model.generation_config.eos_token_id
        self.eos = set([eos] if isinstance(eos, int) else (eos or []))
        self.pad = self.tokenizer.pad_token_id or next(iter(self.eos), 0)

    def _ids(self, question: str):  # type: ignore[no-untyped-def]
        return self.tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], add_generation_prompt=True, return_tensors="pt", return_dict=True
        )["input_ids"]

    def _count(self, new_ids) -> int:  # type: ignore[no-untyped-def]
        n = 0
        for t in new_ids.tolist():
            if t in self.eos:
                break
            n += 1
        return n

    def one(self, question: str, max_tokens: int) -> Sample:
        ids = self._ids(question)
        streamer = _FirstToken()
        start = time.perf_counter()
        with self.torch.inference_mode():
            out = self.model.generate(
                input_ids=ids, attention_mask=self.torch.ones_like(ids), max_new_tokens=max_tokens,
                do_sample=False, temperature=None, top_p=None, top_k=None, pad_token_id=self.pad, streamer=streamer,
            )
        end = time.perf_counter()
        return Sample((streamer.first or end) - start, end - start, self._count(out[0, ids.shape[-1]:]))

    def threads(self, prompts: list[str], max_tokens: int) -> list[Sample]:
        results: list[Sample | None] = [None] * len(prompts)

        def work(i: int, q: str) -> None:
            results[i] = self.one(q, max_tokens)

        workers = [threading.Thread(target=work, args=(i, q)) for i, q in enumerate(prompts)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        return [r for r in results if r is not None]

    def batched(self, prompts: list[str], max_tokens: int) -> Result:
        self.tokenizer.padding_side = "left"
        chats = [[{"role": "user", "content": q}] for q in prompts]
        enc = self.tokenizer.apply_chat_template(
            chats, add_generation_prompt=True, return_tensors="pt", return_dict=True, padding=True)
        streamer = _FirstToken()
        start = time.perf_counter()
        with self.torch.inference_mode():
            out = self.model.generate(
                input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], max_new_tokens=max_tokens,
                do_sample=False, temperature=None, top_p=None, top_k=None, pad_token_id=self.pad, streamer=streamer,
            )
        end = time.perf_counter()
        width = enc["input_ids"].shape[-1]
        samples = [Sample((streamer.first or end) - start, end - start, self._count(row[width:])) for row in out]
        return Result(samples, end - start)


async def measure(serve: str, raw: Raw, prompts: list[str], max_tokens: int, rounds: int):  # type: ignore[no-untyped-def]
    """Service and raw generate, interleaved request by request (sequential) and round by
    round (4 at once), so both see the same background load on a shared machine."""
    import grpc

    from ragrail.generation.v1 import generation_pb2_grpc

    svc_seq, raw_seq, svc_conc, raw_conc = [], [], [], []
    svc_wall = raw_wall = 0.0
    async with grpc.aio.insecure_channel(serve) as channel:
        stub = generation_pb2_grpc.GenerationServiceStub(channel)
        await _stream(stub, "Say hello.", 4)  # warm-up
        raw.one("Say hello.", 4)
        for i, q in enumerate(prompts):
            # raw.one blocks the event loop on purpose: no service call is in flight then
            if i % 2 == 0:
                svc_seq.append(await _stream(stub, q, max_tokens))
                raw_seq.append(raw.one(q, max_tokens))
            else:
                raw_seq.append(raw.one(q, max_tokens))
                svc_seq.append(await _stream(stub, q, max_tokens))
        for r in range(rounds):
            for side in ((0, 1) if r % 2 == 0 else (1, 0)):
                started = time.perf_counter()
                if side == 0:
                    svc_conc += await asyncio.gather(*(_stream(stub, q, max_tokens) for q in prompts[:4]))
                    svc_wall += time.perf_counter() - started
                else:
                    raw_conc += raw.threads(prompts[:4], max_tokens)
                    raw_wall += time.perf_counter() - started
    batched = raw.batched(prompts[:4], max_tokens)
    return (Result(svc_seq, sum(s.total for s in svc_seq)), Result(svc_conc, svc_wall),
            Result(raw_seq, sum(s.total for s in raw_seq)), Result(raw_conc, raw_wall), batched)


def probe(serve: str) -> None:
    import grpc

    from ragrail.generation.v1 import generation_pb2 as pb
    from ragrail.generation.v1 import generation_pb2_grpc

    with grpc.insecure_channel(serve) as channel:
        generation_pb2_grpc.GenerationServiceStub(channel).Generate(
            pb.GenerateRequest(messages=[pb.ChatMessage(role=pb.ROLE_USER, content="Hi")],
                               sampling=pb.SamplingParams(max_new_tokens=2)),
            timeout=60, metadata=(("application", "generation"),))


def main(argv: list[str] | None = None) -> int:
    p = c.base_parser(__doc__)
    c.add_stack_args(p)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--rounds", type=int, default=2, help="rounds of 4 concurrent requests (each side)")
    p.add_argument("--requests", type=int, default=8, help="sequential requests (each side)")
    args = p.parse_args(argv)
    max_tokens = 8 if args.quick else args.max_new_tokens
    rounds = 1 if args.quick else args.rounds
    questions = c.on_topic_questions()
    prompts = [questions[i % len(questions)] for i in range(4 if args.quick else max(4, args.requests))]

    raw = Raw()
    threads = raw.torch.get_num_threads()
    with c.stack_for(args) as stack:
        c.wait_serve_ready(stack.serve, "generation", lambda: probe(stack.serve))
        load = c.load_average()
        s_seq, s_conc, r_seq, r_conc, r_batch = asyncio.run(measure(stack.serve, raw, prompts, max_tokens, rounds))

    def row(label: str, s: Result, r: Result) -> list[object]:
        return [label, s.ttft_p50(), r.ttft_p50(), s.ttft_p50() / r.ttft_p50(),
                s.rate_p50(), r.rate_p50(), s.rate_p50() / r.rate_p50(),
                s.aggregate(), r.aggregate(), s.aggregate() / r.aggregate()]

    rows = [row("sequential", s_seq, r_seq), row("4 concurrent", s_conc, r_conc),
            ["(in-process batch of 4)", "-", r_batch.ttft_p50(), "-", "-", r_batch.rate_p50(), "-",
             "-", r_batch.aggregate(), "-"]]
    print(f"\ngeneration: {max_tokens} new tokens max, greedy; service via Serve (GenerateStream) vs raw "
          f"model.generate in-process (torch threads here: {threads}), interleaved; load average at start {load}")
    print(c.table(["mode", "svc TTFT ms", "raw TTFT ms", "TTFT x", "svc tok/s", "raw tok/s", "tok/s ratio",
                   "svc agg tok/s", "raw agg tok/s", "agg ratio"], rows))
    tokens = [s.tokens for s in s_seq.samples] + [s.tokens for s in r_seq.samples]
    print(f"completion tokens per request (service, then raw, sequential): {tokens}")

    figures = []
    for label, s, r in (("sequential", s_seq, r_seq), ("4 concurrent", s_conc, r_conc)):
        figures.append(c.Figure(BENCH, f"TTFT p50, {label}", f"{s.ttft_p50():.0f} ms",
                                f"{r.ttft_p50():.0f} ms raw generate", f"x{s.ttft_p50() / r.ttft_p50():.2f}"))
        figures.append(c.Figure(BENCH, f"tokens/s per request p50, {label}", f"{s.rate_p50():.1f}",
                                f"{r.rate_p50():.1f} raw generate", f"{s.rate_p50() / r.rate_p50():.2f}"))
        if label != "sequential":
            figures.append(c.Figure(BENCH, f"aggregate tokens/s, {label}", f"{s.aggregate():.1f}",
                                    f"{r.aggregate():.1f} raw generate in 4 threads; "
                                    f"{r_batch.aggregate():.1f} batched", f"{s.aggregate() / r.aggregate():.2f}"))
    if c.should_record(args):
        c.record(figures, args.docs, args.set)
    return 0


if __name__ == "__main__":
    sys.exit(main())
