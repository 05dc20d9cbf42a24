"""Reranking retrieved passages without a model: the question's words, and novelty.

Dense retrieval ranks by meaning and is weakest on the exact words a question turns on (a
name, a figure); its top passages are also often near-copies of each other (overlapping
chunks of one section), which spend a small model's context on one fact. A rerank stage
fuses the dense order with the order by question words each passage holds (reciprocal rank
fusion, as hybrid retrieval does server-side), then, with ``diversity`` above 0, picks
greedily by maximal marginal relevance: relevance minus the word overlap with passages
already picked. A cross-encoder reranker would be better still; none ships in a package
this project can load offline (docs/retrieval.md), so this is the model-free one.
"""

from __future__ import annotations

from collections.abc import Sequence

from ragrail.gateway.backends import Passage
from ragrail.gateway.grounding import content_words

RRF_K = 60  # the usual constant: ranks beyond the first few count for little


def _overlap(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a and b else 0.0


def lexical_order(question: str, passages: Sequence[Passage]) -> list[int]:
    """Indexes of the passages holding any of the question's content words, by how many (ties:
    dense order). A passage with none is not in this ranking at all, as in a keyword search."""
    asked = content_words(question)
    hits = [len(asked & content_words(p.text)) for p in passages]
    return sorted((i for i in range(len(passages)) if hits[i]), key=lambda i: (-hits[i], i))


def relevance(question: str, passages: Sequence[Passage]) -> list[float]:
    """Reciprocal-rank fusion of the dense order (as retrieved) and the lexical order."""
    fused = [1.0 / (RRF_K + i + 1) for i in range(len(passages))]
    for rank, i in enumerate(lexical_order(question, passages)):
        fused[i] += 1.0 / (RRF_K + rank + 1)
    return fused


def rerank(question: str, passages: Sequence[Passage], top_n: int, diversity: float = 0.0) -> list[Passage]:
    """The ``top_n`` best passages, best first; ``diversity`` (0..1) trades relevance for novelty."""
    if not passages:
        return []
    scores = relevance(question, passages)
    top = max(scores)
    scaled = [s / top for s in scores]  # relevance in (0, 1], comparable to word overlap
    words = [content_words(p.text) for p in passages]
    picked: list[int] = []
    left = list(range(len(passages)))
    while left and len(picked) < top_n:
        def marginal(i: int) -> float:
            redundancy = max((_overlap(words[i], words[j]) for j in picked), default=0.0)
            return (1 - diversity) * scaled[i] - diversity * redundancy

        best = max(left, key=lambda i: (marginal(i), -i))
        picked.append(best)
        left.remove(best)
    return [passages[i] for i in picked]
