"""Smoke tests of the load test and the benchmarks: they run and report numbers.

No stack here (the integration tier owns the only one): the SLO evaluator runs
on synthetic locust CSVs, the locustfile runs for a few seconds against a
gateway over instant stubs (tests/loadtest/stub_gateway.py), and the
benchmarks that need no stack (2 gateway overhead, 4 retrieval) run with
--quick. Locust monkey-patches the standard library with gevent, so
everything that imports it runs in a subprocess.
"""

from __future__ import annotations

import csv
import math
import re
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from ragrail.gateway.v1 import gateway_pb2 as pb

ROOT = Path(__file__).resolve().parents[2]
LOADTEST = ROOT / "loadtest"
sys.path.insert(0, str(LOADTEST))

from ragrail_load import slo  # noqa: E402
from ragrail_load.grpc_calls import RETRIED_SUFFIX, Retries, retrying_refusals, timed_call  # noqa: E402
from ragrail_load.queries import QuerySet  # noqa: E402

COLUMNS = ["Type", "Name", "Request Count", "Failure Count", "Median Response Time", "Average Response Time",
           "Min Response Time", "Max Response Time", "Average Content Size", "Requests/s", "Failures/s",
           "50%", "66%", "75%", "80%", "90%", "95%", "98%", "99%", "99.9%", "99.99%", "100%"]


