"""Unit tests for per-pipeline admission control (ragrail.gateway.admission)."""

from __future__ import annotations

import asyncio
import time

import pytest

from ragrail.common.errors import ResourceExhausted
from ragrail.gateway.admission import Admission, LatencyLimit


class Holder:
    """A request that holds a slot until released."""

    def __init__(self, admission: Admission, wait_s: float = 5.0) -> None:
        self.admission = admission
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        self.task = asyncio.create_task(self._run(wait_s))

    async def _run(self, wait_s: float) -> None:
        async with self.admission.slot(wait_s):
            self.entered.set()
            await self.release.wait()

    async def done(self) -> None:
        self.release.set()
        await self.task


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def fill(admission: Admission, n: int) -> list[Holder]:
    holders = [Holder(admission) for _ in range(n)]
    await settle()
    return holders


async def test_slots_up_to_max_in_flight_are_granted_at_once() -> None:
    admission = Admission("rag@1", max_in_flight=3, max_queue=2)
    holders = await fill(admission, 3)
    assert all(h.entered.is_set() for h in holders)
    assert (admission.in_flight, admission.queued) == (3, 0)
    for h in holders:
        await h.done()
    assert (admission.in_flight, admission.queued) == (0, 0)


async def test_requests_beyond_the_slots_queue_up_to_max_queue() -> None:
    admission = Admission("rag@1", max_in_flight=2, max_queue=2)
    running = await fill(admission, 2)
    queued = await fill(admission, 2)
    assert not any(h.entered.is_set() for h in queued)
    assert (admission.in_flight, admission.queued) == (2, 2)
    for h in running + queued:
        await h.done()
    assert (admission.in_flight, admission.queued) == (0, 0)


async def test_beyond_the_queue_a_request_is_refused_at_once_with_retry_after() -> None:
    admission = Admission("rag@1", max_in_flight=1, max_queue=1, retry_after_s=2.5)
    holders = await fill(admission, 2)
    start = time.monotonic()
    with pytest.raises(ResourceExhausted) as caught:
        async with admission.slot(10.0):
            pytest.fail("must not be admitted")
    assert time.monotonic() - start < 0.1, "refused at once, not after waiting"
    assert caught.value.retry_after_s == 2.5
    assert "rag@1" in caught.value.message
    assert (admission.in_flight, admission.queued) == (1, 1), "a refusal changes no counter"
    for h in holders:
        await h.done()
    assert (admission.in_flight, admission.queued) == (0, 0)


async def test_no_queue_refuses_as_soon_as_the_slots_are_taken() -> None:
    admission = Admission("rag@1", max_in_flight=1, max_queue=0)
    [holder] = await fill(admission, 1)
    with pytest.raises(ResourceExhausted) as caught:
        async with admission.slot(10.0):
            pass
    assert caught.value.retry_after_s is not None
    await holder.done()
    async with admission.slot(1.0):
        assert admission.in_flight == 1


async def test_a_queued_request_runs_when_a_slot_frees() -> None:
    admission = Admission("rag@1", max_in_flight=1, max_queue=1)
    [first] = await fill(admission, 1)
    [waiting] = await fill(admission, 1)
    assert not waiting.entered.is_set() and admission.queued == 1

    first.release.set()
    await asyncio.wait_for(waiting.entered.wait(), 1.0)
    assert (admission.in_flight, admission.queued) == (1, 0)
    await first.task
    await waiting.done()
    assert (admission.in_flight, admission.queued) == (0, 0)


async def test_queued_requests_are_served_in_order() -> None:
    admission = Admission("rag@1", max_in_flight=1, max_queue=3)
    [first] = await fill(admission, 1)
    queued = await fill(admission, 3)
    order: list[int] = []
    notes = [asyncio.create_task(_note(h, i, order)) for i, h in enumerate(queued)]
    await first.done()
    for h in queued:
        await asyncio.wait_for(h.entered.wait(), 1.0)
        await h.done()
    await asyncio.gather(*notes)
    assert order == [0, 1, 2]


async def _note(holder: Holder, index: int, order: list[int]) -> None:
    await holder.entered.wait()
    order.append(index)


