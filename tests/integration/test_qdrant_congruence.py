"""One retrieval scenario, three backends, the same answers.

``run_scenario`` drives a store through what the service does (create with indexes,
batched upserts of a few hundred clustered vectors, filtered searches with
must/should/must_not on keyword, integer, float range, match-any and boolean
conditions, score thresholds, payload field selection, replacement, delete by ids
and by filter, counts, dropping the collection) and records every observable result.

It runs against:
- ``ReferenceStore``: brute-force cosine in float64 with Qdrant's filter semantics
  written out by hand, the oracle;
- embedded Qdrant (``VectorStore(path=...)``, the local default): Qdrant's own engine
  in process (Qdrant Edge, the server's Rust shard code: the real filter evaluation,
  payload indexes, HNSW and scoring without Docker), always; once more with its HNSW
  index built after every upsert;
- qdrant-client's local mode (``engine="local"``, the default before), always;
- a real Qdrant server started with testcontainers, over gRPC and over REST, when
  a Docker engine answers; otherwise those tests skip and say why.

Hits must agree in ids and order, with scores within 1e-4. The oracle's own test
checks the scenario is unambiguous (no near-ties, no score near a threshold), so
a disagreement is a real difference and not float noise.
"""

from __future__ import annotations

import math
import os
import time
import uuid
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ragrail.common.errors import InvalidArgument, NotFound, require
from ragrail.retrieval.core import (
    CollectionInfo,
    Condition,
    Distance,
    Filter,
    Hit,
    Point,
    Range,
    VectorStore,
)

QDRANT_IMAGE = os.environ.get("RAGRAIL_QDRANT_IMAGE", "qdrant/qdrant:v1.19.0")
# Set to 1 where Docker is meant to be there (CI with an engine): skips become failures.
REQUIRE_DOCKER = os.environ.get("RAGRAIL_REQUIRE_DOCKER") == "1"

DIM = 16
CLUSTERS = 8
PER_CLUSTER = 40
TOPICS = ["fares", "luggage", "history", "tickets", "stations", "delays", "food", "bikes"]
LANGS = ["en", "de", "fr"]
SCORE_TOLERANCE = 1e-4
KEYWORD_FIELDS = ("doc", "lang", "topic")
INTEGER_FIELDS = ("year", "chunk_index")
FLOAT_FIELDS = ("price",)


def uid(n: int) -> str:
    return str(uuid.UUID(int=n + 1))


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


@dataclass(frozen=True)
class Dataset:
    points: list[Point]
    centers: np.ndarray


def make_dataset(seed: int = 20240611) -> Dataset:
    rng = np.random.default_rng(seed)
    centers = np.stack([_unit(rng.normal(size=DIM)) for _ in range(CLUSTERS)])
    points = []
    for i in range(CLUSTERS * PER_CLUSTER):
        cluster = i % CLUSTERS
        vector = _unit(centers[cluster] + 0.35 * rng.normal(size=DIM) / math.sqrt(DIM))
        payload = {
            "doc": f"doc-{i // 8:03d}",
            "chunk_index": i % 8,
            "topic": TOPICS[cluster],
            "lang": LANGS[int(rng.integers(len(LANGS)))],
            "year": 2015 + int(rng.integers(10)),
            "price": round(float(rng.uniform(0, 100)), 2),
            "public": bool(rng.integers(2)),
            "text": f"chunk {i} about {TOPICS[cluster]}",
        }
        points.append(Point(uid(i), [float(x) for x in vector.astype(np.float32)], payload))
    return Dataset(points, centers)


def near(data: Dataset, cluster: int, salt: int) -> list[float]:
    rng = np.random.default_rng(1000 + salt)
    return [float(x) for x in _unit(data.centers[cluster] + 0.2 * rng.normal(size=DIM) / math.sqrt(DIM))]


# -- the scenario --------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    step: str
    value: Any  # list[Hit] for searches, else a plain value
    threshold: float | None = None
    unthresholded: list[Hit] | None = None  # the same search without threshold, for the oracle


