"""Benchmark 6, ingest: chunks/s through real gateways, sequential vs pipelined, vs the models alone.

    .venv/bin/python benchmarks/bench_ingest.py [--quick] [--serve-address 127.0.0.1:9000]
        [--documents 8] [--large 1] [--rounds 2] [--seed 0]

One run, one Serve (a private `ragrail up`, or --serve-address), and gateways of our own
(`ragrail gateway --config`, free ports), identical but for `gateway.ingest`:

- sequential: `pipelined: false`, the path before issue 14 (each document embedded whole,
  one Embed call at a time, then upserted), one file per Ingest call, one call at a time:
  what `ragrail ingest` did;
- pipelined: the defaults (embedding overlapped with upserts, 1 Embed call in flight,
  batches cut by bytes), same client: `ragrail ingest` now;
- pipelined, 2 calls in flight: `ragrail ingest --parallel 2`;
- pipelined, 8 documents per call with `documents_in_flight: 2`: an API client's bulk call.

Every mode ingests the same synthetic corpus (deterministic words in paragraphs under
headings: a long document past one upsert batch, short ones) under its own document ids,
into its gateway's collection, once per round; rounds alternate the order of the modes
(forward, then backward), so a drifting background load on this shared machine weighs on
all of them alike. A mode's figure is its chunks over its seconds in all rounds. Then the models alone on the same chunks (EmbeddingService
/Chunk as the gateway asks for them): Embed in calls of 32 (the gateway's batch) with 4
in flight, in every round among the modes, and Moderate in calls of 128, 1 in flight (the
gateway's), once. Ingest moderates and embeds every chunk on the same cores, so the
ceiling it can reach is about 1 / (1/embed + 1/moderate) chunks/s; the table shows ingest
against both.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import _common as c

BENCH = "6 ingest"
READY = re.compile(r"ragrail ready: gateway on (\S+):(\d+)")
GATEWAY_START_TIMEOUT_S = 120
CALL_TIMEOUT_S = 600
EMBED_BATCH = 32  # ragrail.gateway.ingestion.EMBED_BATCH
MODERATION_BATCH = 128  # ragrail.gateway.ingestion.MODERATION_BATCH
WORDS = (
    "rail ticket refund platform coastal line timetable carriage bicycle reservation wheelchair assistance "
    "station conductor freight junction signal depot sleeper express regional northwind harbour bridge tunnel "
    "viaduct gauge locomotive diesel electric overhead catenary ballast sleeper switch crossing fare zone "
    "season pass student senior family group luggage lost found delay compensation claim form weekday weekend "
    "holiday summer winter night morning evening maintenance works replacement bus route map kilometre minute"
).split()


@dataclass(frozen=True)
class Mode:
    name: str
    gateway: str  # which gateway (its gateway.ingest)
    per_call: int  # documents per Ingest call
    parallel: int  # calls in flight


@dataclass
class Result:
    mode: Mode
    seconds: float
    chunks: int
    failed: int

    @property
    def rate(self) -> float:
        return self.chunks / self.seconds if self.seconds else float("nan")


GATEWAYS = {
    "sequential": {"pipelined": False},
    "pipelined": {},
    "pipelined-docs2": {"documents_in_flight": 2},
}
MODES = [
    Mode("sequential (before): 1 file per call, 1 call", "sequential", 1, 1),
    Mode("pipelined: 1 file per call, 1 call", "pipelined", 1, 1),
    Mode("pipelined: 1 file per call, 2 calls (--parallel 2)", "pipelined", 1, 2),
    Mode("pipelined: 8 files per call, documents_in_flight 2", "pipelined-docs2", 8, 1),
]


def corpus(docs: int, large: int, seed: int, quick: bool) -> list[str]:
    """``large`` long documents (300k characters: past one 256-point upsert batch) among
    ``docs`` short ones (3k-40k characters)."""
    rng = random.Random(seed)

    def text(chars: int) -> str:
        out: list[str] = []
        size = 0
        section = 0
        while size < chars:
            if size == 0 or rng.random() < 0.15:
                section += 1
                heading = f"## Section {section}: {' '.join(rng.choices(WORDS, k=3))}"
                out.append(heading)
                size += len(heading)
            sentences = [
                " ".join(rng.choices(WORDS, k=rng.randint(6, 16))).capitalize() + "."
                for _ in range(rng.randint(2, 6))
            ]
            paragraph = " ".join(sentences)
            out.append(paragraph)
            size += len(paragraph) + 2
        return "\n\n".join(out)

    if quick:
        return [text(4_000), text(12_000)]
    sizes = [300_000] * large + [rng.randint(3_000, 40_000) for _ in range(docs - large)]
    rng.shuffle(sizes)
    return [text(n) for n in sizes]


# -- gateways of our own ------------------------------------------------------------------


@dataclass
class Gateway:
    name: str
    proc: subprocess.Popen[str]
    address: str
    collection: str
    log: Path


def start_gateway(name: str, ingest: dict[str, object], serve: str, tmp: Path) -> Gateway:
    import yaml
    from importlib import resources

    config = yaml.safe_load(resources.files("ragrail.config").joinpath("ragrail.yaml").read_text())
    collection = f"bench_ingest_{name.replace('-', '_')}"
    config["data_dir"] = str(tmp / name)
    config["gateway"].update(
        port=c.free_port(), metrics_port=0, serve_address=serve, collection=collection, ingest=ingest
    )
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    log_path = tmp / f"{name}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.pop("RAGRAIL_DATA_DIR", None)
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ragrail.cli.main", "gateway", "--config", str(path)],
            stdout=log, stderr=subprocess.STDOUT, env=env, text=True,
        )
    started = time.monotonic()
    while time.monotonic() - started < GATEWAY_START_TIMEOUT_S:
        ready = READY.search(log_path.read_text())
        if ready:
            return Gateway(name, proc, f"{ready.group(1)}:{ready.group(2)}", collection, log_path)
        if proc.poll() is not None:
            break
        time.sleep(0.3)
    stop_gateway(Gateway(name, proc, "", collection, log_path))
    raise RuntimeError(f"gateway {name} did not start:\n{log_path.read_text()[-3000:]}")


def stop_gateway(gateway: Gateway) -> None:
    if gateway.proc.poll() is None:
        gateway.proc.send_signal(signal.SIGINT)
        try:
            gateway.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            gateway.proc.kill()
            gateway.proc.wait()


# -- measuring -------------------------------------------------------------------------------


async def ingest(address: str, texts: list[str], prefix: str, per_call: int, parallel: int) -> tuple[float, int, int]:
    """Seconds, chunks stored and documents failed for all of ``texts``."""
    import grpc

    from ragrail.gateway.v1 import gateway_pb2 as pb
    from ragrail.gateway.v1 import gateway_pb2_grpc

    calls = [
        [pb.Document(document_id=f"{prefix}-{i}.md", text=t, source="bench") for i, t in enumerate(texts)][
            start : start + per_call
        ]
        for start in range(0, len(texts), per_call)
    ]
    stored = failed = 0
    slots = asyncio.Semaphore(parallel)
    options = [("grpc.max_send_message_length", 64 * 1024 * 1024)]
    async with grpc.aio.insecure_channel(address, options=options) as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)

        async def one(documents: list[pb.Document]) -> None:
            nonlocal stored, failed
            async with slots:
                try:
                    response = await stub.Ingest(pb.IngestRequest(documents=documents), timeout=CALL_TIMEOUT_S)
                except grpc.aio.AioRpcError as error:
                    print(f"  call failed: {error.code().name}: {error.details()}", flush=True)
                    failed += len(documents)
                    return
            for result in response.documents:
                if result.status == pb.DOCUMENT_STATUS_COMMITTED:
                    stored += result.chunks_stored
                else:
                    failed += 1
                    print(f"  {result.document_id} failed: {result.error_code}: {result.error}", flush=True)

        started = time.perf_counter()
        await asyncio.gather(*(one(documents) for documents in calls))
        return time.perf_counter() - started, stored, failed


async def warm_up(address: str, timeout_s: float = 120) -> None:
    """One small ingest, retried until the gateway and every service answer."""
    deadline = time.monotonic() + timeout_s
    while True:
        seconds, stored, failed = await ingest(address, ["Warm-up text about trains and tickets."], "warmup", 1, 1)
        if stored and not failed:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"gateway {address} could not ingest within {timeout_s:g} s")
        await asyncio.sleep(2)


async def chunks_of(serve: str, texts: list[str]) -> list[str]:
    """The chunks the gateway stores for ``texts`` (EmbeddingService/Chunk with its settings)."""
    import grpc

    from ragrail.common.config import load_settings
    from ragrail.gateway.clients import EmbeddingClient

    g = load_settings(None).gateway
    async with grpc.aio.insecure_channel(serve, options=[("grpc.max_send_message_length", 64 * 1024 * 1024)]) as ch:
        embedding = EmbeddingClient(ch)
        chunks: list[str] = []
        for text in texts:
            chunks += await embedding.chunk(text, g.chunk_tokens, g.chunk_overlap_tokens, 60)
    return chunks


async def embed_alone(serve: str, chunks: list[str], in_flight: int = 4) -> float:
    """Seconds to embed ``chunks`` in calls of 32 (the gateway's), ``in_flight`` at once."""
    import grpc

    from ragrail.gateway.clients import EmbeddingClient

    async with grpc.aio.insecure_channel(serve) as ch:
        embedding = EmbeddingClient(ch)
        slots = asyncio.Semaphore(in_flight)

        async def one(batch: list[str]) -> None:
            async with slots:
                await embedding.embed(batch, 120)

        started = time.perf_counter()
        await asyncio.gather(*(one(chunks[i : i + EMBED_BATCH]) for i in range(0, len(chunks), EMBED_BATCH)))
        return time.perf_counter() - started


async def moderate_alone(serve: str, chunks: list[str]) -> float:
    """Seconds to moderate ``chunks`` for toxicity in calls of 128 (the gateway's), one at a time."""
    import grpc

    from ragrail.gateway.clients import ModerationClient

    async with grpc.aio.insecure_channel(serve) as ch:
        moderation = ModerationClient(ch)
        await moderation.moderate(chunks[:8], ("toxicity",), 60)  # warm
        started = time.perf_counter()
        for i in range(0, len(chunks), MODERATION_BATCH):
            await moderation.moderate(chunks[i : i + MODERATION_BATCH], ("toxicity",), 120)
        return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    p = c.base_parser(__doc__)
    c.add_stack_args(p)
    p.add_argument("--documents", type=int, default=8, help="documents in the corpus (default 8)")
    p.add_argument("--large", type=int, default=1, help="of which 300k-character ones (default 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rounds", type=int, default=2, help="runs of every mode, alternating their order (default 2)")
    p.add_argument("--modes", default="1,2,3,4", help="which ingest modes, by number (default all: 1,2,3,4)")
    p.add_argument("--embed-in-flight", default="4", help="Embed alone with these many calls in flight (default 4)")
    args = p.parse_args(argv)
    texts = corpus(args.documents, args.large, args.seed, args.quick)
    modes = [MODES[int(n) - 1] for n in args.modes.split(",")] if not args.quick else [MODES[0], MODES[1]]
    alone = [
        Mode(f"Embed alone, same chunks: calls of 32, {n} in flight", "", 0, int(n)) for n in args.embed_in_flight.split(",")
    ]
    print(f"corpus: {len(texts)} documents, {sum(map(len, texts)):,} characters", flush=True)

    tmp = Path(tempfile.mkdtemp(prefix="ragrail-bench-ingest-"))
    results: list[Result] = []
    gateways: dict[str, Gateway] = {}
    try:
        with c.stack_for(args) as stack:
            for name in sorted({m.gateway for m in modes}):
                gateways[name] = start_gateway(name, GATEWAYS[name], stack.serve, tmp)
            for gateway in gateways.values():
                asyncio.run(warm_up(gateway.address))
            chunks = asyncio.run(chunks_of(stack.serve, texts))
            asyncio.run(embed_alone(stack.serve, chunks[:EMBED_BATCH]))  # warm
            # Embed alone runs in every round too, between the modes, under the same load.
            with_embed = [*modes, *alone]
            runs = [m for r in range(1 if args.quick else args.rounds) for m in (with_embed if r % 2 == 0 else with_embed[::-1])]
            for run, mode in enumerate(runs):
                print(f"{mode.name} ...", flush=True)
                if mode in alone:
                    seconds, stored, failed = asyncio.run(embed_alone(stack.serve, chunks, mode.parallel)), len(chunks), 0
                else:
                    seconds, stored, failed = asyncio.run(
                        ingest(gateways[mode.gateway].address, texts, f"r{run}", mode.per_call, mode.parallel)
                    )
                results.append(Result(mode, seconds, stored, failed))
                print(f"  {stored} chunks in {seconds:.1f} s: {stored / seconds:.1f} chunks/s, {failed} failed, "
                      f"load {c.load_average()}", flush=True)
            moderate = len(chunks) / asyncio.run(moderate_alone(stack.serve, chunks))
    finally:
        for gateway in gateways.values():
            stop_gateway(gateway)
        shutil.rmtree(tmp, ignore_errors=True)

    # The ceiling: the best of the Embed-alone shapes.
    embed = max(
        sum(r.chunks for r in results if r.mode == a) / sum(r.seconds for r in results if r.mode == a) for a in alone
    )
    ceiling = 1 / (1 / embed + 1 / moderate)
    totals = [
        Result(
            mode, sum(r.seconds for r in results if r.mode == mode), sum(r.chunks for r in results if r.mode == mode),
            sum(r.failed for r in results if r.mode == mode),
        )
        for mode in modes
    ]
    baseline = totals[0].rate
    rows = [
        [r.mode.name, r.chunks, r.seconds, r.rate,
         " / ".join(f"{x.rate:.1f}" for x in results if x.mode == r.mode),
         r.rate / baseline, r.rate / embed, r.rate / ceiling, r.failed]
        for r in totals
    ]
    print(f"\ningest through the gateway: {len(texts)} documents, {len(chunks)} chunks each run, "
          f"{len(runs) // len(with_embed)} round(s); "
          f"machine: {c.machine()}, load {c.load_average()}")
    print(c.table(
        ["mode", "chunks", "seconds", "chunks/s", "per round", "x sequential", "/ Embed alone", "/ models' ceiling",
         "failed"], rows
    ))
    print(c.table(
        ["models alone, same chunks", "texts/s", "per round"],
        [*[[a.name.split(": ", 1)[1], sum(r.chunks for r in results if r.mode == a)
            / sum(r.seconds for r in results if r.mode == a),
            " / ".join(f"{x.rate:.1f}" for x in results if x.mode == a)] for a in alone],
         ["Moderate (toxicity), calls of 128, 1 in flight", moderate, "-"],
         ["ceiling for ingest: 1 / (1/embed + 1/moderate)", ceiling, "-"]],
    ))

    figures = [
        c.Figure(BENCH, f"chunks/s, {r.mode.name}", f"{r.rate:.1f} ({r.chunks} chunks, {r.seconds:.1f} s)",
                 f"{baseline:.1f} sequential, same run", f"x{r.rate / baseline:.2f}; {r.rate / embed:.2f} of Embed alone",
                 "-" if r.mode.gateway == "sequential" else c.goal_text(">= 3x", r.rate >= 3 * baseline))
        for r in totals
    ]
    figures.append(c.Figure(BENCH, "Embed alone, same chunks (calls of 32, best of in-flight counts)", f"{embed:.1f} texts/s"))
    figures.append(c.Figure(BENCH, "Moderate alone, same chunks (calls of 128)", f"{moderate:.1f} texts/s"))
    if c.should_record(args):
        c.record(figures, args.docs, args.set)
    return 0 if all(r.failed == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
