"""Unit tests for circuit breakers, the retry budget, backoff (ragrail.gateway.resilience)
and the stage runner that combines them (ragrail.gateway.stages)."""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from ragrail.common.deadline import Deadline
from ragrail.common.errors import DeadlineExceeded, InvalidArgument, NotFound, ResourceExhausted, Unavailable
from ragrail.gateway import stages
from ragrail.gateway.resilience import CircuitBreaker, CircuitState, RetryBudget, backoff_s
from ragrail.gateway.stages import (
    BackendOverloaded,
    BackendUnavailable,
    StageFailure,
    StageRunner,
    StageTimeout,
)
from tests.unit.fakes import FakeClock, make_runner

THRESHOLD = 3
COOLDOWN = 10.0


def breaker(clock: FakeClock, changes: list | None = None) -> CircuitBreaker:
    return CircuitBreaker(
        "generation",
        failure_threshold=THRESHOLD,
        cooldown_s=COOLDOWN,
        clock=clock,
        on_change=(lambda name, state: changes.append((name, state))) if changes is not None else None,
    )


def open_breaker(clock: FakeClock, changes: list | None = None) -> CircuitBreaker:
    b = breaker(clock, changes)
    for _ in range(THRESHOLD):
        assert b.allow()
        b.record_failure()
    return b


# --- circuit breaker ------------------------------------------------------------------


def test_breaker_stays_closed_below_the_threshold() -> None:
    b = breaker(FakeClock())
    for _ in range(THRESHOLD - 1):
        b.record_failure()
    assert b.state is CircuitState.CLOSED and b.allow()


def test_breaker_opens_after_consecutive_failures_and_rejects() -> None:
    clock = FakeClock()
    b = open_breaker(clock)
    assert b.state is CircuitState.OPEN
    assert not b.allow() and not b.allow()
    assert b.retry_after_s() == pytest.approx(COOLDOWN)
    clock.advance(4)
    assert b.retry_after_s() == pytest.approx(COOLDOWN - 4)
    assert not b.allow()


def test_a_success_resets_the_failure_count() -> None:
    b = breaker(FakeClock())
    for _ in range(5):
        for _ in range(THRESHOLD - 1):
            b.record_failure()
        b.record_success()
    assert b.state is CircuitState.CLOSED


def test_after_the_cooldown_exactly_one_probe_goes_out() -> None:
    clock = FakeClock()
    b = open_breaker(clock)
    clock.advance(COOLDOWN - 0.01)
    assert b.state is CircuitState.OPEN and not b.allow()
    clock.advance(0.01)
    assert b.state is CircuitState.HALF_OPEN
    assert b.allow(), "the probe"
    assert not b.allow() and not b.allow(), "only one probe at a time"


def test_a_successful_probe_closes_the_circuit() -> None:
    clock = FakeClock()
    b = open_breaker(clock)
    clock.advance(COOLDOWN)
    assert b.allow()
    b.record_success()
    assert b.state is CircuitState.CLOSED
    assert all(b.allow() for _ in range(10))
    # Closed again with a fresh count: it takes THRESHOLD failures to reopen.
    for _ in range(THRESHOLD - 1):
        b.record_failure()
    assert b.state is CircuitState.CLOSED


def test_a_failed_probe_reopens_for_a_full_cooldown() -> None:
    clock = FakeClock()
    b = open_breaker(clock)
    clock.advance(COOLDOWN + 5)
    assert b.allow()
    b.record_failure()
    assert b.state is CircuitState.OPEN and not b.allow()
    assert b.retry_after_s() == pytest.approx(COOLDOWN)
    clock.advance(COOLDOWN)
    assert b.allow()


def test_an_abandoned_probe_frees_the_slot() -> None:
    clock = FakeClock()
    b = open_breaker(clock)
    clock.advance(COOLDOWN)
    assert b.allow() and not b.allow()
    b.abandon_probe()
    assert b.state is CircuitState.HALF_OPEN
    assert b.allow() and not b.allow()


def test_on_change_reports_every_transition() -> None:
    clock = FakeClock()
    changes: list = []
    b = open_breaker(clock, changes)
    clock.advance(COOLDOWN)
    b.allow()
    b.record_failure()
    clock.advance(COOLDOWN)
    b.allow()
    b.record_success()
    b.record_success()  # no change, no report
    assert changes == [
        ("generation", CircuitState.OPEN),
        ("generation", CircuitState.HALF_OPEN),
        ("generation", CircuitState.OPEN),
        ("generation", CircuitState.HALF_OPEN),
        ("generation", CircuitState.CLOSED),
    ]


# --- retry budget ---------------------------------------------------------------------