def run_scenario(store: Any, collection: str, data: Dataset) -> list[Outcome]:
    """Runs the shared scenario on ``store`` and records what a caller would see."""
    out: list[Outcome] = []

    def record(step: str, value: Any) -> None:
        out.append(Outcome(step, value))

    def search(step: str, query: Sequence[float], top_k: int = 10, **kwargs: Any) -> None:
        hits = store.search(collection, query, top_k=top_k, **kwargs)
        threshold = kwargs.get("score_threshold")
        if threshold is None:
            out.append(Outcome(step, hits))
            return
        kwargs.pop("score_threshold")
        loose = store.search(collection, query, top_k=top_k, **kwargs)
        out.append(Outcome(step, hits, threshold, loose))

    def count(step: str) -> None:
        record(step, store.describe(collection).points_count)

    created = store.ensure_collection(
        collection,
        DIM,
        Distance.COSINE,
        keyword_index_fields=KEYWORD_FIELDS,
        integer_index_fields=INTEGER_FIELDS,
        float_index_fields=FLOAT_FIELDS,
    )
    record("created", created)
    record(
        "created again",
        store.ensure_collection(collection, DIM, keyword_index_fields=KEYWORD_FIELDS, integer_index_fields=INTEGER_FIELDS),
    )
    for start in range(0, len(data.points), 128):  # batched, as ingestion does
        record(f"upserted from {start}", store.upsert(collection, data.points[start : start + 128]))
    count("count after upsert")
    info = store.describe(collection)
    record("shape", (info.dimension, info.distance))

    q0, q3, q5 = near(data, 0, 1), near(data, 3, 2), near(data, 5, 3)
    search("plain", q0)
    search("top_k 1", q3, top_k=1)
    search("top_k 60", q5, top_k=60)
    search("must keyword", q0, filter=Filter(must=(Condition("lang", keyword="en"),)))
    search(
        "must integer range, must_not keyword",
        q0,
        filter=Filter(
            must=(Condition("year", range=Range(gte=2018, lt=2022)),),
            must_not=(Condition("lang", keyword="fr"),),
        ),
    )
    search(
        "should keywords far from the query",
        q0,
        top_k=60,
        filter=Filter(should=(Condition("topic", keyword="history"), Condition("topic", keyword="tickets"))),
    )
    search(
        "match-any with must_not float range",
        q3,
        filter=Filter(
            must=(Condition("topic", any_of=("fares", "tickets")),),
            must_not=(Condition("price", range=Range(gt=50)),),
        ),
    )
    search(
        "float range and integer match",
        q5,
        filter=Filter(
            must=(Condition("price", range=Range(gte=20.5, lte=60.25)), Condition("chunk_index", integer=3))
        ),
    )
    search(
        "boolean with should and must_not",
        q3,
        top_k=20,
        filter=Filter(
            must=(Condition("public", boolean=True),),
            should=(Condition("lang", keyword="de"), Condition("year", range=Range(lte=2016))),
            must_not=(Condition("topic", any_of=("delays", "food")),),
        ),
    )
    search("nothing matches", q0, filter=Filter(must=(Condition("lang", keyword="xx"),)))
    search("threshold", q0, top_k=60, score_threshold=0.8)
    search(
        "threshold with filter",
        q3,
        top_k=60,
        score_threshold=0.5,
        filter=Filter(must=(Condition("year", range=Range(gt=2019)),)),
    )
    search("threshold above everything", q0, score_threshold=1.01)
    search("payload fields", q5, payload_fields=["doc", "chunk_index"])
    search("payload field that nobody has", q5, top_k=3, payload_fields=["missing"])

    # Replacement keeps the count and changes what filters see.
    moved = [
        Point(p.id, near(data, 6, 10 + n), {**p.payload, "lang": "xx"})
        for n, p in enumerate(data.points[:5])
    ]
    record("replaced", store.upsert(collection, moved))
    count("count after replace")
    search("replaced points", near(data, 6, 99), filter=Filter(must=(Condition("lang", keyword="xx"),)))

    store.delete(collection, ids=[p.id for p in data.points[10:20]])
    count("count after delete by ids")
    search("plain after delete by ids", q0, top_k=20)
    store.delete(collection, ids=[uid(10_000)])  # not there: nothing happens
    count("count after deleting a missing id")

    # The gateway's stale-chunk delete: one document, chunk_index from a bound on.
    store.delete(
        collection,
        filter=Filter(
            must=(Condition("doc", keyword="doc-005"), Condition("chunk_index", range=Range(gte=4)))
        ),
    )
    count("count after delete by keyword and range")
    search("what is left of doc-005", q0, filter=Filter(must=(Condition("doc", keyword="doc-005"),)))
    store.delete(collection, filter=Filter(should=(Condition("topic", any_of=("bikes",)),)))
    count("count after delete by match-any")
    search("near a deleted cluster", near(data, 7, 5), top_k=15)
    store.delete(collection, filter=Filter(must_not=(Condition("year", range=Range(gte=2016)),)))
    count("count after delete by must_not")
    search("after every delete", q3, top_k=30, filter=Filter(must=(Condition("year", range=Range(lt=2017)),)))

    store.delete_collection(collection)
    try:
        store.describe(collection)
        record("describe after drop", "found")
    except NotFound:
        record("describe after drop", "not found")
    try:
        store.delete_collection(collection)
        record("drop twice", "dropped")
    except NotFound:
        record("drop twice", "not found")
    record("created after drop", store.ensure_collection(collection, DIM))
    count("count after re-create")
    return out


