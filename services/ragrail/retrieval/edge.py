"""Qdrant's own engine in process (Qdrant Edge), behind the qdrant-client calls ``VectorStore`` makes.

``EdgeClient`` answers the dozen ``QdrantClient`` methods that ``VectorStore`` uses
(``create_collection``, ``upsert``, ``query_points``, ``delete`` ...) with the same
qdrant-client models, so ``VectorStore`` keeps one code path for the embedded engine, a
server and qdrant-client's local mode: one interface, several implementations, compared
by tests/integration/test_qdrant_congruence.py.

Why: qdrant-client's local mode is a pure-Python reference implementation. Measured
here (benchmarks/bench_retrieval.py, 100k 384-d points): 117.6 ms p50 per search and
~750 points/s ingest; Edge (the server's Rust segments, HNSW and payload indexes) is in
docs/benchmarks.md.

Folder layout (one owner at a time)::

    <root>/ragrail-store.json      format marker
    <root>/owner.lock              flock()ed by the owner; holds its pid for messages
    <root>/collections/<name>/collection.json   dimension and distance
    <root>/collections/<name>/shard/            one Edge shard

The owner lock is an OS file lock: the kernel drops it when the owning process exits,
however it exits, so a killed replica never leaves a lock that blocks its successor.
A second opener waits up to ``lock_wait_s`` (a restarting replica overlapping with the
one it replaces), then fails saying who owns the folder.

Binding quirks (qdrant-edge-py 0.9.0) are handled here and only here; each has a test in
tests/unit/test_retrieval_edge.py that fails once upstream fixes it:
- ``MatchValue(True)`` becomes the integer 1 (the binding tries int before bool), which
  matches no boolean payload. A numpy bool is not an int to it, so it stays a bool.
- ``EdgeShard.optimize()`` (which builds the HNSW index) holds the GIL for its whole run:
  no other Python thread in the process runs meanwhile. So it runs only after an upsert
  that leaves ``index_min_points`` unindexed, inside that upsert call, never on a timer,
  and segments are capped in size (``MAX_SEGMENT_KB``), so one build indexes the new points
  and merges small segments instead of rebuilding the whole collection's graph.
- Segments that ``optimize()`` replaced stay on disk until a ``flush()``.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import qdrant_edge as edge
from qdrant_client import models as qm

from ragrail.common.errors import FailedPrecondition, InvalidArgument, require
from ragrail.retrieval.core import LEXICAL_VECTOR

log = logging.getLogger(__name__)

FORMAT = {"format": "ragrail-qdrant-edge", "version": 1}
MARKER = "ragrail-store.json"
LOCK = "owner.lock"
COLLECTIONS = "collections"
# What qdrant-client's local mode writes into its folder.
LOCAL_MODE_META = "meta.json"
LOCAL_MODE_FILES = ("meta.json", "collection", ".lock")

# HNSW: Qdrant's defaults for building. The search ef grows with the collection, by
# measurement (384-d clustered points, benchmarks/bench_retrieval.py, 2 cores, segments
# capped at MAX_SEGMENT_KB): at 100k ef 128 gave recall@10 0.996, 256 1.000; at 1M ef 128
# gave 0.994 (p50 8.7 ms), 256 gave 0.999 (10.0 ms). Uncapped, one big segment needed more:
# ef 128 gave 0.951 at 300k and 0.936 at 1M.
# (collection size up to, ef): the first row that fits; past the last, its ef.
HNSW_M = 16
HNSW_EF_CONSTRUCT = 100
HNSW_EF_BY_SIZE = ((500_000, 128), (5_000_000, 256), (50_000_000, 512))
# Largest segment the merge optimizer builds, in KB (~130k 384-d points). Without a cap,
# Qdrant merges down to its automatic segment count (the CPU count, 2 here), so every
# build merged the new points into one big segment and rebuilt its graph: 16 s at 300k
# points, ~60 s at 1M. With the cap a build re-indexes at most one capped segment (1-5 s
# per 10k new points up to 1M), a small collection keeps few segments (100k: 2, p50
# 2.6 ms; 8 uncapped segments gave 4.6 ms) and 1M points are 9 (p99 12 ms).
MAX_SEGMENT_KB = 200_000


def search_ef(points: int) -> int:
    """The HNSW search ef for a collection of ``points``: recall@10 >= 0.98 measured to 1M."""
    return next((ef for size, ef in HNSW_EF_BY_SIZE if points <= size), HNSW_EF_BY_SIZE[-1][1])


# Segments at or under this many KB are searched by a full scan, not the graph.
FULL_SCAN_THRESHOLD_KB = 10_000
# Segments grow to this many KB before the optimizer indexes them (Qdrant's own default
# is 10 MB, ~6.5k 384-d vectors); kept low so what optimize() indexes is everything new.
INDEXING_THRESHOLD_KB = 1_000
# Unindexed points that trigger a build: they are searched by a plain scan, which Edge does
# at ~0.4 us per 384-d point (70k points: 27 ms a query), so the tail stays under ~4 ms.
INDEX_MIN_POINTS = 10_000
_RRF_K = 60  # reciprocal rank fusion's constant (Qdrant's default)

_DISTANCES = {
    qm.Distance.COSINE: edge.Distance.Cosine,
    qm.Distance.DOT: edge.Distance.Dot,
    qm.Distance.EUCLID: edge.Distance.Euclid,
}
_SCHEMAS = {
    qm.PayloadSchemaType.KEYWORD: edge.PayloadSchemaType.Keyword,
    qm.PayloadSchemaType.INTEGER: edge.PayloadSchemaType.Integer,
    qm.PayloadSchemaType.FLOAT: edge.PayloadSchemaType.Float,
    qm.PayloadSchemaType.BOOL: edge.PayloadSchemaType.Bool,
}
_SCHEMA_NAMES = {v: k for k, v in _SCHEMAS.items()}


# -- binding quirks: the only place that knows about them --------------------------------


def match_value(value: str | int | bool) -> Any:
    """``MatchValue`` that keeps a boolean a boolean (qdrant-edge-py 0.9.0 makes True the int 1)."""
    if isinstance(value, bool):
        return edge.MatchValue(np.bool_(value))
    return edge.MatchValue(value)


def binding_turns_bools_into_ints() -> bool:
    value = edge.MatchValue(True).value
    return type(value) is int


# -- the folder ---------------------------------------------------------------------------


class FolderLock:
    """An exclusive ``flock`` on ``<root>/owner.lock``, released by close() or by process exit."""

    def __init__(self, root: Path, wait_s: float, poll_s: float = 0.05) -> None:
        self.path = root / LOCK
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    owner = _read_owner(fd)
                    os.close(fd)
                    raise FailedPrecondition(
                        f"embedded store {root} is owned by another process ({owner}); one process may "
                        f"own it at a time (waited {wait_s:g}s): stop that one, or set retrieval.qdrant_url "
                        "to a Qdrant server to share a store"
                    ) from None
                time.sleep(poll_s)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}).encode(), 0)
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def _read_owner(fd: int) -> str:
    try:
        owner = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"pid {owner['pid']} on {owner['host']}"
    except (ValueError, KeyError, OSError):
        return "pid unknown"


def local_mode_collections(root: Path) -> list[str] | None:
    """The collections of a qdrant-client local-mode store in ``root``, or None if there is none."""
    meta = root / LOCAL_MODE_META
    if not meta.is_file():
        return None
    try:
        return sorted(json.loads(meta.read_text()).get("collections", {}))
    except ValueError:
        return []


def is_edge_store(root: Path) -> bool:
    return (root / MARKER).is_file()


# -- the client ---------------------------------------------------------------------------


@dataclass
class _Collection:
    shard: Any
    dimension: int
    distance: qm.Distance
    optimized_at: int = 0  # points there were at the last optimize()
    points: int = 0  # points after the last upsert (picks the search ef)
    lexical: bool = False  # has the BM25 sparse vector (collections created since hybrid search)


@dataclass(frozen=True)
class _Count:
    count: int


@dataclass(frozen=True)
class _Found:
    points: list[qm.ScoredPoint]


class EdgeClient:
    """The subset of ``QdrantClient`` that ``VectorStore`` calls, on Qdrant Edge shards."""

    def __init__(
        self,
        path: str,
        *,
        lock_wait_s: float = 30.0,
        hnsw_ef: int | None = None,
        index_min_points: int = INDEX_MIN_POINTS,
        allow_local_mode_files: bool = False,
    ) -> None:
        self.root = Path(path)
        self.root.mkdir(parents=True, exist_ok=True)
        self.hnsw_ef = hnsw_ef  # None: by collection size (search_ef)
        self.index_min_points = index_min_points
        self._lock = FolderLock(self.root, lock_wait_s)
        self._collections: dict[str, _Collection] = {}
        try:
            legacy = local_mode_collections(self.root)
            if legacy is not None and not allow_local_mode_files:
                raise FailedPrecondition(
                    f"embedded store {self.root} was written by qdrant-client's local mode (collections: "
                    f"{', '.join(legacy) or 'none'}); run `ragrail migrate-store` to move them into the "
                    "embedded engine, or set retrieval.embedded_engine to 'local' to keep using that mode"
                )
            marker = self.root / MARKER
            if marker.is_file():
                found = json.loads(marker.read_text())
                require(
                    found.get("format") == FORMAT["format"] and found.get("version") == FORMAT["version"],
                    f"embedded store {self.root} has format {found}, this release reads {FORMAT}",
                )
            else:
                _write_atomically(marker, json.dumps(FORMAT))
            (self.root / COLLECTIONS).mkdir(exist_ok=True)
            self._open_all()
        except BaseException:
            self.close()
            raise

    # -- lifecycle

    def _open_all(self) -> None:
        for folder in sorted((self.root / COLLECTIONS).iterdir()):
            meta = folder / "collection.json"
            if folder.name.startswith(".") or not meta.is_file():
                # A drop or a create that did not finish: never a collection.
                shutil.rmtree(folder, ignore_errors=True)
                continue
            info = json.loads(meta.read_text())
            shard_path = folder / "shard"
            distance = qm.Distance(info["distance"])
            lexical = bool(info.get("lexical", False))
            if (shard_path / "edge_config.json").is_file():
                shard = _load_shard(shard_path, _shard_config(info["dimension"], distance, lexical))
            else:
                shard = edge.EdgeShard.create(str(shard_path), _shard_config(info["dimension"], distance, lexical))
            points = shard.info().points_count
            self._collections[folder.name] = _Collection(shard, info["dimension"], distance, points, points, lexical)

    def close(self) -> None:
        for collection in self._collections.values():
            collection.shard.close()
        self._collections.clear()
        if getattr(self, "_lock", None) is not None:
            self._lock.release()

    # -- collections

    def _get(self, name: str) -> _Collection:
        found = self._collections.get(name)
        if found is None:
            raise ValueError(f"Collection {name} not found")
        return found

    def collection_exists(self, name: str) -> bool:
        return name in self._collections

    def create_collection(
        self,
        name: str,
        vectors_config: qm.VectorParams,
        sparse_vectors_config: dict[str, qm.SparseVectorParams] | None = None,
        **_: Any,
    ) -> bool:
        require(name not in self._collections, f"collection {name} already exists")
        lexical = bool(sparse_vectors_config)
        require(
            not sparse_vectors_config or set(sparse_vectors_config) == {LEXICAL_VECTOR},
            f"the embedded engine keeps one sparse vector, {LEXICAL_VECTOR!r}",
        )
        folder = self.root / COLLECTIONS / name
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        config = _shard_config(vectors_config.size, vectors_config.distance, lexical)
        shard = edge.EdgeShard.create(str(folder / "shard"), config)
        meta = {"dimension": vectors_config.size, "distance": vectors_config.distance.value, "lexical": lexical}
        _write_atomically(folder / "collection.json", json.dumps(meta))
        self._collections[name] = _Collection(shard, vectors_config.size, vectors_config.distance, lexical=lexical)
        return True

    def get_collection(self, name: str) -> qm.CollectionInfo:
        c = self._get(name)
        info = c.shard.info()
        schema = {
            key: qm.PayloadIndexInfo(data_type=_SCHEMA_NAMES[index.data_type], points=index.points)
            for key, index in info.payload_schema.items()
        }
        sparse = {LEXICAL_VECTOR: qm.SparseVectorParams(modifier=qm.Modifier.IDF)} if c.lexical else None
        params = qm.CollectionParams.model_construct(
            vectors=qm.VectorParams(size=c.dimension, distance=c.distance), sparse_vectors=sparse
        )
        return qm.CollectionInfo.model_construct(
            status=qm.CollectionStatus.GREEN,
            points_count=info.points_count,
            indexed_vectors_count=info.indexed_vectors_count,
            segments_count=info.segments_count,
            config=qm.CollectionConfig.model_construct(params=params),
            payload_schema=schema,
        )

    def count(self, name: str, count_filter: qm.Filter | None = None, **_: Any) -> _Count:
        return _Count(self._get(name).shard.count(edge.CountRequest(filter=to_edge_filter(count_filter), exact=True)))

    def delete_collection(self, name: str, **_: Any) -> bool:
        c = self._collections.pop(name, None)
        if c is None:
            return False
        c.shard.close()
        folder = self.root / COLLECTIONS / name
        trash = self.root / COLLECTIONS / f".dropped-{uuid.uuid4().hex}"
        folder.rename(trash)  # a crash from here on leaves no half collection behind
        shutil.rmtree(trash, ignore_errors=True)
        return True

    def create_payload_index(self, name: str, field_name: str, field_schema: qm.PayloadSchemaType, **_: Any) -> None:
        self._get(name).shard.update(edge.UpdateOperation.create_field_index(field_name, _SCHEMAS[field_schema]))

    # -- points

    def upsert(self, name: str, points: Sequence[qm.PointStruct], **_: Any) -> None:
        c = self._get(name)
        c.shard.update(
            edge.UpdateOperation.upsert_points(
                [edge.Point(_point_id(p.id), _edge_vectors(p.vector), p.payload or {}) for p in points]
            )
        )
        self._maybe_index(name, c)

    def delete(self, name: str, points_selector: qm.PointIdsList | qm.FilterSelector, **_: Any) -> None:
        c = self._get(name)
        if isinstance(points_selector, qm.PointIdsList):
            c.shard.update(edge.UpdateOperation.delete_points([_point_id(i) for i in points_selector.points]))
        else:
            converted = to_edge_filter(points_selector.filter)
            require(converted is not None, "a delete filter must not be empty")
            c.shard.update(edge.UpdateOperation.delete_points_by_filter(converted))

    def delete_payload(self, name: str, keys: Sequence[str], points: qm.Filter, **_: Any) -> None:
        """Removes payload keys from the points a filter selects (commits a staged version)."""
        converted = to_edge_filter(points)
        require(converted is not None, "a payload filter must not be empty")
        self._get(name).shard.update(edge.UpdateOperation.delete_payload_by_filter(converted, list(keys)))

    def query_points(
        self,
        name: str,
        *,
        query: list[float] | qm.FusionQuery,
        limit: int,
        score_threshold: float | None = None,
        query_filter: qm.Filter | None = None,
        with_payload: bool | list[str] = True,
        prefetch: list[qm.Prefetch] | None = None,
        with_vectors: bool = False,
        **_: Any,
    ) -> _Found:
        c = self._get(name)
        if isinstance(query, qm.FusionQuery):
            return self._fused(c, query, prefetch or [], limit, with_payload, with_vectors)
        request = edge.SearchRequest(
            query=edge.Query.Nearest(list(query)),
            limit=limit,
            filter=to_edge_filter(query_filter),
            params=edge.SearchParams(hnsw_ef=self._ef(c)),
            with_payload=edge.PayloadSelector.Include(list(with_payload)) if isinstance(with_payload, list) else True,
            score_threshold=score_threshold,
        )
        found = c.shard.search(request)
        return _Found(
            [qm.ScoredPoint.model_construct(id=str(p.id), version=0, score=p.score, payload=p.payload) for p in found]
        )

    def _fused(
        self, c: _Collection, query: qm.FusionQuery, prefetch: list[qm.Prefetch], limit: int,
        with_payload: bool | list[str], with_vectors: bool,
    ) -> _Found:
        """The Query API's prefetch + reciprocal rank fusion, from qdrant-client's models."""
        require(query.fusion == qm.Fusion.RRF, "the embedded engine fuses with RRF only")
        request = edge.QueryRequest(
            limit=limit,
            query=edge.Fusion.Rrf(_RRF_K),
            prefetches=[self._prefetch(c, p) for p in prefetch],
            with_payload=edge.PayloadSelector.Include(list(with_payload)) if isinstance(with_payload, list) else True,
            with_vector=with_vectors,
        )
        found = c.shard.query(request)
        return _Found([
            qm.ScoredPoint.model_construct(
                id=str(p.id), version=0, score=p.score, payload=p.payload,
                vector=_from_edge_vectors(p.vector) if with_vectors else None,
            )
            for p in found
        ])

    def _ef(self, c: _Collection) -> int:
        return self.hnsw_ef or search_ef(c.points)

    def _prefetch(self, c: _Collection, p: qm.Prefetch) -> Any:
        if isinstance(p.query, qm.SparseVector):
            query = edge.Query.Nearest(edge.SparseVector(list(p.query.indices), list(p.query.values)), using=p.using)
        else:
            query = edge.Query.Nearest(list(p.query), using=p.using)  # type: ignore[arg-type]
        return edge.Prefetch(
            limit=p.limit,
            query=query,
            prefetches=[self._prefetch(c, inner) for inner in (p.prefetch or [])] or None,  # type: ignore[union-attr]
            params=edge.SearchParams(hnsw_ef=self._ef(c)),
            filter=to_edge_filter(p.filter),
            score_threshold=p.score_threshold,
        )

    # -- the HNSW index

    def optimize(self, name: str) -> None:
        """Builds the HNSW index over what is not indexed yet (holds the GIL meanwhile)."""
        c = self._get(name)
        started = time.perf_counter()
        c.shard.optimize()
        # The segments optimize() replaced stay on disk until a flush (measured: 60k points,
        # 19 segment folders and 542 MB before, 2 and 151 MB after; 13 GB at 1M points).
        c.shard.flush()
        info = c.shard.info()
        c.optimized_at = info.points_count
        log.info(
            "indexed collection %s: %d of %d points in %d segments, %.1f s",
            name, info.indexed_vectors_count, info.points_count, info.segments_count,
            time.perf_counter() - started,
        )

    def _maybe_index(self, name: str, c: _Collection) -> None:
        # A fixed step: the unindexed tail (scanned on every search) stays small, and each
        # build's cost stays bounded because segments are capped at MAX_SEGMENT_KB.
        points = c.points = c.shard.info().points_count
        if points - c.optimized_at >= self.index_min_points:
            self.optimize(name)


def _load_shard(path: Path, config: Any) -> Any:
    """Opens a shard with this release's settings (the optimizer's segment cap, which a
    shard written by an earlier release lacks); the engine checks they are compatible. One
    it refuses opens with the settings it was written with."""
    try:
        return edge.EdgeShard.load(str(path), config)
    except Exception as exc:  # noqa: BLE001 (the binding raises its own untyped errors)
        log.warning("shard %s keeps the settings it was written with: %s", path, exc)
        return edge.EdgeShard.load(str(path))


def _shard_config(dimension: int, distance: qm.Distance, lexical: bool = False) -> Any:
    sparse = {LEXICAL_VECTOR: edge.EdgeSparseVectorParams(modifier=edge.Modifier.Idf)} if lexical else None
    return edge.EdgeConfig(
        vectors=edge.EdgeVectorParams(size=dimension, distance=_DISTANCES[distance]),
        sparse_vectors=sparse,
        hnsw_config=edge.HnswIndexConfig(
            m=HNSW_M, ef_construct=HNSW_EF_CONSTRUCT, full_scan_threshold=FULL_SCAN_THRESHOLD_KB
        ),
        optimizers=edge.EdgeOptimizersConfig(indexing_threshold=INDEXING_THRESHOLD_KB, max_segment_size=MAX_SEGMENT_KB),
    )


def _edge_vectors(vector: Any) -> Any:
    """qdrant-client's point vector (a list, or named vectors with sparse ones) as Edge takes it."""
    if not isinstance(vector, dict):
        return vector
    return {
        name: edge.SparseVector(list(v.indices), list(v.values)) if isinstance(v, qm.SparseVector) else v
        for name, v in vector.items()
    }


