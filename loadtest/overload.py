"""Overload is not failure: goodput at the saturating load and at a multiple of it (issue 11).

    .venv/bin/python loadtest/overload.py                         # a private stack; 1, 2, 4 callers, then 4x
    .venv/bin/python loadtest/overload.py --gateway 127.0.0.1:50051 --users 2,4 --factor 4 --window 90
    make overload

The saturating load is found, not assumed: each of ``--users`` is measured and the one with
the most goodput (the fewest callers on a tie) is the saturation point; the overload step
runs ``--factor`` times as many callers. Closed-loop callers (no think time) call ``GatewayService/Run`` on the ``rag``
pipeline with answerable questions, each with a deadline. A caller refused with
RESOURCE_EXHAUSTED waits the ``retry-after`` the gateway sent (as a well-behaved
client does) and tries again. Each step warms up, then measures a window:

- **goodput**: answered requests per second (status OK, generated or quoted, not a
  canned fallback) that finished inside the window;
- **admitted p50/p99**: latency of those answers;
- **refused**: RESOURCE_EXHAUSTED answers and overload fallbacks, with their p99
  latency (the target: refused within 100 ms, not after a wait);
- **degraded**: other canned answers a healthy stack would not give (stage
  timeouts, a backend reported unavailable), and non-OK statuses;
- **circuits**: any circuit seen open (or half-open) during the step (``Status``, polled).

The verdict compares the overloaded step with the saturating one measured in
the same run: goodput >= 0.8x, refusals fast, admitted p99 within the p99 SLO of
loadtest/slo.yaml for ``rag``, no circuit opened. Exit 1 when one fails.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc
import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from loadtest.chaos import REASONS, machine  # noqa: E402
from loadtest.chaos_stack import start_stack  # noqa: E402
from ragrail.gateway.v1 import gateway_pb2 as pb  # noqa: E402
from ragrail.gateway.v1 import gateway_pb2_grpc  # noqa: E402

DEGRADED = {"stage_timeout", "backend_unavailable"}
REFUSED_FALLBACK = "overload"
FAST_REFUSAL_MS = 100.0
GOODPUT_RATIO = 0.8


@dataclass
class Call:
    started: float
    ended: float = 0.0
    status: str = ""  # OK or a gRPC code name
    fallback: str = ""
    retry_after_s: float = 0.0

    @property
    def ms(self) -> float:
        return (self.ended - self.started) * 1000

    @property
    def answered(self) -> bool:
        return self.status == "OK" and not self.fallback

    @property
    def refused(self) -> bool:
        return self.status == "RESOURCE_EXHAUSTED" or self.fallback == REFUSED_FALLBACK


@dataclass
class Step:
    users: int
    window_s: float
    calls: int = 0
    answered: int = 0
    goodput: float = 0.0
    admitted_p50_ms: float = 0.0
    admitted_p99_ms: float = 0.0
    refused: int = 0
    refused_p99_ms: float = 0.0
    degraded: dict[str, int] = field(default_factory=dict)
    open_circuits: list[str] = field(default_factory=list)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def retry_after(error: grpc.aio.AioRpcError) -> float:
    for key, value in error.trailing_metadata() or ():
        if key == "retry-after":
            try:
                return float(value)
            except ValueError:
                break
    return 1.0


class ClosedLoop:
    """``users`` callers calling back to back; every call recorded."""

    def __init__(self, address: str, pipeline: str, users: int, deadline_s: float, questions: list[str]) -> None:
        self.address, self.pipeline, self.users = address, pipeline, users
        self.deadline_s, self.questions = deadline_s, questions
        self.calls: list[Call] = []
        self._stop = asyncio.Event()
        self._n = 0

    async def run(self, seconds: float) -> None:
        tasks = [asyncio.create_task(self._user()) for _ in range(self.users)]
        await asyncio.sleep(seconds)
        self._stop.set()
        await asyncio.gather(*tasks)

    def _question(self) -> str:
        self._n += 1
        return f"{random.choice(self.questions)} (load {self._n})"  # unique: no response cache

    async def _user(self) -> None:
        async with grpc.aio.insecure_channel(self.address) as channel:
            stub = gateway_pb2_grpc.GatewayServiceStub(channel)
            while not self._stop.is_set():
                call = Call(time.monotonic())
                self.calls.append(call)
                try:
                    response = await stub.Run(
                        pb.RunRequest(pipeline=self.pipeline, query=self._question()), timeout=self.deadline_s
                    )
                    call.status = "OK"
                    call.fallback = REASONS.get(response.fallback_reason, "") if response.fallback else ""
                except grpc.aio.AioRpcError as error:
                    call.status = error.code().name
                    if error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                        call.retry_after_s = retry_after(error)
                call.ended = time.monotonic()
                if call.retry_after_s:
                    await asyncio.sleep(call.retry_after_s * random.uniform(0.8, 1.2))
                elif call.status != "OK":
                    await asyncio.sleep(0.2)


async def watch_circuits(address: str, seen: set[str], stop: asyncio.Event) -> None:
    """Adds every circuit seen not closed to ``seen`` until ``stop``."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        while not stop.is_set():
            try:
                status = await stub.Status(pb.StatusRequest(), timeout=5)
                seen.update(c.service for c in status.circuits if c.state != "closed")
            except grpc.aio.AioRpcError:
                pass  # a busy gateway may refuse Status too; the next poll tries again
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)


