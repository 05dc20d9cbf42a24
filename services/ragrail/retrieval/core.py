"""Vector storage and search over Qdrant, embedded or remote, one interface.

The embedded default is Qdrant's own engine in process (``EdgeClient``, Qdrant Edge:
the server's segments, HNSW index and payload indexes, in ``ragrail.retrieval.edge``);
``QdrantClient(url=...)`` (a server, over gRPC) and qdrant-client's pure-Python local
mode (``QdrantClient(path=...)``, ``engine="local"``, the default before) are the others.
They are chosen by settings only and answer the same calls with the same models.

Hybrid search: collections created with a ``lexical_field`` also hold a sparse BM25
vector per point (term weights from Qdrant's own BM25 tokenizer and stemmer, the one in
qdrant-edge, so every backend gets identical vectors; Qdrant applies the IDF). A search
that gives the query's text fuses, in one Query API call, the dense ranking and the
BM25 ranking of the passages whose dense similarity passes the threshold (reciprocal
rank fusion). The scores returned stay dense similarities: the canned-answer threshold
means what it meant, and hybrid only reorders what passes it, so a name or a number in
the question lifts the passage that contains it.
Every call carries a timeout: the client-wide one bounds each gRPC call's deadline
and each REST request, and the calls that take one pass it on to the server too.
A server that cannot be reached, or does not answer in time, becomes
``Unavailable`` so the gateway can answer with a fallback instead of an error.
"""

from __future__ import annotations

import enum
import json
import logging
import math
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar
from urllib.parse import urlsplit

from qdrant_client import QdrantClient
from qdrant_client import models as qm
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from ragrail.common.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable, require

if TYPE_CHECKING:
    from ragrail.common.config import RetrievalSettings

log = logging.getLogger(__name__)
T = TypeVar("T")
LEXICAL_VECTOR = "bm25"  # the sparse vector's name in a collection
_COLLECTION_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_INDEX_FIELDS = 64
# Payload keys of versioned documents (written by the gateway's ingestion): a point with
# ``staged: true`` belongs to a version not committed yet and is never returned by search.
DOCUMENT_KEY = "document_id"
VERSION_KEY = "version"
STAGED_KEY = "staged"


class Distance(enum.Enum):
    COSINE = qm.Distance.COSINE
    DOT = qm.Distance.DOT
    EUCLID = qm.Distance.EUCLID


class IndexType(enum.Enum):
    """Payload index kinds a collection can ask for."""

    KEYWORD = qm.PayloadSchemaType.KEYWORD
    INTEGER = qm.PayloadSchemaType.INTEGER
    FLOAT = qm.PayloadSchemaType.FLOAT


@dataclass(frozen=True)
class Range:
    gt: float | None = None
    gte: float | None = None
    lt: float | None = None
    lte: float | None = None


@dataclass(frozen=True)
class Condition:
    """One payload condition; exactly one of the match fields is set."""

    key: str
    keyword: str | None = None
    integer: int | None = None
    boolean: bool | None = None
    any_of: tuple[str, ...] | None = None
    range: Range | None = None


@dataclass(frozen=True)
class Filter:
    must: tuple[Condition, ...] = ()
    should: tuple[Condition, ...] = ()
    must_not: tuple[Condition, ...] = ()

    def is_empty(self) -> bool:
        return not (self.must or self.should or self.must_not)


@dataclass(frozen=True)
class Point:
    id: str
    vector: list[float]
    payload: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Hit:
    id: str
    score: float
    payload: dict[str, Any]


@dataclass(frozen=True)
class CollectionInfo:
    name: str
    dimension: int
    distance: Distance
    points_count: int
    # Indexed payload fields -> Qdrant's schema name ("keyword", "integer", ...).
    # Always empty in qdrant-client's local mode, which keeps no payload indexes.
    payload_indexes: dict[str, str] = field(default_factory=dict)
    lexical: bool = False  # holds BM25 vectors for hybrid search