def _from_edge_vectors(vector: Any) -> Any:
    if not isinstance(vector, dict):
        return vector
    return {
        name: qm.SparseVector(indices=list(v.indices), values=list(v.values)) if hasattr(v, "indices") else v
        for name, v in vector.items()
    }


def _point_id(value: Any) -> Any:
    if isinstance(value, str):
        return uuid.UUID(value)
    return value


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# -- filters: qdrant-client's models to Edge's -----------------------------------------------


def to_edge_filter(f: qm.Filter | None) -> Any:
    if f is None:
        return None

    def convert(conditions: Any) -> list[Any] | None:
        if conditions is None:
            return None
        if not isinstance(conditions, list):
            conditions = [conditions]
        return [_edge_condition(c) for c in conditions] or None

    must, should, must_not = convert(f.must), convert(f.should), convert(f.must_not)
    if not (must or should or must_not):
        return None
    return edge.Filter(must=must, should=should, must_not=must_not)


def _edge_condition(c: Any) -> Any:
    if isinstance(c, qm.Filter):
        return to_edge_filter(c)
    if not isinstance(c, qm.FieldCondition):
        raise InvalidArgument(f"the embedded engine does not take {type(c).__name__} conditions")
    if c.range is not None:
        r = c.range
        require(isinstance(r, qm.Range), "only numeric ranges are supported")
        return edge.FieldCondition(c.key, range=edge.RangeFloat(gte=r.gte, gt=r.gt, lte=r.lte, lt=r.lt))
    if isinstance(c.match, qm.MatchValue):
        return edge.FieldCondition(c.key, match=match_value(c.match.value))
    if isinstance(c.match, qm.MatchAny):
        return edge.FieldCondition(c.key, match=edge.MatchAny(list(c.match.any)))
    raise InvalidArgument(f"condition on {c.key}: unsupported match {type(c.match).__name__}")


