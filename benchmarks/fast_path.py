"""Serve's default gRPC proxy vs its fast path (HAProxy + throughput-optimized), same run.

    .venv/bin/python benchmarks/fast_path.py [--seconds 15] [--quick]

Starts two private stacks one after the other (`ragrail up`, free loopback
ports, temp data dir), identical but for `serve.fast_path`, and measures on each:
a unary Embed through Serve (p50, sequential), Embed throughput with 16 callers,
and `rag@1` through the gateway for a retrieval miss (moderate+embed+retrieve,
no generation) and for an answered question. Prints both and their ratios.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path

import grpc
import yaml

from ragrail.embedding.v1 import embedding_pb2, embedding_pb2_grpc
from ragrail.gateway.v1 import gateway_pb2 as pb
from ragrail.gateway.v1 import gateway_pb2_grpc

READY = re.compile(r"ragrail ready: gateway on (\S+):(\d+)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def private_stack(fast_path: bool) -> Iterator[tuple[str, str]]:
    """Yields (gateway address, serve address); SIGINT stops it, as Ctrl-C would."""
    tmp = Path(tempfile.mkdtemp(prefix="ragrail-bench-"))
    config = yaml.safe_load(resources.files("ragrail.config").joinpath("ragrail.yaml").read_text())
    grpc_port = free_port()
    config["data_dir"] = str(tmp / "data")
    config["models_dir"] = os.environ.get("RAGRAIL_MODELS_DIR", "~/.local/share/ragrail/models")
    config["serve"].update(grpc_port=grpc_port, http_port=free_port(), fast_path=fast_path)
    config["gateway"].update(port=free_port(), metrics_port=0, serve_address=f"127.0.0.1:{grpc_port}")
    (tmp / "ragrail.yaml").write_text(yaml.safe_dump(config))
    log = (tmp / "up.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "ragrail.cli.main", "up", "--config", str(tmp / "ragrail.yaml")],
        stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 300
        while not (ready := READY.search((tmp / "up.log").read_text())):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"stack did not start:\n{(tmp / 'up.log').read_text()[-2000:]}")
            time.sleep(0.5)
        yield f"{ready.group(1)}:{ready.group(2)}", f"127.0.0.1:{grpc_port}"
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=90)


def p50_ms(fn: Callable[[], object], seconds: float) -> float:
    samples = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return sorted(samples)[len(samples) // 2] * 1000


def throughput(fn: Callable[[], object], callers: int, seconds: float) -> float:
    end = time.monotonic() + seconds

    def loop() -> int:
        n = 0
        while time.monotonic() < end:
            fn()
            n += 1
        return n

    with concurrent.futures.ThreadPoolExecutor(callers) as pool:
        return sum(pool.map(lambda _: loop(), range(callers))) / seconds


def measure(fast_path: bool, seconds: float) -> dict[str, float]:
    with private_stack(fast_path) as (gateway_address, serve_address):
        serve = grpc.insecure_channel(serve_address)
        embed = embedding_pb2_grpc.EmbeddingServiceStub(serve).Embed
        request = embedding_pb2.EmbedRequest(texts=["How much is a bicycle reservation?"])

        def embed_call() -> object:
            return embed(request, metadata=(("application", "embedding"),), timeout=30)

        gateway = gateway_pb2_grpc.GatewayServiceStub(grpc.insecure_channel(gateway_address))
        miss = pb.RunRequest(pipeline="rag@1", query="What is the boiling point of tungsten?")
        answer = pb.RunRequest(pipeline="rag@1", query="Who founded Northwind Rail?")
        for _ in range(20):  # warm-up
            embed_call()
            gateway.Run(miss, timeout=30)
        return {
            "Embed p50 ms (sequential)": p50_ms(embed_call, seconds),
            "Embed calls/s (16 callers)": throughput(embed_call, 16, seconds),
            "rag@1 miss p50 ms": p50_ms(lambda: gateway.Run(miss, timeout=30), seconds),
            "rag@1 answered p50 ms": p50_ms(lambda: gateway.Run(answer, timeout=60), seconds),
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15.0, help="per measurement")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    seconds = 2.0 if args.quick else args.seconds
    default = measure(False, seconds)
    fast = measure(True, seconds)
    print(f"{'measure':<30}{'default':>12}{'fast path':>12}{'fast/default':>14}")
    for key in default:
        print(f"{key:<30}{default[key]:>12.2f}{fast[key]:>12.2f}{fast[key] / default[key]:>14.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
