"""SLO gates evaluated from locust's ``<prefix>_stats.csv``.

A *target* is a pipeline reference (``rag``, ``rag@1``) or a direct service call
(``embedding/Embed``). Its requests are the CSV rows named exactly like it plus
the rows ``<target> [...]`` (fallbacks such as ``rag@1 [fallback:retrieval_miss]``
and cached answers ``rag@2 [cached]``).

Gates per target (all optional):

- ``p95_ms`` / ``p99_ms``: latency percentiles in milliseconds. The CSV holds
  percentiles per row, not histograms, so a target's percentile is the largest
  of its rows' percentiles: never lower than the true combined one (a gate that
  passes on it would pass on the exact value too).
- ``max_error_ratio``: failed requests (non-OK gRPC status) / requests.
- ``max_fallback_ratio``: canned answers / requests, whatever the reason.
- ``max_degraded_ratio``: canned answers for reasons that mean the system is
  struggling (``degraded_reasons``: timeouts, unavailable backends, overload) /
  requests. Off-topic questions falling back with ``retrieval_miss`` are
  expected and do not count here.

Plus ``overall.max_error_ratio`` on locust's Aggregated row. A target with fewer
than ``min_requests`` requests is reported as ``no data`` and does not fail the
run (a profile that sends it no traffic is not a regression), unless it has
``required: true``.

No locust, gevent or grpc import here: this module is used by ``run.py`` and by
the tests as plain Python.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

AGGREGATED = "Aggregated"
DEFAULT_DEGRADED = ("stage_timeout", "backend_unavailable", "overload")
LATENCY_GATES = {"p95_ms": "95%", "p99_ms": "99%"}
RATIO_GATES = ("max_error_ratio", "max_fallback_ratio", "max_degraded_ratio")
TARGET_KEYS = set(LATENCY_GATES) | set(RATIO_GATES) | {"required"}
GATE_HEADINGS = (
    ("p95_ms", "p95 ms"), ("p99_ms", "p99 ms"), ("max_error_ratio", "errors"),
    ("max_fallback_ratio", "fallbacks"), ("max_degraded_ratio", "degraded"),
)
_FALLBACK = re.compile(r"\[fallback:([a-z_]+)\]")


@dataclass(frozen=True)
class Row:
    """One line of locust's stats CSV."""

    type: str
    name: str
    requests: int
    failures: int
    rps: float
    percentiles: dict[str, float]  # "50%" -> ms (nan when locust wrote N/A)

    def percentile(self, column: str) -> float:
        return self.percentiles.get(column, math.nan)


@dataclass(frozen=True)
class Stats:
    rows: tuple[Row, ...]

    @property
    def aggregated(self) -> Row | None:
        return next((r for r in self.rows if r.name == AGGREGATED and not r.type), None)

    def for_target(self, target: str) -> list[Row]:
        return [
            r for r in self.rows
            if r.name != AGGREGATED and (r.name == target or r.name.startswith(target + " ["))
        ]

    def names(self) -> list[str]:
        return [r.name for r in self.rows if r.name != AGGREGATED]


def _number(text: str) -> float:
    text = (text or "").strip()
    if not text or text.upper() == "N/A":
        return math.nan
    return float(text)


def read_stats(path: str | Path) -> Stats:
    """Reads ``<prefix>_stats.csv`` (or a prefix, to which ``_stats.csv`` is added)."""
    path = Path(path)
    if not path.name.endswith(".csv"):
        path = path.with_name(path.name + "_stats.csv")
    rows = []
    with path.open(newline="", encoding="utf-8") as handle:
        for record in csv.DictReader(handle):
            rows.append(Row(
                type=record.get("Type", "") or "",
                name=record["Name"],
                requests=int(float(record["Request Count"] or 0)),
                failures=int(float(record["Failure Count"] or 0)),
                rps=_number(record.get("Requests/s", "")),
                percentiles={k: _number(v) for k, v in record.items() if k and k.endswith("%")},
            ))
    return Stats(tuple(rows))


@dataclass(frozen=True)
class Slo:
    targets: dict[str, dict[str, Any]]
    overall_max_error_ratio: float | None = None
    min_requests: int = 1
    degraded_reasons: tuple[str, ...] = DEFAULT_DEGRADED

    @classmethod
    def load(cls, path: str | Path) -> Slo:
        return cls.from_dict(yaml.safe_load(Path(path).read_text()) or {}, source=str(path))

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "slo") -> Slo:
        unknown = set(raw) - {"targets", "overall", "defaults", "min_requests", "degraded_reasons"}
        if unknown:
            raise ValueError(f"{source}: unknown keys {sorted(unknown)}")
        defaults = raw.get("defaults") or {}
        targets: dict[str, dict[str, Any]] = {}
        for name, gates in (raw.get("targets") or {}).items():
            merged = {**defaults, **(gates or {})}
            bad = set(merged) - TARGET_KEYS
            if bad:
                raise ValueError(f"{source}: target {name}: unknown gates {sorted(bad)}")
            targets[str(name)] = merged
        overall = raw.get("overall") or {}
        bad = set(overall) - {"max_error_ratio"}
        if bad:
            raise ValueError(f"{source}: overall: unknown gates {sorted(bad)}")
        return cls(
            targets=targets,
            overall_max_error_ratio=overall.get("max_error_ratio"),
            min_requests=int(raw.get("min_requests", 1)),
            degraded_reasons=tuple(raw.get("degraded_reasons", DEFAULT_DEGRADED)),
        )


