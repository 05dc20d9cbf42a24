"""The overload benchmark's bookkeeping (loadtest/overload.py) on synthetic calls: no stack here."""

from __future__ import annotations

from loadtest.overload import Call, saturation, summarize, table, verdict


def call(started: float, ended: float, status: str = "OK", fallback: str = "") -> Call:
    return Call(started, ended=ended, status=status, fallback=fallback)


def test_goodput_counts_answers_that_finished_inside_the_window() -> None:
    calls = [
        call(0.0, 9.0),  # finished before the window: warm-up
        call(5.0, 12.0),
        call(12.0, 15.0, fallback="stage_timeout"),
        call(15.0, 15.05, status="RESOURCE_EXHAUSTED"),
        call(15.0, 15.2, fallback="overload"),
        call(16.0, 19.0, status="DEADLINE_EXCEEDED"),
        call(18.0, 25.0),  # finished after the window
    ]
    step = summarize(4, calls, (10.0, 20.0), [])
    assert step.calls == 5 and step.answered == 1 and step.goodput == 0.1
    assert step.refused == 2 and round(step.refused_p99_ms) == 200
    assert step.degraded == {"stage_timeout": 1, "DEADLINE_EXCEEDED": 1}


def test_the_verdict_names_each_target_missed() -> None:
    base = summarize(4, [call(0.0, 1.0 + i) for i in range(10)], (0.0, 20.0), [])
    collapsed = summarize(16, [call(0.0, 19.0), call(0.0, 1.0, status="RESOURCE_EXHAUSTED")], (0.0, 20.0),
                          ["generation"])
    problems = verdict(base, collapsed, p99_slo_ms=15_000)
    assert len(problems) == 4, problems  # goodput, slow refusal, p99 over the SLO, open circuit
    held = summarize(16, [call(0.0, 1.0 + i) for i in range(9)] + [call(5.0, 5.01, status="RESOURCE_EXHAUSTED")],
                     (0.0, 20.0), [])
    assert verdict(base, held, p99_slo_ms=15_000) == []
    assert "| 16 | 9 of 10 | 0.450 | 0.90x |" in table([base, held])


def test_saturation_is_the_fewest_callers_within_five_percent_of_the_best_goodput() -> None:
    steps = [summarize(u, [call(0.0, 1.0)] * n, (0.0, 10.0), []) for u, n in ((1, 5), (2, 9), (4, 9), (8, 3))]
    assert saturation(steps).users == 2
