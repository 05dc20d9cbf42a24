"""A slice of the evaluation set through the integration tier's stack, with `ragrail eval`
itself: the harness's numbers must agree with what the gateway really answered."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ragrail.evaluation.dataset import default_set_path
from tests.integration.conftest import Stack

pytestmark = pytest.mark.integration

# Two answerable questions whose document retrieval finds first, two off-topic, one injection.
# None cites the set's own documents, so nothing is ingested into the shared stack.
SLICE = ("founder", "coastal-length", "off-topic-1", "off-topic-2", "inject-pwned")


def write_slice(tmp_path: Path) -> Path:
    lines = [line for line in default_set_path().read_text().splitlines() if json.loads(line)["id"] in SLICE]
    assert len(lines) == len(SLICE)
    path = tmp_path / "slice.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_eval_slice_counts_what_the_gateway_answered(stack: Stack, tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    done = stack.cli("eval", "--set", str(write_slice(tmp_path)), "--pipelines", "rag@1", "--json", str(out), "-q",
                     timeout=600)
    assert done.returncode == 0, done.stderr
    assert "| rag@1 " in done.stdout and "correct, by kind of question" in done.stdout
    report = json.loads(out.read_text())
    assert report["ingested"] == []
    summary = report["versions"]["rag@1"]
    results = {r["id"]: r for r in report["results"]}
    assert set(results) == set(SLICE) and summary["questions"] == len(SLICE) and summary["errors"] == 0
    # Every result was really answered by the pinned version.
    assert {r["answer"]["pipeline"] for r in results.values()} == {"rag@1"}

    # Off-topic: the canned retrieval-miss answer, counted as a correct fallback.
    for qid in ("off-topic-1", "off-topic-2"):
        answer = results[qid]["answer"]
        assert answer["fallback"] and answer["fallback_reason"] == "retrieval_miss" and results[qid]["correct"]
    assert summary["fallback_correct_off_topic"] == 1.0

    # Answerable: the right document is cited first, and the citation figures say so.
    for qid, doc in (("founder", "company-history.md"), ("coastal-length", "network-and-stations.md")):
        answer = results[qid]["answer"]
        assert not answer["fallback"], f"{qid}: canned answer ({answer['fallback_reason']})"
        assert answer["citations"][0][0] == doc, (qid, answer["citations"])
        assert results[qid]["cited_first"] is True
    assert summary["citation_hit_first"] == 1.0
    assert summary["false_fallback"] == 0.0

    # The injection is refused or not obeyed, and the released answers are the ones judged.
    assert results["inject-pwned"]["correct"] and not results["inject-pwned"]["forbidden_found"]
    released = [r for r in results.values() if r["released"]]
    assert summary["released"] == len(released) >= 2
    assert summary["groundedness"] == round(sum(bool(r["grounded"]) for r in released) / len(released), 4)
    latency = summary["latency_ms"]
    assert latency["n"] == len(SLICE) - summary["cached"]
    assert 0 < latency["p50"] <= latency["p99"]


def test_eval_names_a_version_the_gateway_does_not_serve(stack: Stack) -> None:
    done = stack.cli("eval", "--pipelines", "rag@1,rag@99", "--limit", "1", "-q", timeout=60)
    assert done.returncode == 2
    assert "does not serve rag@99" in done.stderr


def test_rag3_releases_only_grounded_answers_and_labels_each_mode(stack: Stack, tmp_path: Path) -> None:
    """The same slice through rag@3: whatever the model said, nothing ungrounded or echoing the
    prompt is released, and every answer says how it was made (generated, quoted or canned)."""
    out = tmp_path / "report.json"
    done = stack.cli("eval", "--set", str(write_slice(tmp_path)), "--pipelines", "rag@3", "--json", str(out), "-q",
                     timeout=600)
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    summary = report["versions"]["rag@3"]
    results = {r["id"]: r for r in report["results"]}
    assert summary["errors"] == 0 and {r["answer"]["pipeline"] for r in results.values()} == {"rag@3"}
    for r in results.values():
        assert r["answer"]["answer_mode"] in ("generated", "extractive", "canned"), r
        assert (r["answer"]["answer_mode"] == "canned") == (r["answer"]["fallback"] and not r["released"]), r
    released = [r for r in results.values() if r["released"]]
    assert all(r["grounded"] for r in released), [(r["id"], r["ungrounded"]) for r in released]
    assert summary["prompt_leaks"] == 0
    assert summary["quoted"] == sum(r["answer"]["answer_mode"] == "extractive" for r in released)
    for qid in ("off-topic-1", "off-topic-2"):
        assert results[qid]["answer"]["fallback_reason"] == "retrieval_miss" and results[qid]["correct"]
    # Answerable: cited first when answered at all (a quote cites only the passages it quotes).
    for qid, doc in (("founder", "company-history.md"), ("coastal-length", "network-and-stations.md")):
        if results[qid]["released"]:
            assert results[qid]["answer"]["citations"][0][0] == doc, results[qid]["answer"]["citations"]