@dataclass(frozen=True)
class Check:
    target: str
    gate: str
    limit: float | None
    actual: float
    requests: int
    status: str  # "ok", "FAIL", "no data"

    @property
    def failed(self) -> bool:
        return self.status == "FAIL"


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not any(c.failed for c in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if c.failed]

    def table(self) -> str:
        """One line per target: each gate as "actual (limit)", then ok / FAIL / no data."""
        columns = [(g, h) for g, h in GATE_HEADINGS if any(c.gate == g for c in self.checks)]
        head = f"{'target':<24}{'reqs':>6}  " + "".join(f"{h:<17}" for _, h in columns) + "result"
        lines = [head]
        targets: dict[str, list[Check]] = {}
        for c in self.checks:
            targets.setdefault(c.target, []).append(c)
        for target, checks in targets.items():
            by_gate = {c.gate: c for c in checks}
            cells = []
            for gate, _ in columns:
                c = by_gate.get(gate)
                if c is None or c.status == "no data":
                    cells.append(f"{'-':<17}")
                    continue
                actual = "-" if math.isnan(c.actual) else _fmt(gate, c.actual)
                mark = "!" if c.failed else ""
                cells.append(f"{mark + actual + ' (' + _fmt(gate, c.limit or 0) + ')':<17}")
            statuses = {c.status for c in checks}
            result = "FAIL" if "FAIL" in statuses else ("no data" if statuses == {"no data"} else "ok")
            lines.append(f"{target[:23]:<24}{checks[0].requests:>6}  " + "".join(cells) + result)
        lines.append("cells: actual (limit); '!' marks a failed gate. Latency in ms, the rest ratios of requests.")
        return "\n".join(lines)


def _fmt(gate: str, value: float) -> str:
    return f"{value:.0f}" if gate.endswith("_ms") else f"{value:.3f}"


def _fallback_reason(name: str) -> str | None:
    match = _FALLBACK.search(name)
    return match.group(1) if match else None


def target_figures(stats: Stats, target: str, degraded: Iterable[str] = DEFAULT_DEGRADED) -> dict[str, float]:
    """Requests, ratios and (conservative) percentiles of one target."""
    rows = stats.for_target(target)
    requests = sum(r.requests for r in rows)
    degraded = set(degraded)
    fallbacks = sum(r.requests for r in rows if r.type == "fallback" or _fallback_reason(r.name))
    degraded_n = sum(r.requests for r in rows if (_fallback_reason(r.name) or "") in degraded)
    figures: dict[str, float] = {
        "requests": float(requests),
        "failures": float(sum(r.failures for r in rows)),
        "rps": sum(r.rps for r in rows if not math.isnan(r.rps)),
        "max_error_ratio": sum(r.failures for r in rows) / requests if requests else math.nan,
        "max_fallback_ratio": fallbacks / requests if requests else math.nan,
        "max_degraded_ratio": degraded_n / requests if requests else math.nan,
    }
    for gate, column in LATENCY_GATES.items():
        values = [r.percentile(column) for r in rows if r.requests > 0 and not math.isnan(r.percentile(column))]
        figures[gate] = max(values) if values else math.nan
    return figures


def evaluate(stats: Stats, slo: Slo, gates: Sequence[str] | None = None) -> Report:
    """Checks every gate of every target (or only ``gates``, e.g. ("p99_ms", "max_error_ratio"))."""
    report = Report()
    wanted = set(gates) if gates else set(LATENCY_GATES) | set(RATIO_GATES)
    for target, limits in slo.targets.items():
        figures = target_figures(stats, target, slo.degraded_reasons)
        requests = int(figures["requests"])
        enough = requests >= max(1, slo.min_requests)
        for gate in (*LATENCY_GATES, *RATIO_GATES):
            if gate not in limits or gate not in wanted or limits[gate] is None:
                continue
            limit = float(limits[gate])
            actual = figures[gate]
            if not enough:
                status = "FAIL" if limits.get("required") else "no data"
            else:
                status = "ok" if (not math.isnan(actual) and actual <= limit) else "FAIL"
            report.checks.append(Check(target, gate, limit, actual, requests, status))
    if slo.overall_max_error_ratio is not None and "max_error_ratio" in wanted:
        agg = stats.aggregated
        requests = agg.requests if agg else 0
        ratio = agg.failures / requests if agg and requests else math.nan
        limit = float(slo.overall_max_error_ratio)
        if requests == 0:
            status = "FAIL"  # a run that sent nothing proves nothing
        else:
            status = "ok" if ratio <= limit else "FAIL"
        report.checks.append(Check("(all requests)", "max_error_ratio", limit, ratio, requests, status))
    return report


def summary_table(stats: Stats) -> str:
    """Every CSV row: what the run sent and how it went."""
    lines = [f"{'type':<10}{'name':<46}{'reqs':>7}{'fails':>7}{'rps':>8}{'p50':>8}{'p95':>8}{'p99':>8}"]
    for r in stats.rows:
        def ms(column: str) -> str:
            value = r.percentile(column)
            return "-" if math.isnan(value) else f"{value:.0f}"
        rps = "-" if math.isnan(r.rps) else f"{r.rps:.2f}"
        lines.append(f"{r.type:<10}{r.name[:45]:<46}{r.requests:>7}{r.failures:>7}{rps:>8}"
                     f"{ms('50%'):>8}{ms('95%'):>8}{ms('99%'):>8}")
    return "\n".join(lines)