# -- migration from qdrant-client's local mode --------------------------------------------------


def migrate_local_store(
    path: str,
    *,
    batch_size: int = 512,
    lock_wait_s: float = 0.0,
    progress: Callable[[str], None] = lambda _: None,
) -> dict[str, int]:
    """Copies every collection of a local-mode store in ``path`` into the embedded engine.

    The points keep their ids, vectors and payloads. Re-running after a failure starts each
    collection afresh. Only when every count matches are the local-mode files moved into
    ``<path>/local-mode-backup-<time>/`` (delete it once satisfied); the folder then opens
    as the engine's store. Returns the points copied per collection.
    """
    from qdrant_client import QdrantClient

    root = Path(path)
    names = local_mode_collections(root)
    require(names is not None, f"{root} holds no qdrant-client local-mode store (no {LOCAL_MODE_META})")
    target = EdgeClient(str(root), lock_wait_s=lock_wait_s, allow_local_mode_files=True)
    copied: dict[str, int] = {}
    try:
        source = QdrantClient(path=str(root))  # takes local mode's own lock too
        try:
            for name in names or []:
                params = source.get_collection(name).config.params.vectors
                require(isinstance(params, qm.VectorParams), f"collection {name}: only single-vector collections migrate")
                assert isinstance(params, qm.VectorParams)
                if target.collection_exists(name):
                    target.delete_collection(name)  # an earlier, unfinished run
                target.create_collection(name, vectors_config=qm.VectorParams(size=params.size, distance=params.distance))
                offset = None
                n = 0
                while True:
                    records, offset = source.scroll(
                        name, limit=batch_size, offset=offset, with_payload=True, with_vectors=True
                    )
                    if records:
                        target.upsert(
                            name,
                            [qm.PointStruct(id=r.id, vector=r.vector, payload=r.payload or {}) for r in records],  # type: ignore[arg-type]
                        )
                        n += len(records)
                        progress(f"{name}: {n} points")
                    if offset is None:
                        break
                target.optimize(name)
                have = target.count(name).count
                want = source.count(name, exact=True).count
                require(have == want, f"collection {name}: copied {have} points of {want}; nothing was moved")
                copied[name] = have
        finally:
            source.close()
        backup = root / time.strftime("local-mode-backup-%Y%m%d-%H%M%S")
        backup.mkdir()
        for item in LOCAL_MODE_FILES:
            if (root / item).exists():
                (root / item).rename(backup / item)
        progress(f"local-mode files moved to {backup}")
    finally:
        target.close()
    return copied
