"""Headless load test with SLO gates, or a step-load search for the saturation point.

    .venv/bin/python loadtest/run.py                                   # 2 users, 60 s, against 127.0.0.1:50051
    .venv/bin/python loadtest/run.py --users 8 --run-time 2m --host 10.0.0.5:50051 --api-key rg_...
    .venv/bin/python loadtest/run.py --step 1,2,4,8 --step-time 30s    # saturation point

Runs locust (loadtest/locustfile.py) headless as a subprocess for a bounded
time, writes its CSV and HTML reports into loadtest/reports/<timestamp>/,
evaluates the gates of loadtest/slo.yaml from the CSV stats, prints a table and
exits 1 when a gate fails (0 when all hold, 2 when the run itself could not be
made: gateway unreachable, locust crashed, bad arguments).

``--step`` runs one locust process per step (N users, all spawned at once, for
``--step-time``), checks the p99 and error gates on each, and prints the
highest throughput at which they held: the saturation point. It stops at the
first step that fails unless ``--keep-going``. Think time defaults to 0 there,
so the users press as hard as they can.

Bounded on purpose: at most 64 users, 30 minutes per run (and for all steps
together), traffic only to --host and --serve-host.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from ragrail_load import slo as slo_mod  # noqa: E402

LOCUSTFILE = HERE / "locustfile.py"
MAX_USERS = 64
MAX_RUN_TIME_S = 30 * 60
STEP_GATES = ("p99_ms", "max_error_ratio")
_TIME = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s?)?$")


def parse_duration(text: str) -> int:
    """Locust's run-time syntax: 90, 90s, 2m, 1m30s, 1h."""
    match = _TIME.match(text.strip())
    if not match or not any(match.groups()):
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 60s, 2m, 1m30s)")
    h, m, s = (int(g) if g else 0 for g in match.groups())
    return h * 3600 + m * 60 + s


def parse_steps(text: str) -> list[int]:
    try:
        steps = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"steps are user counts, e.g. 1,2,4,8: {text!r}") from None
    if not steps or any(n < 1 for n in steps) or steps != sorted(steps):
        raise argparse.ArgumentTypeError("steps must be increasing positive user counts, e.g. 1,2,4,8")
    return steps


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog="Extra locust options go after --.")
    p.add_argument("--host", default=os.environ.get("RAGRAIL_ADDRESS", "127.0.0.1:50051"), help="gateway host:port")
    p.add_argument("--serve-host", help="Serve's gRPC proxy, for the direct service users (default 127.0.0.1:9000)")
    p.add_argument("--users", type=int, default=2, help="default 2: what the 2-core reference machine holds")
    p.add_argument("--spawn-rate", type=float, default=1.0, help="users started per second")
    p.add_argument("--run-time", type=parse_duration, default=60, help="e.g. 60s, 2m (default 60s)")
    p.add_argument("--slo", type=Path, default=HERE / "slo.yaml")
    p.add_argument("--reports", type=Path, default=HERE / "reports", help="a timestamped folder is made inside")
    p.add_argument("--weights", help='user weights, e.g. "rag=2,rag@1=1,embedding=1" (RAGRAIL_LT_WEIGHTS)')
    p.add_argument("--pipeline", help="also load this pipeline reference (PipelineUser), e.g. rag@3")
    p.add_argument("--api-key", default=os.environ.get("RAGRAIL_API_KEY", ""))
    p.add_argument("--ca-file", type=Path, help="TLS to the gateway, trusting this CA")
    p.add_argument("--tls-server-name", help="name in the gateway's certificate, if not the host")
    p.add_argument("--queries-dir", type=Path)
    p.add_argument("--off-topic-ratio", type=float)
    p.add_argument("--think-min", type=float)
    p.add_argument("--think-max", type=float)
    p.add_argument("--call-timeout", type=float, help="deadline of each call, seconds (default 60)")
    p.add_argument("--refusal-retries", type=int,
                   help="retries of a call refused with retry-after, as ragrail-client does (default 2; 0: none)")
    p.add_argument("--step", type=parse_steps, help="step-load profile: user counts, e.g. 1,2,4,8")
    p.add_argument("--step-time", type=parse_duration, default=30, help="duration of each step (default 30s)")
    p.add_argument("--keep-going", action="store_true", help="run every step even after one fails")
    p.add_argument("--no-preflight", action="store_true", help="skip the reachability check of --host")
    p.add_argument("--evaluate", type=Path, metavar="STATS_CSV",
                   help="run nothing: check the gates on an existing <prefix>_stats.csv")
    p.add_argument("-v", "--verbose", action="store_true", help="show locust's output as it runs")
    return p


