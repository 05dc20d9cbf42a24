"""`ragrail ingest` says which files committed and which failed (issue 11), and exits 1 on any failure."""

from __future__ import annotations

import io
import threading
import time
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


# -- progress and parallel calls (issue 14) -------------------------------------------------


class Terminal(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def files_of(tmp_path: Path, sizes: list[int]) -> list[Path]:
    paths = []
    for i, size in enumerate(sizes):
        path = tmp_path / f"f{i}.txt"
        path.write_text("x" * size)
        paths.append(path)
    return paths


def test_progress_prints_plain_lines_at_most_every_interval(tmp_path: Path) -> None:
    files = files_of(tmp_path, [100, 100, 200, 600])
    stream, clock = Terminal(tty=False), Clock()
    progress = cli.IngestProgress(files, stream, interval_s=2.0, clock=clock)

    clock.now += 1.0
    progress.file_done(files[0], 10)  # 1 s in: too soon
    assert stream.getvalue() == ""
    clock.now += 1.5
    progress.file_done(files[1], 25)  # 2.5 s: shown
    clock.now += 1.0
    progress.file_done(files[2], 40)  # 1 s after the last line: not shown
    clock.now += 1.5
    progress.file_done(files[3], 90)
    progress.finish()

    assert stream.getvalue().splitlines() == [
        # 200 of 1000 bytes in 2.5 s: 800 bytes left take 10 s more.
        "progress: 2/4 files, 25 chunks, 10.0 chunks/s, ETA 10s",
        "progress: 4/4 files, 90 chunks, 18.0 chunks/s, ETA 0s",
    ]


def test_progress_on_a_terminal_rewrites_one_line_and_steps_aside_for_results(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = files_of(tmp_path, [100, 100])
    stream, clock = Terminal(tty=True), Clock()
    progress = cli.IngestProgress(files, stream, interval_s=2.0, clock=clock)
    clock.now += 3.0
    progress.file_done(files[0], 30)
    progress.print_lines(["f1.txt: 3 chunks stored"])
    clock.now += 3.0
    progress.file_done(files[1], 33)
    progress.finish()

    assert stream.getvalue() == (
        "\r\x1b[K1/2 files, 30 chunks, 10.0 chunks/s, ETA 3s"
        "\r\x1b[K"  # erased before the result line is printed on stdout ...
        "1/2 files, 30 chunks, 10.0 chunks/s, ETA 3s"  # ... and drawn again under it
        "\r\x1b[K2/2 files, 33 chunks, 5.5 chunks/s, ETA 0s"
        "\r\x1b[K"  # gone at the end: the summary says it
    )
    assert capsys.readouterr().out == "f1.txt: 3 chunks stored\n"


def test_durations_read_like_a_clock() -> None:
    assert [cli._duration(s) for s in (0, 59.4, 61, 3599, 3600, 7384)] == ["0s", "59s", "1m01s", "59m59s", "1h00m", "2h03m"]


@pytest.mark.parametrize("flag", ["--json", "--no-progress"])
def test_no_progress_with_json_or_no_progress(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], flag: str
) -> None:
    (tmp_path / "a.md").write_text("Some text.")
    monkeypatch.setattr(cli, "_stub", lambda args: Gateway())
    monkeypatch.setattr(cli, "PROGRESS_INTERVAL_S", 0.0)
    assert cli.main(["ingest", str(tmp_path), flag]) == 0
    assert "files" not in capsys.readouterr().err


def test_ingest_shows_progress_on_stderr(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("a.md", "d.md"):
        (tmp_path / name).write_text(f"Some text of {name}.")
    monkeypatch.setattr(cli, "_stub", lambda args: Gateway())
    monkeypatch.setattr(cli, "PROGRESS_INTERVAL_S", 0.0)
    assert cli.main(["ingest", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert "progress: 1/2 files, 2 chunks" in err and "progress: 2/2 files, 4 chunks" in err
    assert "files" not in out and "ingested 2 of 2 file(s): 4 chunks stored" in out


class SlowGateway(Gateway):
    """Answers once ``width`` calls are in flight together (or fails the test after 5 s)."""

    def __init__(self, width: int) -> None:
        self.barrier = threading.Barrier(width, timeout=5)
        self.lock = threading.Lock()
        self.in_flight = self.most = 0

    def Ingest(self, request: pb.IngestRequest) -> pb.IngestResponse:  # noqa: N802
        with self.lock:
            self.in_flight += 1
            self.most = max(self.most, self.in_flight)
        try:
            self.barrier.wait()
            if request.documents[0].document_id == "f1.txt":
                time.sleep(0.05)  # answers after f2.txt: printed before it all the same
            return super().Ingest(request)
        finally:
            with self.lock:
                self.in_flight -= 1


def test_parallel_calls_overlap_and_print_in_file_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    files_of(tmp_path, [10] * 6)
    gateway = SlowGateway(width=2)
    monkeypatch.setattr(cli, "_stub", lambda args: gateway)

    assert cli.main(["ingest", str(tmp_path), "--parallel", "2", "--no-progress"]) == 0

    out = capsys.readouterr().out.splitlines()
    assert out[:6] == [f"f{i}.txt: 2 chunks stored" for i in range(6)]
    assert gateway.most == 2


def test_parallel_is_bounded(capsys: pytest.CaptureFixture[str]) -> None:
    for bad in ("0", "7", "two"):
        with pytest.raises(SystemExit):
            cli.main(["ingest", ".", "--parallel", bad])
    assert "--parallel" in capsys.readouterr().err
