"""What the feedback store decides: attribution, one rating per answer and key, per-key limits,
retention sweeps, concurrent writers, schema migrations.

Written against ``store_target`` (a SQLite file here). tests/contract/test_feedback_postgres.py
imports these same tests and points ``store_target`` at a real PostgreSQL database: one scenario,
two backends, the same results.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ragrail.common.config import FeedbackSettings
from ragrail.common.errors import ResourceExhausted
from ragrail.gateway.auth import ANONYMOUS_NAME
from ragrail.gateway.feedback import DAY_S, HOUR_S, FeedbackStore, FeedbackSummary, Recorded
from ragrail.gateway.sqldb import redact

T0 = 1_800_000_000.0
SCHEMA_VERSION = 3


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


StoreFactory = Callable[..., FeedbackStore]


@pytest.fixture
def store_target(tmp_path: Path) -> str:
    return str(tmp_path / "feedback.sqlite3")


@pytest.fixture
def make_store(store_target: str) -> Iterator[StoreFactory]:
    """``make_store(clock, **settings)``: a store on the test's target; all closed at the end."""
    opened: list[FeedbackStore] = []

    def make(clock: Callable[[], float] = Clock(), **settings: Any) -> FeedbackStore:
        store = FeedbackStore(store_target, settings=FeedbackSettings(**settings), clock=clock)
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


def test_a_rating_is_attributed_to_the_version_that_answered_its_caller(make_store: StoreFactory) -> None:
    store = make_store()
    store.remember_answer("req-1", "rag", 3, "alpha")
    assert store.submit("req-1", "alpha", 4, "good") == Recorded(1, "rag", 3)
    # Another key naming the same id learns nothing and attributes nothing.
    assert store.submit("req-1", "bravo", 1) == Recorded(2, None, None)
    assert store.submit("never-answered", "alpha", 2) == Recorded(3, None, None)
    assert store.summary() == [FeedbackSummary(None, None, 2, 1.5), FeedbackSummary("rag", 3, 1, 4.0)]


def test_a_second_store_on_the_same_target_sees_the_first_ones_answers(make_store: StoreFactory) -> None:
    # What two gateway replicas do: one answers, the other takes the rating.
    answering, rating = make_store(), make_store()
    answering.remember_answer("req-9", "rag", 2, "alpha")
    assert rating.submit("req-9", "alpha", 5).pipeline == "rag"
    assert answering.summary() == [FeedbackSummary("rag", 2, 1, 5.0)]


def test_the_latest_answer_for_an_id_wins(make_store: StoreFactory) -> None:
    store = make_store()
    store.remember_answer("reused-id", "rag", 1, "alpha")
    store.remember_answer("reused-id", "rag", 2, "alpha")
    assert store.submit("reused-id", "alpha", 3).version == 2


def test_ids_feedback_could_never_name_are_not_stored(make_store: StoreFactory) -> None:
    store = make_store()
    store.remember_answer("has space", "rag", 1, "alpha")  # a caller's x-request-id may be anything
    store.remember_answer("x" * 129, "rag", 1, "alpha")
    assert store.sweep() == 0  # nothing there, even after every attribution expired
    assert store.summary() == []


def test_attribution_expires(make_store: StoreFactory) -> None:
    clock = Clock()
    store = make_store(clock, attribution_hours=1.0)
    store.remember_answer("req-1", "rag", 1, "alpha")
    store.remember_answer("req-2", "rag", 1, "alpha")
    clock.now += 0.5 * HOUR_S
    assert store.submit("req-1", "alpha", 5).matched
    clock.now += 0.6 * HOUR_S
    assert not store.submit("req-2", "alpha", 5).matched


def test_a_key_past_its_limit_is_refused_until_the_window_moves(make_store: StoreFactory) -> None:
    clock = Clock()
    store = make_store(clock, per_key_limit=3, per_key_window_s=60.0)
    for i in range(3):
        store.submit(f"req-{i}", "alpha", 4)
        clock.now += 10
    with pytest.raises(ResourceExhausted) as info:
        store.submit("req-3", "alpha", 4)
    message = info.value.message
    assert "'alpha'" in message and "per_key_limit" in message and "\n" not in message
    # The oldest of the three (at T0) leaves the window at T0 + 60; it is now T0 + 30.
    assert info.value.retry_after_s == pytest.approx(30.0)
    store.submit("req-3", "bravo", 4)  # other keys are not affected
    clock.now = T0 + 61
    store.submit("req-3", "alpha", 4)
    assert sum(s.count for s in store.summary()) == 5  # the refused rating was not stored


def test_the_anonymous_caller_of_disabled_auth_is_not_limited(make_store: StoreFactory) -> None:
    store = make_store(per_key_limit=1)
    for i in range(3):
        store.submit(f"req-{i}", ANONYMOUS_NAME, 3)
    assert store.summary() == [FeedbackSummary(None, None, 3, 3.0)]


def test_a_sweep_deletes_expired_rows_a_bounded_batch_at_a_time(make_store: StoreFactory) -> None:
    clock = Clock()
    store = make_store(clock, retention_days=1.0, attribution_hours=2.0, sweep_batch=2)
    for i in range(3):
        store.record(f"old-{i}", "rag", 1, 1)
        store.remember_answer(f"old-{i}", "rag", 1, "alpha")
    clock.now = T0 + DAY_S - 0.5 * HOUR_S
    store.record("recent", "rag", 1, 5)
    store.remember_answer("recent", "rag", 1, "alpha")
    # The three old answers have expired, no rating has yet.
    assert [store.sweep(), store.sweep(), store.sweep()] == [2, 1, 0]
    clock.now = T0 + DAY_S + 1  # the old ratings have now; the recent rows not
    assert [store.sweep(), store.sweep(), store.sweep()] == [2, 1, 0]
    assert store.summary() == [FeedbackSummary("rag", 1, 1, 5.0)]
    assert store.submit("recent", "alpha", 4).matched  # its attribution outlived the sweeps


