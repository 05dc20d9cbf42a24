"""Issue 15's "Done when" on the real stack: two gateway replicas over one PostgreSQL database.

Gateways A and B are `ragrail gateway` processes (loadtest/chaos_stack.py's GatewayProcess)
against the integration stack's Serve, the Kubernetes topology: gateways apart from Ray, each
with its own memory, sharing only the database. The database is on a private PostgreSQL server
started by the test (tests/postgres.py); A names it in its config (gateway.feedback.url), B
takes it from RAGRAIL_FEEDBACK_URL as a pod does from the chart's Secret. Both require API keys,
so the rows name who rated.

A answers with the real models; the rating sent to B must be attributed to the pipeline version
A answered with, and the row is read from PostgreSQL itself, not through the gateway's store.
The same runs over one SQLite file (two processes on one host may share it: the local default).
The contract tier runs the scenario over the unit fakes (tests/contract/test_feedback_replicas.py).
"""

from __future__ import annotations

import contextlib
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from loadtest.chaos_stack import GatewayProcess
from ragrail.cli.main import FEEDBACK_URL_ENV
from ragrail.gateway.auth import hash_key
from ragrail.gateway.sqldb import SQLITE_SCHEME
from ragrail.gateway.v1 import gateway_pb2 as pb
from ragrail.gateway.v1 import gateway_pb2_grpc
from tests.integration.conftest import Stack
from tests.postgres import PostgresServer
from tests.unit.sample_questions import ANSWERABLE

pytestmark = pytest.mark.integration

KEYS = {"analyst": "rg_feedback_stack_analyst", "intruder": "rg_feedback_stack_intruder"}
# Pinned to rag@2, which the route gives 10 % of callers: a row that says 2 came from the answer.
PIPELINE, VERSION = "rag", 2
RUN_TIMEOUT_S = 120  # a real generation on a shared 2-core machine (the specs allow it 50 s)


def keys_file(folder: Path) -> Path:
    path = folder / "keys.yaml"
    entries = [
        {"name": name, "sha256": hash_key(key), "pipelines": ["*"], "rate_per_s": 100, "burst": 100}
        for name, key in KEYS.items()
    ]
    path.write_text(yaml.safe_dump({"keys": entries}))
    return path


