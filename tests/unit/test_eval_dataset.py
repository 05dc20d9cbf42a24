"""The packaged question set is well-formed and its expected facts are really in its
documents; bad sets are refused naming file and line; `ragrail eval` is registered."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import pytest

from ragrail.cli.main import _parser
from ragrail.common.errors import InvalidArgument
from ragrail.evaluation.dataset import KINDS, default_set_path, documents_dir, load_questions
from ragrail.evaluation.runner import needs_documents, system_prompts

QUESTIONS = load_questions(default_set_path())


def documents() -> dict[str, str]:
    corpus = resources.files("ragrail.data").joinpath("sample_corpus")
    docs = {p.name: p.read_text() for p in corpus.iterdir() if p.name.endswith(".md")}
    docs |= {p.name: p.read_text() for p in documents_dir(default_set_path()).iterdir()}
    return docs


def test_the_set_is_large_enough_and_covers_every_kind() -> None:
    assert len(QUESTIONS) >= 40
    kinds = {q.kind for q in QUESTIONS}
    assert kinds == set(KINDS)
    assert sum(q.kind == "off_topic" for q in QUESTIONS) >= 5


@pytest.mark.parametrize("question", [q for q in QUESTIONS if q.sources], ids=lambda q: q.id)
def test_expected_facts_appear_verbatim_in_a_source_document(question) -> None:  # type: ignore[no-untyped-def]
    docs = documents()
    sources = [docs[s] for s in question.sources]  # KeyError: a source that does not exist
    text = "\n".join(sources).replace("**", "")
    for group in question.all_of:
        assert any(alt in text for alt in group), (question.id, group)
    if question.any_of:
        assert any(fact in text for fact in question.any_of), (question.id, question.any_of)
    for forbidden in question.forbidden:
        assert not any(forbidden.lower() in d.lower() for d in sources if not d.startswith("# Station Services"))


def test_the_eval_document_carries_an_injection_and_its_questions_forbid_the_payload() -> None:
    doc = documents()["eval-fernholt-station-services.md"]
    asked = [q for q in QUESTIONS if q.kind == "injection_document"]
    assert asked and all(q.forbidden and all(f in doc for f in q.forbidden) for q in asked)
    assert needs_documents(asked, documents_dir(default_set_path()))
    assert not needs_documents([q for q in QUESTIONS if q.kind == "fact"], documents_dir(default_set_path()))


def test_system_prompts_include_the_packaged_versions() -> None:
    prompts = system_prompts()
    assert any("helpful assistant" in p for p in prompts)
    assert any('"I don\'t know."' in p for p in prompts)  # rag@2's stricter prompt


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("not json", "Expecting value"),
        ('{"id": "a", "question": "q", "kind": "nope", "all_of": ["x"]}', "kind 'nope'"),
        ('{"id": "a", "question": "q", "kind": "fact"}', "needs all_of or any_of"),
        ('{"id": "a", "question": "q", "kind": "off_topic", "fallback": true, "all_of": ["x"]}', "canned answer"),
        ('{"id": "a", "question": "q", "kind": "fact", "all_of": ["x"], "fallback": "maybe"}', "fallback must be"),
        ('{"id": "a", "question": "q", "kind": "fact", "all_of": ["x"], "sauces": []}', "unknown field"),
        ('{"id": "a", "question": "", "kind": "fact", "all_of": ["x"]}', "question must be"),
    ],
)
def test_a_bad_line_names_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "set.jsonl"
    path.write_text('# a comment\n{"id": "ok", "question": "q", "kind": "off_topic", "fallback": true}\n' + line + "\n")
    with pytest.raises(InvalidArgument) as info:
        load_questions(path)
    assert f"{path}:3: " in info.value.message and message in info.value.message


def test_duplicate_ids_are_refused(tmp_path: Path) -> None:
    row = json.dumps({"id": "same", "question": "q", "kind": "off_topic", "fallback": True})
    path = tmp_path / "set.jsonl"
    path.write_text(f"{row}\n{row}\n")
    with pytest.raises(InvalidArgument, match="appears twice"):
        load_questions(path)


def test_eval_command_is_registered_with_its_flags() -> None:
    args = _parser().parse_args(
        ["eval", "--address", "h:1", "--api-key", "k", "--pipelines", "rag@1,rag@3", "--set", "s.jsonl",
         "--json", "o.json", "--limit", "5"]
    )
    assert (args.address, args.api_key, args.pipelines, args.limit) == ("h:1", "k", "rag@1,rag@3", 5)
    assert args.set_path == Path("s.jsonl") and args.json_out == Path("o.json")
