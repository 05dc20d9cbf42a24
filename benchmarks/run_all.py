"""All benchmarks, in order, against one stack: `make bench`.

    .venv/bin/python benchmarks/run_all.py            # full: minutes; appends figures to docs/benchmarks.md
    .venv/bin/python benchmarks/run_all.py --quick    # seconds per benchmark: a smoke test, nothing recorded
    .venv/bin/python benchmarks/run_all.py --only 2,4 # the ones that need no stack
    .venv/bin/python benchmarks/run_all.py --address 127.0.0.1:50051 --serve-address 127.0.0.1:9000

1 embedding service vs in-process (needs the stack)
2 gateway overhead over stubs (no stack)
3 generation TTFT and tokens/s vs raw model.generate (needs the stack)
4 retrieval search latency and recall@10 vs exact numpy (no stack)
5 end-to-end rag with per-stage breakdown (needs the stack)

Each benchmark is its own script, run here as a subprocess; each prints its
table and (unless --quick or --no-record) appends its figures to the results
log. Without --address, one private stack (`ragrail up --config` on free
ports) is started for the benchmarks that need it and stopped at the end.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import _common as c

HERE = Path(__file__).resolve().parent
BENCHMARKS = {
    1: ("embedding", "bench_embedding.py", True),
    2: ("gateway overhead", "bench_gateway.py", False),
    3: ("generation", "bench_generation.py", True),
    4: ("retrieval", "bench_retrieval.py", False),
    5: ("end to end", "bench_e2e.py", True),
    6: ("ingest", "bench_ingest.py", True),
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="seconds per benchmark, nothing recorded (smoke)")
    p.add_argument("--only", help="comma-separated benchmark numbers, e.g. 2,4")
    p.add_argument("--no-record", action="store_true")
    p.add_argument("--docs", type=Path, default=c.DOCS)
    c.add_stack_args(p)
    args = p.parse_args(argv)
    chosen = sorted(int(x) for x in args.only.split(",")) if args.only else sorted(BENCHMARKS)
    unknown = [n for n in chosen if n not in BENCHMARKS]
    if unknown:
        print(f"run_all: no benchmark {unknown}; known: {sorted(BENCHMARKS)}", file=sys.stderr)
        return 2

    common = ["--docs", str(args.docs)] + (["--quick"] if args.quick else []) + (["--no-record"] if args.no_record else [])
    print(f"machine: {c.machine()}")
    needs_stack = any(BENCHMARKS[n][2] for n in chosen)
    results: dict[int, tuple[int, float]] = {}

    def run(stack: c.StackAddresses | None) -> None:
        for n in chosen:
            title, script, stacked = BENCHMARKS[n]
            cmd = [sys.executable, str(HERE / script), *common]
            if stacked and stack is not None:
                cmd += ["--address", stack.gateway, "--serve-address", stack.serve]
                cmd += [f"--set={item}" for item in args.set or ()]
            print(f"\n=== {n} {title} ===", flush=True)
            started = time.monotonic()
            code = subprocess.run(cmd).returncode
            results[n] = (code, time.monotonic() - started)

    if needs_stack:
        with c.stack_for(args) as stack:
            run(stack)
    else:
        run(None)

    print("\n=== summary ===")
    print(c.table(["#", "benchmark", "exit", "seconds"],
                  [[n, BENCHMARKS[n][0], code, secs] for n, (code, secs) in results.items()]))
    return 0 if all(code == 0 for code, _ in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
