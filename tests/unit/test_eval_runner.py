"""The harness loop (ragrail.evaluation.runner.run_eval) over a scripted client: pinned
versions, question order, transient retries, unknown versions. The real gateway is the
integration tier's (tests/integration/test_eval_harness.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ragrail.common.errors import NotFound
from ragrail.evaluation.dataset import Question
from ragrail.evaluation.metrics import Answer
from ragrail.evaluation.runner import run_eval

QUESTIONS = [
    Question("founder", "Who founded Northwind Rail?", "fact", all_of=(("Margit Halvorsen",),), sources=("c.md",)),
    Question("off", "Capital of Australia?", "off_topic", fallback=True),
]
PASSAGE = [("c.md", "Founded in 1994 by Margit Halvorsen.")]


class ScriptedClient:
    """Answers from a script per (version, question); records the calls in order."""

    def __init__(self, script: dict[tuple[str, str], list[Answer]]) -> None:
        self.script = script
        self.calls: list[tuple[str, str]] = []

    def versions(self) -> set[str]:
        return {"rag@1", "rag@2"}

    def ingest(self, folder: Path) -> list[str]:
        raise AssertionError("nothing to ingest")

    def ask(self, version: str, question: str) -> Answer:
        self.calls.append((version, question))
        return self.script[(version, question)].pop(0)


def test_each_question_goes_to_every_pinned_version_before_the_next() -> None:
    good = Answer("Margit Halvorsen.", citations=PASSAGE, latency_ms=10)
    canned = Answer("I don't have information for that.", fallback=True, fallback_reason="retrieval_miss", latency_ms=1)
    client = ScriptedClient({
        ("rag@1", QUESTIONS[0].question): [good], ("rag@2", QUESTIONS[0].question): [good],
        ("rag@1", QUESTIONS[1].question): [canned], ("rag@2", QUESTIONS[1].question): [canned],
    })
    report = run_eval(client, QUESTIONS, ["rag@1", "rag@2"], set_path=Path("/nonexistent/set.jsonl"))  # type: ignore[arg-type]
    assert [v for v, _ in client.calls] == ["rag@1", "rag@2", "rag@1", "rag@2"]
    for version in ("rag@1", "rag@2"):
        s = report["versions"][version]
        assert s["answer_accuracy"] == 1.0 and s["fallback_correct_off_topic"] == 1.0 and s["transient_retries"] == 0


def test_transient_fallbacks_are_asked_again_and_counted() -> None:
    timeout = Answer("Sorry.", fallback=True, fallback_reason="stage_timeout", latency_ms=30000)
    good = Answer("Margit Halvorsen.", citations=PASSAGE, latency_ms=10)
    q = QUESTIONS[0].question
    client = ScriptedClient({("rag@1", q): [timeout, good], ("rag@2", q): [timeout, timeout, timeout]})
    report = run_eval(client, QUESTIONS[:1], ["rag@1", "rag@2"], set_path=Path("/x/s.jsonl"), retry_transient=2, retry_pause_s=0)  # type: ignore[arg-type]
    assert report["versions"]["rag@1"]["answer_accuracy"] == 1.0
    assert report["versions"]["rag@1"]["transient_retries"] == 1
    assert report["versions"]["rag@2"]["answer_accuracy"] == 0.0  # still a timeout after 2 retries
    assert report["versions"]["rag@2"]["transient_retries"] == 2
    assert report["versions"]["rag@2"]["fallback_reasons"] == {"stage_timeout": 1}


def test_an_unknown_version_stops_before_any_question() -> None:
    client = ScriptedClient({})
    with pytest.raises(NotFound, match="does not serve rag@9"):
        run_eval(client, QUESTIONS, ["rag@1", "rag@9"], set_path=Path("/x/s.jsonl"))  # type: ignore[arg-type]
    assert client.calls == []


def test_an_interrupted_run_reports_the_questions_every_version_answered() -> None:
    good = Answer("Margit Halvorsen.", citations=PASSAGE, latency_ms=10)

    class Interrupted(ScriptedClient):
        def ask(self, version: str, question: str) -> Answer:
            if question == QUESTIONS[1].question and version == "rag@2":
                raise KeyboardInterrupt  # Ctrl-C halfway through the second question
            return good

    report = run_eval(Interrupted({}), QUESTIONS, ["rag@1", "rag@2"], set_path=Path("/x/s.jsonl"))  # type: ignore[arg-type]
    assert report["interrupted"] is True
    assert [s["questions"] for s in report["versions"].values()] == [1, 1]
    assert {r["id"] for r in report["results"]} == {"founder"}
