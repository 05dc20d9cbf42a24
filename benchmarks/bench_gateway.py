"""Benchmark 2, gateway overhead: runs benchmarks/gateway_overhead.py and records its figures.

    .venv/bin/python benchmarks/bench_gateway.py [--quick] [--requests 2000]

gateway_overhead.py measures `Run` over instant stub stages vs calling the same
stubs directly, in one process (no stack needed). This wrapper passes its
output through, reads the figures back from it and appends them to the
results log. Goal: the gateway adds <= 1 ms at p50 and <= 5 ms at p99.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import _common as c

BENCH = "2 gateway overhead"
SCRIPT = Path(__file__).resolve().parent / "gateway_overhead.py"
NUM = r"(-?[\d.]+)"
PATTERNS = {
    "direct": re.compile(rf"stubs called directly\s+{NUM}\s+{NUM}"),
    "gateway": re.compile(rf"Run through the gateway \(gRPC\)\s+{NUM}\s+{NUM}"),
    "added": re.compile(rf"added by the gateway\s+{NUM}\s+{NUM}"),
    "hang": re.compile(rf"canned answer after {NUM} s"),
}


def parse(output: str) -> dict[str, tuple[float, ...]]:
    found = {}
    for key, pattern in PATTERNS.items():
        match = pattern.search(output)
        if match:
            found[key] = tuple(float(g) for g in match.groups())
    return found


def figures(found: dict[str, tuple[float, ...]], requests: int) -> list[c.Figure]:
    out = []
    if {"direct", "gateway", "added"} <= set(found):
        (d50, d99), (g50, g99), (a50, a99) = found["direct"], found["gateway"], found["added"]
        out.append(c.Figure(BENCH, f"Run p50 over stubs ({requests} calls)", f"{g50:.3f} ms",
                            f"{d50:.3f} ms stubs called directly", f"+{a50:.3f} ms",
                            c.goal_text("<= 1 ms added", a50 <= 1.0)))
        out.append(c.Figure(BENCH, f"Run p99 over stubs ({requests} calls)", f"{g99:.3f} ms",
                            f"{d99:.3f} ms stubs called directly", f"+{a99:.3f} ms",
                            c.goal_text("<= 5 ms added", a99 <= 5.0)))
    if "hang" in found:
        out.append(c.Figure(BENCH, "hung stage (timeout 0.5 s) to canned answer", f"{found['hang'][0]:.3f} s",
                            "0.500 s stage timeout", f"+{(found['hang'][0] - 0.5) * 1000:.0f} ms"))
    return out


def main(argv: list[str] | None = None) -> int:
    p = c.base_parser(__doc__)
    p.add_argument("--requests", type=int, default=2000)
    args = p.parse_args(argv)
    cmd = [sys.executable, str(SCRIPT), "--requests", str(args.requests)] + (["--quick"] if args.quick else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    sys.stdout.write(proc.stdout)
    sys.stderr.write(proc.stderr[-3000:] if proc.returncode else "")
    if proc.returncode:
        print(f"gateway_overhead.py exited with {proc.returncode}", file=sys.stderr)
        return proc.returncode
    found = parse(proc.stdout)
    if not {"direct", "gateway", "added"} <= set(found):
        print("could not read the figures from gateway_overhead.py's output", file=sys.stderr)
        return 1
    requests = 50 if args.quick else args.requests
    a50, a99 = found["added"]
    print(f"gateway overhead: +{a50:.3f} ms p50 (goal <= 1 ms: {'met' if a50 <= 1 else 'NOT met'}), "
          f"+{a99:.3f} ms p99 (goal <= 5 ms: {'met' if a99 <= 5 else 'NOT met'})")
    if c.should_record(args):
        c.record(figures(found, requests), args.docs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
