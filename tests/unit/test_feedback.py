"""Unit tests for ragrail.gateway.feedback.FeedbackStore."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from ragrail.common.errors import InvalidArgument
from ragrail.gateway.feedback import FeedbackStore, FeedbackSummary
from tests.unit.test_feedback_store_logic import SCHEMA_VERSION


@pytest.fixture
def store() -> Iterator[FeedbackStore]:
    s = FeedbackStore(":memory:", clock=lambda: 1234.5)
    yield s
    s.close()


def _rows(path: Path) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(
            "SELECT request_id, pipeline, pipeline_version, rating, comment, created_at FROM feedback ORDER BY id"
        ).fetchall()
    finally:
        conn.close()


def test_round_trip(store: FeedbackStore) -> None:
    first = store.record("req-1", "rag", 2, 5, "great")
    second = store.record("req_2", "rag", 2, 3, "")
    assert second > first
    assert store.summary() == [FeedbackSummary("rag", 2, 2, 4.0)]


def test_rows_hold_what_was_recorded(tmp_path: Path) -> None:
    path = tmp_path / "fb.sqlite3"
    with FeedbackStore(path, clock=lambda: 42.0) as store:
        store.record("req-1", "rag", 3, 4, "nice")
        store.record("req-2", "", 0, 1, "")  # proto defaults: request not remembered
    assert _rows(path) == [("req-1", "rag", 3, 4, "nice", 42.0), ("req-2", None, None, 1, None, 42.0)]


def test_persists_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "dir" / "feedback.sqlite3"
    store = FeedbackStore(path)
    store.record("req-1", "rag", 1, 2, None)
    store.close()
    store.close()  # idempotent
    assert path.exists()

    reopened = FeedbackStore(path)
    reopened.record("req-2", "rag", 1, 4, None)
    assert reopened.summary() == [FeedbackSummary("rag", 1, 2, 3.0)]
    reopened.close()


def test_uses_wal_and_schema_is_versioned(tmp_path: Path) -> None:
    path = tmp_path / "fb.sqlite3"
    FeedbackStore(path).close()
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
        indexes = {row[1] for row in conn.execute("PRAGMA index_list(feedback)")}
        assert {"feedback_pipeline_version", "feedback_principal_created", "feedback_created"} <= indexes
        columns = [row[2] for row in conn.execute("PRAGMA index_info(feedback_pipeline_version)")]
        assert columns == ["pipeline", "pipeline_version"]
    finally:
        conn.close()


def test_a_file_from_before_versioning_is_migrated_and_keeps_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "fb.sqlite3"
    conn = sqlite3.connect(path)
    conn.execute(  # the schema gateways wrote before schema_version existed
        "CREATE TABLE feedback (id INTEGER PRIMARY KEY, request_id TEXT NOT NULL, pipeline TEXT,"
        " pipeline_version INTEGER, rating INTEGER NOT NULL, comment TEXT, created_at REAL NOT NULL)"
    )
    conn.execute("INSERT INTO feedback VALUES (1, 'old', 'rag', 1, 5, NULL, 10.0)")
    conn.commit()
    conn.close()

    with FeedbackStore(path, clock=lambda: 20.0) as store:
        assert store.schema_version == SCHEMA_VERSION
        store.record("new", "rag", 1, 3, principal="alpha")
        assert store.summary() == [FeedbackSummary("rag", 1, 2, 4.0)]
    with FeedbackStore(path) as again:  # reopening migrates nothing twice
        assert again.schema_version == SCHEMA_VERSION
    assert [r[0] for r in _rows(path)] == ["old", "new"]


def test_an_unknown_url_scheme_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="unsupported URL scheme"):
        FeedbackStore("mysql://user:secret@db/feedback")


def test_sqlite_urls_name_a_file(tmp_path: Path) -> None:
    path = tmp_path / "via-url.sqlite3"
    with FeedbackStore(f"sqlite:///{path}") as store:
        assert store.backend == "sqlite"
        store.record("req-1", "rag", 1, 4)
    assert len(_rows(path)) == 1


def test_writes_are_visible_to_other_connections_immediately(tmp_path: Path) -> None:
    path = tmp_path / "fb.sqlite3"
    store = FeedbackStore(path)
    store.record("req-1", "rag", 1, 5, None)
    assert len(_rows(path)) == 1  # committed, not pending in an open transaction
    store.close()


@pytest.mark.parametrize(
    "request_id,rating,comment,fragment",
    [
        ("", 3, None, "request_id"),
        ("x" * 129, 3, None, "request_id"),
        ("has space", 3, None, "request_id"),
        ("semi;colon", 3, None, "request_id"),
        ("req-1", 0, None, "rating"),
        ("req-1", 6, None, "rating"),
        ("req-1", -1, None, "rating"),
        ("req-1", True, None, "rating"),
        ("req-1", 2.5, None, "rating"),
        ("req-1", 3, "c" * 2001, "comment"),
    ],
)
def test_validation_errors(
    store: FeedbackStore, request_id: str, rating: int, comment: str | None, fragment: str
) -> None:
    with pytest.raises(InvalidArgument) as info:
        store.record(request_id, "rag", 1, rating, comment)
    assert fragment in info.value.message
    assert "\n" not in info.value.message
    assert store.summary() == []


def test_limits_are_inclusive(store: FeedbackStore) -> None:
    store.record("a" * 128, "rag", 1, 1, "c" * 2000)
    store.record("A-z_0-9", "rag", 1, 5, None)
    assert store.summary() == [FeedbackSummary("rag", 1, 2, 3.0)]


def test_summary_groups_by_pipeline_version(store: FeedbackStore) -> None:
    for rating in (5, 4):
        store.record("r", "rag", 1, rating, None)
    for rating in (1, 2, 2):
        store.record("r", "rag", 2, rating, None)
    store.record("r", "summarize", 1, 3, None)
    store.record("r", "", 0, 5, None)

    assert store.summary() == [
        FeedbackSummary(None, None, 1, 5.0),
        FeedbackSummary("rag", 1, 2, 4.5),
        FeedbackSummary("rag", 2, 3, pytest.approx(5 / 3)),
        FeedbackSummary("summarize", 1, 1, 3.0),
    ]
    assert store.summary("rag") == [
        FeedbackSummary("rag", 1, 2, 4.5),
        FeedbackSummary("rag", 2, 3, pytest.approx(5 / 3)),
    ]
    assert store.summary("absent") == []


async def test_record_async(store: FeedbackStore) -> None:
    row_id = await store.record_async("req-1", "rag", 1, 4, "ok")
    assert row_id >= 1
    with pytest.raises(InvalidArgument):
        await store.record_async("req-1", "rag", 1, 9, None)
    assert store.summary() == [FeedbackSummary("rag", 1, 1, 4.0)]


def test_concurrent_writes_lose_no_rows(tmp_path: Path) -> None:
    store = FeedbackStore(tmp_path / "fb.sqlite3")
    threads_n, per_thread = 8, 50
    ids: list[int] = []
    ids_lock = threading.Lock()
    errors: list[BaseException] = []

    def worker(t: int) -> None:
        try:
            for i in range(per_thread):
                row_id = store.record(f"t{t}-{i}", f"p{t % 2}", 1, 1 + (i % 5), None)
                with ids_lock:
                    ids.append(row_id)
        except BaseException as exc:  # surfaced below; a thread's exception is otherwise lost
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert errors == []
    assert len(set(ids)) == threads_n * per_thread
    assert sum(s.count for s in store.summary()) == threads_n * per_thread
    store.close()
    assert len(_rows(tmp_path / "fb.sqlite3")) == threads_n * per_thread