async def test_a_queued_request_whose_wait_expires_is_refused() -> None:
    admission = Admission("rag@1", max_in_flight=1, max_queue=1, retry_after_s=1.0)
    [holder] = await fill(admission, 1)
    start = time.monotonic()
    with pytest.raises(ResourceExhausted, match="no free slot") as caught:
        async with admission.slot(0.1):
            pytest.fail("must not be admitted")
    elapsed = time.monotonic() - start
    assert 0.08 <= elapsed <= 0.4
    assert caught.value.retry_after_s == 1.0
    assert (admission.in_flight, admission.queued) == (1, 0)
    await holder.done()
    assert (admission.in_flight, admission.queued) == (0, 0)
    async with admission.slot(0.1):  # the expired waiter did not leak or steal a slot
        assert admission.in_flight == 1


async def test_a_request_with_no_time_left_is_not_queued() -> None:
    admission = Admission("rag@1", max_in_flight=1, max_queue=5)
    [holder] = await fill(admission, 1)
    with pytest.raises(ResourceExhausted):
        async with admission.slot(-1.0):
            pass
    assert admission.queued == 0
    await holder.done()


async def test_an_error_inside_the_slot_frees_it() -> None:
    admission = Admission("rag@1", max_in_flight=1, max_queue=0)
    with pytest.raises(RuntimeError):
        async with admission.slot(1.0):
            raise RuntimeError("boom")
    assert admission.in_flight == 0
    async with admission.slot(1.0):
        assert admission.in_flight == 1


async def test_a_cancelled_queued_request_frees_its_queue_place() -> None:
    admission = Admission("rag@1", max_in_flight=1, max_queue=1)
    [holder] = await fill(admission, 1)
    [waiting] = await fill(admission, 1)
    assert admission.queued == 1
    waiting.task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting.task
    assert admission.queued == 0
    await holder.done()
    assert (admission.in_flight, admission.queued) == (0, 0)
    async with admission.slot(0.1):
        assert admission.in_flight == 1


async def test_many_concurrent_requests_never_exceed_the_limits() -> None:
    admission = Admission("rag@1", max_in_flight=3, max_queue=4)
    peak = 0
    outcomes: list[str] = []

    async def request() -> None:
        nonlocal peak
        try:
            async with admission.slot(2.0):
                peak = max(peak, admission.in_flight)
                assert admission.queued <= 4
                await asyncio.sleep(0.01)
            outcomes.append("ok")
        except ResourceExhausted:
            outcomes.append("refused")

    await asyncio.gather(*(request() for _ in range(20)))
    assert peak == 3
    assert outcomes.count("ok") == 3 + 4
    assert outcomes.count("refused") == 20 - 7
    assert (admission.in_flight, admission.queued) == (0, 0)


async def test_full_says_whether_a_request_now_would_be_refused_at_once() -> None:
    admission = Admission("ingest", max_in_flight=1, max_queue=1, retry_after_s=3.0, what="the gateway's class")
    assert not admission.full
    [running] = await fill(admission, 1)
    assert not admission.full, "one may still queue"
    [waiting] = await fill(admission, 1)
    assert admission.full
    refusal = admission.refusal()
    assert refusal.retry_after_s == 3.0
    assert refusal.message.startswith("the gateway's class ingest is at capacity (1 running, 1 queued)")
    await running.done()
    await waiting.done()
    assert not admission.full


def test_admission_settings_keep_each_class_below_the_rpc_limit() -> None:
    from pydantic import ValidationError

    from ragrail.common.config import GatewayAdmissionSettings

    ok = GatewayAdmissionSettings()
    assert ok.ingest.max_in_flight + ok.ingest.max_queue < ok.max_concurrent_rpcs
    with pytest.raises(ValidationError, match=r"admission.ingest: max_in_flight \+ max_queue \(40\) must be below"):
        GatewayAdmissionSettings.model_validate(
            {"max_concurrent_rpcs": 40, "query": {"max_in_flight": 8, "max_queue": 8, "max_wait_s": 1},
             "ingest": {"max_in_flight": 20, "max_queue": 20, "max_wait_s": 1}}
        )
    with pytest.raises(ValidationError, match="max_queue"):  # a class is given whole
        GatewayAdmissionSettings.model_validate({"ingest": {"max_in_flight": 4}})


# -- a limit steered by latency -----------------------------------------------------------


def grown(limit: LatencyLimit, runs: int, in_flight: int = 64) -> LatencyLimit:
    for _ in range(runs):
        limit.record(time.monotonic(), slow=False, in_flight=in_flight)
    return limit