# -- the oracle ----------------------------------------------------------------------


def matches(c: Condition, payload: dict[str, Any]) -> bool:
    """One condition as Qdrant evaluates it on a flat payload."""
    value = payload.get(c.key)
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if c.keyword is not None:
        return isinstance(value, str) and value == c.keyword
    if c.integer is not None:
        return isinstance(value, int) and not isinstance(value, bool) and value == c.integer
    if c.boolean is not None:
        return isinstance(value, bool) and value == c.boolean
    if c.any_of is not None:
        return isinstance(value, str) and value in c.any_of
    if c.range is not None:
        r = c.range
        return number and all(
            (
                r.gt is None or value > r.gt,
                r.gte is None or value >= r.gte,
                r.lt is None or value < r.lt,
                r.lte is None or value <= r.lte,
            )
        )
    raise InvalidArgument(f"condition on {c.key} has no match")


def satisfies(f: Filter | None, payload: dict[str, Any]) -> bool:
    if f is None:
        return True
    return (
        all(matches(c, payload) for c in f.must)
        and (not f.should or any(matches(c, payload) for c in f.should))
        and not any(matches(c, payload) for c in f.must_not)
    )


class ReferenceStore:
    """Brute force over a dict: what Qdrant should answer, computed in float64."""

    def __init__(self) -> None:
        self.collections: dict[str, dict[str, tuple[np.ndarray, dict[str, Any]]]] = {}
        self.dimensions: dict[str, int] = {}

    def ensure_collection(self, name: str, dimension: int, distance: Distance = Distance.COSINE, **_: Any) -> bool:
        if name in self.collections:
            require(self.dimensions[name] == dimension, "dimension differs")
            return False
        self.collections[name], self.dimensions[name] = {}, dimension
        return True

    def _get(self, name: str) -> dict[str, tuple[np.ndarray, dict[str, Any]]]:
        if name not in self.collections:
            raise NotFound(f"collection {name} does not exist")
        return self.collections[name]

    def describe(self, name: str) -> CollectionInfo:
        return CollectionInfo(name, self.dimensions[name], Distance.COSINE, len(self._get(name)))

    def delete_collection(self, name: str) -> None:
        self._get(name)
        del self.collections[name]

    def upsert(self, name: str, points: Sequence[Point]) -> int:
        stored = self._get(name)
        for p in points:
            stored[p.id] = (_unit(np.asarray(p.vector, dtype=np.float64)), dict(p.payload))
        return len(points)

    def search(
        self,
        name: str,
        vector: Sequence[float],
        *,
        top_k: int,
        score_threshold: float | None = None,
        filter: Filter | None = None,
        payload_fields: Sequence[str] = (),
    ) -> list[Hit]:
        query = _unit(np.asarray(vector, dtype=np.float64))
        scored = [
            (float(query @ v), pid, payload)
            for pid, (v, payload) in self._get(name).items()
            if satisfies(filter, payload)
        ]
        scored.sort(key=lambda t: -t[0])
        hits = []
        for score, pid, payload in scored:
            if score_threshold is not None and score < score_threshold:
                continue
            shown = {k: payload[k] for k in payload_fields if k in payload} if payload_fields else dict(payload)
            hits.append(Hit(pid, score, shown))
        return hits[:top_k]

    def delete(self, name: str, ids: Sequence[str] = (), filter: Filter | None = None) -> None:
        stored = self._get(name)
        for pid in ids:
            stored.pop(pid, None)
        if filter is not None and not filter.is_empty():
            for pid in [pid for pid, (_, payload) in stored.items() if satisfies(filter, payload)]:
                del stored[pid]