class VectorStore:
    """Qdrant behind a small, validated interface."""

    def __init__(
        self,
        *,
        url: str | None = None,
        api_key: str | None = None,
        path: str | None = None,
        prefer_grpc: bool = True,
        grpc_port: int = 6334,
        timeout_s: float = 10.0,
        max_top_k: int = 100,
        max_batch_size: int = 512,
        engine: Literal["edge", "local"] = "edge",
        lock_wait_s: float = 30.0,
        lexical_field: str | None = "text",
        hybrid_candidates: int = 50,
    ) -> None:
        require(bool(url) != bool(path), "configure exactly one of a Qdrant url or an embedded path")
        require(engine in ("edge", "local"), f"engine must be 'edge' or 'local', got {engine!r}")
        require(timeout_s > 0, f"timeout_s must be positive, got {timeout_s}")
        self.embedded = url is None
        # Which embedded implementation, if embedded: "edge" keeps payload indexes, "local" none.
        self.engine = engine if self.embedded else "server"
        self.timeout_s = timeout_s
        # qdrant-client takes whole seconds; round up so 0.5 s does not become "no timeout".
        self._timeout = max(1, math.ceil(timeout_s))
        self.max_top_k = max_top_k
        self.max_batch_size = max_batch_size
        self._dimensions: dict[str, int] = {}
        self._lexical: dict[str, bool] = {}
        self.lexical_field = lexical_field
        self.hybrid_candidates = max(hybrid_candidates, max_top_k)
        self._bm25: Any = None
        self._client: Any
        if url:
            self.where = _describe_server(url, prefer_grpc, grpc_port)
            self._client = QdrantClient(
                url=url,
                api_key=api_key,
                prefer_grpc=prefer_grpc,
                grpc_port=grpc_port,
                timeout=self._timeout,
            )
        elif engine == "edge":
            from ragrail.retrieval.edge import EdgeClient

            self.where = f"embedded store {path}"
            self._client = EdgeClient(str(path), lock_wait_s=lock_wait_s)
        else:
            from ragrail.retrieval.edge import is_edge_store

            # Local mode would see no collections in the engine's folder and start empty.
            require(
                not is_edge_store(Path(str(path))),
                f"{path} holds the embedded engine's store, not a qdrant-client local-mode one: "
                "set retrieval.embedded_engine to 'edge'",
            )
            self.where = f"embedded store {path} (qdrant-client local mode)"
            self._client = QdrantClient(path=path)

    def close(self) -> None:
        self._client.close()

    def ensure_collection(
        self,
        name: str,
        dimension: int,
        distance: Distance = Distance.COSINE,
        keyword_index_fields: Sequence[str] = (),
        integer_index_fields: Sequence[str] = (),
        float_index_fields: Sequence[str] = (),
    ) -> bool:
        """Creates the collection unless it exists; returns whether it was created.

        On a server and in the embedded engine, the payload indexes asked for are created
        too, on an existing collection as well (so a field indexed in a later release gets
        its index). qdrant-client's local mode keeps none, so there they are only validated.
        """
        _check_collection_name(name)
        require(0 < dimension <= 65536, f"dimension must be in 1..65536, got {dimension}")
        wanted = _index_plan(keyword_index_fields, integer_index_fields, float_index_fields)
        created = False
        indexed: dict[str, str] = {}
        if self._call(lambda: self._client.collection_exists(name)):
            existing = self.describe(name)
            require(
                existing.dimension == dimension and existing.distance == distance,
                f"collection {name} exists with dimension {existing.dimension} and "
                f"{existing.distance.name.lower()} distance",
            )
            indexed = existing.payload_indexes
            if self.lexical_field and not existing.lexical:
                log.warning(
                    "collection %s was created without lexical vectors: hybrid retrieve stages search it dense "
                    "only. Delete it and ingest its documents again to add them (docs/retrieval.md)", name,
                )
        else:
            sparse = {LEXICAL_VECTOR: qm.SparseVectorParams(modifier=qm.Modifier.IDF)} if self.lexical_field else None
            self._call(
                lambda: self._client.create_collection(
                    name,
                    vectors_config=qm.VectorParams(size=dimension, distance=distance.value),
                    sparse_vectors_config=sparse,
                    timeout=self._timeout,
                )
            )
            self._dimensions[name] = dimension  # it may have existed before with another one
            self._lexical[name] = sparse is not None
            created = True
        if self.engine == "local":
            return created  # it would only warn that indexes have no effect
        for key, kind in wanted.items():
            have = indexed.get(key)
            if have == kind.value.value:
                continue
            require(
                have is None,
                f"payload field {key!r} of collection {name} is indexed as {have}, "
                f"not {kind.name.lower()}",
            )
            # Without these, a filtered search on a large collection scans payloads.
            self._call(
                lambda key=key, kind=kind: self._client.create_payload_index(
                    name, field_name=key, field_schema=kind.value, wait=True, timeout=self._timeout
                ),
                collection=name,
            )
        return created

    def describe(self, name: str) -> CollectionInfo:
        _check_collection_name(name)
        info = self._call(lambda: self._client.get_collection(name), collection=name)
        params = info.config.params.vectors
        assert isinstance(params, qm.VectorParams)  # we only create single-vector collections
        indexes = {
            key: str(getattr(schema.data_type, "value", schema.data_type))
            for key, schema in (info.payload_schema or {}).items()
        }
        # The collection info's points_count is approximate on a server; count exactly.
        counted = self._call(
            lambda: self._client.count(name, exact=True, timeout=self._timeout), collection=name
        )
        return CollectionInfo(
            name=name,
            dimension=params.size,
            distance=Distance(params.distance),
            points_count=int(counted.count),
            payload_indexes=indexes,
            lexical=LEXICAL_VECTOR in (info.config.params.sparse_vectors or {}),
        )

    def delete_collection(self, name: str) -> None:
        """Drops a collection and its points; NotFound when there is none."""
        _check_collection_name(name)
        existed = self._call(
            lambda: self._client.delete_collection(name, timeout=self._timeout), collection=name
        )
        self._dimensions.pop(name, None)
        self._lexical.pop(name, None)
        if not existed:
            raise NotFound(f"collection {name} does not exist")

    def _dimension(self, collection: str) -> int:
        # Cached: collections are not resized, and a deleted one raises NotFound below.
        if collection not in self._dimensions:
            self._dimensions[collection] = self.describe(collection).dimension
        return self._dimensions[collection]

    def _is_lexical(self, collection: str) -> bool:
        """Whether the collection holds BM25 vectors (created so by this release)."""
        if collection not in self._lexical:
            self._lexical[collection] = self.describe(collection).lexical
        return self._lexical[collection]

    def _sparse(self, text: str, query: bool) -> qm.SparseVector:
        if self._bm25 is None:
            import qdrant_edge

            self._bm25 = qdrant_edge.Bm25(qdrant_edge.Bm25Config(language="english"))
        found = self._bm25.embed_query(text) if query else self._bm25.embed_document(text)
        return qm.SparseVector(indices=list(found.indices), values=list(found.values))

    def _vectors(self, collection: str, point: Point) -> Any:
        """The dense vector, plus the BM25 one of the lexical field's text where the collection has them."""
        if not (self.lexical_field and self._is_lexical(collection)):
            return point.vector
        text = point.payload.get(self.lexical_field)
        if not isinstance(text, str) or not text.strip():
            return {"": point.vector}
        return {"": point.vector, LEXICAL_VECTOR: self._sparse(text, query=False)}

    def upsert(self, collection: str, points: Sequence[Point]) -> int:
        _check_collection_name(collection)
        require(len(points) > 0, "points must not be empty")
        require(
            len(points) <= self.max_batch_size,
            f"at most {self.max_batch_size} points per call, got {len(points)}",
        )
        dimension = self._dimension(collection)
        for i, p in enumerate(points):
            _check_vector(p.vector, dimension, f"points[{i}].vector")
        structs = [
            qm.PointStruct(id=_check_id(p.id, f"points[{i}].id"), vector=self._vectors(collection, p), payload=p.payload)
            for i, p in enumerate(points)
        ]
        self._call(
            lambda: self._client.upsert(collection, points=structs, wait=True, timeout=self._timeout),
            collection=collection,
        )
        return len(structs)

    def search(
        self,
        collection: str,
        vector: Sequence[float],
        *,
        top_k: int,
        score_threshold: float | None = None,
        filter: Filter | None = None,
        payload_fields: Sequence[str] = (),
        query_text: str | None = None,
    ) -> list[Hit]:
        """The ``top_k`` nearest points; with ``query_text``, on a collection with BM25
        vectors, the dense and lexical rankings fused (see the module's docstring)."""
        _check_collection_name(collection)
        _check_vector(vector, self._dimension(collection), "vector")
        require(1 <= top_k <= self.max_top_k, f"top_k must be in 1..{self.max_top_k}, got {top_k}")
        if query_text and query_text.strip() and self._is_lexical(collection):
            return self._hybrid(collection, vector, query_text, top_k, score_threshold, filter, payload_fields)
        result = self._call(
            lambda: self._client.query_points(
                collection,
                query=list(vector),
                limit=top_k,
                score_threshold=score_threshold,
                query_filter=to_qdrant_filter(visible(filter)),
                with_payload=list(payload_fields) if payload_fields else True,
                timeout=self._timeout,
            ),
            collection=collection,
        )
        return [Hit(id=str(p.id), score=float(p.score), payload=dict(p.payload or {})) for p in result.points]

    def _hybrid(
        self,
        collection: str,
        vector: Sequence[float],
        query_text: str,
        top_k: int,
        score_threshold: float | None,
        filter: Filter | None,
        payload_fields: Sequence[str],
    ) -> list[Hit]:
        """One Query API call: RRF over the dense ranking and the BM25 ranking of the same
        candidates, those whose dense similarity passes the threshold."""
        where = to_qdrant_filter(visible(filter))  # staged versions stay invisible here too
        limit = self.hybrid_candidates

        def dense() -> qm.Prefetch:
            return qm.Prefetch(query=list(vector), limit=limit, score_threshold=score_threshold, filter=where)

        lexical = qm.Prefetch(
            query=self._sparse(query_text, query=True), using=LEXICAL_VECTOR, limit=limit, filter=where,
            prefetch=[dense()],
        )
        result = self._call(
            lambda: self._client.query_points(
                collection,
                prefetch=[dense(), lexical],
                query=qm.FusionQuery(fusion=qm.Fusion.RRF),
                limit=top_k,
                with_payload=list(payload_fields) if payload_fields else True,
                with_vectors=True,
                timeout=self._timeout,
            ),
            collection=collection,
        )
        # Fused scores are ranks; report each passage's dense similarity instead.
        return [
            Hit(id=str(p.id), score=_similarity(vector, _dense_of(p.vector)), payload=dict(p.payload or {}))
            for p in result.points
        ]

    def delete(
        self, collection: str, ids: Sequence[str] = (), filter: Filter | None = None
    ) -> None:
        _check_collection_name(collection)
        has_filter = filter is not None and not filter.is_empty()
        require(bool(ids) or has_filter, "give ids or a filter to delete")
        if ids:
            checked = [_check_id(i, f"ids[{n}]") for n, i in enumerate(ids)]
            self._call(
                lambda: self._client.delete(
                    collection,
                    points_selector=qm.PointIdsList(points=checked),
                    wait=True,
                    timeout=self._timeout,
                ),
                collection=collection,
            )
        if has_filter:
            selector = qm.FilterSelector(filter=to_qdrant_filter(filter))
            self._call(
                lambda: self._client.delete(
                    collection, points_selector=selector, wait=True, timeout=self._timeout
                ),
                collection=collection,
            )

    # -- versioned documents: see "Atomic document versions" in docs/reliability.md

    def commit_document(self, collection: str, document_id: str, version: str, expected_points: int) -> int:
        """Makes ``version`` of a document the visible one, dropping every other version.

        The version's points were upserted with ``staged: true`` (invisible to ``search``).
        Checks that all ``expected_points`` of them are there (a concurrent commit of the same
        document deletes another version's staged points: then FailedPrecondition, and the
        caller retries), deletes the other versions, then unstages this one. Embedded, the
        servicer runs every store call on one thread, so no search runs between those steps:
        a reader sees the old version whole or the new one whole. On a Qdrant server they are
        separate operations: a reader may briefly see neither, never a mix of both.
        Returns how many points of other versions were deleted.
        """
        _check_collection_name(collection)
        require(bool(document_id) and bool(version), "document_id and version must not be empty")
        mine = _version_filter(document_id, version)
        found = self._count(collection, mine)
        if found != expected_points:
            raise FailedPrecondition(
                f"document {document_id!r} version {version} has {found} of {expected_points} points: "
                "another ingest of the same document committed meanwhile; retry"
            )
        others = qm.Filter(
            must=[qm.FieldCondition(key=DOCUMENT_KEY, match=qm.MatchValue(value=document_id))],
            must_not=[qm.FieldCondition(key=VERSION_KEY, match=qm.MatchValue(value=version))],
        )
        stale = self._count(collection, others)
        if stale:
            self._call(
                lambda: self._client.delete(
                    collection, points_selector=qm.FilterSelector(filter=others), wait=True, timeout=self._timeout
                ),
                collection=collection,
            )
        self._call(
            lambda: self._client.delete_payload(
                collection, keys=[STAGED_KEY], points=mine, wait=True, timeout=self._timeout
            ),
            collection=collection,
        )
        return stale

    def discard_version(self, collection: str, document_id: str, version: str) -> None:
        """Deletes the points of one version of a document (an ingest that failed half-way)."""
        _check_collection_name(collection)
        require(bool(document_id) and bool(version), "document_id and version must not be empty")
        selector = qm.FilterSelector(filter=_version_filter(document_id, version))
        self._call(
            lambda: self._client.delete(collection, points_selector=selector, wait=True, timeout=self._timeout),
            collection=collection,
        )

    def _count(self, collection: str, where: qm.Filter) -> int:
        counted = self._call(
            lambda: self._client.count(collection, count_filter=where, exact=True, timeout=self._timeout),
            collection=collection,
        )
        return int(counted.count)

    def _call(self, fn: Callable[[], T], collection: str | None = None) -> T:
        """Runs a Qdrant call and maps its failures to statuses."""
        try:
            return fn()
        except ResponseHandlingException as exc:
            raise self._unavailable(_transport_reason(exc.source, self._timeout)) from exc
        except (ConnectionError, TimeoutError) as exc:
            raise self._unavailable(_transport_reason(exc, self._timeout)) from exc
        except UnexpectedResponse as exc:
            if exc.status_code == 404:
                self._dimensions.pop(collection or "", None)
                raise NotFound(f"collection {collection} does not exist") from exc
            if exc.status_code in (401, 403):
                raise self._unavailable(f"it refused our API key (HTTP {exc.status_code})") from exc
            if exc.status_code is not None and exc.status_code >= 500:
                raise self._unavailable(f"HTTP {exc.status_code}: {_reason(exc)}") from exc
            raise InvalidArgument(f"Qdrant rejected the request: {_reason(exc)}") from exc
        except ValueError as exc:
            # Embedded mode raises ValueError for a missing collection and bad vectors.
            text = str(exc)
            if "not found" in text.lower() and collection:
                self._dimensions.pop(collection, None)
                raise NotFound(f"collection {collection} does not exist") from exc
            raise InvalidArgument(f"Qdrant rejected the request: {text.splitlines()[0]}") from exc
        except Exception as exc:
            if _is_grpc_error(exc):
                error = _from_grpc(exc, collection, self._timeout)
                if isinstance(error, NotFound):
                    self._dimensions.pop(collection or "", None)
                elif isinstance(error, Unavailable):
                    error = self._unavailable(error.message)
                raise error from exc
            raise

    def _unavailable(self, why: str) -> Unavailable:
        return Unavailable(f"Qdrant is unavailable ({self.where}): {why}")


