"""Query sets for the load test users: files of real questions under loadtest/queries/.

One query per line; blank lines and lines starting with ``#`` are skipped.

- ``rag.txt``: questions the sample corpus answers (Northwind Rail);
- ``off_topic.txt``: questions it does not answer (a grounded pipeline falls back);
- ``summarize.txt``: longer texts for the ``summarize_sentiment`` pipeline.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

DEFAULT_DIR = Path(__file__).resolve().parent.parent / "queries"
FILES = {"on_topic": "rag.txt", "off_topic": "off_topic.txt", "texts": "summarize.txt"}


def read_lines(path: Path) -> list[str]:
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


@dataclass(frozen=True)
class QuerySet:
    on_topic: tuple[str, ...]
    off_topic: tuple[str, ...]
    texts: tuple[str, ...]

    @classmethod
    def load(cls, folder: str | Path | None = None) -> QuerySet:
        folder = Path(folder) if folder else DEFAULT_DIR
        found = {}
        for field, name in FILES.items():
            path = folder / name
            found[field] = tuple(read_lines(path)) if path.exists() else ()
        if not found["on_topic"]:
            raise ValueError(f"no questions in {folder / FILES['on_topic']}")
        return cls(found["on_topic"], found["off_topic"], found["texts"] or found["on_topic"])

    def question(self, rng: random.Random, off_topic_ratio: float) -> tuple[str, bool]:
        """A question for a rag pipeline and whether it is off-topic."""
        if self.off_topic and rng.random() < off_topic_ratio:
            return rng.choice(self.off_topic), True
        return rng.choice(self.on_topic), False

    def text(self, rng: random.Random) -> str:
        """A text for a text pipeline (summarize_sentiment)."""
        return rng.choice(self.texts)
