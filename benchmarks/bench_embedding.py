"""Benchmark 1, embedding: texts/s through the service vs the same model in-process.

    .venv/bin/python benchmarks/bench_embedding.py [--quick] [--serve-address 127.0.0.1:9000]

Each shape CxT is C concurrent callers sending Embed requests of T texts to the
embedding service through Serve's gRPC proxy: T=1 is the gateway's query-time
pattern, T=16 an ingestion client's. The baseline is the same model, loaded by
the same code (ragrail.embedding.core.TextEmbedder), called in-process on all
C*T texts at once (chunked at embedding.max_batch_size like the service): what
the machine can do when every caller's texts are batched together.
Ratio = service texts/s / in-process texts/s for the same shape. Goal: >= 0.8 at
32 callers.

Single-text calls are bound by the per-call cost of the ingress, which shares the
CPU with the model here (see docs/benchmarks.md): ``--set serve.fast_path=false``
measures Serve's Python proxy instead of HAProxy (the default), and
``--set embedding.batch_wait_s=...`` trades idle latency for batch size.
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
    per_call: int
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


async def measure(serve: str, embedder, texts: list[str], shapes: list[tuple[int, int]],  # type: ignore[no-untyped-def]
                  seconds: float, rounds: int) -> list[Level]:
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

        async def service_window(level: Level | None, n: int, per_call: int, length: float) -> None:
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
            batch = level.callers * level.per_call
            started = time.perf_counter()
            while time.perf_counter() - started < length:
                embedder.encode([next(cycle) for _ in range(batch)])
                level.local_texts += batch
            level.local_s += time.perf_counter() - started

        for n, per_call in shapes:
            level = Level(n, per_call)
            await service_window(None, n, per_call, min(1.0, window))  # warm-up: connections, replica threads
            embedder.encode([next(cycle) for _ in range(n * per_call)])
            for r in range(rounds):
                if r % 2 == 0:
                    await service_window(level, n, per_call, window)
                    local_window(level, window)
                else:
                    local_window(level, window)
                    await service_window(level, n, per_call, window)
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
    p.add_argument("--shapes", default="1x1,8x1,32x1,32x16",
                   help="callers x texts per call, comma-separated (e.g. 32x1,32x16)")
    p.add_argument("--seconds", type=float, default=8.0, help="measured seconds per level")
    p.add_argument("--rounds", type=int, default=4, help="alternating service / in-process windows per level")
    args = p.parse_args(argv)
    shapes = [(int(c_), int(t)) for c_, t in (shape.split("x") for shape in args.shapes.split(","))]
    seconds = 1.0 if args.quick else args.seconds
    rounds = 1 if args.quick else args.rounds
    texts = c.question_texts()

    import torch

    embedder = load_embedder()
    with c.stack_for(args) as stack:
        c.wait_serve_ready(stack.serve, "embedding", lambda: probe(stack.serve))
        load = c.load_average()
        levels = asyncio.run(measure(stack.serve, embedder, texts, shapes, seconds, rounds))

    rows, figures = [], []
    for lv in levels:
        n, per_call = lv.callers, lv.per_call
        rate, local = lv.service_rate, lv.local_rate
        p50, p99 = c.percentile(lv.latencies, 50) * 1000, c.percentile(lv.latencies, 99) * 1000
        ratio = rate / local if local else float("nan")
        rows.append([f"{n}x{per_call}", rate, p50, p99, lv.errors, n * per_call, local, ratio])
        figures.append(c.Figure(
            BENCH, f"texts/s, {n} callers x {per_call} text{'s' if per_call > 1 else ''}",
            f"{rate:,.0f} (p50 {p50:.1f} ms, p99 {p99:.1f} ms)",
            f"{local:,.0f} in-process, batch {n * per_call}",
            f"{ratio:.2f}", c.goal_text(">= 0.8", ratio >= 0.8) if n == 32 else "-",
        ))
    print(f"\nembedding: service through Serve's gRPC proxy vs in-process (torch threads here: "
          f"{torch.get_num_threads()}); {seconds:g} s per side per level in {rounds} alternating windows; "
          f"load average at start {load}")
    print(c.table(["callers x texts", "service texts/s", "p50 ms", "p99 ms", "errors", "in-proc batch",
                   "in-proc texts/s", "ratio"], rows))
    print("goal: ratio >= 0.8 at 32 callers")
    if c.should_record(args):
        c.record(figures, args.docs, args.set)
    return 0


if __name__ == "__main__":
    sys.exit(main())
