"""Benchmark 4, retrieval: search p50/p99 and recall@10 vs exact numpy search.

    .venv/bin/python benchmarks/bench_retrieval.py [--quick] [--sizes 10000,100000]
        [--engines edge,local] [--qdrant-url URL]

Random but clustered 384-d unit vectors (100 cluster centres, points scattered
around them) go into Qdrant through ragrail's own VectorStore, the code behind
the retrieval service, in one run: the embedded engine (Qdrant Edge in process,
HNSW, the default), qdrant-client's local mode (QdrantClient(path=...), the
default before) and, with --qdrant-url, a Qdrant server. Each query (a fresh point
near a random centre) is searched for its 10 nearest by cosine; the baseline
is an exact search in numpy over the same vectors (one matrix-vector product
and a partial sort per query). recall@10 = share of the exact top 10 that
Qdrant returned.

Build time includes the HNSW index the engine builds as points arrive. The
measured queries follow 50 warm-up searches with other query points (a freshly
written store's pages are not yet in memory). Memory is
the process's resident memory grown while the store was built and searched (the
vectors' own numpy copy is made before): heap (anonymous) and mapped segment files
(page cache) apart, and the store's folder on disk (allocated bytes).
Building
is capped (--max-build-s): local mode writes every point to SQLite, so 100k
points can take minutes. When the cap is hit, the run goes
on with the points stored so far and says so.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass

import _common as c

BENCH = "4 retrieval"
DIM = 384
CLUSTERS = 100
TOP_K = 10
# Searches before the measured ones, with other query points: a freshly built store's
# segment pages are not in memory yet (page faults of the first queries, not steady state).
WARM_UP_QUERIES = 50


def clustered(n: int, rng, centres):  # type: ignore[no-untyped-def]
    import numpy as np

    picks = rng.integers(0, len(centres), size=n)
    points = centres[picks] + rng.normal(0, 0.05, size=(n, DIM)).astype(np.float32)
    return points / np.linalg.norm(points, axis=1, keepdims=True)


@dataclass
class Run:
    backend: str
    requested: int
    stored: int
    build_s: float
    capped: bool
    p50_ms: float
    p99_ms: float
    exact_p50_ms: float
    exact_p99_ms: float
    recall: float
    heap_growth_mb: float = 0.0  # anonymous resident memory grown while building and searching
    mapped_mb: float = 0.0  # file-backed resident memory grown (the segments' pages in the page cache)
    disk_mb: float = 0.0


def rss_mb() -> tuple[float, float]:
    """This process's resident memory now, (anonymous, file-backed) in MiB (Linux; zeros
    elsewhere). The engine maps its segment files: those pages count as resident but are
    page cache the kernel can drop, so the two are reported apart."""
    found = {"RssAnon:": 0.0, "RssFile:": 0.0}
    try:
        with open("/proc/self/status") as status:
            for line in status:
                key = line.split(":")[0] + ":"
                if key in found:
                    found[key] = int(line.split()[1]) / 1024
    except OSError:
        pass
    return found["RssAnon:"], found["RssFile:"]


def folder_mb(folder: str) -> float:
    import os

    total = 0
    for root, _dirs, files in os.walk(folder):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_blocks * 512  # allocated, not sparse size
            except OSError:
                pass
    return total / 2**20


def point_id(i: int) -> str:
    return str(uuid.UUID(int=i + 1))


def bench_size(n: int, queries: int, max_build_s: float, url: str | None, engine: str = "edge", seed: int = 0) -> Run:
    import numpy as np

    from ragrail.retrieval.core import Distance, Point, VectorStore

    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, size=(CLUSTERS, DIM)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    data = clustered(n, rng, centres)
    qs = clustered(queries, rng, centres)
    warm = clustered(WARM_UP_QUERIES, rng, centres)

    folder = None
    rss_before = rss_mb()
    if url:
        store = VectorStore(url=url, timeout_s=60)
        backend = "server"
    else:
        folder = tempfile.mkdtemp(prefix="ragrail-bench-qdrant-")
        store = VectorStore(path=folder, timeout_s=60, engine=engine)  # type: ignore[arg-type]
        backend = "embedded " + engine
    collection = f"bench_{n}_{uuid.uuid4().hex[:8]}"
    try:
        store.ensure_collection(collection, DIM, Distance.COSINE)
        started = time.perf_counter()
        stored = 0
        capped = False
        batch = store.max_batch_size
        for lo in range(0, n, batch):
            hi = min(n, lo + batch)
            store.upsert(collection, [Point(point_id(i), data[i].tolist(), {"i": i}) for i in range(lo, hi)])
            stored = hi
            if time.perf_counter() - started > max_build_s and stored < n:
                capped = True
                break
        build_s = time.perf_counter() - started
        data = data[:stored]

        # exact baseline: the same cosine (vectors are unit length), all points
        exact_ids, exact_times = [], []
        for q in qs:
            t0 = time.perf_counter()
            scores = data @ q
            top = np.argpartition(-scores, TOP_K)[:TOP_K] if stored > TOP_K else np.arange(stored)
            top = top[np.argsort(-scores[top])]
            exact_times.append(time.perf_counter() - t0)
            exact_ids.append({int(i) for i in top})

        for q in warm:  # not measured: the first touches of freshly built segments' pages
            store.search(collection, q.tolist(), top_k=TOP_K)
        times, hits = [], 0
        for q, truth in zip(qs, exact_ids, strict=True):
            t0 = time.perf_counter()
            found = store.search(collection, q.tolist(), top_k=TOP_K, payload_fields=["i"])
            times.append(time.perf_counter() - t0)
            hits += len({uuid.UUID(h.id).int - 1 for h in found} & truth)
        recall = hits / (len(qs) * min(TOP_K, stored))
        heap_growth, mapped = (after - before for after, before in zip(rss_mb(), rss_before, strict=True))
        disk = folder_mb(folder) if folder else 0.0
    finally:
        try:
            if url:
                store._client.delete_collection(collection)  # noqa: SLF001 (a benchmark's own scratch collection)
        finally:
            store.close()
            if folder:
                shutil.rmtree(folder, ignore_errors=True)
    return Run(backend, n, stored, build_s, capped,
               c.percentile(times, 50) * 1000, c.percentile(times, 99) * 1000,
               c.percentile(exact_times, 50) * 1000, c.percentile(exact_times, 99) * 1000, recall,
               heap_growth, mapped, disk)


def main(argv: list[str] | None = None) -> int:
    p = c.base_parser(__doc__)
    p.add_argument("--sizes", default="10000,100000", help="collection sizes, comma-separated")
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--max-build-s", type=float, default=240.0, help="cap on the time spent storing each collection")
    p.add_argument("--qdrant-url", help="also run against this Qdrant server (e.g. http://127.0.0.1:6334)")
    p.add_argument("--engines", default="edge,local", help="embedded engines to measure, comma-separated")
    args = p.parse_args(argv)
    sizes = [1000] if args.quick else [int(x) for x in args.sizes.split(",")]
    queries = 20 if args.quick else args.queries
    max_build = 30.0 if args.quick else args.max_build_s

    runs = []
    targets = [(None, e) for e in args.engines.split(",") if e] + ([(args.qdrant_url, "")] if args.qdrant_url else [])
    for n in sizes:
        for url, engine in targets:
            run = bench_size(n, queries, max_build, url, engine)
            runs.append(run)
            print(f"  {run.backend} {n:,}: stored {run.stored:,} in {run.build_s:.1f} s"
                  f"{' (build cap hit)' if run.capped else ''}; search p50 {run.p50_ms:.2f} ms", flush=True)
    if not args.qdrant_url:
        print("  (no --qdrant-url: Qdrant server not measured; none is available on this machine by default)")

    rows = [[r.backend, f"{r.stored:,}" + ("" if not r.capped else f" of {r.requested:,}"), r.build_s,
             r.p50_ms, r.p99_ms, r.exact_p50_ms, r.exact_p99_ms, f"x{r.p50_ms / r.exact_p50_ms:.2f}",
             f"x{r.p99_ms / r.exact_p99_ms:.2f}", r.recall, f"{r.heap_growth_mb:,.0f}", f"{r.mapped_mb:,.0f}",
             f"{r.disk_mb:,.0f}" if r.disk_mb else "-"] for r in runs]
    print(f"\nretrieval: {queries} queries, top {TOP_K}, cosine, {DIM}-d, {CLUSTERS} clusters; "
          "Qdrant through ragrail's VectorStore vs exact numpy search")
    print(c.table(["qdrant", "points", "build s", "p50 ms", "p99 ms", "numpy p50 ms", "numpy p99 ms",
                   "p50 / numpy", "p99 / numpy", "recall@10", "heap MiB", "mapped MiB", "disk MiB"], rows))

    figures = []
    for r in runs:
        size = f"{r.stored:,}" + (f" of {r.requested:,} (build capped at {max_build:.0f} s)" if r.capped else "")
        figures.append(c.Figure(BENCH, f"{r.backend} search p50 / p99, {size} points",
                                f"{r.p50_ms:.2f} / {r.p99_ms:.2f} ms",
                                f"{r.exact_p50_ms:.2f} / {r.exact_p99_ms:.2f} ms exact numpy",
                                f"x{r.p50_ms / r.exact_p50_ms:.1f} p50"))
        figures.append(c.Figure(BENCH, f"{r.backend} recall@10, {size} points", f"{r.recall:.3f}",
                                "1.000 exact numpy", f"{r.recall:.3f}"))
        figures.append(c.Figure(BENCH, f"{r.backend} build, {size} points", f"{r.build_s:.1f} s",
                                "-", f"{r.stored / r.build_s:,.0f} points/s"))
        figures.append(c.Figure(BENCH, f"{r.backend} memory, {size} points",
                                f"heap +{r.heap_growth_mb:,.0f} MiB, mapped +{r.mapped_mb:,.0f} MiB, "
                                f"disk {r.disk_mb:,.0f} MiB",
                                f"{r.stored * DIM * 4 / 2**20:,.0f} MiB of raw float32 vectors", "-"))
    if c.should_record(args):
        c.record(figures, args.docs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