def summarize(users: int, calls: list[Call], window: tuple[float, float], circuits: list[str]) -> Step:
    begin, end = window
    inside = [c for c in calls if c.ended and begin <= c.ended <= end]
    answered = [c.ms for c in inside if c.answered]
    refused = [c.ms for c in inside if c.refused]
    degraded: dict[str, int] = {}
    for c in inside:
        if c.fallback in DEGRADED or (c.status not in ("OK", "RESOURCE_EXHAUSTED")):
            key = c.fallback or c.status
            degraded[key] = degraded.get(key, 0) + 1
    return Step(
        users=users, window_s=end - begin, calls=len(inside), answered=len(answered),
        goodput=len(answered) / (end - begin), admitted_p50_ms=percentile(answered, 0.5),
        admitted_p99_ms=percentile(answered, 0.99), refused=len(refused), refused_p99_ms=percentile(refused, 0.99),
        degraded=degraded, open_circuits=circuits,
    )


async def measure(address: str, args: argparse.Namespace, users: int, questions: list[str]) -> Step:
    load = ClosedLoop(address, args.pipeline, users, args.deadline, questions)
    circuits: set[str] = set()
    stop = asyncio.Event()
    watcher = asyncio.create_task(watch_circuits(address, circuits, stop))
    began = time.monotonic()
    await load.run(args.warmup + args.window)
    stop.set()
    await watcher
    window = (began + args.warmup, began + args.warmup + args.window)
    step = summarize(users, load.calls, window, sorted(circuits))
    print(f"[overload] {users} callers: {step.goodput:.3f} answers/s, {step.refused} refused, "
          f"degraded {step.degraded or 0}, open circuits {step.open_circuits or 'none'}", flush=True)
    return step


def slo_p99_ms(pipeline: str) -> float:
    slo = yaml.safe_load((HERE / "slo.yaml").read_text())
    return float(slo["targets"].get(pipeline.split("@")[0], {}).get("p99_ms", 30000))


def saturation(steps: list[Step]) -> Step:
    """The step with the most goodput; the fewest callers among steps within 5 % of it."""
    best = max(s.goodput for s in steps)
    return min((s for s in steps if s.goodput >= 0.95 * best), key=lambda s: s.users)


def verdict(base: Step, over: Step, p99_slo_ms: float) -> list[str]:
    problems = []
    if base.goodput and over.goodput < GOODPUT_RATIO * base.goodput:
        problems.append(f"goodput {over.goodput:.3f}/s is {over.goodput / base.goodput:.2f}x the saturating "
                        f"{base.goodput:.3f}/s (target >= {GOODPUT_RATIO})")
    if over.refused and over.refused_p99_ms > FAST_REFUSAL_MS:
        problems.append(f"refusals took {over.refused_p99_ms:.0f} ms at p99 (target <= {FAST_REFUSAL_MS:g} ms)")
    if over.admitted_p99_ms > p99_slo_ms:
        problems.append(f"admitted p99 {over.admitted_p99_ms:.0f} ms over the SLO's {p99_slo_ms:.0f} ms")
    if over.open_circuits:
        problems.append(f"circuits opened under the overload: {', '.join(over.open_circuits)}")
    return problems