def test_retry_budget_allows_about_ratio_retries_per_request() -> None:
    budget = RetryBudget(ratio=0.1, min_tokens=3, max_tokens=20)
    withdrawals = 0
    for _ in range(1000):
        budget.deposit()  # one request
        while budget.try_withdraw():  # it (greedily) retries whenever it may
            withdrawals += 1
    # 3 initial tokens + 1000 * 0.1 earned (float sums may lose the very last one).
    assert 102 <= withdrawals <= 103
    assert not budget.try_withdraw()


def test_retry_budget_refuses_once_empty_and_refills_with_requests() -> None:
    budget = RetryBudget(ratio=0.25, min_tokens=2, max_tokens=20)
    assert budget.try_withdraw() and budget.try_withdraw()
    assert not budget.try_withdraw()
    for _ in range(3):
        budget.deposit()
    assert not budget.try_withdraw(), "0.75 tokens are not a retry"
    budget.deposit()
    assert budget.try_withdraw()
    assert not budget.try_withdraw()


def test_retry_budget_is_capped() -> None:
    budget = RetryBudget(ratio=0.5, min_tokens=0, max_tokens=5)
    for _ in range(1000):
        budget.deposit()
    assert sum(budget.try_withdraw() for _ in range(100)) == 5


def test_a_zero_ratio_only_allows_the_initial_tokens() -> None:
    budget = RetryBudget(ratio=0.0, min_tokens=1)
    for _ in range(100):
        budget.deposit()
    assert budget.try_withdraw() and not budget.try_withdraw()


# --- backoff --------------------------------------------------------------------------


@pytest.mark.parametrize("attempt", [0, 1, 2, 3, 5, 10])
def test_backoff_is_full_jitter_within_bounds(attempt: int) -> None:
    rng = random.Random(attempt)
    ceiling = min(1.0, 0.05 * 2**attempt)
    values = [backoff_s(attempt, rng=rng) for _ in range(500)]
    assert all(0 <= v <= ceiling for v in values)
    assert max(values) > ceiling * 0.8 and min(values) < ceiling * 0.2  # jittered over the range


def test_backoff_respects_base_and_cap() -> None:
    rng = random.Random(1)
    assert all(backoff_s(20, base_s=0.1, cap_s=0.3, rng=rng) <= 0.3 for _ in range(200))
    assert all(backoff_s(1, base_s=0.01, cap_s=5, rng=rng) <= 0.02 for _ in range(200))


# --- stage runner ---------------------------------------------------------------------


class Scripted:
    """fn(timeout) for StageRunner.call: raises the scripted errors in turn, then returns."""

    def __init__(self, *errors: BaseException, result: str = "ok", hang: bool = False) -> None:
        self.errors = list(errors)
        self.result = result
        self.hang = hang
        self.calls = 0
        self.timeouts: list[float] = []

    async def __call__(self, timeout: float) -> str:
        self.calls += 1
        self.timeouts.append(timeout)
        if self.errors:
            raise self.errors.pop(0)
        if self.hang:
            await asyncio.Event().wait()
        return self.result


def unavailable(n: int) -> list[Unavailable]:
    return [Unavailable("down") for _ in range(n)]


async def call(runner: StageRunner, fn: Scripted, *, retries: int = 2, timeout_s: float = 5.0,
               deadline: Deadline | None = None) -> str:
    return await runner.call(
        "retrieve", "retrieval", fn, timeout_s=timeout_s, retries=retries, deadline=deadline or Deadline(30)
    )


async def test_call_returns_and_passes_the_smaller_timeout() -> None:
    runner = make_runner()
    fn = Scripted()
    assert await call(runner, fn, timeout_s=2.0) == "ok"
    assert fn.calls == 1 and 0 < fn.timeouts[0] <= 2.0
    fn = Scripted()
    await call(runner, fn, timeout_s=2.0, deadline=Deadline(0.5))
    assert fn.timeouts[0] <= 0.5


async def test_unavailable_is_retried_up_to_retries() -> None:
    runner = make_runner()
    fn = Scripted(*unavailable(2))
    assert await call(runner, fn, retries=2) == "ok"
    assert fn.calls == 3

    fn = Scripted(*unavailable(10))
    with pytest.raises(BackendUnavailable) as caught:
        await call(make_runner(), fn, retries=2)
    assert fn.calls == 3
    assert caught.value.stage == "retrieve" and caught.value.reason == "backend_unavailable"


async def test_zero_retries_means_one_attempt() -> None:
    fn = Scripted(*unavailable(1))
    with pytest.raises(BackendUnavailable):
        await call(make_runner(), fn, retries=0)
    assert fn.calls == 1