def _dense_of(vectors: Any) -> list[float]:
    return list(vectors.get("", []) if isinstance(vectors, dict) else vectors or [])


def _similarity(query: Sequence[float], stored: Sequence[float]) -> float:
    """Cosine similarity (Qdrant stores cosine collections' vectors normalised, and so
    ranks them); our collections are cosine, which CreateCollection's default is."""
    import numpy as np

    q, v = np.asarray(query, dtype=np.float64), np.asarray(stored, dtype=np.float64)
    norm = float(np.linalg.norm(q) * np.linalg.norm(v))
    return float(q @ v) / norm if norm and q.shape == v.shape else 0.0


def visible(filter: Filter | None) -> Filter:
    """``filter`` plus "not staged": a search never returns a version still being written."""
    hidden = Condition(STAGED_KEY, boolean=True)
    base = filter or Filter()
    return Filter(must=base.must, should=base.should, must_not=(*base.must_not, hidden))


def _version_filter(document_id: str, version: str) -> qm.Filter:
    return qm.Filter(
        must=[
            qm.FieldCondition(key=DOCUMENT_KEY, match=qm.MatchValue(value=document_id)),
            qm.FieldCondition(key=VERSION_KEY, match=qm.MatchValue(value=version)),
        ]
    )


def to_qdrant_filter(filter: Filter | None) -> qm.Filter | None:
    if filter is None or filter.is_empty():
        return None
    return qm.Filter(
        must=[_condition(c) for c in filter.must] or None,
        should=[_condition(c) for c in filter.should] or None,
        must_not=[_condition(c) for c in filter.must_not] or None,
    )


