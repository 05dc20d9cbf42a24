"""Chaos suite (issue 11): a bounded load against a private local stack while faults are injected.

    .venv/bin/python loadtest/chaos.py                 # every fault: 19 minutes on a busy 2-core VM
    .venv/bin/python loadtest/chaos.py --faults generation-kill,client-disconnect --users 2

Starts `ragrail up` on free ports in a temp dir, plus a second gateway process
(`ragrail gateway`, the Kubernetes topology) that the load goes to, so "the gateway
restarted" restarts only a gateway. The load is a plain asyncio gRPC driver (no
locust: the faults and the measurements need to share one clock and one event loop):
``--users`` callers send RunStream requests (and every third one a unary Run), each
with a ``--deadline`` and a unique question (no cache hits). Faults run one after
another, each in a window of load:

  generation-kill    SIGKILL the generation replica while streams are mid-answer
  freeze             SIGSTOP the embedding replica for --freeze-s, then SIGCONT
  moderation-kill    SIGKILL the moderation replica while streams are mid-answer
  retrieval-kill     SIGKILL the retrieval replica: its embedded store is gone until Serve
                     restarts it (with a Qdrant server, stop the server instead)
  gateway-restart    SIGTERM the gateway (it drains), start a new one on the same port
  client-disconnect  callers cancel their streams after the first delta

Replica PIDs come from the Ray process titles of this stack's processes
(loadtest/chaos_stack.py); recovery is judged by answers, not by Serve's status.
Per fault it reports: requests hung (not finished 5 s past their deadline: must be 0),
the worst time past the caller's deadline (target <= 50 ms), answers by status and
fallback reason, unchecked characters released (moderation-kill only: stream text that
reached the caller while no moderation replica could have passed it, i.e. from 100 ms
after the kill until the new replica reports RUNNING; over-counts, never under), and
the time to recover (from the end of the fault to the first of three answered,
non-fallback requests in a row). Writes a markdown table (stdout and --report).
Exit status 1 when a fault broke a hard rule (a hung request, > 50 ms late, unchecked text).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import platform
import random
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from loadtest.chaos_stack import ChaosStack, GatewayProcess, start_stack  # noqa: E402
from ragrail.gateway.v1 import gateway_pb2 as pb  # noqa: E402
from ragrail.gateway.v1 import gateway_pb2_grpc  # noqa: E402

FAULTS = ["generation-kill", "freeze", "moderation-kill", "retrieval-kill", "gateway-restart", "client-disconnect"]
HUNG_GRACE_S = 5.0
LATE_LIMIT_MS = 50.0
RECOVERED_RUN = 3  # answered, non-fallback requests in a row
REASONS = {v.number: v.name.removeprefix("FALLBACK_REASON_").lower() for v in pb.FallbackReason.DESCRIPTOR.values}


@dataclass
class Call:
    kind: str  # stream | unary
    started: float
    deadline_s: float
    ended: float = 0.0
    status: str = ""  # OK or a gRPC code name, or HUNG
    fallback: str = ""  # the fallback reason when the answer was canned
    deltas: list[tuple[float, int]] = field(default_factory=list)  # (time, characters) of each delta
    cancelled_by_us: bool = False

    @property
    def late_ms(self) -> float:
        return max(0.0, (self.ended - (self.started + self.deadline_s)) * 1000)

    @property
    def good(self) -> bool:
        return self.status == "OK" and not self.fallback


@dataclass
class FaultWindow:
    name: str
    started: float = 0.0  # the fault is injected
    ended: float = 0.0  # the fault is over (resumed, killed, restarted)
    unchecked_from: float = 0.0
    unchecked_to: float = 0.0
    note: str = ""


class Load:
    """``users`` callers in a loop; every call is recorded."""

    def __init__(self, address: str, users: int, deadline_s: float, questions: list[str]) -> None:
        self.address = address
        self.users = users
        self.deadline_s = deadline_s
        self.questions = questions
        self.calls: list[Call] = []
        self.disconnect_after_delta = False
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._n = 0

    def start(self) -> None:
        self._stop.clear()
        self._tasks = [asyncio.create_task(self._user(i)) for i in range(self.users)]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    def question(self) -> str:
        self._n += 1
        # A unique suffix: the response cache must not answer for the stack.
        return f"{random.choice(self.questions)} (chaos {self._n})"

    async def _user(self, index: int) -> None:
        channel = grpc.aio.insecure_channel(self.address)
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        try:
            n = 0
            while not self._stop.is_set():
                n += 1
                kind = "unary" if n % 3 == 0 else "stream"
                call = Call(kind, time.monotonic(), self.deadline_s)
                self.calls.append(call)
                try:
                    await asyncio.wait_for(self._one(stub, call), self.deadline_s + HUNG_GRACE_S)
                except TimeoutError:
                    call.status = "HUNG"
                call.ended = call.ended or time.monotonic()
                if call.status not in ("OK", "HUNG"):
                    await asyncio.sleep(0.2)  # a failing caller backs off a little
        finally:
            await channel.close()

    async def _one(self, stub: gateway_pb2_grpc.GatewayServiceStub, call: Call) -> None:
        query = self.question()
        try:
            if call.kind == "unary":
                response = await stub.Run(pb.RunRequest(pipeline="rag", query=query), timeout=call.deadline_s)
                self._outcome(call, response)
                return
            stream = stub.RunStream(pb.RunStreamRequest(pipeline="rag", query=query), timeout=call.deadline_s)
            async for event in stream:
                if event.WhichOneof("event") == "delta":
                    call.deltas.append((time.monotonic(), len(event.delta)))
                    if self.disconnect_after_delta:
                        call.cancelled_by_us = True
                        stream.cancel()
                        call.status = "CANCELLED_BY_CLIENT"
                        call.ended = time.monotonic()
                        return
                else:
                    self._outcome(call, event.final)
            if not call.status:
                call.status = "NO_FINAL"  # a stream that ended without its final event
        except grpc.aio.AioRpcError as error:
            call.status = error.code().name
        except asyncio.CancelledError:
            if call.cancelled_by_us:
                return
            raise
        finally:
            call.ended = call.ended or time.monotonic()

    @staticmethod
    def _outcome(call: Call, response: pb.RunResponse) -> None:
        call.status = "OK"
        call.fallback = REASONS.get(response.fallback_reason, "") if response.fallback else ""
        call.ended = time.monotonic()


# -- faults -------------------------------------------------------------------------------


async def wait_for(predicate, timeout_s: float, poll_s: float = 0.05) -> float:  # type: ignore[no-untyped-def]
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout_s:
            raise TimeoutError
        await asyncio.sleep(poll_s)
    return time.monotonic() - started


def streams_mid_answer(load: Load) -> bool:
    return any(c.kind == "stream" and c.deltas and not c.ended for c in load.calls)


def seen(load: Load) -> str:
    """The outcomes so far, for a note."""
    counts = collections.Counter(f"{c.status}/{c.fallback}" if c.fallback else c.status or "running" for c in load.calls)
    return ", ".join(f"{k} {v}" for k, v in counts.most_common())


def one_pid(stack: ChaosStack, app: str) -> int:
    pids = stack.replica_pids(app)
    if len(pids) != 1:
        raise RuntimeError(f"expected one {app} replica, found {pids}")
    return pids[0]


async def kill_replica(stack: ChaosStack, app: str, load: Load, window: FaultWindow, mid_stream: bool) -> None:
    mid = ""
    if mid_stream:
        try:
            await wait_for(lambda: streams_mid_answer(load), 90)
            mid = ", a stream mid-answer"
        except TimeoutError:
            mid = f", NO stream was mid-answer within 90 s ({seen(load)})"
    pid = one_pid(stack, app)
    window.started = window.ended = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    window.note = f"{app} pid {pid} killed{mid}"
    # Until a new replica runs, nothing of this service can answer.
    await wait_for(lambda: stack.replica_pids(app) not in ([], [pid]), 180)
    await asyncio.to_thread(stack.wait_running, 180)
    if app == "moderation":
        window.unchecked_from = window.started + 0.1
        window.unchecked_to = time.monotonic()


async def freeze(stack: ChaosStack, app: str, seconds: float, window: FaultWindow) -> None:
    pid = one_pid(stack, app)
    window.started = time.monotonic()
    os.kill(pid, signal.SIGSTOP)
    try:
        await asyncio.sleep(seconds)
    finally:
        os.kill(pid, signal.SIGCONT)
    window.ended = time.monotonic()
    window.note = f"{app} pid {pid} stopped {seconds:g} s"


async def restart_gateway(gateway: GatewayProcess, window: FaultWindow) -> None:
    window.started = time.monotonic()
    await asyncio.to_thread(gateway.stop)
    stopped = time.monotonic()
    took = await asyncio.to_thread(gateway.start)
    window.ended = time.monotonic()
    window.note = f"drained in {stopped - window.started:.1f} s, serving again {took:.1f} s later"


async def disconnect_clients(load: Load, gateway: GatewayProcess, seconds: float, window: FaultWindow) -> None:
    window.started = time.monotonic()
    load.disconnect_after_delta = True
    await asyncio.sleep(seconds)
    load.disconnect_after_delta = False
    window.ended = time.monotonic()
    cancelled = sum(1 for c in load.calls if c.cancelled_by_us)
    # What the gateway still runs for callers that left must drain: the in-flight gauge
    # falls to what the remaining callers hold (at most one each).
    try:
        await wait_for(lambda: gateway.in_flight() <= load.users, 30, poll_s=0.5)
        window.note = f"{cancelled} streams cancelled after their first delta; in-flight drained"
    except TimeoutError:
        window.note = f"{cancelled} streams cancelled; in-flight gauge still {gateway.in_flight():g} after 30 s"


# -- the report ---------------------------------------------------------------------------


@dataclass
class Row:
    fault: str
    calls: int
    hung: int
    worst_late_ms: float
    statuses: dict[str, int]
    unchecked: int | None
    recover_s: float | None
    note: str


def summarize(window: FaultWindow, calls: list[Call]) -> Row:
    statuses: collections.Counter[str] = collections.Counter()
    for c in calls:
        statuses[f"{c.status}/{c.fallback}" if c.fallback else c.status] += 1
    unchecked = None
    if window.unchecked_to:
        unchecked = sum(
            n for c in calls for t, n in c.deltas if window.unchecked_from <= t <= window.unchecked_to
        )
    return Row(
        fault=window.name,
        calls=len(calls),
        hung=statuses.get("HUNG", 0),
        worst_late_ms=max((c.late_ms for c in calls if c.status != "CANCELLED_BY_CLIENT"), default=0.0),
        statuses=dict(statuses.most_common()),
        unchecked=unchecked,
        recover_s=recovery(window, calls),
        note=window.note,
    )


def recovery(window: FaultWindow, calls: list[Call]) -> float | None:
    """From the fault's end to the start of the first of RECOVERED_RUN good calls in a row
    (by start time; calls started before the end do not count)."""
    after = sorted((c for c in calls if c.started >= window.ended and c.status), key=lambda c: c.started)
    for i in range(len(after) - RECOVERED_RUN + 1):
        if all(c.good for c in after[i : i + RECOVERED_RUN]):
            return max(0.0, after[i].ended - window.ended)
    return None


def table(rows: list[Row]) -> str:
    lines = [
        "| fault | calls | hung | worst past deadline | answers by status / fallback | unchecked chars | recovered after | what happened |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        statuses = ", ".join(f"{k} {v}" for k, v in r.statuses.items())
        unchecked = "—" if r.unchecked is None else str(r.unchecked)
        recover = "not within the window" if r.recover_s is None else f"{r.recover_s:.1f} s"
        lines.append(
            f"| {r.fault} | {r.calls} | {r.hung} | {r.worst_late_ms:.0f} ms | {statuses} | {unchecked} | {recover} | {r.note} |"
        )
    return "\n".join(lines)


def broken(row: Row, late_limit_ms: float = LATE_LIMIT_MS) -> list[str]:
    problems = []
    if row.hung:
        problems.append(f"{row.fault}: {row.hung} hung")
    if row.worst_late_ms > late_limit_ms:
        problems.append(f"{row.fault}: {row.worst_late_ms:.0f} ms past a deadline")
    if row.unchecked:
        problems.append(f"{row.fault}: {row.unchecked} unchecked characters")
    return problems


# -- the run ------------------------------------------------------------------------------


async def run_faults(stack: ChaosStack, gateway: GatewayProcess, args: argparse.Namespace, questions: list[str]) -> list[Row]:
    load = Load(gateway.address, args.users, args.deadline, questions)
    rows: list[Row] = []
    for name in args.faults:
        print(f"[chaos] {name}: load for {args.warmup:g} s, then the fault", flush=True)
        window = FaultWindow(name)
        first = len(load.calls)
        load.start()
        await asyncio.sleep(args.warmup)
        if name == "generation-kill":
            await kill_replica(stack, "generation", load, window, mid_stream=True)
        elif name == "moderation-kill":
            await kill_replica(stack, "moderation", load, window, mid_stream=True)
        elif name == "retrieval-kill":
            await kill_replica(stack, "retrieval", load, window, mid_stream=False)
        elif name == "freeze":
            await freeze(stack, "embedding", args.freeze_s, window)
        elif name == "gateway-restart":
            await restart_gateway(gateway, window)
        elif name == "client-disconnect":
            await disconnect_clients(load, gateway, args.freeze_s, window)
        # Load goes on until it has recovered (or the window closes).
        settle_until = time.monotonic() + args.recover_window
        while time.monotonic() < settle_until and recovery(window, load.calls[first:]) is None:
            await asyncio.sleep(0.5)
        await load.stop()
        row = summarize(window, load.calls[first:])
        rows.append(row)
        print(table([row]).splitlines()[-1], flush=True)
    return rows


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    return f"{platform.node()}: {psutil.cpu_count()} cores ({cpu}), {psutil.virtual_memory().total / 2**30:.0f} GiB, Python {platform.python_version()}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--faults", default=",".join(FAULTS), help=f"comma-separated, from {FAULTS}")
    parser.add_argument("--users", type=int, default=3, help="concurrent callers (1..16)")
    parser.add_argument("--deadline", type=float, default=45.0, help="each call's deadline, seconds")
    parser.add_argument("--warmup", type=float, default=10.0, help="load before each fault, seconds")
    parser.add_argument("--freeze-s", type=float, default=10.0, help="how long a freeze/disconnect fault lasts")
    parser.add_argument("--recover-window", type=float, default=90.0, help="load after a fault, at most, seconds")
    parser.add_argument("--report", type=Path, default=HERE / "reports" / "chaos.md")
    parser.add_argument(
        "--late-limit-ms", type=float, default=LATE_LIMIT_MS,
        help="how far past its deadline a call may end (the caller's own gRPC library ends it; a loaded "
        "load generator notices late)",
    )
    args = parser.parse_args(argv)
    args.faults = [f.strip() for f in args.faults.split(",") if f.strip()]
    unknown = set(args.faults) - set(FAULTS)
    if unknown or not 1 <= args.users <= 16:
        parser.error(f"unknown faults {sorted(unknown)}" if unknown else "--users must be in 1..16")
    questions = [
        line.strip()
        for line in (HERE / "queries" / "rag.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    root = Path(tempfile.mkdtemp(prefix="ragrail-chaos-"))
    print(f"[chaos] starting a private stack in {root}", flush=True)
    began = time.time()
    stack = start_stack(root)
    gateway = GatewayProcess(stack.config, stack.env, root)
    try:
        stack.wait_running(300)
        gateway.start()
        rows = asyncio.run(run_faults(stack, gateway, args, questions))
    finally:
        gateway.stop()
        code = stack.stop()
        print(f"[chaos] stack stopped (exit {code}); logs in {root}", flush=True)
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(began))
    text = (
        f"Chaos run {when} on {machine()}; {args.users} callers, {args.deadline:g} s deadlines, "
        f"{time.time() - began:.0f} s in all.\n\n{table(rows)}\n"
    )
    print(text)
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(text)
    problems = [p for r in rows for p in broken(r, args.late_limit_ms)]
    for p in problems:
        print(f"[chaos] FAILED: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
