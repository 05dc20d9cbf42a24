"""The chaos suite's bookkeeping (loadtest/chaos.py) on synthetic calls: no stack here."""

from __future__ import annotations

from loadtest.chaos import Call, FaultWindow, broken, recovery, summarize, table


def call(started: float, ended: float, status: str = "OK", fallback: str = "", deadline: float = 10.0) -> Call:
    return Call("stream", started, deadline, ended=ended, status=status, fallback=fallback)


def test_recovery_starts_at_the_first_of_three_good_calls_after_the_fault() -> None:
    window = FaultWindow("x", started=10.0, ended=12.0)
    calls = [
        call(9.0, 11.0),  # before the end: does not count
        call(12.5, 13.0, fallback="backend_unavailable"),
        call(13.0, 14.0),
        call(14.0, 15.0, status="UNAVAILABLE"),
        call(15.0, 16.0),
        call(16.0, 17.5),
        call(17.5, 18.0),
    ]
    assert recovery(window, calls) == 16.0 - 12.0
    assert recovery(window, calls[:-1]) is None


def test_a_hung_or_late_call_or_unchecked_text_breaks_the_run() -> None:
    window = FaultWindow("moderation-kill", started=0.0, ended=0.0, unchecked_from=1.0, unchecked_to=5.0)
    late = call(0.0, 10.08)  # 80 ms past a 10 s deadline
    leaked = call(0.5, 3.0)
    leaked.deltas = [(0.9, 40), (2.0, 25)]  # 25 characters while no moderation could pass them
    row = summarize(window, [late, leaked, call(1.0, 20.0, status="HUNG")])
    assert row.hung == 1 and row.unchecked == 25 and round(row.worst_late_ms) == 9000
    assert len(broken(row)) == 3
    assert "| moderation-kill | 3 | 1 |" in table([row])


def test_a_clean_fault_passes() -> None:
    window = FaultWindow("freeze", started=0.0, ended=1.0)
    row = summarize(window, [call(0.0, 9.99, fallback="stage_timeout"), call(1.0, 2.0), call(2.0, 3.0), call(3.0, 4.0)])
    assert broken(row) == [] and row.statuses == {"OK": 3, "OK/stage_timeout": 1} and row.recover_s == 1.0
