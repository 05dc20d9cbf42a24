"""Shared parts of the benchmarks: machine description, percentiles, tables,
the results log in docs/benchmarks.md, and a private stack for the ones that
need the real services.

Every benchmark compares against a baseline measured in the same run on the
same machine, so a figure means "what ragrail adds", not a number from another day.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.metadata
import math
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "benchmarks.md"
QUERIES = ROOT / "loadtest" / "queries"
LOG_HEADING = "## Results log"
LOG_HEADER = (
    "| date | benchmark | figure | value | baseline | ratio / added | goal | machine |\n"
    "|---|---|---|---|---|---|---|---|\n"
)
# Model weights come from packages or folders, never a hub (as in the replicas).
for _key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_key, "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

READY = re.compile(r"ragrail ready: gateway on (\S+):(\d+)")
STACK_START_TIMEOUT_S = 300


# -- figures, tables, the results log -------------------------------------------------


@dataclass(frozen=True)
class Figure:
    """One measured figure, as a row of the results log."""

    benchmark: str          # "1 embedding"
    figure: str             # "texts/s, 32 callers"
    value: str              # "812"
    baseline: str = "-"     # "1,020 (in-process, batch 32)"
    ratio: str = "-"        # "0.80" or "+0.41 ms"
    goal: str = "-"         # ">= 0.8 (met)" / "<= 1 ms (NOT met)"


def goal_text(goal: str, met: bool | None) -> str:
    if met is None:
        return goal
    return f"{goal} ({'met' if met else 'NOT met'})"


def percentile(samples: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); nan for no samples."""
    if not samples:
        return math.nan
    ordered = sorted(samples)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(h) for h in headers]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for n, row in enumerate(cells):
        lines.append("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cell(value: object) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def fmt(value: float, digits: int = 1) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:,.{digits}f}"


def machine() -> str:
    """nproc, RAM, CPU model, Python and torch versions (torch not imported)."""
    cpu = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    ram = "?"
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram = f"{int(line.split()[1]) / 1024 / 1024:.0f} GiB"
                break
    try:
        torch = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        torch = "none"
    nproc = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{nproc} CPU ({cpu}), {ram} RAM, Python {platform.python_version()}, torch {torch}"


def load_average() -> str:
    """The 1-minute load average: how busy the machine was (others' work included)."""
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except OSError:
        return "?"


def record(figures: Sequence[Figure], docs: Path = DOCS, sets: Sequence[str] | None = None) -> None:
    """Appends one dated row per figure to the results log (made if missing).

    ``sets``: config changes the stack ran with (``--set``), noted in each row."""
    if not figures:
        return
    docs.parent.mkdir(parents=True, exist_ok=True)
    text = docs.read_text() if docs.exists() else "# Benchmarks\n"
    if LOG_HEADING not in text:
        text = text.rstrip("\n") + f"\n\n{LOG_HEADING}\n\n" + LOG_HEADER
    elif not text.endswith("\n"):
        text += "\n"
    date = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    host = f"{machine()}, load {load_average()}"
    for f in figures:
        bench = f.benchmark + (f" [{', '.join(sets)}]" if sets else "")
        cells = [date, bench, f.figure, f.value, f.baseline, f.ratio, f.goal, host]
        text += "| " + " | ".join(c.replace("|", "/") for c in cells) + " |\n"
    docs.write_text(text)
    print(f"recorded {len(figures)} figure(s) in {docs.relative_to(ROOT) if docs.is_relative_to(ROOT) else docs}")


# -- arguments ------------------------------------------------------------------------


def base_parser(doc: str | None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=(doc or "").strip().splitlines()[0] if doc else None)
    p.add_argument("--quick", action="store_true", help="seconds, not minutes: checks the script runs (not recorded)")
    p.add_argument("--no-record", action="store_true", help=f"do not append to {DOCS.relative_to(ROOT)}")
    p.add_argument("--docs", type=Path, default=DOCS, help="results log to append to")
    return p


def add_stack_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", help="gateway of a running stack (host:port); default: start a private one")
    p.add_argument("--serve-address", help="Serve gRPC proxy of that stack (host:port, default: host:9000)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="change the private stack's config, e.g. generation.max_batch_size=1 (repeatable); "
                   "recorded with the figures")


def quiet_transformers() -> None:
    """No progress bars or length warnings in the benchmark tables."""
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def should_record(args: argparse.Namespace) -> bool:
    return not (args.quick or args.no_record)


def question_texts() -> list[str]:
    """The load test's questions: real questions about the sample corpus, then off-topic ones."""
    out: list[str] = []
    for name in ("rag.txt", "off_topic.txt"):
        path = QUERIES / name
        out += [x.strip() for x in path.read_text().splitlines() if x.strip() and not x.startswith("#")]
    return out


def on_topic_questions() -> list[str]:
    path = QUERIES / "rag.txt"
    return [x.strip() for x in path.read_text().splitlines() if x.strip() and not x.startswith("#")]


# -- a private stack --------------------------------------------------------------------


@dataclass(frozen=True)
class StackAddresses:
    gateway: str
    serve: str


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def parse_sets(items: Sequence[str] | None) -> dict[str, object]:
    """``["generation.max_batch_size=1"]`` -> {"generation.max_batch_size": 1} (values parsed as YAML)."""
    import yaml

    out: dict[str, object] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SystemExit(f"--set wants KEY=VALUE (dotted key), got {item!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out


def _write_config(tmp: Path, overrides: dict[str, object] | None = None) -> Path:
    import yaml

    config = yaml.safe_load(resources.files("ragrail.config").joinpath("ragrail.yaml").read_text())
    for dotted, value in (overrides or {}).items():
        node = config
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    grpc_port = free_port()
    config["data_dir"] = str(tmp / "data")
    config["models_dir"] = os.environ.get("RAGRAIL_MODELS_DIR") or os.path.expanduser("~/.local/share/ragrail/models")
    config["serve"].update(grpc_port=grpc_port, http_port=free_port())
    config["gateway"].update(port=free_port(), metrics_port=free_port(), serve_address=f"127.0.0.1:{grpc_port}")
    path = tmp / "ragrail.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@contextlib.contextmanager
def private_stack(overrides: dict[str, object] | None = None) -> Iterator[StackAddresses]:
    """`ragrail up --config` on free ports with a temp data dir; SIGINT (then kill) at the end.

    The same way tests/integration/conftest.py starts one: only the process
    started here is signalled, by its pid.
    """
    tmp = Path(tempfile.mkdtemp(prefix="ragrail-bench-stack-"))
    config_path = _write_config(tmp, overrides)
    log_path = tmp / "up.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.pop("RAGRAIL_DATA_DIR", None)
    started = time.monotonic()
    print(f"starting a private stack (log: {log_path}) ...", flush=True)
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ragrail.cli.main", "up", "--config", str(config_path)],
            stdout=log, stderr=subprocess.STDOUT, env=env, text=True,
        )
    try:
        ready = None
        while time.monotonic() - started < STACK_START_TIMEOUT_S:
            ready = READY.search(log_path.read_text())
            if ready or proc.poll() is not None:
                break
            time.sleep(0.5)
        if not ready:
            tail = log_path.read_text()[-3000:]
            raise RuntimeError(f"the private stack did not start (exit {proc.poll()}):\n{tail}")
        import yaml

        serve_address = yaml.safe_load(config_path.read_text())["gateway"]["serve_address"]
        print(f"private stack ready in {time.monotonic() - started:.1f} s: gateway {ready.group(1)}:{ready.group(2)}, "
              f"serve {serve_address}", flush=True)
        yield StackAddresses(f"{ready.group(1)}:{ready.group(2)}", serve_address)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def stack_for(args: argparse.Namespace) -> Iterator[StackAddresses]:
    """The stack named by --address/--serve-address, or a private one started for this run."""
    if args.address or args.serve_address:
        gateway = args.address or "127.0.0.1:50051"
        serve = args.serve_address or f"{gateway.rsplit(':', 1)[0]}:9000"
        yield StackAddresses(gateway, serve)
        return
    with private_stack(parse_sets(getattr(args, "set", None))) as stack:
        yield stack


def wait_serve_ready(serve_address: str, application: str, probe, timeout_s: float = 120) -> None:  # type: ignore[no-untyped-def]
    """Retries ``probe()`` until it succeeds: Serve may still be warming a replica."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            probe()
            return
        except Exception as exc:  # noqa: BLE001
            if time.monotonic() > deadline:
                raise RuntimeError(f"{application} on {serve_address} not answering: {exc}") from exc
            time.sleep(1)
