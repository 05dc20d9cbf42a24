"""Two gateway replicas sharing one feedback store: a rating sent to either is attributed.

Each test starts two real gateways (port 0, over the unit fakes) whose ``gateway.feedback.url``
names the same store: a database on a private PostgreSQL server (tests/postgres.py), or one
SQLite file (two processes on one host may share it; pods may not). An answer from gateway A is
rated through gateway B, and the row B stored must name the version A answered with.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
import yaml

from ragrail.gateway.auth import hash_key
from ragrail.gateway.sqldb import open_database
from ragrail.gateway.v1 import gateway_pb2 as pb
from tests.contract.gateway_fixtures import GatewayFactory, Harness, spec

pytestmark = pytest.mark.asyncio(loop_scope="session")

QUERY = "What is the capital of France?"
KEYS = {"alpha": "rg_replicas_alpha", "bravo": "rg_replicas_bravo"}


@pytest.fixture(params=["postgresql", "sqlite"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgresql":
        return str(request.getfixturevalue("postgres_url"))
    return f"sqlite:///{tmp_path / 'shared' / 'feedback.sqlite3'}"


@pytest_asyncio.fixture(loop_scope="session")
async def gateways(tmp_path: Path) -> AsyncIterator[GatewayFactory]:
    factory = GatewayFactory(tmp_path)
    yield factory
    await factory.close()


def keys_file(folder: Path) -> Path:
    path = folder / "keys.yaml"
    entries = [
        {"name": name, "sha256": hash_key(key), "pipelines": ["*"], "rate_per_s": 1000, "burst": 1000}
        for name, key in KEYS.items()
    ]
    path.write_text(yaml.safe_dump({"keys": entries}))
    return path


async def two_replicas(
    gateways: GatewayFactory, tmp_path: Path, store_url: str, **feedback: Any
) -> tuple[Harness, Harness]:
    """Gateways A and B: the same specs (rag@1, rag@2: the default is 2), keys and store."""
    settings = {
        "auth": {"enabled": True, "keys_file": str(keys_file(tmp_path))},
        "feedback": {"url": store_url, **feedback},
    }
    specs = [spec("rag", 1), spec("rag", 2)]
    return await gateways(specs, gateway=settings), await gateways(specs, gateway=settings)


def as_key(name: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {KEYS[name]}"),)


def stored_rows(url: str) -> list[tuple[Any, ...]]:
    db = open_database(url)
    try:
        with db.transaction() as tx:
            return tx.execute(
                "SELECT request_id, pipeline, pipeline_version, principal, rating FROM feedback ORDER BY id"
            )
    finally:
        db.close()


async def rpc_error(call: Awaitable[Any]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value


async def test_a_rating_sent_to_another_replica_is_attributed(
    gateways: GatewayFactory, tmp_path: Path, store_url: str
) -> None:
    a, b = await two_replicas(gateways, tmp_path, store_url)
    # Pinned to version 1, not the default 2: a row that says 1 came from A's answer.
    answer = await a.stub().Run(pb.RunRequest(pipeline="rag@1", query=QUERY), metadata=as_key("alpha"), timeout=5)
    assert (answer.pipeline, answer.pipeline_version) == ("rag", 1) and answer.request_id

    rated = await b.stub().Feedback(
        pb.FeedbackRequest(request_id=answer.request_id, rating=4, comment="ok"), metadata=as_key("alpha"), timeout=5
    )
    assert rated.matched_request
    # The same id rated by another key: stored, unattributed, and not confirmed as known.
    other = await b.stub().Feedback(
        pb.FeedbackRequest(request_id=answer.request_id, rating=1), metadata=as_key("bravo"), timeout=5
    )
    assert not other.matched_request

    assert stored_rows(store_url) == [
        (answer.request_id, "rag", 1, "alpha", 4),
        (answer.request_id, None, None, "bravo", 1),
    ]
    assert b.sample("ragrail_gateway_feedback_total", {"pipeline": "rag", "version": "1", "rating": "4"}) == 1
    assert b.sample("ragrail_gateway_feedback_total", {"pipeline": "unknown", "version": "0", "rating": "1"}) == 1


async def test_a_streamed_answer_and_a_callers_own_request_id_are_attributed_too(
    gateways: GatewayFactory, tmp_path: Path, store_url: str
) -> None:
    a, b = await two_replicas(gateways, tmp_path, store_url)
    metadata = (*as_key("bravo"), ("x-request-id", "caller-chosen-id-7"))
    stream = b.stub().RunStream(pb.RunStreamRequest(pipeline="rag", query=QUERY), metadata=metadata, timeout=5)
    finals = [m.final async for m in stream if m.HasField("final")]
    assert [(f.request_id, f.pipeline_version) for f in finals] == [("caller-chosen-id-7", 2)]

    rated = await a.stub().Feedback(
        pb.FeedbackRequest(request_id="caller-chosen-id-7", rating=5), metadata=as_key("bravo"), timeout=5
    )
    assert rated.matched_request
    assert stored_rows(store_url) == [("caller-chosen-id-7", "rag", 2, "bravo", 5)]


async def test_the_per_key_limit_counts_ratings_on_every_replica(
    gateways: GatewayFactory, tmp_path: Path, store_url: str
) -> None:
    a, b = await two_replicas(gateways, tmp_path, store_url, per_key_limit=2)
    for request_id, harness in (("r1", a), ("r2", b)):  # two answers: one key's ratings of one replace
        await harness.stub().Feedback(
            pb.FeedbackRequest(request_id=request_id, rating=3), metadata=as_key("alpha"), timeout=5
        )
    err = await rpc_error(
        a.stub().Feedback(pb.FeedbackRequest(request_id="r3", rating=3), metadata=as_key("alpha"), timeout=5)
    )
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.details()
    assert "feedback limit" in (err.details() or "") and "'alpha'" in (err.details() or "")
    assert dict(err.trailing_metadata() or ()).get("retry-after")
    # Another key still may.
    await b.stub().Feedback(pb.FeedbackRequest(request_id="r1", rating=3), metadata=as_key("bravo"), timeout=5)
    assert [row[3] for row in stored_rows(store_url)] == ["alpha", "alpha", "bravo"]


async def test_each_replica_sweeps_expired_attributions(
    gateways: GatewayFactory, tmp_path: Path, store_url: str
) -> None:
    # Attributions kept 1.8 s, swept every 50 ms: the gateway's own sweep task must empty the table.
    a, _ = await two_replicas(gateways, tmp_path, store_url, attribution_hours=0.0005, sweep_interval_s=0.05)
    answer = await a.stub().Run(pb.RunRequest(pipeline="rag", query=QUERY), metadata=as_key("alpha"), timeout=5)
    assert answered_ids(store_url) == [answer.request_id]
    deadline = asyncio.get_running_loop().time() + 20
    while answered_ids(store_url):
        assert asyncio.get_running_loop().time() < deadline, "no sweep deleted the expired attribution"
        await asyncio.sleep(0.05)  # polling interval
    rated = await a.stub().Feedback(
        pb.FeedbackRequest(request_id=answer.request_id, rating=2), metadata=as_key("alpha"), timeout=5
    )
    assert not rated.matched_request


def answered_ids(url: str) -> list[str]:
    db = open_database(url)
    try:
        with db.transaction() as tx:
            return [row[0] for row in tx.execute("SELECT request_id FROM answers")]
    finally:
        db.close()