def _condition(c: Condition) -> qm.FieldCondition:
    require(bool(c.key), "a filter condition needs a key")
    if c.keyword is not None:
        return qm.FieldCondition(key=c.key, match=qm.MatchValue(value=c.keyword))
    if c.integer is not None:
        return qm.FieldCondition(key=c.key, match=qm.MatchValue(value=c.integer))
    if c.boolean is not None:
        return qm.FieldCondition(key=c.key, match=qm.MatchValue(value=c.boolean))
    if c.any_of is not None:
        require(len(c.any_of) > 0, f"condition on {c.key}: match-any needs at least one value")
        return qm.FieldCondition(key=c.key, match=qm.MatchAny(any=list(c.any_of)))
    if c.range is not None:
        r = c.range
        require(
            any(v is not None for v in (r.gt, r.gte, r.lt, r.lte)),
            f"condition on {c.key}: a range needs at least one bound",
        )
        return qm.FieldCondition(key=c.key, range=qm.Range(gt=r.gt, gte=r.gte, lt=r.lt, lte=r.lte))
    raise InvalidArgument(f"condition on {c.key} has no match")


def _check_collection_name(name: str) -> None:
    require(
        bool(_COLLECTION_NAME.match(name)),
        f"invalid collection name {name!r}: use 1-64 letters, digits, '_' or '-'",
    )