# -- comparison ----------------------------------------------------------------------


def assert_same(actual: list[Outcome], expected: list[Outcome], label: str) -> None:
    assert [o.step for o in actual] == [o.step for o in expected], label
    problems = []
    for got, want in zip(actual, expected, strict=True):
        if isinstance(want.value, list):
            got_ids, want_ids = [h.id for h in got.value], [h.id for h in want.value]
            if got_ids != want_ids:
                problems.append(f"{got.step}: ids {got_ids} != {want_ids}")
                continue
            for g, w in zip(got.value, want.value, strict=True):
                if abs(g.score - w.score) > SCORE_TOLERANCE:
                    problems.append(f"{got.step}: {g.id} scored {g.score} vs {w.score}")
                if g.payload != w.payload:
                    problems.append(f"{got.step}: {g.id} payload {g.payload} != {w.payload}")
        elif got.value != want.value:
            problems.append(f"{got.step}: {got.value!r} != {want.value!r}")
    assert not problems, f"{label} disagrees:\n" + "\n".join(problems)


@pytest.fixture(scope="module")
def data() -> Dataset:
    return make_dataset()


@pytest.fixture(scope="module")
def reference(data: Dataset) -> list[Outcome]:
    return run_scenario(ReferenceStore(), "congruence", data)


@pytest.fixture(scope="module")
def embedded(data: Dataset, tmp_path_factory: pytest.TempPathFactory) -> list[Outcome]:
    store = VectorStore(path=str(tmp_path_factory.mktemp("qdrant-embedded")), max_top_k=100, max_batch_size=128)
    assert store.engine == "edge"  # the default
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # embedded must not even warn
            return run_scenario(store, "congruence", data)
    finally:
        store.close()


def test_the_scenario_is_unambiguous(reference: list[Outcome]) -> None:
    """No near-ties and no score near a threshold: float32 vs float64 cannot reorder or cut anything."""
    for outcome in reference:
        if not isinstance(outcome.value, list):
            continue
        scores = [h.score for h in (outcome.unthresholded or outcome.value)]
        gaps = [a - b for a, b in zip(scores, scores[1:])]
        # float32 vs float64 moves a score by ~1e-7; 1e-5 apart cannot swap.
        assert all(g > 1e-5 for g in gaps), f"{outcome.step}: near-tied scores {scores}"
        if outcome.threshold is not None:
            margin = min((abs(s - outcome.threshold) for s in scores), default=1.0)
            assert margin > 1e-3, f"{outcome.step}: a score lies within {margin} of the threshold"


