"""`ragrail ingest` says which files committed and which failed (issue 11), and exits 1 on any failure."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from ragrail.cli import main as cli
from ragrail.gateway.v1 import gateway_pb2 as pb


class Unavailable(grpc.RpcError):
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return "the retrieval service is unavailable (UNAVAILABLE)"


class Gateway:
    """Answers Ingest per file: a.md commits, b.md fails in the response, c.md fails the call."""

    def Ingest(self, request: pb.IngestRequest) -> pb.IngestResponse:  # noqa: N802 (the RPC's name)
        [doc] = request.documents
        if doc.document_id == "c.md":
            raise Unavailable()
        if doc.document_id == "b.md":
            return pb.IngestResponse(documents=[pb.DocumentResult(
                document_id="b.md", status=pb.DOCUMENT_STATUS_FAILED, error="replaced by a concurrent ingest",
                error_code="FAILED_PRECONDITION",
            )])
        return pb.IngestResponse(documents=[pb.DocumentResult(
            document_id=doc.document_id, chunks_stored=2, status=pb.DOCUMENT_STATUS_COMMITTED
        )])


def test_ingest_prints_each_file_and_fails_when_one_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("a.md", "b.md", "c.md"):
        (tmp_path / name).write_text(f"Some text of {name}.")
    monkeypatch.setattr(cli, "_stub", lambda args: Gateway())

    code = cli.main(["ingest", str(tmp_path)])

    out, err = capsys.readouterr()
    assert code == 1
    assert "a.md: 2 chunks stored" in out
    assert "b.md: FAILED (FAILED_PRECONDITION): replaced by a concurrent ingest" in out
    assert "c.md: FAILED (UNAVAILABLE): the retrieval service is unavailable" in out
    assert "ingested 1 of 3 file(s): 2 chunks stored" in out
    assert "failed: b.md, c.md" in err
