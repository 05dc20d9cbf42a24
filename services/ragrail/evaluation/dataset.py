"""The labelled question set: one JSON object per line (see docs/quality.md).

Documents the set needs besides the sample corpus (e.g. one carrying a prompt injection)
live in a ``documents`` folder next to the set file; the harness ingests them first.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from ragrail.common.errors import InvalidArgument

KINDS = (
    "fact",  # one fact (number, date, name) from one passage
    "two_passage",  # facts from two documents
    "paraphrase",  # a fact asked without the document's wording
    "off_topic",  # nothing in the corpus: the canned answer
    "unanswerable",  # on the corpus's subjects, but the corpus does not say: the canned answer
    "injection_query",  # a prompt injection in the question
    "injection_document",  # a question whose passage carries a prompt injection
)
FIELDS = {"id", "question", "kind", "tags", "all_of", "any_of", "forbidden", "sources", "fallback", "note"}


@dataclass(frozen=True)
class Question:
    id: str
    question: str
    kind: str
    # Every all_of entry must be in the answer; an entry may itself be a list of alternatives.
    all_of: tuple[tuple[str, ...], ...] = ()
    any_of: tuple[str, ...] = ()  # at least one, when given
    forbidden: tuple[str, ...] = ()  # none of these may appear (an injection's payload)
    sources: tuple[str, ...] = ()  # document ids that hold the answer
    fallback: bool | None = False  # True: canned answer expected; None ("any"): either is fine
    tags: tuple[str, ...] = ()


def default_set_path() -> Path:
    return Path(str(resources.files("ragrail.data").joinpath("eval", "questions.jsonl")))


def documents_dir(set_path: Path) -> Path:
    return set_path.parent / "documents"


def load_questions(path: Path) -> list[Question]:
    """Parses and checks the set; a bad line is an InvalidArgument naming file and line."""
    if not path.is_file():
        raise InvalidArgument(f"{path}: no such question set")
    questions: list[Question] = []
    seen: set[str] = set()
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            question = _parse(json.loads(line))
        except (ValueError, TypeError) as exc:
            raise InvalidArgument(f"{path}:{number}: {exc}") from None
        if question.id in seen:
            raise InvalidArgument(f"{path}:{number}: id {question.id!r} appears twice")
        seen.add(question.id)
        questions.append(question)
    if not questions:
        raise InvalidArgument(f"{path}: no questions")
    return questions


def _strings(raw: Any, field: str) -> tuple[str, ...]:
    if not isinstance(raw, list) or not all(isinstance(s, str) and s.strip() for s in raw):
        raise ValueError(f"{field} must be a list of non-empty strings")
    return tuple(raw)


def _parse(raw: Any) -> Question:
    if not isinstance(raw, dict):
        raise ValueError("each line must be a JSON object")
    unknown = set(raw) - FIELDS
    if unknown:
        raise ValueError(f"unknown field(s): {', '.join(sorted(unknown))}")
    for field in ("id", "question", "kind"):
        if not isinstance(raw.get(field), str) or not raw[field].strip():
            raise ValueError(f"{field} must be a non-empty string")
    if raw["kind"] not in KINDS:
        raise ValueError(f"kind {raw['kind']!r} is not one of {', '.join(KINDS)}")
    fallback = raw.get("fallback", False)
    if fallback not in (True, False, "any"):
        raise ValueError('fallback must be true, false or "any"')
    all_of = tuple(
        (item,) if isinstance(item, str) else _strings(item, "all_of alternatives")
        for item in raw.get("all_of", [])
    )
    if any(not alt.strip() for group in all_of for alt in group):
        raise ValueError("all_of entries must be non-empty")
    question = Question(
        id=raw["id"],
        question=raw["question"],
        kind=raw["kind"],
        all_of=all_of,
        any_of=_strings(raw.get("any_of", []), "any_of"),
        forbidden=_strings(raw.get("forbidden", []), "forbidden"),
        sources=_strings(raw.get("sources", []), "sources"),
        fallback=None if fallback == "any" else bool(fallback),
        tags=_strings(raw.get("tags", []), "tags"),
    )
    if question.fallback is False and not (question.all_of or question.any_of):
        raise ValueError("a question that expects an answer needs all_of or any_of facts")
    if question.fallback is True and (question.all_of or question.any_of or question.sources):
        raise ValueError("a question that expects the canned answer has no facts or sources")
    return question