def check_bounds(args: argparse.Namespace) -> str | None:
    if args.step:
        if max(args.step) > MAX_USERS:
            return f"at most {MAX_USERS} users per step"
        if len(args.step) * args.step_time > MAX_RUN_TIME_S:
            return f"all steps together must fit in {MAX_RUN_TIME_S // 60} minutes"
        if args.step_time < 5:
            return "--step-time must be at least 5s"
    else:
        if not 1 <= args.users <= MAX_USERS:
            return f"--users must be in 1..{MAX_USERS}"
        if not 1 <= args.run_time <= MAX_RUN_TIME_S:
            return f"--run-time must be between 1s and {MAX_RUN_TIME_S // 60}m"
    if args.spawn_rate <= 0:
        return "--spawn-rate must be > 0"
    return None


def preflight(args: argparse.Namespace, timeout_s: float = 5.0) -> str | None:
    """The gateway's gRPC port answers (a channel gets ready), or a one-line reason."""
    import grpc

    address = args.host.split("://")[-1]
    if args.ca_file:
        options = [("grpc.ssl_target_name_override", args.tls_server_name)] if args.tls_server_name else []
        creds = grpc.ssl_channel_credentials(root_certificates=args.ca_file.read_bytes())
        channel = grpc.secure_channel(address, creds, options=options)
    else:
        channel = grpc.insecure_channel(address)
    try:
        grpc.channel_ready_future(channel).result(timeout=timeout_s)
        return None
    except grpc.FutureTimeoutError:
        return f"gateway {address} is not reachable within {timeout_s:.0f} s (is `make up` running?)"
    finally:
        channel.close()


def locust_env(args: argparse.Namespace) -> dict[str, str]:
    env = dict(os.environ)
    if args.weights is not None:
        env["RAGRAIL_LT_WEIGHTS"] = args.weights
    if args.pipeline:
        env["RAGRAIL_LT_PIPELINE"] = args.pipeline
    return env


def locust_command(args: argparse.Namespace, users: int, spawn_rate: float, seconds: int,
                   prefix: Path, extra: list[str], think: tuple[float | None, float | None]) -> list[str]:
    cmd = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
        "--users", str(users), "--spawn-rate", f"{spawn_rate:g}", "--run-time", f"{seconds}s",
        "--host", args.host, "--csv", str(prefix), "--html", f"{prefix}.html",
        "--stop-timeout", "15", "--exit-code-on-error", "0",
    ]
    if not args.verbose:
        cmd.append("--only-summary")
    options = {
        "--serve-host": args.serve_host, "--api-key": args.api_key, "--ca-file": args.ca_file,
        "--tls-server-name": args.tls_server_name, "--pipeline": args.pipeline,
        "--queries-dir": args.queries_dir, "--off-topic-ratio": args.off_topic_ratio,
        "--think-min": think[0], "--think-max": think[1], "--call-timeout": args.call_timeout,
        "--refusal-retries": args.refusal_retries,
    }
    for flag, value in options.items():
        if value not in (None, ""):
            cmd += [flag, str(value)]
    return cmd + extra


def run_locust(cmd: list[str], env: dict[str, str], log_path: Path, verbose: bool, limit_s: int) -> int:
    with log_path.open("w") as log:
        if verbose:
            proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            assert proc.stdout is not None
            for line in proc.stdout:
                sys.stdout.write(line)
                log.write(line)
        else:
            proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
        try:
            return proc.wait(timeout=limit_s)
        except subprocess.TimeoutExpired:
            proc.kill()  # our own child, by handle
            proc.wait()
            return -9


