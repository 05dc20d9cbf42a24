"""Gateway overhead: `Run` over instant stub stages vs calling the same stubs directly.

    .venv/bin/python benchmarks/gateway_overhead.py [--requests 2000] [--quick]

Both sides run in one process on this machine, in the same run, so the printed
difference is what the gateway adds (gRPC, auth, admission, pipeline engine,
metrics), not a number from another day. Also measures the time from a hung
stage to the caller's canned answer (the stage timeout doing its job).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc
import yaml

from ragrail.common.config import load_settings
from ragrail.gateway.backends import (
    Backends,
    ChatTurn,
    Generated,
    GenerationParams,
    ModerationOutcome,
    Passage,
    StoredChunk,
    TokenUsage,
)
from ragrail.gateway.server import start_gateway
from ragrail.gateway.v1 import gateway_pb2 as pb
from ragrail.gateway.v1 import gateway_pb2_grpc


class Stubs:
    """Instant backends; ``hang`` makes generation never answer."""

    def __init__(self, hang: bool = False) -> None:
        self.hang = hang

    async def moderate(self, texts: Sequence[str], categories: Sequence[str], timeout: float) -> list[ModerationOutcome]:
        return [ModerationOutcome(False) for _ in texts]

    async def embed(self, texts: Sequence[str], timeout: float) -> list[list[float]]:
        return [[1.0, 0.0, 0.0] for _ in texts]

    async def ensure_collection(self, collection: str, dimension: int, timeout: float) -> bool:
        return False

    async def count(self, collection: str, timeout: float) -> int:
        return 1

    async def chunk(self, text: str, max_tokens: int, overlap_tokens: int, timeout: float) -> list[str]:
        return [text]

    async def search(
        self, collection: str, vector: Sequence[float], top_k: int, threshold: float, timeout: float,
        filters: Mapping[str, Any] | None = None, query_text: str | None = None,
    ) -> list[Passage]:
        # The answer's words are in the passage, so a ground stage (rag@3) releases it.
        return [Passage("doc.md", "Stub passage. Stub answer.", 0.9)]

    async def upsert(self, collection: str, chunks: Sequence[StoredChunk], timeout: float) -> int:
        return len(chunks)

    async def delete_stale_chunks(self, collection: str, document_id: str, keep_below: int, timeout: float) -> None:
        return None

    async def commit_document(
        self, collection: str, document_id: str, version: str, expected_points: int, timeout: float
    ) -> int:
        return 0

    async def discard_document_version(self, collection: str, document_id: str, version: str, timeout: float) -> None:
        return None

    async def generate(self, messages: Sequence[ChatTurn], params: GenerationParams, timeout: float) -> Generated:
        if self.hang:
            await asyncio.Event().wait()
        return Generated("Stub answer.", TokenUsage(10, 2))

    async def generate_stream(
        self, messages: Sequence[ChatTurn], params: GenerationParams, timeout: float
    ) -> AsyncIterator[str | TokenUsage]:
        yield "Stub answer."
        yield TokenUsage(10, 2)


def stub_backends(stubs: Stubs) -> Backends:
    return Backends(moderation=stubs, embedding=stubs, retrieval=stubs, generation=stubs)  # type: ignore[arg-type]


async def direct_call(stubs: Stubs) -> None:
    """What a pipeline does without the gateway: the same five stub calls in sequence."""
    await stubs.moderate(["q"], ["toxicity"], 1)
    [vector] = await stubs.embed(["q"], 1)
    await stubs.search("documents", vector, 4, 0.35, 1)
    await stubs.generate([ChatTurn("user", "q")], GenerationParams(64), 1)
    await stubs.moderate(["a"], ["toxicity"], 1)


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return ordered[len(ordered) // 2] * 1000, ordered[int(len(ordered) * 0.99) - 1] * 1000


async def measure(requests: int, pipelines_dir: Path) -> None:
    data_dir = tempfile.mkdtemp(prefix="ragrail-bench-")
    settings = load_settings(
        None,
        data_dir=data_dir,
        gateway={"port": 0, "metrics_port": 0, "pipelines_dir": str(pipelines_dir)},
    )
    stubs = Stubs()
    gateway = await start_gateway(settings, backends_for=lambda spec: stub_backends(stubs))
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}")
    stub = gateway_pb2_grpc.GatewayServiceStub(channel)
    request = pb.RunRequest(pipeline="bench@1", query="How fast is the gateway?")
    for _ in range(100):  # warm-up
        await stub.Run(request, timeout=5)
        await direct_call(stubs)
    through, direct = [], []
    for _ in range(requests):
        start = time.perf_counter()
        await direct_call(stubs)
        direct.append(time.perf_counter() - start)
        start = time.perf_counter()
        await stub.Run(request, timeout=5)
        through.append(time.perf_counter() - start)
    g50, g99 = percentiles(through)
    d50, d99 = percentiles(direct)
    print(f"{'path':<34}{'p50 ms':>10}{'p99 ms':>10}")
    print(f"{'stubs called directly':<34}{d50:>10.3f}{d99:>10.3f}")
    print(f"{'Run through the gateway (gRPC)':<34}{g50:>10.3f}{g99:>10.3f}")
    print(f"{'added by the gateway':<34}{g50 - d50:>10.3f}{g99 - d99:>10.3f}   (goal: <= 1 ms p50, <= 5 ms p99)")

    stubs.hang = True
    hang = pb.RunRequest(pipeline="bench_hang@1", query="Will this hang?")
    waits = []
    for _ in range(5):
        start = time.perf_counter()
        response = await stub.Run(hang, timeout=10)
        waits.append(time.perf_counter() - start)
        assert response.fallback_reason == pb.FALLBACK_REASON_STAGE_TIMEOUT, response
    print(f"hung generate stage, timeout 0.500 s: canned answer after {statistics.median(waits):.3f} s (median of 5)")
    await channel.close()
    await gateway.stop(0)
    shutil.rmtree(data_dir, ignore_errors=True)


def write_specs(folder: Path) -> None:
    base = {"kind": "rag", "version": 1, "cache": {"ttl_s": 0}, "admission": {"max_in_flight": 64, "max_queue": 64}}
    (folder / "bench@1.yaml").write_text(yaml.safe_dump({**base, "name": "bench"}))
    (folder / "bench_hang@1.yaml").write_text(
        yaml.safe_dump({**base, "name": "bench_hang", "generation": {"timeout_s": 0.5}})
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--quick", action="store_true", help="a few requests: checks the script runs")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        write_specs(Path(tmp))
        asyncio.run(measure(50 if args.quick else args.requests, Path(tmp)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
