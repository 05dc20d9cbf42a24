"""User ratings of answers, kept in SQLite next to the gateway.

A rating is an integer from 1 (bad) to 5 (good) about one request id, with an
optional comment. The pipeline and version are those that answered the request
when the gateway still remembers it; otherwise they are stored as NULL (the
proto defaults "" and 0 mean "unknown"). ``summary`` groups ratings by
pipeline version, which is what an A/B comparison of versions needs.

Every write is committed before ``record`` returns, so an acknowledged rating
survives a crash of the gateway.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ragrail.common.errors import InvalidArgument

MEMORY = ":memory:"
MIN_RATING = 1
MAX_RATING = 5
MAX_COMMENT_CHARS = 2000
MAX_PIPELINE_CHARS = 128
_REQUEST_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")

_SCHEMA = (
    """
    CREATE TABLE IF NOT EXISTS feedback (
        id INTEGER PRIMARY KEY,
        request_id TEXT NOT NULL,
        pipeline TEXT,
        pipeline_version INTEGER,
        rating INTEGER NOT NULL,
        comment TEXT,
        created_at REAL NOT NULL
    )
    """,
    "CREATE INDEX IF NOT EXISTS feedback_pipeline_version ON feedback (pipeline, pipeline_version)",
)


@dataclass(frozen=True)
class FeedbackSummary:
    """Ratings of one pipeline version; pipeline/version are None for unknown requests."""

    pipeline: str | None
    version: int | None
    count: int
    mean_rating: float


def validate(request_id: str, rating: int, comment: str | None, pipeline: str | None = None) -> None:
    """Raises a one-line InvalidArgument for anything ``record`` would refuse."""
    if not isinstance(request_id, str) or not _REQUEST_ID.fullmatch(request_id):
        raise InvalidArgument("request_id must be 1-128 characters of A-Z, a-z, 0-9, '_' or '-'")
    # bool is an int subclass; True as a rating of 1 is a caller bug.
    if isinstance(rating, bool) or not isinstance(rating, int) or not MIN_RATING <= rating <= MAX_RATING:
        raise InvalidArgument(f"rating must be an integer from {MIN_RATING} to {MAX_RATING}, got {rating!r}")
    if comment is not None and len(comment) > MAX_COMMENT_CHARS:
        raise InvalidArgument(f"comment is {len(comment)} characters; the limit is {MAX_COMMENT_CHARS}")
    if pipeline is not None and len(pipeline) > MAX_PIPELINE_CHARS:
        raise InvalidArgument(f"pipeline name is longer than {MAX_PIPELINE_CHARS} characters")


class FeedbackStore:
    """One SQLite connection guarded by a lock; safe to share between threads."""

    def __init__(self, path: str | Path, *, clock: Callable[[], float] = time.time) -> None:
        self.path = str(path)
        self._clock = clock
        self._lock = threading.Lock()
        self._conn = _connect(self.path)

    def record(
        self,
        request_id: str,
        pipeline: str | None,
        version: int | None,
        rating: int,
        comment: str | None = None,
    ) -> int:
        """Stores one rating (1..5) and returns its row id, committed."""
        validate(request_id, rating, comment, pipeline)
        known = bool(pipeline)
        row = (
            request_id,
            pipeline if known else None,
            version if known and version else None,
            rating,
            comment or None,
            self._clock(),
        )
        with self._lock:
            cursor = self._conn.execute(
                "INSERT INTO feedback (request_id, pipeline, pipeline_version, rating, comment, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                row,
            )
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    async def record_async(
        self,
        request_id: str,
        pipeline: str | None,
        version: int | None,
        rating: int,
        comment: str | None = None,
    ) -> int:
        """``record`` off the event loop: an fsync must not stall other requests."""
        return await asyncio.to_thread(self.record, request_id, pipeline, version, rating, comment)

    def summary(self, pipeline: str | None = None) -> list[FeedbackSummary]:
        """Count and mean rating per (pipeline, version), optionally for one pipeline."""
        query = "SELECT pipeline, pipeline_version, COUNT(*), AVG(rating) FROM feedback"
        params: tuple[str, ...] = ()
        if pipeline is not None:
            query += " WHERE pipeline = ?"
            params = (pipeline,)
        query += " GROUP BY pipeline, pipeline_version ORDER BY pipeline, pipeline_version"
        with self._lock:
            rows = self._conn.execute(query, params).fetchall()
        return [FeedbackSummary(p, v, int(n), float(mean)) for p, v, n, mean in rows]

    def close(self) -> None:
        """Closes the connection; further calls fail. Safe to call twice."""
        with self._lock:
            self._conn.close()

    def __enter__(self) -> FeedbackStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _connect(path: str) -> sqlite3.Connection:
    if path != MEMORY:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    # Autocommit (isolation_level=None): each INSERT is its own committed transaction.
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=10.0)
    # WAL lets a reader (e.g. an analyst's sqlite3 shell) run beside the gateway;
    # synchronous=FULL makes each commit durable across power loss, not just crashes.
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    for statement in _SCHEMA:
        conn.execute(statement)
    return conn
