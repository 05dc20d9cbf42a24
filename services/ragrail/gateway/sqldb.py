"""One SQL seam for the gateway's shared state: SQLite (a file, one process) or PostgreSQL (every replica).

Callers write one portable SQL text with ``?`` placeholders, plus the few DDL words that differ
(``Dialect``), and run it in ``with db.transaction() as tx: tx.execute(...)``; a transaction is
committed when its block ends and rolled back when it raises. Calls block: async callers run
them in a thread (``asyncio.to_thread``). What bounds them is here: SQLite is one
connection behind a lock, PostgreSQL a pool of ``pool_size`` connections whose statements (and
waits for a free connection) end after ``statement_timeout_s``.

Any database failure surfaces as ``Unavailable``: to a client the store is a backend that is
down for now, and the call may be retried.
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ragrail.common.errors import InvalidArgument, Unavailable

MEMORY = ":memory:"
POSTGRES_SCHEMES = ("postgresql://", "postgres://")
SQLITE_SCHEME = "sqlite:///"
Row = tuple[Any, ...]


@dataclass(frozen=True)
class Dialect:
    """What the portable SQL cannot say alike in both databases."""

    name: str
    id_column: str  # an auto-numbered integer primary key
    float_type: str  # an 8-byte float (PostgreSQL's REAL is 4 bytes)
    # Run first in a schema migration's transaction, so replicas starting together migrate one
    # at a time. (SQLite's BEGIN IMMEDIATE already serialises writers.)
    migration_lock: str | None = None


SQLITE = Dialect("sqlite", "INTEGER PRIMARY KEY", "REAL")
POSTGRES = Dialect(
    "postgresql",
    "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
    "DOUBLE PRECISION",
    migration_lock="SELECT pg_advisory_xact_lock(7362840125)",  # any constant, the same in every replica
)


class Transaction(Protocol):
    def execute(self, sql: str, params: Sequence[object] = ()) -> list[Row]:
        """Runs one statement; returns its rows (none for a statement without results)."""
        ...

    def execute_count(self, sql: str, params: Sequence[object] = ()) -> int:
        """Runs one statement; returns how many rows it changed."""
        ...


class Database(Protocol):
    dialect: Dialect

    def transaction(self) -> contextlib.AbstractContextManager[Transaction]: ...

    def close(self) -> None: ...


def open_database(
    target: str, *, pool_size: int = 4, statement_timeout_s: float = 5.0, connect_timeout_s: float = 10.0
) -> Database:
    """A PostgreSQL pool for a ``postgresql://`` URL; otherwise a SQLite file (a path or ``sqlite:///path``)."""
    if target.startswith(POSTGRES_SCHEMES):
        return PostgresDatabase(
            target, pool_size=pool_size, statement_timeout_s=statement_timeout_s, connect_timeout_s=connect_timeout_s
        )
    if "://" in target and not target.startswith(SQLITE_SCHEME):
        raise InvalidArgument(f"feedback store: unsupported URL scheme in {redact(target)!r}")
    return SqliteDatabase(target.removeprefix(SQLITE_SCHEME))


def redact(url: str) -> str:
    """The URL without its password (in the user part or a ``password=`` parameter), for messages and logs."""
    url = _PASSWORD_PARAM.sub(r"\1***", url)
    scheme, sep, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if not sep or not at or ":" not in userinfo:
        return url
    return f"{scheme}://{userinfo.split(':', 1)[0]}:***@{host}"


_PASSWORD_PARAM = re.compile(r"([?&]password=)[^&]*", re.IGNORECASE)


class _SqliteTransaction:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Sequence[object] = ()) -> list[Row]:
        return self._conn.execute(sql, tuple(params)).fetchall()

    def execute_count(self, sql: str, params: Sequence[object] = ()) -> int:
        return self._conn.execute(sql, tuple(params)).rowcount


class SqliteDatabase:
    """One connection guarded by a lock; safe to share between threads."""

    dialect = SQLITE

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._conn = _connect_sqlite(path)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Transaction]:
        with self._lock:
            try:
                # IMMEDIATE takes the write lock at once: processes sharing the file serialise here
                # (waiting up to the connection's timeout) instead of failing at their first write.
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    yield _SqliteTransaction(self._conn)
                except BaseException:
                    self._conn.execute("ROLLBACK")
                    raise
                self._conn.execute("COMMIT")
            except sqlite3.OperationalError as exc:  # locked too long, disk full, I/O error
                raise Unavailable(f"feedback store {self.path}: {_one_line(exc)}") from exc

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def _connect_sqlite(path: str) -> sqlite3.Connection:
    if path != MEMORY:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    # Autocommit mode (isolation_level=None): transactions are exactly the BEGIN/COMMIT above.
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=10.0)
    # WAL lets a reader (e.g. an analyst's sqlite3 shell) run beside the gateway;
    # synchronous=FULL makes each commit durable across power loss, not just crashes
    # (measured here: 0.5 ms per committed one-row write).
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    return conn


class _PostgresTransaction:
    def __init__(self, conn: Any) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Sequence[object] = ()) -> list[Row]:
        cursor = self._conn.execute(_pyformat(sql), tuple(params))
        return cursor.fetchall() if cursor.description else []

    def execute_count(self, sql: str, params: Sequence[object] = ()) -> int:
        return int(self._conn.execute(_pyformat(sql), tuple(params)).rowcount)


def _pyformat(sql: str) -> str:
    """The portable text's "?" placeholders as psycopg's "%s" (the SQL holds no other ? or %)."""
    return sql.replace("?", "%s")


class PostgresDatabase:
    """A bounded psycopg pool; a connection broken by a server restart is replaced before use."""

    dialect = POSTGRES

    def __init__(self, url: str, *, pool_size: int, statement_timeout_s: float, connect_timeout_s: float) -> None:
        from psycopg.conninfo import conninfo_to_dict  # only a PostgreSQL store needs the driver
        from psycopg_pool import ConnectionPool

        self.url = redact(url)
        timeout_ms = max(1, int(statement_timeout_s * 1000))
        # Added to the URL's own server options (a search_path, say), which a bare kwarg would replace.
        options = f"{conninfo_to_dict(url).get('options', '')} -c statement_timeout={timeout_ms}".strip()
        self._pool = ConnectionPool(
            url,
            min_size=1,
            max_size=pool_size,
            timeout=statement_timeout_s,  # the longest wait for a free connection
            kwargs={
                "options": options,
                "connect_timeout": max(1, int(connect_timeout_s)),
                "application_name": "ragrail-gateway",
            },
            check=ConnectionPool.check_connection,
            open=False,
        )
        try:
            self._pool.open(wait=True, timeout=connect_timeout_s)
        except Exception as exc:
            self._pool.close()
            raise Unavailable(f"feedback store {self.url}: cannot connect: {_one_line(exc)}") from exc

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Transaction]:
        import psycopg
        import psycopg_pool

        try:
            # The pool's connection block commits when the body ends, rolls back when it raises.
            with self._pool.connection() as conn:
                yield _PostgresTransaction(conn)
        except (psycopg.OperationalError, psycopg_pool.PoolTimeout) as exc:
            raise Unavailable(f"feedback store {self.url}: {_one_line(exc)}") from exc

    def close(self) -> None:
        self._pool.close()


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


__all__ = ["Database", "Dialect", "Transaction", "open_database", "redact"]