def one_run(args: argparse.Namespace, folder: Path, name: str, users: int, spawn_rate: float, seconds: int,
            extra: list[str], think: tuple[float | None, float | None]) -> slo_mod.Stats | None:
    prefix = folder / name
    cmd = locust_command(args, users, spawn_rate, seconds, prefix, extra, think)
    log_path = folder / f"{name}.log"
    code = run_locust(cmd, locust_env(args), log_path, args.verbose, limit_s=seconds + 120)
    stats_path = Path(f"{prefix}_stats.csv")
    if not stats_path.exists():
        tail = log_path.read_text()[-3000:] if log_path.exists() else ""
        print(f"locust exited with {code} and wrote no stats; log {log_path}:\n{tail}", file=sys.stderr)
        return None
    return slo_mod.read_stats(stats_path)


def step_table(results: list[tuple[int, slo_mod.Stats, slo_mod.Report]]) -> str:
    lines = [f"{'users':>6}{'rps':>9}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'errors':>8}  p99+error gates"]
    for users, stats, report in results:
        agg = stats.aggregated
        def pct(column: str) -> str:
            value = agg.percentile(column) if agg else math.nan
            return "-" if math.isnan(value) else f"{value:.0f}"
        rps = agg.rps if agg else math.nan
        errors = agg.failures / agg.requests if agg and agg.requests else math.nan
        verdict = "hold" if report.passed else "FAIL: " + ", ".join(
            f"{c.target} {c.gate}" for c in report.failures)
        lines.append(f"{users:>6}{rps:>9.2f}{pct('50%'):>9}{pct('95%'):>9}{pct('99%'):>9}{errors:>8.3f}  {verdict}")
    return "\n".join(lines)


def gate(stats: slo_mod.Stats, slo: slo_mod.Slo) -> int:
    """Prints what was sent and the gates; 0 when all hold, 1 otherwise."""
    print(slo_mod.summary_table(stats))
    print()
    report = slo_mod.evaluate(stats, slo)
    print(report.table())
    if report.passed:
        print("SLO gates: all hold")
        return 0
    failed = ", ".join(f"{c.target} {c.gate}" for c in report.failures)
    print(f"SLO gates: {len(report.failures)} failed: {failed}", file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        at = argv.index("--")
        argv, extra = argv[:at], argv[at + 1:]
    args = parser().parse_args(argv)
    problem = check_bounds(args)
    if problem:
        print(f"run.py: {problem}", file=sys.stderr)
        return 2
    slo = slo_mod.Slo.load(args.slo)
    if args.evaluate:
        return gate(slo_mod.read_stats(args.evaluate), slo)
    if not args.no_preflight:
        problem = preflight(args)
        if problem:
            print(f"run.py: {problem}", file=sys.stderr)
            return 2
    folder = args.reports / time.strftime("%Y%m%d-%H%M%S")
    folder.mkdir(parents=True, exist_ok=True)

    if not args.step:
        think = (args.think_min, args.think_max)
        print(f"load test: {args.users} users (spawn {args.spawn_rate:g}/s) for {args.run_time} s against {args.host}")
        stats = one_run(args, folder, "run", args.users, args.spawn_rate, args.run_time, extra, think)
        if stats is None:
            return 2
        print(f"reports: {folder}/run_stats.csv, {folder}/run.html\n")
        return gate(stats, slo)

    think = (args.think_min if args.think_min is not None else 0.0,
             args.think_max if args.think_max is not None else 0.0)
    print(f"step load: {args.step} users, {args.step_time} s each, against {args.host}")
    results: list[tuple[int, slo_mod.Stats, slo_mod.Report]] = []
    print(step_table([]), flush=True)
    for users in args.step:
        stats = one_run(args, folder, f"step-{users:03d}u", users, float(users), args.step_time, extra, think)
        if stats is None:
            return 2
        report = slo_mod.evaluate(stats, slo, gates=STEP_GATES)
        results.append((users, stats, report))
        print(step_table(results[-1:]).splitlines()[-1], flush=True)
        if not report.passed and not args.keep_going:
            break
    print()
    print(step_table(results))
    held = [(s.aggregated.rps, users) for users, s, r in results if r.passed and s.aggregated]
    print(f"\nreports: {folder}/")
    if not held:
        print("saturation point: none: the p99/error gates fail already at the lowest step", file=sys.stderr)
        return 1
    rps, users = max(held)
    print(f"saturation point: {rps:.2f} requests/s at {users} users (highest throughput with the p99 and error gates holding)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
