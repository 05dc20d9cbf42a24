"""Vector storage and search over Qdrant, embedded or remote, one interface.

``QdrantClient(path=...)`` (embedded, the local default) and
``QdrantClient(url=...)`` (a server, over gRPC) are chosen by settings only.
Every call carries a timeout; a server that cannot be reached becomes
``Unavailable`` so the gateway can answer with a fallback instead of an error.
"""

from __future__ import annotations

import enum
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from qdrant_client import QdrantClient
from qdrant_client import models as qm
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from ragrail.common.errors import InvalidArgument, NotFound, Unavailable, require

if TYPE_CHECKING:
    from ragrail.common.config import RetrievalSettings

T = TypeVar("T")
_COLLECTION_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class Distance(enum.Enum):
    COSINE = qm.Distance.COSINE
    DOT = qm.Distance.DOT
    EUCLID = qm.Distance.EUCLID


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


class VectorStore:
    """Qdrant behind a small, validated interface."""

    def __init__(
        self,
        *,
        url: str | None = None,
        api_key: str | None = None,
        path: str | None = None,
        prefer_grpc: bool = True,
        timeout_s: float = 10.0,
        max_top_k: int = 100,
        max_batch_size: int = 512,
    ) -> None:
        require(bool(url) != bool(path), "configure exactly one of a Qdrant url or an embedded path")
        self.embedded = url is None
        self.timeout_s = timeout_s
        self.max_top_k = max_top_k
        self.max_batch_size = max_batch_size
        self._dimensions: dict[str, int] = {}
        if url:
            self._client = QdrantClient(
                url=url, api_key=api_key, prefer_grpc=prefer_grpc, timeout=int(max(1, timeout_s))
            )
        else:
            self._client = QdrantClient(path=path)

    def close(self) -> None:
        self._client.close()

    def ensure_collection(
        self,
        name: str,
        dimension: int,
        distance: Distance = Distance.COSINE,
        keyword_index_fields: Sequence[str] = (),
    ) -> bool:
        """Creates the collection unless it exists; returns whether it was created."""
        _check_collection_name(name)
        require(0 < dimension <= 65536, f"dimension must be in 1..65536, got {dimension}")
        if self._call(lambda: self._client.collection_exists(name)):
            existing = self.describe(name)
            require(
                existing.dimension == dimension and existing.distance == distance,
                f"collection {name} exists with dimension {existing.dimension} and "
                f"{existing.distance.name.lower()} distance",
            )
            return False
        self._call(
            lambda: self._client.create_collection(
                name, vectors_config=qm.VectorParams(size=dimension, distance=distance.value)
            )
        )
        self._dimensions[name] = dimension  # it may have existed before with another one
        # Embedded Qdrant ignores payload indexes (and warns); a server needs them
        # so that filtered searches stay fast on large collections.
        for key in keyword_index_fields if not self.embedded else ():
            self._call(
                lambda key=key: self._client.create_payload_index(
                    name, field_name=key, field_schema=qm.PayloadSchemaType.KEYWORD
                )
            )
        return True

    def describe(self, name: str) -> CollectionInfo:
        _check_collection_name(name)
        info = self._call(lambda: self._client.get_collection(name), collection=name)
        params = info.config.params.vectors
        assert isinstance(params, qm.VectorParams)  # we only create single-vector collections
        return CollectionInfo(
            name=name,
            dimension=params.size,
            distance=Distance(params.distance),
            points_count=int(info.points_count or 0),
        )

    def _dimension(self, collection: str) -> int:
        # Cached: collections are not resized, and a deleted one raises NotFound below.
        if collection not in self._dimensions:
            self._dimensions[collection] = self.describe(collection).dimension
        return self._dimensions[collection]

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
            qm.PointStruct(id=_check_id(p.id, f"points[{i}].id"), vector=p.vector, payload=p.payload)
            for i, p in enumerate(points)
        ]
        self._call(
            lambda: self._client.upsert(collection, points=structs, wait=True), collection=collection
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
    ) -> list[Hit]:
        _check_collection_name(collection)
        _check_vector(vector, self._dimension(collection), "vector")
        require(1 <= top_k <= self.max_top_k, f"top_k must be in 1..{self.max_top_k}, got {top_k}")
        result = self._call(
            lambda: self._client.query_points(
                collection,
                query=list(vector),
                limit=top_k,
                score_threshold=score_threshold,
                query_filter=to_qdrant_filter(filter),
                with_payload=list(payload_fields) if payload_fields else True,
                timeout=int(max(1, self.timeout_s)),
            ),
            collection=collection,
        )
        return [Hit(id=str(p.id), score=float(p.score), payload=dict(p.payload or {})) for p in result.points]

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
                    collection, points_selector=qm.PointIdsList(points=checked), wait=True
                ),
                collection=collection,
            )
        if has_filter:
            selector = qm.FilterSelector(filter=to_qdrant_filter(filter))
            self._call(
                lambda: self._client.delete(collection, points_selector=selector, wait=True),
                collection=collection,
            )

    def _call(self, fn: Callable[[], T], collection: str | None = None) -> T:
        """Runs a Qdrant call and maps its failures to statuses."""
        try:
            return fn()
        except (ResponseHandlingException, ConnectionError, TimeoutError) as exc:
            raise Unavailable(f"Qdrant is unavailable: {type(exc).__name__}") from exc
        except UnexpectedResponse as exc:
            if exc.status_code == 404:
                self._dimensions.pop(collection or "", None)
                raise NotFound(f"collection {collection} does not exist") from exc
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
                error = _from_grpc(exc, collection)
                if isinstance(error, NotFound):
                    self._dimensions.pop(collection or "", None)
                raise error from exc
            raise


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
    content = exc.content.decode(errors="replace") if exc.content else exc.reason_phrase
    return " ".join(content.split())[:200]


def _is_grpc_error(exc: Exception) -> bool:
    return type(exc).__module__.startswith("grpc") and hasattr(exc, "code")


def _from_grpc(exc: Any, collection: str | None) -> Exception:
    name = exc.code().name
    if name in ("UNAVAILABLE", "DEADLINE_EXCEEDED"):
        return Unavailable(f"Qdrant is unavailable: {name}")
    if name == "NOT_FOUND":
        return NotFound(f"collection {collection} does not exist")
    return InvalidArgument(f"Qdrant rejected the request: {exc.details()}")


def build_store(settings: "RetrievalSettings", qdrant_path: Path) -> VectorStore:
    if settings.qdrant_url:
        return VectorStore(
            url=settings.qdrant_url,
            api_key=settings.qdrant_api_key,
            prefer_grpc=settings.prefer_grpc,
            timeout_s=settings.timeout_s,
            max_top_k=settings.max_top_k,
            max_batch_size=settings.max_batch_size,
        )
    qdrant_path.mkdir(parents=True, exist_ok=True)
    return VectorStore(
        path=str(qdrant_path),
        timeout_s=settings.timeout_s,
        max_top_k=settings.max_top_k,
        max_batch_size=settings.max_batch_size,
    )
