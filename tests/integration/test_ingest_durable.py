"""Durable ingestion under faults (issue 11, item 4): the retrieval replica is killed mid-ingest.

N documents of a few chunks each are ingested one call each while the retrieval replica is
SIGKILLed and Serve restarts it. The gateway retries each backend call once; the caller is
told which documents still failed, and ingests those again (idempotent by id). Afterwards exactly the N documents are searchable, each one whole
version of its own chunks, and the collection holds nothing else of theirs (no duplicate,
no staged leftover).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from ragrail.common.config import GatewaySettings
from ragrail.embedding.v1 import embedding_pb2, embedding_pb2_grpc
from ragrail.gateway.v1 import gateway_pb2 as pb
from ragrail.gateway.v1 import gateway_pb2_grpc
from ragrail.retrieval.v1 import retrieval_pb2, retrieval_pb2_grpc
from tests.integration.conftest import Stack

pytestmark = pytest.mark.integration

N = 16
KILL_AFTER = 4  # documents committed before the fault
WORKERS = 4  # concurrent callers during the fault
RECOVER_S = 180  # bound on the whole retry phase: Serve restarts the replica in seconds here
RETRIEVAL = (("application", "retrieval"),)
TOPICS = ["lighthouses", "tea gardens", "river ferries", "glass making", "orchards", "observatories"]


def document_text(n: int, tag: str) -> str:
    """About 2,000 characters in paragraphs: three chunks with the default chunking."""
    topic = TOPICS[n % len(TOPICS)]
    paragraphs = [
        f"Record {tag}-{n}, part {p}. This note describes {topic} in the valley of station {n}. "
        f"It lists the opening hours, the names of the keepers and the history of the place since "
        f"the year {1850 + n * 3 + p}. Visitors are asked to book ahead in the summer months, "
        "and guided walks leave from the main gate every morning at nine."
        for p in range(6)
    ]
    return "\n\n".join(paragraphs)


def replica_pids(stack: Stack, app: str) -> list[int]:
    from loadtest.chaos_stack import replica_pids as find, stack_processes

    return find(stack_processes(stack.pid, [stack.ray_temp_dir, stack.haproxy_dir]), app)


def ingest(stub: gateway_pb2_grpc.GatewayServiceStub, doc_id: str, text: str) -> str:
    """'' when committed, else the status the caller was told."""
    request = pb.IngestRequest(documents=[pb.Document(document_id=doc_id, text=text, source="durable")])
    try:
        response = stub.Ingest(request, timeout=30)
    except grpc.RpcError as error:
        return error.code().name  # type: ignore[attr-defined, no-any-return]
    [result] = response.documents
    return "" if result.status == pb.DOCUMENT_STATUS_COMMITTED else result.error_code


def visible(serve: grpc.Channel, doc_id: str) -> list[dict]:
    stub = retrieval_pb2_grpc.RetrievalServiceStub(serve)
    request = retrieval_pb2.SearchRequest(
        collection="documents", vector=[1.0] + [0.0] * 383, top_k=100,
        filter=retrieval_pb2.Filter(must=[retrieval_pb2.Condition(key="document_id", keyword=doc_id)]),
        payload_fields=["document_id", "version", "chunk_index", "text"],
    )
    response = stub.Search(request, metadata=RETRIEVAL, timeout=10)
    from ragrail.retrieval.servicer import struct_to_dict

    return [struct_to_dict(p.payload) for p in response.points]


def chunks_of(serve: grpc.Channel, text: str) -> list[str]:
    """The chunks the gateway stores for ``text``: the embedding service splits it (chunking: tokens)."""
    g = GatewaySettings()
    stub = embedding_pb2_grpc.EmbeddingServiceStub(serve)
    request = embedding_pb2.ChunkRequest(text=text, max_tokens=g.chunk_tokens, overlap_tokens=g.chunk_overlap_tokens)
    return [c.text for c in stub.Chunk(request, metadata=(("application", "embedding"),), timeout=30).chunks]


def points(serve: grpc.Channel) -> int:
    stub = retrieval_pb2_grpc.RetrievalServiceStub(serve)
    request = retrieval_pb2.DescribeCollectionRequest(collection="documents")
    return int(stub.DescribeCollection(request, metadata=RETRIEVAL, timeout=10).points_count)


def retry_until(fn, timeout_s: float):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return fn()
        except grpc.RpcError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def unread_bytes(pid: int) -> int:
    """Bytes waiting in the TCP receive queues of ``pid``: requests it has not read yet."""
    out = subprocess.run(["ss", "-tnpH", "state", "established"], capture_output=True, text=True).stdout
    return sum(int(line.split()[0]) for line in out.splitlines() if f"pid={pid}," in line)


@contextlib.contextmanager
def frozen_retrieval(stack: Stack) -> Iterator[int]:
    """The retrieval replica, SIGSTOPped; it is SIGKILLed (or resumed) by the end."""
    [pid] = replica_pids(stack, "retrieval")
    os.kill(pid, signal.SIGSTOP)
    try:
        yield pid
    finally:
        try:
            os.kill(pid, signal.SIGCONT)  # only if the test did not get as far as killing it
        except ProcessLookupError:
            pass


def test_ingest_survives_a_killed_retrieval_replica(
    stack: Stack, gateway_channel: grpc.Channel, serve_channel: grpc.Channel
) -> None:
    stub = gateway_pb2_grpc.GatewayServiceStub(gateway_channel)
    tag = uuid.uuid4().hex[:8]
    docs = {f"durable-{tag}-{n}.md": document_text(n, tag) for n in range(N)}
    expected = {doc_id: chunks_of(serve_channel, text) for doc_id, text in docs.items()}
    assert all(len(c) >= 3 for c in expected.values())
    before = points(serve_channel)
    told: dict[str, str] = {}
    for doc_id in list(docs)[:KILL_AFTER]:
        told[doc_id] = ingest(stub, doc_id, docs[doc_id])

    # The rest go in together while the replica is frozen; it dies with their calls inside.
    with frozen_retrieval(stack) as frozen:
        rest = list(docs)[KILL_AFTER:]
        with ThreadPoolExecutor(max_workers=WORKERS) as pool:
            futures = {pool.submit(ingest, stub, d, docs[d]): d for d in rest}
            deadline = time.monotonic() + 60
            # An upsert of three 384-d chunks is ~7 KB; Serve's health checks are far smaller.
            while unread_bytes(frozen) < 4096:  # an ingest reached the replica and waits in it
                assert time.monotonic() < deadline, "no ingest reached the frozen retrieval replica"
                time.sleep(0.05)
            os.kill(frozen, signal.SIGKILL)
            for future, doc_id in futures.items():
                told[doc_id] = future.result()
    # The fault was met (an upsert sat in the killed replica). The gateway's stage runner retries
    # an UNAVAILABLE ingest call once, so a document whose retry reached the new replica commits
    # and is reported OK; the others are reported failed, by name, and retried below.
    failed = [d for d, code in told.items() if code]
    assert all(told[d] == "" for d in list(docs)[:KILL_AFTER])
    assert {told[d] for d in failed} <= {"UNAVAILABLE", "DEADLINE_EXCEEDED", "FAILED_PRECONDITION"}, told
    print(f"told failed: {len(failed)} of {len(rest)} sent during the fault: {sorted(set(told.values()))}")

    # The caller's retries: only what it was told failed, until each commits.
    deadline = time.monotonic() + RECOVER_S
    while failed:
        assert time.monotonic() < deadline, f"still failing after {RECOVER_S} s: {failed}"
        failed = [d for d in failed if ingest(stub, d, docs[d])]
        time.sleep(0.5 if failed else 0)
    assert replica_pids(stack, "retrieval") not in ([], [frozen])

    for doc_id, chunks in expected.items():
        seen = retry_until(lambda doc_id=doc_id: visible(serve_channel, doc_id), 30)
        versions = {p["version"] for p in seen}
        assert len(versions) == 1, f"{doc_id}: versions mixed: {versions}"
        assert sorted(p["chunk_index"] for p in seen) == list(range(len(chunks))), doc_id
        assert [p["text"] for p in sorted(seen, key=lambda p: p["chunk_index"])] == chunks, doc_id
    # Nothing else of theirs stored: no duplicates, no staged leftovers of failed attempts.
    assert points(serve_channel) - before == sum(len(c) for c in expected.values())