def test_the_limit_starts_at_its_floor_and_grows_a_slot_per_fast_run_until_the_first_slow_one() -> None:
    limit = LatencyLimit(ceiling=8, floor=2)
    assert limit.slots == 2
    grown(limit, 3)
    assert limit.slots == 5
    grown(limit, 10)
    assert limit.slots == 8  # capped at the ceiling


def test_a_slow_run_shrinks_the_limit_once_per_generation_of_runs() -> None:
    limit = grown(LatencyLimit(ceiling=8), 7)
    admitted_before = time.monotonic()
    limit.record(admitted_before, slow=True, in_flight=7)
    assert limit.slots == 6  # 8 x 0.75
    # Runs admitted before that decrease were sized for the old limit: no second cut.
    limit.record(admitted_before, slow=True, in_flight=6)
    assert limit.slots == 6
    limit.record(time.monotonic(), slow=True, in_flight=3)
    assert limit.slots == 4  # 6 x 0.75 = 4.5
    # After a cut, growth is additive: about one slot per `limit` fast runs.
    grown(limit, 4)
    assert limit.slots == 5


def test_the_limit_never_falls_below_its_floor() -> None:
    limit = grown(LatencyLimit(ceiling=4, floor=2), 4)
    for _ in range(5):
        limit.record(time.monotonic(), slow=True, in_flight=0)
    assert limit.slots == 2


def test_an_idle_limit_earns_no_raise() -> None:
    limit = LatencyLimit(ceiling=16, floor=12)
    limit.record(time.monotonic(), slow=False, in_flight=0)  # 2 x 1 < 12 slots
    assert limit.value == 12


async def test_slow_runs_shrink_the_slots_and_the_excess_is_refused_at_once() -> None:
    admission = Admission("query", max_in_flight=4, max_queue=8, latency_limit=grown(LatencyLimit(4), 3))
    assert admission.limit == 4
    async with admission.slot(1.0):
        pass  # no verdict (e.g. refused by its pipeline): teaches nothing
    assert admission.limit == 4
    async with admission.slot(1.0) as ticket:
        ticket.slow = True  # e.g. its generate stage timed out
    assert admission.limit == 3
    assert admission.queue_bound == 3  # at most one limit's worth waits (max_queue is 8)
    admission.max_queue = 0
    holders = await fill(admission, 3)
    assert all(h.entered.is_set() for h in holders)
    started = time.monotonic()
    with pytest.raises(ResourceExhausted, match="at capacity \\(3 running"):
        async with admission.slot(5.0):
            pass
    assert time.monotonic() - started < 0.1
    for h in holders:
        await h.done()


async def test_max_queue_wait_bounds_the_wait_below_the_deadline() -> None:
    admission = Admission("rag@1", max_in_flight=1, max_queue=4, max_queue_wait_s=0.05)
    holder = (await fill(admission, 1))[0]
    started = time.monotonic()
    with pytest.raises(ResourceExhausted, match="no free slot"):
        async with admission.slot(30.0):
            pass
    assert time.monotonic() - started < 1.0
    assert admission.queued == 0
    await holder.done()


async def test_a_slot_handed_to_a_waiter_is_not_taken_by_a_newcomer() -> None:
    admission = Admission("rag@1", max_in_flight=1, max_queue=2)
    first = (await fill(admission, 1))[0]
    waiter = Holder(admission)
    await settle()
    first.release.set()
    await first.task  # the slot is handed to the waiter, which has not resumed yet
    newcomer = Holder(admission)
    await settle()
    assert waiter.entered.is_set() and not newcomer.entered.is_set()
    assert admission.in_flight == 1
    await waiter.done()
    await newcomer.done()
    assert (admission.in_flight, admission.queued) == (0, 0)


async def test_a_waiter_cancelled_as_it_is_handed_a_slot_passes_it_on() -> None:
    admission = Admission("rag@1", max_in_flight=1, max_queue=2)
    first = (await fill(admission, 1))[0]
    leaving, staying = Holder(admission), Holder(admission)
    await settle()
    first.release.set()
    await first.task  # the slot goes to `leaving`...
    leaving.task.cancel()  # ...which is cancelled before it resumes
    await settle()
    assert leaving.task.cancelled()
    assert staying.entered.is_set() and admission.in_flight == 1
    await staying.done()
    assert (admission.in_flight, admission.queued) == (0, 0)