def test_the_scenario_exercises_what_it_claims(reference: list[Outcome]) -> None:
    """Literal expectations, so the oracle itself is checked too."""
    by_step = {o.step: o.value for o in reference}
    assert by_step["created"] is True and by_step["created again"] is False
    assert by_step["count after upsert"] == CLUSTERS * PER_CLUSTER == 320
    assert by_step["count after replace"] == 320
    assert by_step["count after delete by ids"] == 310
    assert by_step["count after deleting a missing id"] == 310
    assert by_step["count after delete by keyword and range"] == 306
    assert by_step["describe after drop"] == "not found" and by_step["drop twice"] == "not found"
    assert by_step["created after drop"] is True and by_step["count after re-create"] == 0
    assert len(by_step["top_k 60"]) == 60 and len(by_step["top_k 1"]) == 1
    assert by_step["nothing matches"] == [] and by_step["threshold above everything"] == []
    assert 0 < len(by_step["threshold"]) < 60  # the threshold cuts inside the list
    assert 0 < len(by_step["threshold with filter"]) < 60
    assert {h.payload["topic"] for h in by_step["should keywords far from the query"]} == {"history", "tickets"}
    assert [h.id for h in by_step["replaced points"]] and all(
        h.payload["lang"] == "xx" for h in by_step["replaced points"]
    )
    assert {h.payload["chunk_index"] for h in by_step["what is left of doc-005"]} == {0, 1, 2, 3}
    assert all(h.payload["topic"] != "bikes" for h in by_step["near a deleted cluster"])
    assert all(set(h.payload) == {"doc", "chunk_index"} for h in by_step["payload fields"])
    assert all(h.payload == {} for h in by_step["payload field that nobody has"])
    assert by_step["count after delete by must_not"] < by_step["count after delete by match-any"] < 306


@pytest.fixture(scope="module")
def embedded_local(data: Dataset, tmp_path_factory: pytest.TempPathFactory) -> list[Outcome]:
    store = VectorStore(
        path=str(tmp_path_factory.mktemp("qdrant-local")), max_top_k=100, max_batch_size=128, engine="local"
    )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # local mode must not even warn (e.g. about payload indexes)
            return run_scenario(store, "congruence", data)
    finally:
        store.close()


def test_embedded_qdrant_matches_the_reference(embedded: list[Outcome], reference: list[Outcome]) -> None:
    assert_same(embedded, reference, "embedded Qdrant (the engine) vs the reference")


def test_local_mode_matches_the_reference(embedded_local: list[Outcome], reference: list[Outcome]) -> None:
    assert_same(embedded_local, reference, "qdrant-client's local mode vs the reference")


# -- Qdrant's own engine, in process: the embedded default ---------------------------------


def test_qdrant_engine_matches_local_mode(embedded: list[Outcome], embedded_local: list[Outcome]) -> None:
    """The embedded default (Qdrant Edge) and the local mode it replaces answer alike, booleans too."""
    assert_same(embedded, embedded_local, "Qdrant's engine (Edge) vs qdrant-client's local mode")


def test_qdrant_engine_filters_with_payload_indexes(tmp_path: Path) -> None:
    """The engine keeps the payload indexes asked for, as a server does."""
    store = VectorStore(path=str(tmp_path / "indexed"))
    try:
        store.ensure_collection(
            "indexed", DIM, keyword_index_fields=KEYWORD_FIELDS, integer_index_fields=INTEGER_FIELDS,
            float_index_fields=FLOAT_FIELDS,
        )
        assert set(store.describe("indexed").payload_indexes) == {*KEYWORD_FIELDS, *INTEGER_FIELDS, *FLOAT_FIELDS}
    finally:
        store.close()