def write_stats(path: Path, rows: list[tuple[str, str, int, int, float, float]]) -> Path:
    """rows: (type, name, requests, failures, p95 ms, p99 ms); an Aggregated row is added."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        total = sum(r[2] for r in rows)
        for kind, name, requests, failures, p95, p99 in rows:
            writer.writerow([kind, name, requests, failures, p95 / 2, p95 / 2, 1, p99, 100, requests / 60, 0,
                             p95 / 2, p95 / 2, p95 / 2, p95 / 2, p95, p95, p99, p99, p99, p99, p99])
        writer.writerow(["", "Aggregated", total, sum(r[3] for r in rows), 0, 0, 0, 0, 0, total / 60, 0,
                         *(["N/A"] * 11)])
    return path


GATES = {
    "min_requests": 5,
    "overall": {"max_error_ratio": 0.02},
    "defaults": {"max_error_ratio": 0.05},
    "targets": {
        "rag@1": {"p95_ms": 5000, "p99_ms": 8000, "max_fallback_ratio": 0.3, "max_degraded_ratio": 0.05},
        "summarize_sentiment": {"p99_ms": 9000},
        "embedding/Embed": {"p95_ms": 100},
    },
}


def test_gates_hold_on_a_healthy_run(tmp_path: Path) -> None:
    stats = slo.read_stats(write_stats(tmp_path / "ok_stats.csv", [
        ("grpc", "rag@1", 80, 0, 3000, 4000),
        ("fallback", "rag@1 [fallback:retrieval_miss]", 20, 0, 200, 7000),
        ("grpc", "summarize_sentiment", 10, 0, 6000, 8000),
    ]))
    report = slo.evaluate(stats, slo.Slo.from_dict(GATES))
    assert report.passed, report.table()
    by = {(c.target, c.gate): c for c in report.checks}
    # the largest row percentile: never below the combined one
    assert by[("rag@1", "p99_ms")].actual == 7000
    assert by[("rag@1", "max_fallback_ratio")].actual == pytest.approx(0.2)
    assert by[("rag@1", "max_degraded_ratio")].actual == 0  # retrieval_miss is expected, not degraded
    assert by[("embedding/Embed", "p95_ms")].status == "no data"  # no traffic is not a failure
    assert "no data" in report.table() and "FAIL" not in report.table()


def test_gates_fail_on_latency_errors_and_degraded_fallbacks(tmp_path: Path) -> None:
    stats = slo.read_stats(write_stats(tmp_path / "bad_stats.csv", [
        ("grpc", "rag@1", 90, 4, 6000, 12000),
        ("fallback", "rag@1 [fallback:stage_timeout]", 10, 0, 30000, 30000),
        ("grpc", "summarize_sentiment", 10, 0, 6000, 8000),
    ]))
    report = slo.evaluate(stats, slo.Slo.from_dict(GATES))
    assert not report.passed
    failed = {(c.target, c.gate) for c in report.failures}
    assert failed == {
        ("rag@1", "p95_ms"), ("rag@1", "p99_ms"), ("rag@1", "max_degraded_ratio"),
        ("(all requests)", "max_error_ratio"),
    }
    assert "!" in report.table()
    # only the step-load gates
    step = slo.evaluate(stats, slo.Slo.from_dict(GATES), gates=("p99_ms", "max_error_ratio"))
    assert {c.gate for c in step.checks} <= {"p99_ms", "max_error_ratio"}


def test_required_target_without_traffic_fails_and_unknown_gates_are_rejected(tmp_path: Path) -> None:
    stats = slo.read_stats(write_stats(tmp_path / "x_stats.csv", [("grpc", "rag", 10, 0, 10, 20)]))
    report = slo.evaluate(stats, slo.Slo.from_dict({"targets": {"rag@2": {"p99_ms": 1, "required": True}}}))
    assert not report.passed
    with pytest.raises(ValueError, match="unknown gates"):
        slo.Slo.from_dict({"targets": {"rag": {"p99": 5}}})
    assert math.isnan(slo.target_figures(stats, "rag@9")["p99_ms"])


def test_run_py_exit_codes_from_a_csv(tmp_path: Path) -> None:
    csv_path = write_stats(tmp_path / "r_stats.csv", [("grpc", "rag@1", 50, 0, 3000, 4000)])
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text("targets:\n  rag@1: {p99_ms: 5000}\n")
    bad.write_text("targets:\n  rag@1: {p99_ms: 1000}\n")
    run = [sys.executable, str(LOADTEST / "run.py"), "--evaluate", str(csv_path), "--slo"]
    ok = subprocess.run([*run, str(good)], capture_output=True, text=True, timeout=30)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    failed = subprocess.run([*run, str(bad)], capture_output=True, text=True, timeout=30)
    assert failed.returncode == 1 and "rag@1 p99_ms" in failed.stderr


def test_shipped_slo_and_queries_load() -> None:
    gates = slo.Slo.load(LOADTEST / "slo.yaml")
    assert {"rag", "rag@1", "rag@2", "summarize_sentiment"} <= set(gates.targets)
    queries = QuerySet.load()
    assert len(queries.on_topic) >= 20 and len(queries.off_topic) >= 10 and len(queries.texts) >= 5


def test_locustfile_imports_under_locust() -> None:
    out = subprocess.run([sys.executable, "-m", "locust", "-f", str(LOADTEST / "locustfile.py"), "--list"],
                         capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    for name in ("RagUser", "RagV1User", "RagV2User", "SummarizeUser", "EmbeddingUser", "RetrievalUser",
                 "GenerationUser", "ModerationUser"):
        assert name in out.stdout


@pytest.fixture
def stub_gateway() -> str:
    proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("stub_gateway.py"))],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.match(r"port (\d+)", line)
        assert match, f"stub gateway did not start: {line!r} {proc.stderr.read() if proc.poll() is not None else ''}"
        yield f"127.0.0.1:{match.group(1)}"
    finally:
        if proc.stdin:
            proc.stdin.close()  # the stub exits when its stdin closes
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_every_shipped_pipeline_version_answers_over_the_stubs(stub_gateway: str) -> None:
    """The locust run below reaches versions by a sticky traffic split, so a version the stubs
    cannot serve would fail it only for some session ids: every version is called here instead."""
    from ragrail.gateway.v1 import gateway_pb2_grpc

    with grpc.insecure_channel(stub_gateway) as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        listed = stub.ListPipelines(pb.ListPipelinesRequest(), timeout=10).pipelines
        refs = sorted({f"{p.name}@{p.version}" for p in listed})
        assert {"rag@1", "rag@2", "rag@3"} <= set(refs)
        for ref in refs:
            response = stub.Run(pb.RunRequest(pipeline=ref, query="How do refunds work?"), timeout=10)
            assert response.answer, ref


def test_headless_run_reports_answers_cache_hits_and_fallbacks(stub_gateway: str, tmp_path: Path) -> None:
    gates = tmp_path / "slo.yaml"
    gates.write_text("min_requests: 1\noverall: {max_error_ratio: 0}\n"
                     "targets:\n  rag@1: {p99_ms: 2000, max_error_ratio: 0}\n"
                     "  summarize_sentiment: {max_degraded_ratio: 0}\n")
    out = subprocess.run(
        [sys.executable, str(LOADTEST / "run.py"), "--host", stub_gateway, "--users", "4", "--spawn-rate", "4",
         "--run-time", "3s", "--think-min", "0", "--think-max", "0.05", "--reports", str(tmp_path / "reports"),
         "--weights", "rag=1,rag@1=1,rag@2=1,summarize_sentiment=1", "--slo", str(gates)],
        capture_output=True, text=True, timeout=90, cwd=ROOT,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    [stats_csv] = (tmp_path / "reports").glob("*/run_stats.csv")
    stats = slo.read_stats(stats_csv)
    rows = {r.name: r for r in stats.rows}
    assert rows["rag@1"].type == "grpc" and rows["rag@1"].requests > 0
    # the stub's "Stub answer." is no sentiment label: a canned answer, reported as a fallback, not a failure
    fallback = rows["summarize_sentiment [fallback:invalid_output]"]
    assert fallback.type == "fallback" and fallback.failures == 0
    assert "rag@2 [cached]" in rows  # rag@2 caches answers for 300 s
    assert stats.aggregated is not None and stats.aggregated.failures == 0
    assert (stats_csv.parent / "run.html").exists()
    assert "SLO gates: all hold" in out.stdout


class Refused(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, trailers: tuple[tuple[str, str], ...]) -> None:
        self._code, self._trailers = code, trailers

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return "the gateway's class query is at capacity"

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._trailers


def _calls(*outcomes: object):  # type: ignore[no-untyped-def]
    """A call that raises or returns ``outcomes`` in turn, recording the timeouts it was given."""
    timeouts: list[float] = []
    pending = list(outcomes)

    def call(timeout: float) -> object:
        timeouts.append(timeout)
        outcome = pending.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    return call, timeouts


def test_a_refusal_with_retry_after_is_retried_like_ragrail_client_does() -> None:
    full = Refused(grpc.StatusCode.RESOURCE_EXHAUSTED, (("retry-after", "0.5"),))
    answer = pb.RunResponse(answer="ok")
    call, timeouts = _calls(full, full, answer)
    slept: list[float] = []
    fired: list[dict] = []
    tries = Retries()
    got = timed_call(lambda **kw: fired.append(kw), "rag@1",
                     lambda: retrying_refusals(call, 10.0, 2, slept.append, tries), retries=tries)
    assert got is answer and slept == [0.5, 0.5] and tries.count == 2
    assert timeouts[0] == pytest.approx(10.0, abs=0.5) and all(t <= 10.0 for t in timeouts)  # one deadline
    [report] = fired
    assert report["name"] == "rag@1" + RETRIED_SUFFIX and report["exception"] is None


@pytest.mark.parametrize("error, max_retries, timeout_s", [
    (Refused(grpc.StatusCode.RESOURCE_EXHAUSTED, (("retry-after", "1"),)), 2, 0.5),  # the wait outlasts the deadline
    (Refused(grpc.StatusCode.RESOURCE_EXHAUSTED, ()), 2, 10.0),  # no retry-after: not a refusal to wait out
    (Refused(grpc.StatusCode.UNAVAILABLE, (("retry-after", "1"),)), 2, 10.0),  # not a refusal for capacity
    (Refused(grpc.StatusCode.RESOURCE_EXHAUSTED, (("retry-after", "1"),)), 0, 10.0),  # retries off
])
def test_refusals_not_to_wait_out_are_reported_as_failures(error, max_retries, timeout_s) -> None:  # type: ignore[no-untyped-def]
    call, timeouts = _calls(error, pb.RunResponse(answer="late"))
    fired: list[dict] = []
    tries = Retries()
    got = timed_call(lambda **kw: fired.append(kw), "rag@1",
                     lambda: retrying_refusals(call, timeout_s, max_retries, lambda _s: None, tries), retries=tries)
    assert got is None and len(timeouts) == 1 and tries.count == 0
    [report] = fired
    assert report["name"] == "rag@1" and report["exception"].code == error.code().name


def test_benchmarks_without_a_stack_print_numbers(tmp_path: Path) -> None:
    docs = tmp_path / "benchmarks.md"
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run_all.py"), "--quick", "--only", "2,4", "--docs", str(docs)],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert re.search(r"added by the gateway\s+-?\d+\.\d+\s+-?\d+\.\d+", out.stdout), out.stdout
    # points, build s, p50, p99, numpy p50, numpy p99, p50 / numpy, p99 / numpy, recall@10,
    # heap MiB, mapped MiB, disk MiB
    row = r"embedded edge\s+1,000(\s+x?[\d.]+){7}\s+(0|1)\.\d+\s+-?[\d,]+\s+-?[\d,]+\s+[\d,]+"
    assert re.search(row, out.stdout), out.stdout
    assert not docs.exists()  # --quick records nothing
