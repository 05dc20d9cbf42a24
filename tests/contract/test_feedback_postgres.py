"""The feedback store's tests (tests/unit/test_feedback_store_logic.py) on a real PostgreSQL server.

The same test functions, imported; only ``store_target`` differs: a fresh database on the
session's private server (tests/postgres.py). A backend that behaves differently fails here.
"""

from __future__ import annotations

import pytest

from ragrail.common.errors import Unavailable
from ragrail.gateway.feedback import FeedbackStore
from tests.postgres import PostgresServer
from tests.unit.test_feedback_store_logic import *  # noqa: F401,F403 - the shared scenarios
from tests.unit.test_feedback_store_logic import SCHEMA_VERSION, StoreFactory


@pytest.fixture
def store_target(postgres_url: str) -> str:
    return postgres_url


def test_it_really_is_postgresql(make_store: StoreFactory) -> None:
    assert make_store().backend == "postgresql"


def test_replicas_starting_together_migrate_once(store_target: str) -> None:
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        stores = list(pool.map(lambda _: FeedbackStore(store_target), range(4)))
    try:
        assert {s.schema_version for s in stores} == {SCHEMA_VERSION}
        import psycopg

        with psycopg.connect(store_target) as conn:
            assert conn.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
    finally:
        for s in stores:
            s.close()


def test_a_statement_past_the_timeout_is_unavailable_not_a_hang(store_target: str) -> None:
    import psycopg

    from ragrail.common.config import FeedbackSettings

    store = FeedbackStore(store_target, settings=FeedbackSettings(statement_timeout_s=0.5))
    try:
        with psycopg.connect(store_target, autocommit=True) as blocker:
            blocker.execute("BEGIN")
            blocker.execute("LOCK TABLE answers IN ACCESS EXCLUSIVE MODE")
            with pytest.raises(Unavailable, match="statement timeout"):
                store.remember_answer("req-1", "rag", 1, "alpha")
            blocker.execute("ROLLBACK")
        store.remember_answer("req-1", "rag", 1, "alpha")  # the pool recovered
    finally:
        store.close()


def test_an_unreachable_server_is_unavailable_with_the_password_hidden(postgres_server: PostgresServer) -> None:
    from tests.postgres import _free_port

    url = f"postgresql://app:hunter2@127.0.0.1:{_free_port()}/none"
    from ragrail.common.config import FeedbackSettings

    with pytest.raises(Unavailable) as info:
        FeedbackStore(url, settings=FeedbackSettings(connect_timeout_s=1.0))
    assert "hunter2" not in info.value.message and "app:***@" in info.value.message


def test_the_urls_own_server_options_are_kept_beside_the_statement_timeout(store_target: str) -> None:
    import psycopg

    with psycopg.connect(store_target, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA ragrail_feedback")
    store = FeedbackStore(f"{store_target}?options=-csearch_path%3Dragrail_feedback")
    store.close()
    with psycopg.connect(store_target) as conn:
        tables = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'ragrail_feedback'"
        ).fetchall()
    assert {"feedback", "answers", "schema_version"} <= {t for (t,) in tables}