def test_qdrant_engine_matches_the_reference_through_its_hnsw_index(
    data: Dataset, reference: list[Outcome], tmp_path: Path
) -> None:
    """The same scenario with the HNSW index built after every upsert, not a full scan."""
    from ragrail.retrieval import edge

    store = VectorStore(path=str(tmp_path / "hnsw"), max_top_k=100, max_batch_size=128)
    store._client.index_min_points = 1  # noqa: SLF001 - index at every upsert
    try:
        outcomes = run_scenario(store, "congruence", data)
        assert isinstance(store._client, edge.EdgeClient)  # noqa: SLF001
    finally:
        store.close()
    assert_same(outcomes, reference, "Qdrant's engine with HNSW vs the reference")


# -- a real Qdrant server -----------------------------------------------------------------


def docker_unavailable_reason() -> str | None:
    """Why no container can be started here, or None. Asks the engine, not just for a CLI."""
    try:
        from testcontainers.core.docker_client import DockerClient
    except ImportError:
        return "testcontainers is not installed (pip install -e '.[dev]')"
    try:
        DockerClient(timeout=10).client.ping()
    except Exception as exc:  # noqa: BLE001 - any failure means: no engine to talk to
        first = (str(exc).splitlines() or [""])[0][:160]
        return f"no Docker engine answers ({type(exc).__name__}: {first})"
    return None


def _skip_or_fail(reason: str) -> None:
    if REQUIRE_DOCKER:
        pytest.fail(f"RAGRAIL_REQUIRE_DOCKER=1 but {reason}")
    pytest.skip(f"remote Qdrant congruence skipped: {reason}")


@dataclass(frozen=True)
class Server:
    host: str
    rest_port: int
    grpc_port: int


@pytest.fixture(scope="module")
def qdrant_server() -> Iterator[Server]:
    reason = docker_unavailable_reason()
    if reason:
        _skip_or_fail(reason)
    from testcontainers.core.container import DockerContainer

    # The generic container, readiness checked below through both transports: the Qdrant
    # module's wait for a log line breaks whenever a release rewords it.
    container = DockerContainer(QDRANT_IMAGE).with_exposed_ports(6333, 6334)
    try:
        container.start()
    except Exception as exc:  # noqa: BLE001 - e.g. the image cannot be pulled offline
        try:
            container.stop()
        except Exception:  # noqa: BLE001 - nothing was created
            pass
        _skip_or_fail(f"could not start {QDRANT_IMAGE}: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}")
    try:
        server = Server(
            container.get_container_host_ip(),
            int(container.get_exposed_port(6333)),
            int(container.get_exposed_port(6334)),
        )
        _wait_until_ready(server)
        yield server
    finally:
        container.stop()


def _remote_store(server: Server, prefer_grpc: bool) -> VectorStore:
    return VectorStore(
        url=f"http://{server.host}:{server.rest_port}",
        grpc_port=server.grpc_port,
        prefer_grpc=prefer_grpc,
        timeout_s=10,
        max_top_k=100,
        max_batch_size=128,
    )


