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

import _common as c

BENCH = "1 embedding"


async def service_throughput(serve: str, texts: list[str], callers: int, seconds: float,
                             per_call: int) -> tuple[float, float, float, int]:
    """(texts/s, p50 ms, p99 ms, errors) of `callers` concurrent Embed loops for `seconds`."""
    import grpc

    from ragrail.embedding.v1 import embedding_pb2, embedding_pb2_grpc

    metadata = (("application", "embedding"),)
    async with grpc.aio.insecure_channel(serve) as channel:
        stub = embedding_pb2_grpc.EmbeddingServiceStub(channel)
        cycle = itertools.cycle(texts)
        latencies: list[float] = []
        done = 0
        errors = 0
        stop_at = 0.0

        async def caller() -> None:
            nonlocal done, errors
            while time.perf_counter() < stop_at:
                batch = [next(cycle) for _ in range(per_call)]
                start = time.perf_counter()
                try:
                    await stub.Embed(embedding_pb2.EmbedRequest(texts=batch), timeout=30, metadata=metadata)
                except grpc.aio.AioRpcError:
                    errors += 1
                    continue
                latencies.append(time.perf_counter() - start)
                done += len(batch)

        stop_at = time.perf_counter() + min(2.0, seconds)  # warm-up: connections, replica threads
        await asyncio.gather(*(caller() for _ in range(callers)))
        latencies.clear()
        done = errors = 0
        started = time.perf_counter()
        stop_at = started + seconds
        await asyncio.gather(*(caller() for _ in range(callers)))
        elapsed = time.perf_counter() - started
    return (done / elapsed, c.percentile(latencies, 50) * 1000, c.percentile(latencies, 99) * 1000, errors)


def in_process_throughput(embedder, texts: list[str], batch: int, seconds: float) -> float:  # type: ignore[no-untyped-def]
    cycle = itertools.cycle(texts)
    embedder.embed([next(cycle) for _ in range(batch)])  # warm-up
    done = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        embedder.embed([next(cycle) for _ in range(batch)])
        done += batch
    return done / (time.perf_counter() - started)


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
    args = p.parse_args(argv)
    callers = [int(x) for x in args.callers.split(",")]
    seconds = 1.0 if args.quick else args.seconds
    texts = c.question_texts()

    with c.stack_for(args) as stack:
        c.wait_serve_ready(stack.serve, "embedding", lambda: probe(stack.serve))
        service = {n: asyncio.run(service_throughput(stack.serve, texts, n, seconds, args.texts_per_call))
                   for n in callers}
        # The stack stays up but idle while the baseline runs, as in a real deployment.
        import torch

        embedder = load_embedder()
        local = {n: in_process_throughput(embedder, texts, n * args.texts_per_call, seconds) for n in callers}

    rows, figures = [], []
    for n in callers:
        rate, p50, p99, errors = service[n]
        ratio = rate / local[n] if local[n] else float("nan")
        rows.append([n, rate, p50, p99, errors, n * args.texts_per_call, local[n], ratio])
        goal = None if n != 32 else ratio >= 0.8
        figures.append(c.Figure(
            BENCH, f"texts/s, {n} callers x {args.texts_per_call} text",
            f"{rate:,.0f} (p50 {p50:.1f} ms, p99 {p99:.1f} ms)",
            f"{local[n]:,.0f} in-process, batch {n * args.texts_per_call}",
            f"{ratio:.2f}", c.goal_text(">= 0.8", goal) if n == 32 else "-",
        ))
    print(f"\nembedding: service through Serve's gRPC proxy vs in-process (torch threads here: "
          f"{torch.get_num_threads()}), {seconds:g} s per level")
    print(c.table(["callers", "service texts/s", "p50 ms", "p99 ms", "errors", "in-proc batch",
                   "in-proc texts/s", "ratio"], rows))
    print("goal: ratio >= 0.8 at 32 callers")
    if c.should_record(args):
        c.record(figures, args.docs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
