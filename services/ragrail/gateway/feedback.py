"""User ratings of answers, and which pipeline version gave each answer, in one SQL store.

A rating is an integer from 1 (bad) to 5 (good) about one request id, with an optional comment.
The store is SQLite (a file; the local default, one gateway process) or PostgreSQL (a URL; shared
by every gateway replica), with the same SQL (ragrail.gateway.sqldb).

Attribution: when the gateway answers, it stores request id -> (pipeline, version, API key) here
(``remember_answer``), so a rating sent to any replica sharing the store finds the version that
answered. A rating is attributed only when the same key asks within ``attribution_hours``;
otherwise (unknown id, another key's id, expired) it is stored with pipeline and version NULL
(the proto defaults "" and 0 mean "unknown") and ``matched_request`` is false. Another key's id
is treated as unknown rather than refused, so nothing tells a caller which ids exist.

One rating per answer and key: a key that rates the same request id again replaces its earlier
rating (rating, comment and time; the attribution too, unless the new rating finds none where
the earlier one did, e.g. after ``attribution_hours``), so a version's count is how many answers
were rated and its mean weighs each answer once, however often a caller changes their mind or
resends. (With auth off every caller is the one anonymous key: the latest rating of an id wins.)
Another key's rating of the same id is its own row. Ratings imported without a key (``record``)
are kept as given.

Bounds: one key may store ``per_key_limit`` ratings (a replaced one counts once) per
``per_key_window_s`` over all replicas (RESOURCE_EXHAUSTED past it; concurrent writers may
overshoot by at most their number, as the count and the insert are not one atomic step);
``sweep`` deletes expired ratings and attributions, at most ``sweep_batch`` rows per table per call.

Every write is committed before a method returns, so an acknowledged rating survives a crash of
the gateway. The schema is created or migrated on open, once per process, and its version kept
in ``schema_version``.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ragrail.common.config import FeedbackSettings
from ragrail.common.errors import InvalidArgument, ResourceExhausted
from ragrail.gateway.auth import ANONYMOUS_NAME
from ragrail.gateway.sqldb import MEMORY, Database, Dialect, Transaction, open_database, redact

log = logging.getLogger(__name__)

__all__ = ["MEMORY", "FeedbackStore", "FeedbackSummary", "Recorded", "validate"]

MIN_RATING = 1
MAX_RATING = 5
MAX_COMMENT_CHARS = 2000
MAX_PIPELINE_CHARS = 128
_REQUEST_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
DAY_S = 86_400.0
HOUR_S = 3_600.0


def _migrations(d: Dialect) -> list[list[str]]:
    """Schema steps in order; step N brings the schema to version N. Never edit a released step: add one."""
    return [
        [  # 1: the ratings (the table SQLite files made before versioning already have)
            f"""CREATE TABLE IF NOT EXISTS feedback (
                id {d.id_column},
                request_id TEXT NOT NULL,
                pipeline TEXT,
                pipeline_version INTEGER,
                rating INTEGER NOT NULL,
                comment TEXT,
                created_at {d.float_type} NOT NULL
            )""",
            "CREATE INDEX IF NOT EXISTS feedback_pipeline_version ON feedback (pipeline, pipeline_version)",
        ],
        [  # 2: who rated (per-key limits), retention, and the answers' attribution shared by replicas
            "ALTER TABLE feedback ADD COLUMN principal TEXT",
            "CREATE INDEX feedback_principal_created ON feedback (principal, created_at)",
            "CREATE INDEX feedback_created ON feedback (created_at)",
            f"""CREATE TABLE answers (
                request_id TEXT PRIMARY KEY,
                pipeline TEXT NOT NULL,
                pipeline_version INTEGER NOT NULL,
                principal TEXT NOT NULL,
                answered_at {d.float_type} NOT NULL
            )""",
            "CREATE INDEX answers_answered_at ON answers (answered_at)",
        ],
        [  # 3: one rating per (request id, key): the latest replaces earlier ones. Duplicates from
            # before are collapsed to the latest (highest id). A replica still on schema 2 during a
            # rolling upgrade gets a unique violation for a re-rating (INTERNAL) until it is replaced.
            "DELETE FROM feedback WHERE principal IS NOT NULL AND id NOT IN"
            " (SELECT MAX(id) FROM feedback WHERE principal IS NOT NULL GROUP BY request_id, principal)",
            "CREATE UNIQUE INDEX feedback_request_principal ON feedback (request_id, principal)",
        ],
    ]


@dataclass(frozen=True)
class FeedbackSummary:
    """Ratings of one pipeline version; pipeline/version are None for unknown requests."""

    pipeline: str | None
    version: int | None
    count: int
    mean_rating: float


@dataclass(frozen=True)
class Recorded:
    """A stored rating: its row id, and the version it was attributed to (None: unknown)."""

    row_id: int
    pipeline: str | None
    version: int | None

    @property
    def matched(self) -> bool:
        return self.pipeline is not None


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
    """Ratings and attributions over a SQLite file or a PostgreSQL URL; safe to share between threads.

    Methods block (a thread hop each for async callers: the ``*_async`` twins).
    """

    def __init__(
        self,
        target: str | Path,
        *,
        settings: FeedbackSettings | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings or FeedbackSettings()
        self._clock = clock
        self.location = redact(str(target))  # for logs: the URL's password masked
        s = self.settings
        self._db: Database = open_database(
            str(target),
            pool_size=s.pool_size,
            statement_timeout_s=s.statement_timeout_s,
            connect_timeout_s=s.connect_timeout_s,
        )
        try:
            self.schema_version = _migrate(self._db)
        except BaseException:
            self._db.close()
            raise

    @property
    def backend(self) -> str:
        return self._db.dialect.name

    # -- answers ---------------------------------------------------------------------------

    def remember_answer(self, request_id: str, pipeline: str, version: int, principal: str) -> None:
        """Records which pipeline version answered ``request_id`` for ``principal`` (latest wins)."""
        if not _REQUEST_ID.fullmatch(request_id):
            return  # a caller's x-request-id that Feedback could never name: nothing to attribute
        with self._db.transaction() as tx:
            tx.execute(
                "INSERT INTO answers (request_id, pipeline, pipeline_version, principal, answered_at)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (request_id) DO UPDATE SET pipeline = excluded.pipeline,"
                " pipeline_version = excluded.pipeline_version, principal = excluded.principal,"
                " answered_at = excluded.answered_at",
                (request_id, pipeline, version, principal, self._clock()),
            )

    async def remember_answer_async(self, request_id: str, pipeline: str, version: int, principal: str) -> None:
        await asyncio.to_thread(self.remember_answer, request_id, pipeline, version, principal)

    # -- ratings ---------------------------------------------------------------------------

    def submit(self, request_id: str, principal: str, rating: int, comment: str | None = None) -> Recorded:
        """Stores a caller's rating (replacing its earlier one of ``request_id``), attributed when
        ``principal`` was answered ``request_id`` recently.

        Raises InvalidArgument for a bad rating, ResourceExhausted past the key's limit.
        """
        validate(request_id, rating, comment)
        now = self._clock()
        with self._db.transaction() as tx:
            self._check_limit(tx, principal, now)
            attributed = self._attribution(tx, request_id, principal, now)
            pipeline, version = attributed if attributed else (None, None)
            return _insert(tx, request_id, pipeline, version, rating, comment, principal, now)

    async def submit_async(
        self, request_id: str, principal: str, rating: int, comment: str | None = None
    ) -> Recorded:
        """``submit`` off the event loop: a commit (an fsync, a network round trip) must not stall others."""
        return await asyncio.to_thread(self.submit, request_id, principal, rating, comment)

    def record(
        self,
        request_id: str,
        pipeline: str | None,
        version: int | None,
        rating: int,
        comment: str | None = None,
        principal: str | None = None,
    ) -> int:
        """Stores one rating (1..5) with the attribution given (tools, imports); returns its row id."""
        validate(request_id, rating, comment, pipeline)
        known = bool(pipeline)
        with self._db.transaction() as tx:
            return _insert(
                tx, request_id, pipeline if known else None, version if known and version else None,
                rating, comment, principal, self._clock(),
            ).row_id

    async def record_async(
        self,
        request_id: str,
        pipeline: str | None,
        version: int | None,
        rating: int,
        comment: str | None = None,
    ) -> int:
        return await asyncio.to_thread(self.record, request_id, pipeline, version, rating, comment)

    def _check_limit(self, tx: Transaction, principal: str, now: float) -> None:
        s = self.settings
        if principal == ANONYMOUS_NAME:  # as the key rate limits: auth off means nobody to tell apart
            return
        since = now - s.per_key_window_s
        # Counting stops at the limit: the work per call is bounded whatever a key has sent.
        [(count,)] = tx.execute(
            "SELECT COUNT(*) FROM (SELECT 1 FROM feedback WHERE principal = ? AND created_at > ? LIMIT ?) AS recent",
            (principal, since, s.per_key_limit),
        )
        if int(count) < s.per_key_limit:
            return
        [(oldest,)] = tx.execute(
            "SELECT MIN(created_at) FROM feedback WHERE principal = ? AND created_at > ?", (principal, since)
        )
        retry_after = max(1.0, float(oldest) + s.per_key_window_s - now)
        raise ResourceExhausted(
            f"feedback limit reached: key {principal!r} stored {s.per_key_limit} ratings in the last "
            f"{s.per_key_window_s:g} s (gateway.feedback.per_key_limit); retry in {retry_after:.0f} s",
            retry_after_s=retry_after,
        )

    def _attribution(self, tx: Transaction, request_id: str, principal: str, now: float) -> tuple[str, int] | None:
        rows = tx.execute(
            "SELECT pipeline, pipeline_version FROM answers"
            " WHERE request_id = ? AND principal = ? AND answered_at > ?",
            (request_id, principal, now - self.settings.attribution_hours * HOUR_S),
        )
        return (str(rows[0][0]), int(rows[0][1])) if rows else None

    # -- upkeep and reading ----------------------------------------------------------------

    def sweep(self) -> int:
        """Deletes expired ratings and attributions, at most ``sweep_batch`` of each; returns how many."""
        s, now = self.settings, self._clock()
        with self._db.transaction() as tx:
            ratings = tx.execute_count(
                "DELETE FROM feedback WHERE id IN (SELECT id FROM feedback WHERE created_at < ? LIMIT ?)",
                (now - s.retention_days * DAY_S, s.sweep_batch),
            )
            answers = tx.execute_count(
                "DELETE FROM answers WHERE request_id IN"
                " (SELECT request_id FROM answers WHERE answered_at < ? LIMIT ?)",
                (now - s.attribution_hours * HOUR_S, s.sweep_batch),
            )
        return ratings + answers

    async def sweep_async(self) -> int:
        return await asyncio.to_thread(self.sweep)

    def summary(self, pipeline: str | None = None) -> list[FeedbackSummary]:
        """Count and mean rating per (pipeline, version), optionally for one pipeline."""
        query = "SELECT pipeline, pipeline_version, COUNT(*), AVG(rating) FROM feedback"
        params: tuple[str, ...] = ()
        if pipeline is not None:
            query += " WHERE pipeline = ?"
            params = (pipeline,)
        # NULLS FIRST: SQLite's default order, spelled out for PostgreSQL (which sorts NULLs last).
        query += " GROUP BY pipeline, pipeline_version ORDER BY pipeline NULLS FIRST, pipeline_version NULLS FIRST"
        with self._db.transaction() as tx:
            rows = tx.execute(query, params)
        return [FeedbackSummary(p, None if v is None else int(v), int(n), float(mean)) for p, v, n, mean in rows]

    def close(self) -> None:
        """Closes the connection(s); further calls fail. Safe to call twice."""
        self._db.close()

    def __enter__(self) -> FeedbackStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _insert(
    tx: Transaction,
    request_id: str,
    pipeline: str | None,
    version: int | None,
    rating: int,
    comment: str | None,
    principal: str | None,
    now: float,
) -> Recorded:
    # A key's second rating of an id replaces its first (the row keeps its id); the attribution the
    # first one found stays when the second finds none (its answer's attribution expired meanwhile).
    # pipeline and version are NULL together, so the two COALESCEs pick from the same row. Rows
    # without a principal (imports through ``record``) never conflict: NULLs are distinct in a
    # unique index. Returns the row as stored.
    [(row_id, stored_pipeline, stored_version)] = tx.execute(
        "INSERT INTO feedback (request_id, pipeline, pipeline_version, rating, comment, principal, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (request_id, principal) DO UPDATE SET"
        " pipeline = COALESCE(excluded.pipeline, feedback.pipeline),"
        " pipeline_version = COALESCE(excluded.pipeline_version, feedback.pipeline_version),"
        " rating = excluded.rating, comment = excluded.comment, created_at = excluded.created_at"
        " RETURNING id, pipeline, pipeline_version",
        (request_id, pipeline, version, rating, comment or None, principal, now),
    )
    return Recorded(
        int(row_id),
        None if stored_pipeline is None else str(stored_pipeline),
        None if stored_version is None else int(stored_version),
    )


def _migrate(db: Database) -> int:
    """Brings the schema to the newest version, idempotently; returns the version it is at."""
    steps = _migrations(db.dialect)
    with db.transaction() as tx:
        if db.dialect.migration_lock:
            tx.execute(db.dialect.migration_lock)
        tx.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        rows = tx.execute("SELECT version FROM schema_version")
        current = int(rows[0][0]) if rows else 0
        for number, statements in enumerate(steps, start=1):
            if number <= current:
                continue
            for statement in statements:
                tx.execute(statement)
            log.info("feedback store: schema migrated to version %d", number)
        if current < len(steps):
            tx.execute("DELETE FROM schema_version")
            tx.execute("INSERT INTO schema_version (version) VALUES (?)", (len(steps),))
    # A newer gateway may have migrated further (a rolling upgrade): its steps only add, so read on.
    return max(current, len(steps))
