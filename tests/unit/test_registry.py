"""Unit tests for PipelineRegistry (ragrail.gateway.servicer): name and version lookup."""

from __future__ import annotations

import pytest

from ragrail.common.config import RagPipelineSettings
from ragrail.common.errors import InvalidArgument, NotFound
from ragrail.gateway.pipeline import RagPipeline
from ragrail.gateway.servicer import PipelineRegistry
from tests.unit.fakes import FakeStack


def make(name: str, version: int) -> RagPipeline:
    return RagPipeline(
        name,
        RagPipelineSettings(version=version),
        FakeStack().backends,
        collection="docs",
        max_query_chars=100,
    )


@pytest.fixture
def pipelines() -> dict[str, RagPipeline]:
    # Listed out of order on purpose: the default must not depend on config order.
    return {"rag@2": make("rag", 2), "rag@1": make("rag", 1), "rag@10": make("rag", 10), "qa@1": make("qa", 1)}


@pytest.fixture
def registry(pipelines: dict[str, RagPipeline]) -> PipelineRegistry:
    return PipelineRegistry(list(pipelines.values()))


def test_bare_name_resolves_to_the_highest_version(registry: PipelineRegistry, pipelines: dict) -> None:
    assert registry.resolve("rag") is pipelines["rag@10"]  # numeric, not lexical: 10 > 2
    assert registry.resolve("qa") is pipelines["qa@1"]
    assert registry.resolve("  rag \n") is pipelines["rag@10"]


def test_is_default_marks_only_the_highest_version(registry: PipelineRegistry, pipelines: dict) -> None:
    assert [k for k, p in pipelines.items() if registry.is_default(p)] == ["rag@10", "qa@1"]


@pytest.mark.parametrize("ref", ["rag@1", "rag@2", "rag@10", "qa@1"])
def test_name_at_version_resolves_exactly(registry: PipelineRegistry, pipelines: dict, ref: str) -> None:
    assert registry.resolve(ref) is pipelines[ref]


def test_all_is_sorted_by_name_then_version(registry: PipelineRegistry) -> None:
    assert [(p.name, p.version) for p in registry.all()] == [
        ("qa", 1),
        ("rag", 1),
        ("rag", 2),
        ("rag", 10),
    ]


@pytest.mark.parametrize("ref", ["nope", "nope@1", "RAG", "@1"])
def test_unknown_name_is_not_found(registry: PipelineRegistry, ref: str) -> None:
    with pytest.raises(NotFound):
        registry.resolve(ref)


def test_unknown_name_lists_the_known_ones(registry: PipelineRegistry) -> None:
    with pytest.raises(NotFound, match="qa, rag"):
        registry.resolve("nope")


@pytest.mark.parametrize("ref", ["rag@3", "rag@0", "qa@2"])
def test_unknown_version_is_not_found(registry: PipelineRegistry, ref: str) -> None:
    with pytest.raises(NotFound, match=ref):
        registry.resolve(ref)


@pytest.mark.parametrize("ref", ["rag@", "rag@x", "rag@1.0", "rag@-1", "rag@ 1", "rag@v1", "rag@²", "rag@1@2"])
def test_non_numeric_version_is_invalid(registry: PipelineRegistry, ref: str) -> None:
    with pytest.raises(InvalidArgument):
        registry.resolve(ref)


@pytest.mark.parametrize("ref", ["", "   ", "\n"])
def test_empty_reference_is_invalid(registry: PipelineRegistry, ref: str) -> None:
    with pytest.raises(InvalidArgument, match="must not be empty"):
        registry.resolve(ref)