def test_reopening_keeps_the_schema_and_the_rows(make_store: StoreFactory) -> None:
    first = make_store()
    first.remember_answer("req-1", "rag", 1, "alpha")
    first.submit("req-1", "alpha", 5)
    second = make_store()
    assert second.schema_version == first.schema_version == SCHEMA_VERSION
    assert second.submit("req-1", "alpha", 3).matched  # alpha's second rating of req-1: replaces
    assert second.submit("req-2", "alpha", 4).row_id > 1
    assert second.summary() == [FeedbackSummary(None, None, 1, 4.0), FeedbackSummary("rag", 1, 1, 3.0)]


def test_a_keys_second_rating_of_an_answer_replaces_its_first(make_store: StoreFactory) -> None:
    clock = Clock()
    store = make_store(clock)
    store.remember_answer("req-1", "rag", 3, "alpha")
    first = store.submit("req-1", "alpha", 2, "meh")
    clock.now += 60
    again = store.submit("req-1", "alpha", 5)
    assert again == Recorded(first.row_id, "rag", 3)  # the same row, rewritten
    store.submit("req-1", "bravo", 1)  # another key's rating is its own row (unattributed)
    assert store.summary() == [FeedbackSummary(None, None, 1, 1.0), FeedbackSummary("rag", 3, 1, 5.0)]
    assert rows(store) == [("req-1", "rag", 3, 5, None, "alpha", T0 + 60), ("req-1", None, None, 1, None, "bravo", T0 + 60)]


def test_a_rating_replaced_after_its_attribution_expired_keeps_the_version(make_store: StoreFactory) -> None:
    clock = Clock()
    store = make_store(clock, attribution_hours=1.0)
    store.remember_answer("req-1", "rag", 2, "alpha")
    assert store.submit("req-1", "alpha", 2).matched
    clock.now += 2 * HOUR_S
    assert store.submit("req-1", "alpha", 4) == Recorded(1, "rag", 2)
    assert store.summary() == [FeedbackSummary("rag", 2, 1, 4.0)]


def test_ratings_imported_without_a_key_are_all_kept(make_store: StoreFactory) -> None:
    store = make_store()
    assert store.record("req-1", "rag", 1, 4) != store.record("req-1", "rag", 1, 2)
    assert store.summary() == [FeedbackSummary("rag", 1, 2, 3.0)]


def test_migrating_from_schema_2_keeps_each_keys_latest_rating(store_target: str, make_store: StoreFactory) -> None:
    from ragrail.gateway.feedback import _migrations
    from ragrail.gateway.sqldb import open_database

    db = open_database(store_target)
    try:  # a store as schema 2 left it: repeated ratings of one id by one key were all kept
        with db.transaction() as tx:
            for statement in [s for step in _migrations(db.dialect)[:2] for s in step]:
                tx.execute(statement)
            tx.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
            tx.execute("INSERT INTO schema_version (version) VALUES (2)")
            for rating, principal in [(1, "alpha"), (2, "alpha"), (3, "bravo"), (4, None), (5, None)]:
                tx.execute(
                    "INSERT INTO feedback (request_id, pipeline, pipeline_version, rating, principal, created_at)"
                    " VALUES ('req-1', 'rag', 1, ?, ?, ?)",
                    (rating, principal, T0 + rating),
                )
    finally:
        db.close()
    store = make_store()
    assert store.schema_version == SCHEMA_VERSION
    assert [(r[3], r[5]) for r in rows(store)] == [(2, "alpha"), (3, "bravo"), (4, None), (5, None)]


def rows(store: FeedbackStore) -> list[tuple[Any, ...]]:
    """Every stored rating, oldest row first."""
    with store._db.transaction() as tx:
        return [
            tuple(row)
            for row in tx.execute(
                "SELECT request_id, pipeline, pipeline_version, rating, comment, principal, created_at"
                " FROM feedback ORDER BY id"
            )
        ]


def test_concurrent_writers_lose_no_rows(make_store: StoreFactory) -> None:
    stores = [make_store(), make_store()]  # two "replicas", four threads each
    threads_n, per_thread = 8, 25
    ids: list[int] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def worker(t: int) -> None:
        store = stores[t % 2]
        try:
            for i in range(per_thread):
                store.remember_answer(f"t{t}-{i}", "rag", 1 + t % 2, f"key{t}")
                recorded = store.submit(f"t{t}-{i}", f"key{t}", 1 + i % 5)
                assert recorded.version == 1 + t % 2
                with lock:
                    ids.append(recorded.row_id)
        except BaseException as exc:  # a thread's exception is otherwise lost
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(set(ids)) == threads_n * per_thread
    assert {(s.pipeline, s.version): s.count for s in stores[0].summary()} == {
        ("rag", 1): threads_n // 2 * per_thread,
        ("rag", 2): threads_n // 2 * per_thread,
    }


def test_a_urls_password_never_reaches_a_message() -> None:
    assert redact("postgresql://app:s3cret@db:5432/ragrail") == "postgresql://app:***@db:5432/ragrail"
    assert redact("postgresql://app@db/ragrail") == "postgresql://app@db/ragrail"
    assert redact("/var/lib/feedback.sqlite3") == "/var/lib/feedback.sqlite3"
    assert redact("postgresql://db/x?user=app&password=s3cret&sslmode=require") == (
        "postgresql://db/x?user=app&password=***&sslmode=require"
    )