def _wait_until_ready(server: Server, within_s: float = 60) -> None:
    """Until both the REST and the gRPC listener answer."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            for prefer_grpc in (True, False):
                store = _remote_store(server, prefer_grpc)
                try:
                    store._client.get_collections()
                finally:
                    store.close()
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


@pytest.mark.parametrize("transport", ["grpc", "rest"])
def test_qdrant_server_matches_embedded(
    qdrant_server: Server, transport: str, data: Dataset, embedded: list[Outcome], reference: list[Outcome]
) -> None:
    store = _remote_store(qdrant_server, prefer_grpc=transport == "grpc")
    collection = f"congruence_{transport}"
    try:
        outcomes = run_scenario(store, collection, data)
    finally:
        store.close()
    assert_same(outcomes, embedded, f"Qdrant server over {transport} vs embedded Qdrant")
    assert_same(outcomes, reference, f"Qdrant server over {transport} vs the reference")


@pytest.mark.parametrize("transport", ["grpc", "rest"])
def test_qdrant_server_gets_the_payload_indexes(qdrant_server: Server, transport: str) -> None:
    """Embedded mode keeps none; a server must have every index asked for, once."""
    store = _remote_store(qdrant_server, prefer_grpc=transport == "grpc")
    name = f"indexes_{transport}"
    try:
        store.ensure_collection(name, DIM, keyword_index_fields=["doc"])
        assert store.describe(name).payload_indexes == {"doc": "keyword"}
        # Asked again with more fields (a later release): the missing ones are added.
        assert not store.ensure_collection(
            name, DIM, keyword_index_fields=["doc"], integer_index_fields=["chunk_index"], float_index_fields=["price"]
        )
        assert store.describe(name).payload_indexes == {"doc": "keyword", "chunk_index": "integer", "price": "float"}
        with pytest.raises(InvalidArgument, match="indexed as keyword, not integer"):
            store.ensure_collection(name, DIM, integer_index_fields=["doc"])
        store.delete_collection(name)
        with pytest.raises(NotFound):
            store.delete_collection(name)
    finally:
        store.close()


def test_docker_detection_gives_a_reason_or_none() -> None:
    reason = docker_unavailable_reason()
    assert reason is None or (reason and "\n" not in reason)



# -- hybrid search (dense + BM25, RRF): the same fused order everywhere ------------------------

HYBRID_TEXTS = [
    "The Puffin ferry carries 300 passengers between Ostervik and Brennhaven.",
    "Refunds are possible up to 7 days before departure, in full.",
    "The Valley Line has 5 stations and three passing loops.",
    "Bicycles travel free on the Coastal Line outside the rush hour.",
    "Dogs on a lead travel free; other pets need a carrier.",
    "The night train to Fernholt leaves Ostervik Central at 23:40.",
]
HYBRID_QUERIES = [
    "How many passengers does the Puffin carry?",
    "When does the night train to Fernholt leave?",
    "Can I take my bicycle on the Coastal Line?",
]


def run_hybrid(store: Any, collection: str) -> list[list[tuple[str, float]]]:
    """Fused rankings, with and without a threshold, as (id, dense score) lists."""
    rng = np.random.default_rng(99)
    vectors = [_unit(rng.normal(size=DIM)) for _ in HYBRID_TEXTS]
    store.ensure_collection(collection, DIM)
    assert store.describe(collection).lexical
    store.upsert(collection, [Point(uid(i), v.tolist(), {"text": t}) for i, (t, v) in enumerate(zip(HYBRID_TEXTS, vectors))])
    out = []
    for i, question in enumerate(HYBRID_QUERIES):
        query = _unit(vectors[(i + 1) % len(vectors)] + 0.6 * vectors[[0, 5, 3][i]]).tolist()
        for threshold in (None, 0.2):
            hits = store.search(collection, query, top_k=4, score_threshold=threshold, query_text=question)
            out.append([(h.id, round(h.score, 4)) for h in hits])
    store.delete_collection(collection)
    return out


def test_hybrid_search_agrees_in_both_embedded_engines(tmp_path: Path) -> None:
    results = {}
    for engine in ("edge", "local"):
        store = VectorStore(path=str(tmp_path / engine), engine=engine)  # type: ignore[arg-type]
        try:
            results[engine] = run_hybrid(store, "hybrid")
        finally:
            store.close()
    assert results["edge"] == results["local"]
    # The words matter: each question's passage is first although the vector leans elsewhere.
    assert [r[0][0] for r in results["edge"][::2]] == [uid(0), uid(5), uid(3)]


@pytest.mark.parametrize("transport", ["grpc", "rest"])
def test_hybrid_search_on_a_qdrant_server_matches_embedded(qdrant_server: Server, transport: str, tmp_path: Path) -> None:
    embedded_store = VectorStore(path=str(tmp_path / "edge"))
    try:
        expected = run_hybrid(embedded_store, "hybrid")
    finally:
        embedded_store.close()
    store = _remote_store(qdrant_server, prefer_grpc=transport == "grpc")
    try:
        assert run_hybrid(store, f"hybrid_{transport}") == expected
    finally:
        store.close()
