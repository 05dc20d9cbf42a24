"""The embedded engine's folder: one owner, clean handover, persistence, migration, binding quirks.

The search and filter behaviour itself is in test_retrieval_core.py (run on both embedded
implementations) and tests/integration/test_qdrant_congruence.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from ragrail.common.errors import FailedPrecondition, InvalidArgument
from ragrail.retrieval import edge
from ragrail.retrieval.core import Condition, Filter, Point, VectorStore

DIM = 4


def uid(n: int) -> str:
    return str(uuid.UUID(int=n))


POINTS = [
    Point(uid(1), [1.0, 0.0, 0.0, 0.0], {"lang": "en", "public": True}),
    Point(uid(2), [0.9, 0.1, 0.0, 0.0], {"lang": "de", "public": False}),
    Point(uid(3), [0.0, 1.0, 0.0, 0.0], {"lang": "en", "public": True}),
]
QUERY = [1.0, 0.0, 0.0, 0.0]


def ids(hits: list) -> list[str]:
    return [h.id for h in hits]


def filled(path: Path, **kwargs: object) -> VectorStore:
    store = VectorStore(path=str(path), **kwargs)  # type: ignore[arg-type]
    store.ensure_collection("docs", DIM, keyword_index_fields=["lang"])
    store.upsert("docs", POINTS)
    return store


# -- one owner, and a clean handover ---------------------------------------------------------


def test_a_second_opener_in_the_same_process_fails_clearly(tmp_path: Path) -> None:
    first = filled(tmp_path)
    try:
        with pytest.raises(FailedPrecondition, match=rf"owned by another process \(pid {os.getpid()} on "):
            VectorStore(path=str(tmp_path), lock_wait_s=0)
    finally:
        first.close()


def test_close_hands_the_folder_over_with_its_data(tmp_path: Path) -> None:
    filled(tmp_path).close()
    second = VectorStore(path=str(tmp_path), lock_wait_s=0)
    try:
        assert second.describe("docs").points_count == 3
        assert second.describe("docs").payload_indexes == {"lang": "keyword"}
        assert ids(second.search("docs", QUERY, top_k=2)) == [uid(1), uid(2)]
    finally:
        second.close()


OWNER = textwrap.dedent(
    """
    import sys, time
    from ragrail.retrieval.core import VectorStore
    store = VectorStore(path=sys.argv[1])
    store.ensure_collection("docs", 4)
    print("open", flush=True)
    time.sleep(float(sys.argv[2]))
    store.close()
    print("closed", flush=True)
    time.sleep(60)
    """
)


@pytest.fixture
def owner(tmp_path: Path) -> Iterator[callable]:  # type: ignore[valid-type]
    started: list[subprocess.Popen[str]] = []

    def start(hold_s: float) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-c", OWNER, str(tmp_path), str(hold_s)], stdout=subprocess.PIPE, text=True
        )
        started.append(proc)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "open"
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_another_process_owning_the_folder_is_named(tmp_path: Path, owner: callable) -> None:  # type: ignore[valid-type]
    proc = owner(60)
    with pytest.raises(FailedPrecondition, match=rf"pid {proc.pid} on .*one process may own it"):
        VectorStore(path=str(tmp_path), lock_wait_s=0.2)


def test_a_killed_owner_does_not_block_the_next_one(tmp_path: Path, owner: callable) -> None:  # type: ignore[valid-type]
    proc = owner(60)
    os.kill(proc.pid, signal.SIGKILL)  # no close(), no cleanup: the kernel drops its locks
    proc.wait()
    started = time.monotonic()
    store = VectorStore(path=str(tmp_path), lock_wait_s=0)
    try:
        assert time.monotonic() - started < 5
        assert store.describe("docs").points_count == 0
    finally:
        store.close()


def test_a_restarting_replica_waits_for_the_old_one_to_close(tmp_path: Path, owner: callable) -> None:  # type: ignore[valid-type]
    owner(1.0)  # still open; closes within a second, the process stays alive
    store = VectorStore(path=str(tmp_path), lock_wait_s=30)
    try:
        assert store.describe("docs").dimension == 4
    finally:
        store.close()


def test_an_unfinished_create_or_drop_leaves_no_collection(tmp_path: Path) -> None:
    filled(tmp_path).close()
    (tmp_path / "collections" / "half").mkdir()  # no collection.json: a create that crashed
    (tmp_path / "collections" / ".dropped-x").mkdir()
    store = VectorStore(path=str(tmp_path))
    try:
        assert not store._client.collection_exists("half")  # noqa: SLF001
        assert sorted(p.name for p in (tmp_path / "collections").iterdir()) == ["docs"]
    finally:
        store.close()


# -- the HNSW index ------------------------------------------------------------------------


def test_the_index_is_built_as_points_arrive_and_kept(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(1200, 384)).astype(np.float32)  # 800 of them pass the 1 MB indexing threshold
    store = VectorStore(path=str(tmp_path), max_batch_size=512)
    store._client.index_min_points = 700  # noqa: SLF001
    try:
        store.ensure_collection("v", 384)
        for lo in range(0, 1200, 400):
            store.upsert("v", [Point(uid(i + 1), vectors[i].tolist()) for i in range(lo, lo + 400)])
        info = store._client.get_collection("v")  # noqa: SLF001
        assert info.indexed_vectors_count >= 800  # optimize() ran at 800 points
        assert ids(store.search("v", vectors[7].tolist(), top_k=1)) == [uid(8)]
    finally:
        store.close()
    reopened = VectorStore(path=str(tmp_path))
    try:
        assert reopened._client.get_collection("v").indexed_vectors_count >= 800  # noqa: SLF001
        assert reopened.describe("v").points_count == 1200
    finally:
        reopened.close()


def test_segments_an_index_build_replaced_leave_the_disk(tmp_path: Path) -> None:
    """Edge keeps the segments optimize() replaced until a flush: without one, a bulk ingest
    of 1M points left 13 GB on disk for 1.5 GB of vectors."""
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(3200, 384)).astype(np.float32)
    store = VectorStore(path=str(tmp_path), max_batch_size=512)
    store._client.index_min_points = 700  # noqa: SLF001
    try:
        store.ensure_collection("v", 384)
        for lo in range(0, 3200, 400):  # optimize() runs several times
            store.upsert("v", [Point(uid(i + 1), vectors[i].tolist()) for i in range(lo, lo + 400)])
        info = store._client.get_collection("v")  # noqa: SLF001
        on_disk = list((tmp_path / "collections" / "v" / "shard" / "segments").iterdir())
        assert info.indexed_vectors_count >= 2400
        assert len(on_disk) == info.segments_count, sorted(p.name for p in on_disk)
    finally:
        store.close()


def test_a_shard_of_an_earlier_release_opens_with_todays_segment_cap(tmp_path: Path) -> None:
    import json

    filled(tmp_path).close()
    config_file = tmp_path / "collections" / "docs" / "shard" / "edge_config.json"
    config = json.loads(config_file.read_text())
    config["optimizers"]["max_segment_size"] = None  # as written before MAX_SEGMENT_KB
    config_file.write_text(json.dumps(config))
    store = VectorStore(path=str(tmp_path))
    try:
        assert store.describe("docs").points_count == 3
        assert json.loads(config_file.read_text())["optimizers"]["max_segment_size"] == edge.MAX_SEGMENT_KB
    finally:
        store.close()


def test_the_search_ef_grows_with_the_collection() -> None:
    sizes = [0, 100_000, 500_001, 1_000_000, 5_000_000]
    efs = [edge.search_ef(n) for n in sizes]
    assert efs == sorted(efs) and efs[0] == 128 and efs[-1] == 256
    assert edge.search_ef(1_000_000) > edge.search_ef(100_000)


# -- binding quirks: each test fails once qdrant-edge-py fixes it ----------------------------


def test_binding_still_turns_booleans_into_integers() -> None:
    """When this fails the binding is fixed: edge.match_value can pass booleans as they are."""
    assert edge.binding_turns_bools_into_ints()


def test_boolean_conditions_work_through_the_wrapper(tmp_path: Path) -> None:
    store = filled(tmp_path)
    try:
        assert set(ids(store.search("docs", QUERY, top_k=5, filter=Filter(must=(Condition("public", boolean=True),))))) == {
            uid(1), uid(3)
        }
        assert ids(store.search("docs", QUERY, top_k=5, filter=Filter(must=(Condition("public", boolean=False),)))) == [
            uid(2)
        ]
    finally:
        store.close()


def test_binding_still_holds_the_gil_while_optimizing(tmp_path: Path) -> None:
    """When this fails optimize() lets other threads run: it may move to a background thread."""
    import qdrant_edge as e

    shard = e.EdgeShard.create(
        str(tmp_path / "s"),
        e.EdgeConfig(
            vectors=e.EdgeVectorParams(size=64, distance=e.Distance.Cosine),
            optimizers=e.EdgeOptimizersConfig(indexing_threshold=100),
        ),
    )
    vectors = np.random.default_rng(0).normal(size=(3000, 64)).astype(np.float32)
    shard.update(e.UpdateOperation.upsert_points([e.Point(i + 1, v.tolist(), {}) for i, v in enumerate(vectors)]))
    ticks = [0]
    stop = threading.Event()

    def tick() -> None:
        while not stop.is_set():
            ticks[0] += 1
            time.sleep(0.001)

    ticker = threading.Thread(target=tick)
    ticker.start()
    time.sleep(0.05)
    before = ticks[0]
    started = time.perf_counter()
    shard.optimize()
    took = time.perf_counter() - started
    during = ticks[0] - before
    stop.set()
    ticker.join()
    shard.close()
    if took < 0.3:
        pytest.skip(f"optimize took {took:.2f}s: too short to tell")
    assert during <= 2, f"{during} ticks in {took:.2f}s: optimize() released the GIL"


# -- migration from qdrant-client's local mode --------------------------------------------------


def test_a_local_mode_folder_is_never_silently_ignored(tmp_path: Path) -> None:
    filled(tmp_path, engine="local").close()
    with pytest.raises(FailedPrecondition, match=r"written by qdrant-client's local mode \(collections: docs\).*migrate-store"):
        VectorStore(path=str(tmp_path))
    # ...and local mode does not open the engine's folder as an empty store either.
    other = tmp_path / "engine"
    filled(other).close()
    with pytest.raises(InvalidArgument, match="holds the embedded engine's store"):
        VectorStore(path=str(other), engine="local")


def test_migrate_store_moves_every_point_and_keeps_a_backup(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from ragrail.cli.main import main

    rng = np.random.default_rng(1)
    many = [Point(uid(100 + i), rng.normal(size=DIM).tolist(), {"lang": "fr", "n": i}) for i in range(700)]
    local = filled(tmp_path, engine="local", max_batch_size=512)
    local.ensure_collection("other", DIM)
    local.upsert("other", many[:500])
    local.upsert("other", many[500:])
    before = {
        name: [(h.id, round(h.score, 5), h.payload) for h in local.search(name, QUERY, top_k=20)] for name in ("docs", "other")
    }
    local.close()

    assert main(["migrate-store", "--path", str(tmp_path)]) == 0
    assert "other: 700 points migrated" in capsys.readouterr().out

    store = VectorStore(path=str(tmp_path))
    try:
        assert store.describe("other").points_count == 700
        after = {
            name: [(h.id, round(h.score, 5), h.payload) for h in store.search(name, QUERY, top_k=20)]
            for name in ("docs", "other")
        }
        assert after == before
        assert ids(store.search("docs", QUERY, top_k=5, filter=Filter(must=(Condition("public", boolean=False),)))) == [
            uid(2)
        ]
    finally:
        store.close()
    backups = list(tmp_path.glob("local-mode-backup-*"))
    assert len(backups) == 1 and (backups[0] / "meta.json").is_file() and (backups[0] / "collection").is_dir()
    assert not (tmp_path / "meta.json").exists()


def test_migrating_a_folder_without_a_local_mode_store_is_invalid(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="holds no qdrant-client local-mode store"):
        edge.migrate_local_store(str(tmp_path))