@pytest.fixture(scope="module", params=["postgresql", "sqlite"])
def store_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A fresh database on the session's PostgreSQL server (skipped, saying why, where none can
    start), or one SQLite file (two processes on one host may share it; pods may not)."""
    if request.param == "postgresql":
        server: PostgresServer = request.getfixturevalue("postgres_server")
        return server.new_database()
    return f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'feedback.sqlite3'}"


@pytest.fixture(scope="module")
def replicas(
    store_url: str, stack: Stack, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[GatewayProcess, GatewayProcess, str]]:
    """Gateways A and B, serving, over one fresh store; yields (a, b, the store's URL).

    ``store_url`` comes first: where PostgreSQL cannot start, its tests skip before the stack is
    started for them.
    """
    url = store_url
    root = tmp_path_factory.mktemp("replicas")
    keys = keys_file(root)
    config = yaml.safe_load(stack.config_path.read_text())

    def settings(name: str, feedback_url: str | None) -> Callable[[dict[str, Any]], None]:
        def mutate(own: dict[str, Any]) -> None:
            own["data_dir"] = str(root / name)  # nothing shared but the database
            own["gateway"]["auth"] = {"enabled": True, "keys_file": str(keys)}
            own["gateway"].setdefault("feedback", {})
            if feedback_url:
                own["gateway"]["feedback"]["url"] = feedback_url
            else:
                own["gateway"]["feedback"].pop("url", None)

        return mutate

    a = GatewayProcess(config, stack.env, root, name="gateway-a", mutate=settings("gateway-a", url))
    b = GatewayProcess(
        config, stack.env, root, name="gateway-b", mutate=settings("gateway-b", None),
        extra_env={FEEDBACK_URL_ENV: url},
    )
    started: list[GatewayProcess] = []
    try:
        for gateway in (a, b):
            gateway.start()
            started.append(gateway)
        yield a, b, url
    finally:
        for gateway in started:
            gateway.stop()


def call(gateway: GatewayProcess, method: str, request: Any, key: str, timeout: float = 30) -> Any:
    with grpc.insecure_channel(gateway.address) as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        return getattr(stub, method)(request, metadata=(("authorization", f"Bearer {KEYS[key]}"),), timeout=timeout)


def stored(url: str, request_id: str) -> list[tuple[Any, ...]]:
    """The rows for ``request_id``, read with the database's own driver, not the gateway's store."""
    query = "SELECT principal, pipeline, pipeline_version, rating, comment FROM feedback WHERE request_id = ? ORDER BY id"
    if url.startswith(SQLITE_SCHEME):
        with contextlib.closing(sqlite3.connect(url.removeprefix(SQLITE_SCHEME))) as conn:
            return conn.execute(query, (request_id,)).fetchall()
    import psycopg

    with psycopg.connect(url) as conn:
        return conn.execute(query.replace("?", "%s"), (request_id,)).fetchall()


def logs(*gateways: GatewayProcess) -> str:
    return "\n".join(f"--- {g.log_path.name}:\n{g.last_log(1500)}" for g in gateways)


@pytest.fixture(scope="module")
def answer(replicas: tuple[GatewayProcess, GatewayProcess, str]) -> pb.RunResponse:
    """One real answer from gateway A, for the key "analyst" (one generation serves both tests)."""
    a, b, _ = replicas
    request = pb.RunRequest(pipeline=f"{PIPELINE}@{VERSION}", query=ANSWERABLE[0][0])
    response: pb.RunResponse = call(a, "Run", request, "analyst", timeout=RUN_TIMEOUT_S)
    assert (response.pipeline, response.pipeline_version) == (PIPELINE, VERSION), response
    assert response.request_id
    return response


def test_a_rating_sent_to_the_other_replica_is_attributed_to_the_version_that_answered(
    replicas: tuple[GatewayProcess, GatewayProcess, str], answer: pb.RunResponse
) -> None:
    a, b, url = replicas
    backend = "sqlite" if url.startswith(SQLITE_SCHEME) else "postgresql"
    for gateway in (a, b):  # A from its config, B from the environment: both on the shared store
        assert f"feedback store: {backend} at " in gateway.last_log(100_000), logs(gateway)
    rated = call(b, "Feedback", pb.FeedbackRequest(request_id=answer.request_id, rating=4, comment="useful"), "analyst")
    assert rated.matched_request, logs(a, b)
    assert ("analyst", PIPELINE, VERSION, 4, "useful") in stored(url, answer.request_id)
    # The same key changes its mind through A: its one row is replaced, still attributed.
    assert call(a, "Feedback", pb.FeedbackRequest(request_id=answer.request_id, rating=5), "analyst").matched_request
    assert [row for row in stored(url, answer.request_id) if row[0] == "analyst"] == [
        ("analyst", PIPELINE, VERSION, 5, None)
    ]


def test_a_forged_or_anothers_request_id_is_stored_unattributed(
    replicas: tuple[GatewayProcess, GatewayProcess, str], answer: pb.RunResponse
) -> None:
    a, b, url = replicas
    forged = f"forged-{uuid.uuid4().hex}"
    assert not call(b, "Feedback", pb.FeedbackRequest(request_id=forged, rating=1), "analyst").matched_request
    assert stored(url, forged) == [("analyst", None, None, 1, None)]
    # A real answer's id, rated by a key it was not given to: stored, attributed to nothing, and
    # the reply does not confirm that the id exists.
    other = call(a, "Feedback", pb.FeedbackRequest(request_id=answer.request_id, rating=2), "intruder")
    assert not other.matched_request
    assert ("intruder", None, None, 2, None) in stored(url, answer.request_id)
