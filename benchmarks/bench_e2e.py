"""Benchmark 5, end to end: `rag` latency p50/p99 with the per-stage breakdown from the gateway's timings.

    .venv/bin/python benchmarks/bench_e2e.py [--quick] [--address 127.0.0.1:50051] [--pipeline rag@1]

Calls GatewayService/Run sequentially (one caller, no think time) with the
load test's questions about the sample corpus, and splits each request's
latency as the client saw it into the stages the gateway reports in
``RunResponse.timings`` (moderate_input, embed, retrieve, generate,
moderate_output, ...) plus what is left: gRPC, auth, admission and the
pipeline engine, i.e. the gateway's own share. Cached answers are left out
(their timings are empty); fallbacks are counted and kept.
"""

from __future__ import annotations

import sys
import time
from collections import defaultdict

import _common as c

BENCH = "5 end to end"


def measure(address: str, pipeline: str, questions: list[str], requests: int):  # type: ignore[no-untyped-def]
    import grpc

    from ragrail.gateway.v1 import gateway_pb2 as pb
    from ragrail.gateway.v1 import gateway_pb2_grpc

    totals: list[float] = []
    outside: list[float] = []
    stages: dict[str, list[float]] = defaultdict(list)
    order: list[str] = []
    fallbacks: dict[str, int] = defaultdict(int)
    cached = 0
    with grpc.insecure_channel(address) as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        stub.Run(pb.RunRequest(pipeline=pipeline, query=questions[0]), timeout=120)  # warm-up
        for i in range(requests):
            query = questions[i % len(questions)]
            start = time.perf_counter()
            response = stub.Run(pb.RunRequest(pipeline=pipeline, query=query), timeout=120)
            total_ms = (time.perf_counter() - start) * 1000
            if response.cached:
                cached += 1
                continue
            if response.fallback:
                fallbacks[pb.FallbackReason.Name(response.fallback_reason)] += 1
            totals.append(total_ms)
            staged = 0.0
            for timing in response.timings:
                stages[timing.stage].append(timing.duration_ms)
                staged += timing.duration_ms
                if timing.stage not in order:
                    order.append(timing.stage)
            outside.append(total_ms - staged)
    return totals, outside, stages, order, dict(fallbacks), cached


def probe(address: str, pipeline: str) -> None:
    import grpc

    from ragrail.gateway.v1 import gateway_pb2 as pb
    from ragrail.gateway.v1 import gateway_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        gateway_pb2_grpc.GatewayServiceStub(channel).ListPipelines(pb.ListPipelinesRequest(), timeout=10)


def main(argv: list[str] | None = None) -> int:
    p = c.base_parser(__doc__)
    c.add_stack_args(p)
    p.add_argument("--pipeline", default="rag@1")
    p.add_argument("--requests", type=int, default=30)
    args = p.parse_args(argv)
    requests = 3 if args.quick else args.requests
    questions = c.on_topic_questions()

    with c.stack_for(args) as stack:
        c.wait_serve_ready(stack.gateway, "gateway", lambda: probe(stack.gateway, args.pipeline))
        totals, outside, stages, order, fallbacks, cached = measure(stack.gateway, args.pipeline, questions, requests)

    n = len(totals)
    rows = [[stage, len(stages[stage]), c.percentile(stages[stage], 50), c.percentile(stages[stage], 99)]
            for stage in order]
    rows.append(["outside the stages (gateway, gRPC)", n, c.percentile(outside, 50), c.percentile(outside, 99)])
    rows.append(["total, as the client saw it", n, c.percentile(totals, 50), c.percentile(totals, 99)])
    print(f"\nend to end: {args.pipeline}, {n} sequential requests (cached left out: {cached}), "
          f"fallbacks: {fallbacks or 'none'}")
    print(c.table(["stage", "n", "p50 ms", "p99 ms"], rows))

    figures = [c.Figure(BENCH, f"{args.pipeline} p50 / p99, {n} sequential requests",
                        f"{c.percentile(totals, 50):.0f} / {c.percentile(totals, 99):.0f} ms",
                        "sum of stages", f"+{c.percentile(outside, 50):.1f} / +{c.percentile(outside, 99):.1f} ms "
                        "outside the stages")]
    for stage in order:
        figures.append(c.Figure(BENCH, f"{args.pipeline} stage {stage} p50 / p99",
                                f"{c.percentile(stages[stage], 50):.1f} / {c.percentile(stages[stage], 99):.1f} ms",
                                "-", f"{c.percentile(stages[stage], 50) / c.percentile(totals, 50):.0%} of p50 total"))
    if fallbacks:
        figures.append(c.Figure(BENCH, f"{args.pipeline} fallbacks in the run", str(fallbacks)))
    if c.should_record(args):
        c.record(figures, args.docs, args.set)
    return 0


if __name__ == "__main__":
    sys.exit(main())
