"""Benchmark 1, embedding: texts/s through the service vs the same model in-process.

    .venv/bin/python benchmarks/bench_embedding.py [--quick] [--serve-address 127.0.0.1:9000]

C concurrent callers (1, 8, 32) each send Embed requests of one text (the
gateway's query-time pattern) to the embedding service through Serve's gRPC
proxy. The baseline is the same model, loaded by the same code
(ragrail.embedding.core.TextEmbedder), called in-process on batches of C
texts: what the machine can do when every caller's text is batched together.
Ratio = service texts/s / in-process texts/s at the same C. Goal: >= 0.8 at 32.
"""

from __future__ import annotations

import asyncio
import itertools
import sys
import time
from dataclasses import dataclass, field

import _common as c

BENCH = "1 embedding"


@dataclass
class Level:
    callers: int
    service_texts: int = 0
    service_s: float = 0.0
    local_texts: int = 0
    local_s: float = 0.0
    errors: int = 0
    latencies: list[float] = field(default_factory=list)

    @property
    def service_rate(self) -> float:
        return self.service_texts / self.service_s if self.service_s else float("nan")

    @property
    def local_rate(self) -> float:
        return self.local_texts / self.local_s if self.local_s else float("nan")


async def measure(serve: str, embedder, texts: list[str], callers: list[int], seconds: float,  # type: ignore[no-untyped-def]
                  rounds: int, per_call: int) -> list[Level]:
    """Per level: `rounds` alternating windows of service traffic and in-process batches.

    Alternating keeps both sides under the same background load (a shared
    2-core machine is noisy); each side gets `seconds` in total.
    """
    import grpc

    from ragrail.embedding.v1 import embedding_pb2, embedding_pb2_grpc

    metadata = (("application", "embedding"),)
    cycle = itertools.cycle(texts)
    window = seconds / rounds
    levels = []
    async with grpc.aio.insecure_channel(serve) as channel:
        stub = embedding_pb2_grpc.EmbeddingServiceStub(channel)

        async def service_window(level: Level | None, n: int, length: float) -> None:
            stop_at = time.perf_counter() + length

            async def caller() -> None:
                while time.perf_counter() < stop_at:
                    batch = [next(cycle) for _ in range(per_call)]
                    start = time.perf_counter()
                    try:
                        await stub.Embed(embedding_pb2.EmbedRequest(texts=batch), timeout=30, metadata=metadata)
                    except grpc.aio.AioRpcError:
                        if level:
                            level.errors += 1
                        continue
                    if level:
                        level.latencies.append(time.perf_counter() - start)
                        level.service_texts += len(batch)

            started = time.perf_counter()
            await asyncio.gather(*(caller() for _ in range(n)))
            if level:
                level.service_s += time.perf_counter() - started

        def local_window(level: Level, length: float) -> None:
            # Blocks the event loop on purpose: no service call is in flight now.
            batch = level.callers * per_call
            started = time.perf_counter()
            while time.perf_counter() - started < length:
                embedder.embed([next(cycle) for _ in range(batch)])
                level.local_texts += batch
            level.local_s += time.perf_counter() - started

        for n in callers:
            level = Level(n)
            await service_window(None, n, min(1.0, window))  # warm-up: connections, replica threads
            embedder.embed([next(cycle) for _ in range(n * per_call)])
            for r in range(rounds):
                if r % 2 == 0:
                    await service_window(level, n, window)
                    local_window(level, window)
                else:
                    local_window(level, window)
                    await service_window(level, n, window)
            levels.append(level)
    return levels


def load_embedder():  # type: ignore[no-untyped-def]
    from ragrail.common.config import load_settings
    from ragrail.embedding.core import build_embedder

    c.quiet_transformers()
    settings = load_settings(None)
    return build_embedder(settings.embedding, settings.models_path)


def probe(serve: str) -> None:
    import grpc

    from ragrail.embedding.v1 import embedding_pb2, embedding_pb2_grpc

    with grpc.insecure_channel(serve) as channel:
        embedding_pb2_grpc.EmbeddingServiceStub(channel).Embed(
            embedding_pb2.EmbedRequest(texts=["warm up"]), timeout=10, metadata=(("application", "embedding"),))


def main(argv: list[str] | None = None) -> int:
    p = c.base_parser(__doc__)
    c.add_stack_args(p)
    p.add_argument("--callers", default="1,8,32", help="concurrent callers, comma-separated")
    p.add_argument("--seconds", type=float, default=8.0, help="measured seconds per level")
    p.add_argument("--texts-per-call", type=int, default=1)
    p.add_argument("--rounds", type=int, default=4, help="alternating service / in-process windows per level")
    args = p.parse_args(argv)
    callers = [int(x) for x in args.callers.split(",")]
    seconds = 1.0 if args.quick else args.seconds
    rounds = 1 if args.quick else args.rounds
    texts = c.question_texts()

    import torch

    embedder = load_embedder()
    with c.stack_for(args) as stack:
        c.wait_serve_ready(stack.serve, "embedding", lambda: probe(stack.serve))
        load = c.load_average()
        levels = asyncio.run(measure(stack.serve, embedder, texts, callers, seconds, rounds, args.texts_per_call))

    rows, figures = [], []
    for lv in levels:
        n = lv.callers
        rate, local = lv.service_rate, lv.local_rate
        p50, p99 = c.percentile(lv.latencies, 50) * 1000, c.percentile(lv.latencies, 99) * 1000
        ratio = rate / local if local else float("nan")
        rows.append([n, rate, p50, p99, lv.errors, n * args.texts_per_call, local, ratio])
        figures.append(c.Figure(
            BENCH, f"texts/s, {n} callers x {args.texts_per_call} text",
            f"{rate:,.0f} (p50 {p50:.1f} ms, p99 {p99:.1f} ms)",
            f"{local:,.0f} in-process, batch {n * args.texts_per_call}",
            f"{ratio:.2f}", c.goal_text(">= 0.8", ratio >= 0.8) if n == 32 else "-",
        ))
    print(f"\nembedding: service through Serve's gRPC proxy vs in-process (torch threads here: "
          f"{torch.get_num_threads()}); {seconds:g} s per side per level in {rounds} alternating windows; "
          f"load average at start {load}")
    print(c.table(["callers", "service texts/s", "p50 ms", "p99 ms", "errors", "in-proc batch",
                   "in-proc texts/s", "ratio"], rows))
    print("goal: ratio >= 0.8 at 32 callers")
    if c.should_record(args):
        c.record(figures, args.docs, args.set)
    return 0


if __name__ == "__main__":
    sys.exit(main())
