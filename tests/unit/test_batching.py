"""BatchingGenerator: concurrent requests share generate calls, each finishing on its own."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from ragrail.generation.batching import BatchingGenerator
from ragrail.generation.core import FinishReason, Generation, Message, Sampling, TextGenerator


@pytest.fixture(scope="module")
def generator(tiny_llama_dir: Path) -> TextGenerator:
    return TextGenerator(str(tiny_llama_dir), name="tiny", dtype="float32", max_new_tokens_limit=64)


def _concurrently(batcher: BatchingGenerator, jobs: list[tuple[str, Sampling]]) -> list[Generation]:
    results: list[Generation | None] = [None] * len(jobs)

    def run(i: int) -> None:
        results[i] = batcher.generate([Message("user", jobs[i][0])], jobs[i][1])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert all(r is not None for r in results), "a request never finished"
    return results  # type: ignore[return-value]


def test_equal_settings_share_a_batch_and_match_single_runs(generator: TextGenerator) -> None:
    batcher = BatchingGenerator(generator, max_batch_size=4, batch_wait_s=0.2)
    prompts = ["short", "a somewhat longer prompt than the first", "third one", "and a fourth prompt"]
    results = _concurrently(batcher, [(p, Sampling(max_new_tokens=8)) for p in prompts])
    assert max(batcher.batch_sizes) > 1
    for prompt, result in zip(prompts, results, strict=True):
        alone = generator.generate([Message("user", prompt)], Sampling(max_new_tokens=8))
        assert result.completion_tokens == alone.completion_tokens == 8
        assert result.finish_reason is FinishReason.LENGTH


def test_mixed_settings_and_prompt_lengths_all_finish(generator: TextGenerator) -> None:
    """Rows with different settings never share a batch, and forming batches of
    rows with different prompt shapes must not break the scheduler (it once did)."""
    batcher = BatchingGenerator(generator, max_batch_size=4, batch_wait_s=0.05)
    jobs = [
        ("x " * n, Sampling(max_new_tokens=m)) for n, m in [(3, 4), (40, 6), (10, 4), (80, 6), (5, 5), (60, 4)]
    ]
    results = _concurrently(batcher, jobs)
    assert [r.completion_tokens for r in results] == [m.max_new_tokens for _, m in jobs]
    again = batcher.generate([Message("user", "still alive")], Sampling(max_new_tokens=3))
    assert again.completion_tokens == 3