def _check_vector(vector: Sequence[float], dimension: int, where: str) -> None:
    require(
        len(vector) == dimension,
        f"{where} has {len(vector)} dimensions; the collection has {dimension}",
    )


def _check_id(value: str, where: str) -> str:
    try:
        return str(uuid.UUID(value))
    except (ValueError, AttributeError, TypeError):
        raise InvalidArgument(f"{where} is not a UUID: {value!r}") from None


def _reason(exc: UnexpectedResponse) -> str:
    """Qdrant's own error text ({"status": {"error": ...}}), else the raw body, one line."""
    content = exc.content.decode(errors="replace") if exc.content else exc.reason_phrase
    try:
        content = str(json.loads(content)["status"]["error"])
    except (ValueError, KeyError, TypeError):
        pass
    return " ".join(content.split())[:200]


def _describe_server(url: str, prefer_grpc: bool, grpc_port: int) -> str:
    """Where the data calls go, for error messages (no credentials, no path)."""
    parts = urlsplit(url)
    host = parts.hostname or url
    if prefer_grpc:
        return f"gRPC {host}:{grpc_port}"
    return f"{parts.scheme or 'http'}://{host}:{parts.port or 6333}"


def _index_plan(
    keyword: Sequence[str], integer: Sequence[str], floats: Sequence[str]
) -> dict[str, IndexType]:
    plan: dict[str, IndexType] = {}
    for kind, keys in ((IndexType.KEYWORD, keyword), (IndexType.INTEGER, integer), (IndexType.FLOAT, floats)):
        for key in keys:
            require(bool(key) and key == key.strip(), f"invalid payload index field {key!r}")
            other = plan.setdefault(key, kind)
            require(
                other is kind,
                f"payload field {key!r} asked to be indexed as both {other.name.lower()} "
                f"and {kind.name.lower()}",
            )
    require(len(plan) <= MAX_INDEX_FIELDS, f"at most {MAX_INDEX_FIELDS} payload index fields")
    return plan


