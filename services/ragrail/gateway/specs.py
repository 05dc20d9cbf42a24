"""Versioned pipeline specs: YAML files in a directory, validated strictly.

A directory holds one file per pipeline version (``rag@1.yaml`` …) and an
optional ``routes.yaml`` with traffic splits between versions of one name::

    rag: {1: 90, 2: 10}     # 90 % of callers get rag@1, sticky per caller key

Every field below is documented; unknown keys are errors, so a typo never
silently becomes a default. Loading is all-or-nothing: one broken file rejects
the whole directory and the gateway keeps serving what it had.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

NAME = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
ROUTES_FILE = "routes.yaml"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StageSpec(_Strict):
    timeout_s: float = Field(5.0, gt=0, le=600, description="per-attempt timeout inside the overall deadline")
    retries: int = Field(1, ge=0, le=3, description="extra attempts on UNAVAILABLE (idempotent stages only)")


class ModerationSpec(StageSpec):
    input: bool = Field(True, description="moderate the query (toxicity, prompt injection)")
    output: bool = Field(True, description="moderate the answer (toxicity, personal data)")
    # A window reaches the client only after it is generated and checked: 80 characters (+40
    # held back) take ~1.2 s at the ~26 tokens/s of CPU generation, and each check ~13 ms
    # (moderate_output p50, docs/benchmarks.md).
    stream_window_chars: int = Field(
        80, ge=20, description="RunStream releases the answer in windows of about N characters, each once "
        "output moderation has passed it"
    )


class RetrievalSpec(StageSpec):
    collection: str = Field("documents", description="Qdrant collection to search")
    top_k: int = Field(4, ge=1, le=50, description="passages to retrieve")
    score_threshold: float = Field(0.35, ge=-1, le=1, description="cosine similarity below which a passage is ignored")


class GenerationSpec(StageSpec):
    timeout_s: float = Field(30.0, gt=0, le=600, description="per-attempt timeout (unary) or to first token (stream)")
    retries: int = Field(0, ge=0, le=1, description="generation is costly: retry at most once, never after a streamed token")
    max_new_tokens: int = Field(160, ge=1, le=4096)
    temperature: float = Field(0.0, ge=0, le=2, description="0 = greedy: the same input gives the same answer")
    top_p: float = Field(1.0, gt=0, le=1)
    seed: int | None = Field(None, ge=0, description="fixes sampling when temperature > 0")
    system_prompt: str = Field(
        "You are a helpful assistant. Answer the question using only the context. "
        "Be brief. If the context does not contain the answer, say you don't know.",
        min_length=1,
    )

    @model_validator(mode="after")
    def _reproducible(self) -> GenerationSpec:
        if self.temperature > 0 and self.seed is None:
            raise ValueError("sampling (temperature > 0) needs a seed: a version must answer reproducibly")
        return self


class LabelledExample(_Strict):
    text: str = Field(min_length=1)
    label: str = Field(min_length=1)


class ClassifySpec(GenerationSpec):
    max_new_tokens: int = Field(6, ge=1, le=32)
    labels: tuple[str, ...] = Field(("positive", "negative", "neutral"), min_length=2)
    system_prompt: str = Field(
        "Classify the sentiment of the text. Reply with exactly one word: positive, negative or neutral.",
        min_length=1,
    )
    retries_on_invalid: int = Field(1, ge=0, le=3, description="new attempts when the output is not a label")
    # Few-shot turns: small models follow a format they have seen far better than one described.
    examples: tuple[LabelledExample, ...] = (
        LabelledExample(text="I love this phone, it works perfectly.", label="positive"),
        LabelledExample(text="The package arrived broken and support never answered.", label="negative"),
        LabelledExample(text="The meeting is on Tuesday at noon.", label="neutral"),
    )

    @model_validator(mode="after")
    def _examples_use_labels(self) -> ClassifySpec:
        unknown = {e.label for e in self.examples} - set(self.labels)
        if unknown:
            raise ValueError(f"examples use labels that are not in labels: {sorted(unknown)}")
        return self


class Fallbacks(_Strict):
    """Canned answers, per reason. They are outcomes (status OK), not errors."""

    input_flagged: str = "I can't help with that request."
    output_flagged: str = "I can't help with that request."
    retrieval_miss: str = "I don't have information for that."
    stage_timeout: str = "Sorry, that took too long. Please try again."
    backend_unavailable: str = "The service is temporarily unavailable. Please try again shortly."
    overload: str = "The service is busy right now. Please try again shortly."
    invalid_output: str = "Sorry, I couldn't produce a valid answer for that."


class CacheSpec(_Strict):
    ttl_s: float = Field(0.0, ge=0, description="0 disables; keyed by (pipeline@version, normalised input)")
    max_entries: int = Field(1024, ge=1)


class AdmissionSpec(_Strict):
    max_in_flight: int = Field(8, ge=1, description="requests of this pipeline processed at once")
    max_queue: int = Field(32, ge=0, description="requests waiting beyond that; more get RESOURCE_EXHAUSTED")


class ServicesSpec(_Strict):
    """Serve application names; point a stage at another deployment (e.g. a canary model)."""

    embedding: str = "embedding"
    retrieval: str = "retrieval"
    generation: str = "generation"
    moderation: str = "moderation"


class PipelineSpec(_Strict):
    name: str = Field(description="what callers ask for")
    version: int = Field(ge=1)
    kind: Literal["rag", "summarize_sentiment"]
    description: str = ""
    budget_s: float = Field(60.0, gt=0, le=3600, description="overall deadline when the caller's is longer")
    max_input_chars: int = Field(2000, ge=1, le=100_000)
    moderation: ModerationSpec = ModerationSpec()
    embedding: StageSpec = StageSpec()
    retrieval: RetrievalSpec = RetrievalSpec()
    generation: GenerationSpec = GenerationSpec()
    classify: ClassifySpec = ClassifySpec()
    fallbacks: Fallbacks = Fallbacks()
    cache: CacheSpec = CacheSpec()
    admission: AdmissionSpec = AdmissionSpec()
    services: ServicesSpec = ServicesSpec()

    @model_validator(mode="after")
    def _name(self) -> PipelineSpec:
        if not NAME.match(self.name):
            raise ValueError(f"name {self.name!r} must match {NAME.pattern}")
        return self

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


@dataclass(frozen=True)
class PipelineSet:
    """What one directory defines: specs and traffic splits."""

    specs: tuple[PipelineSpec, ...]
    routes: Mapping[str, Mapping[int, int]]


class SpecError(Exception):
    """A spec directory that cannot be loaded; the message names file and field."""


def load_pipeline_dir(directory: Path) -> PipelineSet:
    if not directory.is_dir():
        raise SpecError(f"{directory}: not a directory")
    specs: list[PipelineSpec] = []
    errors: list[str] = []
    for path in sorted(directory.glob("*.y*ml")):
        if path.name == ROUTES_FILE:
            continue
        try:
            specs.append(_load_spec(path))
        except SpecError as exc:
            errors.append(str(exc))
    seen: dict[str, str] = {}
    for spec in specs:
        if spec.ref in seen:
            errors.append(f"{spec.ref} is defined twice")
        seen[spec.ref] = spec.ref
    routes: dict[str, dict[int, int]] = {}
    routes_path = directory / ROUTES_FILE
    if routes_path.exists():
        try:
            routes = _load_routes(routes_path, {s.ref for s in specs})
        except SpecError as exc:
            errors.append(str(exc))
    if not specs and not errors:
        errors.append(f"{directory}: no pipeline specs (*.yaml)")
    if errors:
        raise SpecError("; ".join(errors))
    return PipelineSet(tuple(specs), routes)


def _load_spec(path: Path) -> PipelineSpec:
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise SpecError(f"{path.name}: not valid YAML ({_first_line(exc)})") from None
    if not isinstance(raw, dict):
        raise SpecError(f"{path.name}: must be a mapping")
    try:
        return PipelineSpec.model_validate(raw)
    except ValidationError as exc:
        problems = ", ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'spec'}: {e['msg']}" for e in exc.errors()
        )
        raise SpecError(f"{path.name}: {problems}") from None


def _load_routes(path: Path, refs: set[str]) -> dict[str, dict[int, int]]:
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise SpecError(f"{path.name}: not valid YAML ({_first_line(exc)})") from None
    if not isinstance(raw, dict):
        raise SpecError(f"{path.name}: must map pipeline names to {{version: weight}}")
    routes: dict[str, dict[int, int]] = {}
    for name, split in raw.items():
        if not isinstance(split, dict) or not split:
            raise SpecError(f"{path.name}: {name}: must map versions to weights")
        weights: dict[int, int] = {}
        for version, weight in split.items():
            if not _plain_int(version) or not _plain_int(weight) or weight < 0:
                raise SpecError(f"{path.name}: {name}: versions and weights must be non-negative integers")
            if f"{name}@{version}" not in refs:
                raise SpecError(f"{path.name}: {name}@{version} has no spec")
            weights[version] = weight
        if sum(weights.values()) <= 0:
            raise SpecError(f"{path.name}: {name}: weights must not all be 0")
        routes[str(name)] = weights
    return routes


def _plain_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # YAML's true is not a weight


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