def table(steps: list[Step], base: Step | None = None) -> str:
    reference = (base or steps[0]).goodput or float("nan")
    lines = [
        "| callers | answered | goodput /s | vs saturation | admitted p50 / p99 ms | refused | refused p99 ms "
        "| degraded | circuits open |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in steps:
        degraded = ", ".join(f"{k} {v}" for k, v in sorted(s.degraded.items())) or "0"
        lines.append(
            f"| {s.users} | {s.answered} of {s.calls} | {s.goodput:.3f} | {s.goodput / reference:.2f}x | "
            f"{s.admitted_p50_ms:.0f} / {s.admitted_p99_ms:.0f} | {s.refused} | {s.refused_p99_ms:.0f} | "
            f"{degraded} | {', '.join(s.open_circuits) or 'none'} |"
        )
    return "\n".join(lines)


async def run_steps(address: str, args: argparse.Namespace, questions: list[str]) -> tuple[list[Step], Step, Step]:
    steps = [await measure(address, args, users, questions) for users in args.users]
    base = saturation(steps)
    print(f"[overload] saturation at {base.users} callers; now {base.users * args.factor}", flush=True)
    over = await measure(address, args, base.users * args.factor, questions)
    return [*steps, over], base, over


def fixed_admission(config: dict) -> None:  # type: ignore[type-arg]
    """Config mutation: the query class as it was before the latency-steered limit (fixed, queued)."""
    config["gateway"].setdefault("admission", {})["query"] = {"max_in_flight": 64, "max_queue": 64, "max_wait_s": 30}


async def compare(steered: str, fixed: str, args: argparse.Namespace, questions: list[str]) -> dict[str, list[Step]]:
    """The same steps against two gateways over one stack, alternating, so both see the same machine."""
    steps: dict[str, list[Step]] = {"latency-steered": [], "fixed (before)": []}
    for users in (args.users[0], args.users[0] * args.factor):
        for name, address in (("latency-steered", steered), ("fixed (before)", fixed)):
            print(f"[overload] {name} gateway:", flush=True)
            steps[name].append(await measure(address, args, users, questions))
    return steps


def run_compare(args: argparse.Namespace, questions: list[str]) -> int:
    from loadtest.chaos import Gateway

    root = Path(tempfile.mkdtemp(prefix="ragrail-overload-"))
    print(f"[overload] starting a private stack in {root}, and a second gateway with a fixed limit", flush=True)
    stack = start_stack(root)
    baseline = Gateway(stack, root)
    config = yaml.safe_load(baseline.config_path.read_text())
    fixed_admission(config)
    baseline.config_path.write_text(yaml.safe_dump(config))
    try:
        stack.wait_running(300)
        baseline.start()
        began = time.time()
        results = asyncio.run(compare(stack.gateway_address, baseline.address, args, questions))
    finally:
        baseline.stop()
        print(f"[overload] stack stopped (exit {stack.stop()})", flush=True)
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(began))
    print(f"\nOverload A/B {when} on {machine()}; one stack, two gateways measured in turn; pipeline "
          f"{args.pipeline}, {args.deadline:g} s deadlines, {args.window:g} s windows after {args.warmup:g} s warm-up.")
    problems: dict[str, list[str]] = {}
    for name, (base, over) in results.items():
        problems[name] = verdict(base, over, slo_p99_ms(args.pipeline))
        print(f"\n{name}:\n\n{table([base, over])}\n")
        for p in problems[name]:
            print(f"[overload] {name}: NOT MET: {p}", file=sys.stderr)
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(json.dumps(
        {"when": when, "steps": {k: [asdict(s) for s in v] for k, v in results.items()}, "problems": problems},
        indent=2,
    ))
    return 1 if problems["latency-steered"] else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gateway", help="an existing gateway (host:port); default: start a private stack")
    parser.add_argument("--pipeline", default="rag", help="pipeline reference to call")
    parser.add_argument("--users", default="1,2,4", help="caller counts to find the saturation point among")
    parser.add_argument("--factor", type=int, default=4, help="the overload step is users x factor")
    parser.add_argument("--deadline", type=float, default=60.0, help="each call's deadline, seconds")
    parser.add_argument("--warmup", type=float, default=20.0, help="load before each window, seconds")
    parser.add_argument("--window", type=float, default=90.0, help="measured seconds per step")
    parser.add_argument(
        "--fixed-admission", action="store_true",
        help="the private stack's gateway admits a fixed number of queries (no latency-steered limit): the "
        "baseline to compare with",
    )
    parser.add_argument(
        "--compare", action="store_true",
        help="A/B on one private stack: its gateway (latency-steered) and a second one with the fixed limit, "
        "measured in turn at --users (one count) and x --factor",
    )
    parser.add_argument("--report", type=Path, default=HERE / "reports" / "overload.json")
    args = parser.parse_args(argv)
    try:
        args.users = sorted({int(u) for u in args.users.split(",") if u.strip()})
    except ValueError:
        parser.error(f"--users takes caller counts, e.g. 1,2,4: {args.users!r}")
    if not args.users or args.users[0] < 1 or args.users[-1] * args.factor > 64 or args.factor < 2:
        parser.error("--users must be >= 1, their largest x --factor at most 64, --factor at least 2")
    questions = [
        line.strip()
        for line in (HERE / "queries" / "rag.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    if args.compare:
        if len(args.users) != 1 or args.gateway:
            parser.error("--compare takes one --users count and starts its own stack")
        return run_compare(args, questions)
    began = time.time()
    stack = None
    if not args.gateway:
        root = Path(tempfile.mkdtemp(prefix="ragrail-overload-"))
        print(f"[overload] starting a private stack in {root}", flush=True)
        stack = start_stack(root, mutate=fixed_admission if args.fixed_admission else None)
        stack.wait_running(300)
    address = args.gateway or stack.gateway_address  # type: ignore[union-attr]
    try:
        steps, base, over = asyncio.run(run_steps(address, args, questions))
    finally:
        if stack is not None:
            print(f"[overload] stack stopped (exit {stack.stop()})", flush=True)
    problems = verdict(base, over, slo_p99_ms(args.pipeline))
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(began))
    print(f"\nOverload run {when} on {machine()}; pipeline {args.pipeline}, {args.deadline:g} s deadlines, "
          f"{args.window:g} s windows after {args.warmup:g} s warm-up; saturation at {base.users} callers.\n\n"
          f"{table(steps, base)}\n")
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(json.dumps({"when": when, "saturation_users": base.users, "steps": [asdict(s) for s in steps],
                                       "problems": problems},
                                      indent=2))
    for p in problems:
        print(f"[overload] NOT MET: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
