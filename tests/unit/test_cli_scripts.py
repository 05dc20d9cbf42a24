"""`ragrail` for scripts: --json on every command, --version, exit codes, --session-id,
--address/--api-key from the environment, help text on every argument.

Client commands run against an in-process gateway scripted per method (tests/unit/test_client.py).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from ragrail.cli.main import (
    EXIT_FALLBACK,
    EXIT_FAILED,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    _parser,
    main,
)
from ragrail_client import pb
from tests.unit.test_client import RUN_OK, Abort, Script, start_server

FALLBACK = pb.RunResponse(
    answer="I don't have information for that.", pipeline="rag", pipeline_version=1, fallback=True,
    fallback_reason=pb.FALLBACK_REASON_RETRIEVAL_MISS, failed_stage="retrieve", request_id="r9",
)
RUN_FIELDS = {f.name for f in pb.RunResponse.DESCRIPTOR.fields}


@pytest.fixture
def script() -> Script:
    return Script()


@pytest.fixture
def gateway(script: Script, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The scripted gateway, named by RAGRAIL_ADDRESS as a script's environment would."""
    server, port = start_server(script)
    monkeypatch.setenv("RAGRAIL_ADDRESS", f"127.0.0.1:{port}")
    monkeypatch.delenv("RAGRAIL_API_KEY", raising=False)
    yield f"127.0.0.1:{port}"
    server.stop(0)


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[dict], str]:
    """Exit code, the JSON documents on stdout (one per line), stderr."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    docs = [json.loads(line) for line in out.splitlines() if line.strip()] if "--json" in argv else []
    return code, docs, err


# -- --version, help, usage --------------------------------------------------------------


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        main(["--version"])
    assert raised.value.code == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith("ragrail ") and out != "ragrail unknown"


def test_bad_usage_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        main(["ask"])  # no query
    assert raised.value.code == EXIT_USAGE
    with pytest.raises(SystemExit) as raised:
        main(["feedback", "r1", "9"])  # rating out of 1..5
    assert raised.value.code == EXIT_USAGE


def _subparsers(parser: argparse.ArgumentParser, path: str = "ragrail") -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _subparsers(sub, f"{path} {name}")


# `eval` is another module's parser (ragrail.evaluation.cli), checked by its own tests.
OTHER_OWNERS = {"ragrail eval"}


def test_every_argument_has_help_text() -> None:
    missing = []
    for path, parser in _subparsers(_parser()):
        if path in OTHER_OWNERS:
            continue
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            if not action.help:
                missing.append(f"{path} {'/'.join(action.option_strings) or action.dest}")
    assert not missing, missing


def test_every_command_but_the_servers_takes_json() -> None:
    servers = {"ragrail", "ragrail up", "ragrail gateway"} | OTHER_OWNERS
    lacking = [
        path for path, parser in _subparsers(_parser())
        if path not in servers and not any("--json" in a.option_strings for a in parser._actions)
    ]
    assert not lacking, lacking


def test_exit_codes_are_documented_in_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for line in ("0  ok", "2  bad usage", "3  unavailable", "4  `ask --fail-on-fallback`", "RAGRAIL_API_KEY"):
        assert line in out


# -- ask -----------------------------------------------------------------------------------


def test_ask_json_is_one_document_with_every_field(
    gateway: str, script: Script, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAGRAIL_API_KEY", "rg_from_env")
    script.then("Run", RUN_OK)
    code, docs, _ = run_cli(capsys, "ask", "Who founded it?", "--json", "--session-id", "canary-7", "--pipeline", "rag@1")
    assert code == 0
    [doc] = docs
    assert set(doc) == RUN_FIELDS  # stable keys: proto field names, defaults included
    assert (doc["answer"], doc["fallback"], doc["fallback_reason"]) == (
        RUN_OK.answer, False, "FALLBACK_REASON_UNSPECIFIED",
    )
    [attempt] = script.attempts["Run"]
    assert attempt.request == pb.RunRequest(pipeline="rag@1", query="Who founded it?", session_id="canary-7")
    assert attempt.metadata["authorization"] == "Bearer rg_from_env"


def test_flags_win_over_the_environment(gateway: str, script: Script, capsys: pytest.CaptureFixture[str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAGRAIL_ADDRESS", "127.0.0.1:1")  # nothing listens there
    monkeypatch.setenv("RAGRAIL_API_KEY", "rg_env")
    script.then("Run", RUN_OK)
    assert run_cli(capsys, "ask", "q", "--address", gateway, "--api-key", "rg_flag")[0] == 0
    assert script.attempts["Run"][0].metadata["authorization"] == "Bearer rg_flag"


def test_fail_on_fallback_exits_4(gateway: str, script: Script, capsys: pytest.CaptureFixture[str]) -> None:
    script.then("Run", FALLBACK)
    assert run_cli(capsys, "ask", "tungsten?")[0] == 0  # a fallback is an answer
    code, docs, _ = run_cli(capsys, "ask", "tungsten?", "--json", "--fail-on-fallback")
    assert code == EXIT_FALLBACK and docs[0]["fallback_reason"] == "FALLBACK_REASON_RETRIEVAL_MISS"
    script.answers["Run"].clear()
    script.then("Run", RUN_OK)
    assert run_cli(capsys, "ask", "founder?", "--fail-on-fallback")[0] == 0


def test_ask_stream_json_is_one_document_per_event(
    gateway: str, script: Script, capsys: pytest.CaptureFixture[str]
) -> None:
    script.then("RunStream", [pb.RunStreamResponse(delta="I don't"), pb.RunStreamResponse(final=FALLBACK)])
    code, docs, _ = run_cli(capsys, "ask", "q", "--stream", "--json", "--fail-on-fallback", "--session-id", "s")
    assert code == EXIT_FALLBACK
    assert docs[0] == {"delta": "I don't"}
    assert list(docs[1]) == ["final"] and set(docs[1]["final"]) == RUN_FIELDS
    assert script.attempts["RunStream"][0].request.session_id == "s"


def test_ask_stream_text_mode_prints_deltas(gateway: str, script: Script, capsys: pytest.CaptureFixture[str]) -> None:
    script.then("RunStream", [pb.RunStreamResponse(delta="Margit "), pb.RunStreamResponse(final=RUN_OK)])
    assert main(["ask", "q", "--stream"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Margit \n") and "request: r1" in out


# -- errors and exit codes ----------------------------------------------------------------


def test_unreachable_gateway_exits_3_with_a_json_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, docs, _ = run_cli(capsys, "ask", "q", "--address", "127.0.0.1:1", "--timeout", "5", "--json")
    assert code == EXIT_UNAVAILABLE
    assert docs[0]["error"]["code"] == "UNAVAILABLE" and docs[0]["error"]["exit_code"] == 3
    code, _, err = run_cli(capsys, "pipelines", "--address", "127.0.0.1:1", "--timeout", "5")
    assert code == EXIT_UNAVAILABLE and err.startswith("ragrail: UNAVAILABLE")


@pytest.mark.parametrize(
    ("abort", "exit_code"),
    [
        (Abort(grpc.StatusCode.NOT_FOUND, "unknown pipeline 'x'"), EXIT_USAGE),
        (Abort(grpc.StatusCode.INVALID_ARGUMENT, "query is empty"), EXIT_USAGE),
        (Abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "rate limit", (("retry-after", "2"),)), EXIT_UNAVAILABLE),
        (Abort(grpc.StatusCode.PERMISSION_DENIED, "key may not call x"), EXIT_FAILED),
        (Abort(grpc.StatusCode.INTERNAL, "internal error (incident 1)"), EXIT_FAILED),
    ],
)
def test_statuses_map_to_exit_codes(
    gateway: str, script: Script, capsys: pytest.CaptureFixture[str], abort: Abort, exit_code: int
) -> None:
    script.then("Run", abort)
    code, docs, _ = run_cli(capsys, "ask", "q", "--json")
    assert code == exit_code
    assert docs == [{"error": {"code": abort.code.name, "message": abort.details, "exit_code": exit_code}
                     | ({"retry_after_s": 2.0} if abort.trailing else {})}]
    code, _, err = run_cli(capsys, "ask", "q")
    assert code == exit_code and abort.details in err


# -- the other client commands ---------------------------------------------------------------


def test_pipelines_status_feedback_json(gateway: str, script: Script, capsys: pytest.CaptureFixture[str]) -> None:
    script.then("ListPipelines", pb.ListPipelinesResponse(pipelines=[pb.PipelineInfo(name="rag", version=1, is_default=True)]))
    script.then("Status", pb.StatusResponse(circuits=[pb.CircuitInfo(service="generation", state="open")]))
    script.then("Feedback", pb.FeedbackResponse(matched_request=True))
    code, [doc], _ = run_cli(capsys, "pipelines", "--json")
    assert code == 0 and doc["pipelines"][0] | {"stages": []} == {
        "name": "rag", "version": 1, "is_default": True, "description": "", "stages": [],
    }
    code, [doc], _ = run_cli(capsys, "status", "--json")
    assert code == EXIT_UNAVAILABLE and doc["healthy"] is False  # an open circuit
    assert doc["circuits"] == [{"service": "generation", "state": "open"}] and doc["collections"] == []
    code, [doc], _ = run_cli(capsys, "feedback", "r1", "5", "good", "--json")
    assert code == 0 and doc == {"matched_request": True}
    assert script.attempts["Feedback"][0].request == pb.FeedbackRequest(request_id="r1", rating=5, comment="good")


def test_ingest_json_one_document_per_file(
    gateway: str, script: Script, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "a.md").write_text("# A\n\nalpha text")
    (tmp_path / "b.txt").write_text("beta text")
    stored = pb.IngestResponse(documents=[pb.DocumentResult(
        document_id="a.md", chunks_stored=1, status=pb.DOCUMENT_STATUS_COMMITTED)])
    script.then("Ingest", stored, Abort(grpc.StatusCode.INVALID_ARGUMENT, "text is blank"))
    code, docs, _ = run_cli(capsys, "ingest", str(tmp_path), "--json")
    assert code == EXIT_FAILED  # one file failed
    assert len(docs) == 2 and all(set(d) == {f.name for f in pb.DocumentResult.DESCRIPTOR.fields} for d in docs)
    assert docs[0]["status"] == "DOCUMENT_STATUS_COMMITTED" and docs[0]["chunks_stored"] == 1
    assert (docs[1]["status"], docs[1]["error_code"], docs[1]["error"]) == (
        "DOCUMENT_STATUS_FAILED", "INVALID_ARGUMENT", "text is blank",
    )


# -- offline commands -------------------------------------------------------------------------


def test_pipelines_validate_and_show_json(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from importlib import resources

    packaged = Path(str(resources.files("ragrail").joinpath("pipelines")))
    code, [doc], _ = run_cli(capsys, "pipelines", "validate", str(packaged), "--json")
    assert code == 0 and doc["ok"] is True
    assert {"ref": "rag@1", "stages": doc["specs"][0]["stages"], "deprecated_kind": False} in doc["specs"]
    code, [shown], _ = run_cli(capsys, "pipelines", "show", "rag@1", "--dir", str(packaged), "--json")
    assert code == 0 and shown["name"] == "rag" and shown["version"] == 1 and shown["stages"]

    (tmp_path / "bad@1.yaml").write_text("name: bad\nversion: 1\nstages:\n  - {type: nope}\n")
    code, [doc], err = run_cli(capsys, "pipelines", "validate", str(tmp_path), "--json")
    assert code == EXIT_FAILED and doc["ok"] is False and doc["problems"] and not err


def test_new_key_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, [doc], _ = run_cli(capsys, "new-key", "billing", "--pipelines", "rag", "--json")
    assert code == 0 and doc["key"] and doc["entry"]["name"] == "billing" and doc["entry"]["pipelines"] == ["rag"]