def _transport_reason(exc: BaseException, timeout: int) -> str:
    """Why a request never got an answer: httpx's and the standard library's errors."""
    name = type(exc).__name__
    if "Timeout" in name or isinstance(exc, TimeoutError):
        return f"no answer within {timeout}s"
    if "Connect" in name or isinstance(exc, ConnectionError):
        return "cannot connect"
    return f"request failed ({name})"


def _is_grpc_error(exc: Exception) -> bool:
    return type(exc).__module__.startswith("grpc") and hasattr(exc, "code")


_GRPC_REJECTED = {"INVALID_ARGUMENT", "FAILED_PRECONDITION", "OUT_OF_RANGE", "ALREADY_EXISTS"}


def _from_grpc(exc: Any, collection: str | None, timeout: int) -> Exception:
    name = exc.code().name
    if name == "NOT_FOUND":
        return NotFound(f"collection {collection} does not exist")
    if name in _GRPC_REJECTED:
        return InvalidArgument(f"Qdrant rejected the request: {exc.details()}")
    # Everything else is Qdrant's problem or ours to configure, not the caller's.
    if name == "UNAVAILABLE":
        return Unavailable("cannot connect (UNAVAILABLE)")
    if name == "DEADLINE_EXCEEDED":
        return Unavailable(f"no answer within {timeout}s (DEADLINE_EXCEEDED)")
    if name in ("UNAUTHENTICATED", "PERMISSION_DENIED"):
        return Unavailable(f"it refused our API key ({name})")
    return Unavailable(f"{name}: {exc.details()}")


def build_store(settings: "RetrievalSettings", qdrant_path: Path) -> VectorStore:
    if settings.qdrant_url:
        return VectorStore(
            url=settings.qdrant_url,
            api_key=settings.qdrant_api_key,
            prefer_grpc=settings.prefer_grpc,
            grpc_port=settings.grpc_port,
            timeout_s=settings.timeout_s,
            max_top_k=settings.max_top_k,
            max_batch_size=settings.max_batch_size,
            lexical_field=settings.lexical_field,
            hybrid_candidates=settings.hybrid_candidates,
        )
    qdrant_path.mkdir(parents=True, exist_ok=True)
    return VectorStore(
        path=str(qdrant_path),
        timeout_s=settings.timeout_s,
        max_top_k=settings.max_top_k,
        max_batch_size=settings.max_batch_size,
        engine=settings.embedded_engine,
        lock_wait_s=settings.embedded_lock_wait_s,
        lexical_field=settings.lexical_field,
        hybrid_candidates=settings.hybrid_candidates,
    )