@pytest.mark.parametrize(
    "error",
    [InvalidArgument("bad"), NotFound("nope"), ResourceExhausted("busy")],
    ids=["invalid", "not_found", "exhausted"],
)
async def test_only_unavailable_is_retried(error: Exception) -> None:
    fn = Scripted(error)
    with pytest.raises((InvalidArgument, NotFound, BackendOverloaded)):
        await call(make_runner(), fn, retries=3)
    assert fn.calls == 1


async def test_retries_stop_when_the_budget_is_empty() -> None:
    runner = make_runner(budget=RetryBudget(ratio=0.0, min_tokens=1))
    fn = Scripted(*unavailable(10))
    with pytest.raises(BackendUnavailable):
        await call(runner, fn, retries=3)
    assert fn.calls == 2, "one token: one retry"

    fn = Scripted(*unavailable(1))
    with pytest.raises(BackendUnavailable):
        await call(runner, fn, retries=3)
    assert fn.calls == 1, "the budget is empty: no retry at all"


async def test_calls_earn_retries_for_later_calls() -> None:
    """Each call deposits ``ratio`` of a retry: under normal traffic retries stay possible."""
    runner = make_runner(budget=RetryBudget(ratio=0.5, min_tokens=0))
    for _ in range(2):
        await call(runner, Scripted())
    fn = Scripted(*unavailable(1))
    assert await call(runner, fn, retries=1) == "ok"
    assert fn.calls == 2


async def test_a_hanging_call_times_out_at_the_stage_timeout() -> None:
    runner = make_runner()
    fn = Scripted(hang=True)
    start = time.monotonic()
    with pytest.raises(StageTimeout) as caught:
        await call(runner, fn, timeout_s=0.2, retries=3)
    elapsed = time.monotonic() - start
    assert 0.2 - 0.02 <= elapsed <= 0.2 + 0.2
    assert caught.value.reason == "stage_timeout" and caught.value.stage == "retrieve"
    assert fn.calls == 1, "a timeout is not retried"


async def test_a_hanging_call_never_outlives_the_deadline() -> None:
    fn = Scripted(hang=True)
    start = time.monotonic()
    with pytest.raises(StageTimeout):
        await call(make_runner(), fn, timeout_s=30, deadline=Deadline(0.25))
    assert time.monotonic() - start <= 0.25 + 0.2


async def test_backoff_never_sleeps_past_the_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Worst-case jitter (the ceiling every time) must still end the call at its deadline."""
    monkeypatch.setattr(stages, "backoff_s", lambda attempt, **_: min(1.0, 0.05 * 2**attempt))
    runner = make_runner(sleep=asyncio.sleep, budget=RetryBudget(min_tokens=10))
    fn = Scripted(*unavailable(10))
    start = time.monotonic()
    with pytest.raises(StageFailure):  # sleeps 0.1 + 0.2, then 0.4 would overshoot by 0.3 s
        await call(runner, fn, retries=3, deadline=Deadline(0.4))
    assert time.monotonic() - start <= 0.4 + 0.1


async def test_an_expired_deadline_is_a_stage_timeout_without_a_call() -> None:
    fn = Scripted()
    with pytest.raises(StageTimeout):
        await call(make_runner(), fn, deadline=Deadline(-1))
    assert fn.calls == 0


async def test_a_backend_deadline_exceeded_is_a_stage_timeout() -> None:
    runner = make_runner(failure_threshold=1)
    with pytest.raises(StageTimeout):
        await call(runner, Scripted(DeadlineExceeded("too slow")))
    assert runner.breaker("retrieval").state is CircuitState.OPEN


async def test_resource_exhausted_is_overload_and_not_a_breaker_failure() -> None:
    runner = make_runner(failure_threshold=1)
    fn = Scripted(ResourceExhausted("queue full", retry_after_s=2))
    with pytest.raises(BackendOverloaded) as caught:
        await call(runner, fn)
    assert caught.value.reason == "overload"
    assert runner.breaker("retrieval").state is CircuitState.CLOSED


async def test_invalid_argument_passes_through_unchanged_and_keeps_the_circuit_closed() -> None:
    runner = make_runner(failure_threshold=1)
    error = InvalidArgument("vector has 3 values")
    for _ in range(5):
        fn = Scripted(error)
        with pytest.raises(InvalidArgument) as caught:
            await call(runner, fn)
        assert caught.value is error
    assert runner.breaker("retrieval").state is CircuitState.CLOSED


async def test_failures_open_the_circuit_and_then_fn_is_not_called() -> None:
    clock = FakeClock()
    runner = make_runner(failure_threshold=2, cooldown_s=5, clock=clock)
    for _ in range(2):
        with pytest.raises(BackendUnavailable):
            await call(runner, Scripted(*unavailable(1)), retries=0)
    assert runner.breaker("retrieval").state is CircuitState.OPEN

    fn = Scripted()
    with pytest.raises(BackendUnavailable, match="circuit"):
        await call(runner, fn)
    assert fn.calls == 0

    clock.advance(5)
    assert await call(runner, fn) == "ok"  # the probe
    assert runner.breaker("retrieval").state is CircuitState.CLOSED


async def test_retries_count_towards_opening_the_circuit() -> None:
    runner = make_runner(failure_threshold=3)
    fn = Scripted(*unavailable(10))
    with pytest.raises(BackendUnavailable):
        await call(runner, fn, retries=3)
    assert fn.calls == 3, "the circuit opened during the retries"
    assert runner.breaker("retrieval").state is CircuitState.OPEN


async def test_timeouts_count_as_breaker_failures() -> None:
    runner = make_runner(failure_threshold=2)
    for _ in range(2):
        with pytest.raises(StageTimeout):
            await call(runner, Scripted(hang=True), timeout_s=0.01)
    assert runner.breaker("retrieval").state is CircuitState.OPEN


@pytest.mark.parametrize("caller_bound", [False, True], ids=["pipeline budget", "caller deadline"])
async def test_a_timeout_cut_short_by_the_deadline_does_not_count(caller_bound: bool) -> None:
    """Tight deadlines must not let one caller open a circuit every pipeline shares."""
    runner = make_runner(failure_threshold=1)
    for _ in range(3):
        with pytest.raises(DeadlineExceeded if caller_bound else StageTimeout):
            await call(runner, Scripted(hang=True), timeout_s=30, deadline=Deadline(0.02, caller_bound=caller_bound))
    assert runner.breaker("retrieval").state is CircuitState.CLOSED
    # The stage's own timeout, inside the deadline, still counts.
    with pytest.raises(StageTimeout):
        await call(runner, Scripted(hang=True), timeout_s=0.02, deadline=Deadline(30, caller_bound=caller_bound))
    assert runner.breaker("retrieval").state is CircuitState.OPEN


async def test_breakers_are_per_backend() -> None:
    runner = make_runner(failure_threshold=1)
    with pytest.raises(BackendUnavailable):
        await call(runner, Scripted(*unavailable(1)), retries=0)
    assert runner.breaker("retrieval").state is CircuitState.OPEN
    assert runner.breaker("embedding").state is CircuitState.CLOSED
    assert runner.breaker("retrieval") is runner.breaker("retrieval")


async def half_open_runner(clock: FakeClock) -> StageRunner:
    runner = make_runner(failure_threshold=1, cooldown_s=5, clock=clock)
    with pytest.raises(BackendUnavailable):
        await call(runner, Scripted(*unavailable(1)), retries=0)
    clock.advance(5)
    assert runner.breaker("retrieval").state is CircuitState.HALF_OPEN
    return runner


async def test_a_probe_that_is_overloaded_does_not_wedge_the_circuit() -> None:
    clock = FakeClock()
    runner = await half_open_runner(clock)
    with pytest.raises(BackendOverloaded):
        await call(runner, Scripted(ResourceExhausted("busy")))
    fn = Scripted()
    assert await call(runner, fn) == "ok", "the next request must be able to probe"
    assert runner.breaker("retrieval").state is CircuitState.CLOSED


async def test_a_probe_with_no_time_left_does_not_wedge_the_circuit() -> None:
    clock = FakeClock()
    runner = await half_open_runner(clock)
    with pytest.raises(StageTimeout):
        await call(runner, Scripted(), deadline=Deadline(-1))
    assert await call(runner, Scripted()) == "ok"
    assert runner.breaker("retrieval").state is CircuitState.CLOSED


async def test_a_cancelled_probe_is_abandoned() -> None:
    clock = FakeClock()
    runner = await half_open_runner(clock)
    task = asyncio.create_task(call(runner, Scripted(hang=True)))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert runner.breaker("retrieval").state is CircuitState.HALF_OPEN
    assert await call(runner, Scripted()) == "ok"


async def test_a_probe_with_invalid_input_counts_as_healthy() -> None:
    clock = FakeClock()
    runner = await half_open_runner(clock)
    with pytest.raises(InvalidArgument):
        await call(runner, Scripted(InvalidArgument("bad")))
    assert runner.breaker("retrieval").state is CircuitState.CLOSED


def test_runner_timeout_is_the_smaller_of_stage_and_deadline() -> None:
    runner = make_runner()
    assert runner.timeout("s", 2.0, Deadline(30)) == 2.0
    assert runner.timeout("s", 30.0, Deadline(1)) <= 1.0
    with pytest.raises(StageTimeout):
        runner.timeout("s", 2.0, Deadline(0))
