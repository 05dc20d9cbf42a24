"""Versioned pipeline specs: YAML files in a directory, validated strictly.

A directory holds one file per pipeline version (``rag@1.yaml`` …) and an
optional ``routes.yaml`` with traffic splits between versions of one name::

    rag: {1: 90, 2: 10}     # 90 % of callers get rag@1, sticky per caller key

A version is a typed list of stages, run in order by one engine
(``ragrail.gateway.pipeline``)::

    stages:
      - {type: moderate, check: input}
      - {type: embed}
      - {type: retrieve, collection: documents, top_k: 4}
      - {type: generate, stream: true}
      - {type: moderate, check: output}

``kind: rag`` / ``kind: summarize_sentiment`` with the sections ``moderation``,
``embedding``, ``retrieval``, ``generation`` and ``classify`` is shorthand kept for
one release: it expands to the stage list those kinds ran (``expand_kind``).

Every field below is documented; unknown keys and stage types are errors naming
file and line, so a typo never silently becomes a default. Loading is
all-or-nothing: one broken file rejects the whole directory and the gateway keeps
serving what it had.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

NAME = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
REF = re.compile(r"^[a-z][a-z0-9_-]{0,63}@[1-9][0-9]*$")
STAGE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
ROUTES_FILE = "routes.yaml"
# The categories of ragrail.moderation.v1.Category: a spec naming another is refused at load,
# not sent to the moderation service to fail there.
ModerationCategory = Literal["toxicity", "prompt_injection", "pii"]
INPUT_CATEGORIES = ("toxicity", "prompt_injection")
OUTPUT_CATEGORIES = ("toxicity", "pii")  # an answer must not leak personal data
DEFAULT_RAG_PROMPT = (
    "You are a helpful assistant. Answer the question using only the context. "
    "Be brief. If the context does not contain the answer, say you don't know."
)
DEFAULT_CLASSIFY_PROMPT = (
    "Classify the sentiment of the text. Reply with exactly one word: positive, negative or neutral."
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- parts shared by stages and the kind shorthand ---------------------------------------


class StageSpec(_Strict):
    """A stage call's limits (kind shorthand: the embedding section)."""

    timeout_s: float = Field(5.0, gt=0, le=600, description="per-attempt timeout inside the overall deadline")
    retries: int = Field(1, ge=0, le=3, description="extra attempts on UNAVAILABLE (idempotent stages only)")


class Sampling(_Strict):
    """Decoding settings of a generating stage: part of the version, so answers are reproducible."""

    timeout_s: float = Field(30.0, gt=0, le=600, description="per-attempt timeout (unary) or to first token (stream)")
    retries: int = Field(0, ge=0, le=1, description="generation is costly: retry at most once, never after a streamed token")
    max_new_tokens: int = Field(160, ge=1, le=4096, description="upper bound on generated tokens")
    temperature: float = Field(0.0, ge=0, le=2, description="0 = greedy: the same input gives the same answer")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling mass (with temperature > 0)")
    seed: int | None = Field(None, ge=0, description="fixes sampling when temperature > 0")

    @model_validator(mode="after")
    def _reproducible(self) -> Sampling:
        if self.temperature > 0 and self.seed is None:
            raise ValueError("sampling (temperature > 0) needs a seed: a version must answer reproducibly")
        return self


class LabelledExample(_Strict):
    """One few-shot turn of a classify stage: a text and the label it should get."""

    text: str = Field(min_length=1, description="an input text")
    label: str = Field(min_length=1, description="its label (one of the stage's labels)")


DEFAULT_EXAMPLES = (
    LabelledExample(text="I love this phone, it works perfectly.", label="positive"),
    LabelledExample(text="The package arrived broken and support never answered.", label="negative"),
    LabelledExample(text="The meeting is on Tuesday at noon.", label="neutral"),
)


# --- stages --------------------------------------------------------------------------------


class _Stage(_Strict):
    name: str = Field(
        "", description="the stage's label in timings, failed_stage, metrics and traces; unique in a version. "
        "Default: the type (moderate: moderate_input / moderate_output)"
    )

    @property
    def label(self) -> str:
        return self.name or self.type  # type: ignore[attr-defined, no-any-return]

    @model_validator(mode="after")
    def _name_format(self) -> _Stage:
        if self.name and not STAGE_NAME.match(self.name):
            raise ValueError(f"name {self.name!r} must match {STAGE_NAME.pattern}")
        return self


class ModerateStage(_Stage, StageSpec):
    """Checks the query (input) or the answer (output); a flagged text ends the run with the
    input_flagged / output_flagged canned answer."""

    type: Literal["moderate"] = Field(description="stage type")
    # Not `on:` (YAML 1.1 reads a bare `on` as true).
    check: Literal["input", "output"] = Field(description="input: the query; output: the answer so far")
    categories: tuple[ModerationCategory, ...] = Field(
        (), description="categories to check (the moderation service's: toxicity, prompt_injection, pii); default "
        "input: toxicity, prompt_injection; output: toxicity, pii"
    )
    # A window reaches the client only after it is generated and checked: 80 characters (+40
    # held back) take ~1.2 s at the ~26 tokens/s of CPU generation, and each check ~13 ms
    # (moderate_output p50, docs/benchmarks.md).
    stream_window_chars: int = Field(
        80, ge=20, description="output, after a streaming generate: RunStream releases the answer in windows of "
        "about N characters, each once this stage has passed it"
    )

    @property
    def label(self) -> str:
        return self.name or f"moderate_{self.check}"

    @property
    def checked(self) -> tuple[str, ...]:
        return self.categories or (INPUT_CATEGORIES if self.check == "input" else OUTPUT_CATEGORIES)


class EmbedStage(_Stage, StageSpec):
    """Embeds the query, for a retrieve stage after it."""

    type: Literal["embed"] = Field(description="stage type")


FilterValue = Union[str, int, bool, list[str]]


class RetrieveStage(_Stage, StageSpec):
    """Searches a collection with the embedded query; no passage above the threshold ends
    the run with the retrieval_miss canned answer."""

    type: Literal["retrieve"] = Field(description="stage type")
    collection: str = Field("documents", min_length=1, description="Qdrant collection to search")
    top_k: int = Field(4, ge=1, le=50, description="passages to retrieve")
    score_threshold: float = Field(0.35, ge=-1, le=1, description="cosine similarity below which a passage is ignored")
    filters: dict[str, FilterValue] = Field(
        {}, description="payload conditions every passage must meet: key -> exact keyword, "
        "integer or boolean, or a list of accepted keywords"
    )
    hybrid: bool = Field(
        False, description="also rank the passages by the query's words (BM25) and fuse both rankings (RRF): a name "
        "or a number in the question lifts the passage that has it. Only passages over score_threshold are "
        "considered and scores stay cosine similarities; collections created before hybrid search answer dense"
    )


class RerankStage(_Stage):
    """Reorders the retrieved passages and keeps the best ``top_n``: the dense order fused with
    the order by the question's words each passage holds (reciprocal rank fusion), optionally
    diversified (maximal marginal relevance: near-copies of a passage already kept sink). No
    model, no backend call; the citations are the passages it keeps."""

    type: Literal["rerank"] = Field(description="stage type")
    top_n: int = Field(3, ge=1, le=50, description="passages kept, best first")
    diversity: float = Field(
        0.0, ge=0, le=1, description="0: by relevance alone; towards 1: a passage sharing most of its words with "
        "one already kept ranks lower"
    )


class GenerateStage(_Stage, Sampling):
    """Generates text; its output becomes the answer (and, with ``output``, a named output)."""

    type: Literal["generate"] = Field(description="stage type")
    prompt: Literal["grounded", "cited", "plain"] = Field(
        "grounded", description="grounded: the system prompt, then the retrieved passages and the question in "
        "keyed tags (needs a retrieve stage before); cited: the passages in a keyed tag, then the question, "
        "the tags not spelled out in the system turn (small models echoed them); plain: the system prompt, "
        "then the input text"
    )
    input: Literal["query", "answer"] = Field("query", description="the text the prompt is built from")
    system_prompt: str = Field(DEFAULT_RAG_PROMPT, min_length=1, description="the system turn")
    stream: bool = Field(
        False, description="RunStream sends tokens as they come, each window once the output moderate stages "
        "after it passed it; only output moderate stages may follow a streaming generate"
    )
    output: str = Field("", description="also publish the answer under this key in the response's outputs")


GroundCheck = Literal[
    "numbers", "times", "names", "units", "together", "prompt_echo", "repetition", "substance", "focus", "answer_type"
]


class GroundStage(_Stage):
    """Releases the answer only when it is grounded in the retrieved passages: every number,
    time and proper name found in them (and in the sentences that best match the question),
    numbers with what the passages count or measure by them and near what they are about, the
    kind of fact the question asks for, no echo of the
    prompt, no repeated sentence. Otherwise the passages' best-matching sentences are quoted
    (answer mode extractive) or, with none good enough, the ungrounded canned answer."""

    type: Literal["ground"] = Field(description="stage type")
    checks: tuple[GroundCheck, ...] = Field(
        ("numbers", "times", "names", "units", "together", "prompt_echo", "repetition", "substance", "focus", "answer_type"),
        min_length=1,
        description="what is checked: numbers (figures, years, days of dates), times (06:00), names (capitalised "
        "words, month names included), units (a passage's figure beside a word the passages never put beside it: "
        "another unit, or another thing counted), together (a figure and the names of its sentence within three "
        "sentences of each other in a passage), prompt_echo (wrapper tags, "
        "system prompt), repetition (a sentence said twice), substance (no content word at all, e.g. \"The answer is:\"), "
        "focus (the answer's numbers, times and names in the focus_sentences that best match the question, or in the "
        "question), answer_type (a figure for how many/much/long/often, when, what time; a name for who and where; "
        "when those sentences hold one)",
    )
    focus_sentences: int = Field(
        3, ge=1, le=20, description="passage sentences that best match the question, read by focus and answer_type"
    )
    on_failure: Literal["extractive", "canned"] = Field(
        "extractive", description="extractive: quote the passages' sentences that best match the question "
        "(canned when none scores min_sentence_score); canned: the ungrounded canned answer"
    )
    min_sentence_score: float = Field(
        0.5, gt=0, le=1, description="share of the question's content words a quoted sentence must contain"
    )
    max_quoted_sentences: int = Field(2, ge=1, le=10, description="sentences quoted at most")
    sentence_ranking: Literal["lexical", "hybrid"] = Field(
        "lexical", description="how the passages' sentences are matched to the question, for the quotes and for focus "
        "and answer_type: lexical (the question's words, no model call) or hybrid (words and meaning: one Embed call "
        "for the question's parts, each whole and without its names, and the passages' sentences, made while the answer is "
        "generated, the two orders fused by reciprocal rank; a question in other words than the passage finds its "
        "sentence). If that call fails, lexical"
    )
    min_sentence_similarity: float = Field(
        0.35, ge=-1, le=1, description="hybrid: a sentence at least this close in meaning (cosine) to the question, "
        "both whole and without its names, may be quoted even when it shares too few of its words"
    )
    embed_timeout_s: float = Field(5.0, gt=0, le=60, description="hybrid: timeout of the Embed call")


class ClassifyStage(_Stage, Sampling):
    """Labels a text with one of ``labels`` (few-shot); invalid output is retried with seeded
    sampling, then ends the run with the invalid_output canned answer."""

    type: Literal["classify"] = Field(description="stage type")
    input: Literal["query", "answer"] = Field("answer", description="the text to classify")
    labels: tuple[str, ...] = Field(("positive", "negative", "neutral"), min_length=2, description="allowed labels")
    max_new_tokens: int = Field(6, ge=1, le=32, description="a label is a word or two")
    system_prompt: str = Field(DEFAULT_CLASSIFY_PROMPT, min_length=1, description="the system turn")
    retries_on_invalid: int = Field(1, ge=0, le=3, description="new attempts when the output is not a label")
    # Few-shot turns: small models follow a format they have seen far better than one described.
    examples: tuple[LabelledExample, ...] = Field(DEFAULT_EXAMPLES, description="few-shot turns, in order")
    output: str = Field("", description="also publish the label under this key in the response's outputs")
    answer: bool = Field(False, description="the label becomes the answer")

    @model_validator(mode="after")
    def _examples_use_labels(self) -> ClassifyStage:
        unknown = {e.label for e in self.examples} - set(self.labels)
        if unknown:
            raise ValueError(f"examples use labels that are not in labels: {sorted(unknown)}")
        return self


class RouteTarget(_Strict):
    """Where one label leads: another pipeline version, or a canned answer."""

    pipeline: str | None = Field(None, description="name@version of a pipeline in the same folder, run on the query")
    answer: str | None = Field(None, min_length=1, description="a canned answer (an outcome, not a fallback)")

    @model_validator(mode="after")
    def _one(self) -> RouteTarget:
        if (self.pipeline is None) == (self.answer is None):
            raise ValueError("give exactly one of pipeline or answer")
        if self.pipeline is not None and not REF.match(self.pipeline):
            raise ValueError(f"pipeline {self.pipeline!r} must be name@version")
        return self


class RouteStage(_Stage):
    """Ends the run by a classify stage's label: another pipeline answers, or a canned text."""

    type: Literal["route"] = Field(description="stage type")
    label_from: str = Field("", description="the classify stage whose label decides; default: the last one before")
    routes: dict[str, RouteTarget] = Field(min_length=1, description="label -> target")
    default: RouteTarget | None = Field(None, description="target for labels without a route")


Stage = Annotated[
    Union[
        ModerateStage, EmbedStage, RetrieveStage, RerankStage, GenerateStage, GroundStage, ClassifyStage, RouteStage
    ],
    Field(discriminator="type"),
]


# --- the kind shorthand (one release) ---------------------------------------------------------


class ModerationSpec(StageSpec):
    """Kind shorthand (deprecated): the moderate stages of a ``kind:`` spec."""

    input: bool = Field(True, description="moderate the query (toxicity, prompt injection)")
    output: bool = Field(True, description="moderate the answer (toxicity, personal data)")
    stream_window_chars: int = Field(
        80, ge=20, description="RunStream releases the answer in windows of about N characters, each once "
        "output moderation has passed it"
    )


class RetrievalSpec(StageSpec):
    """Kind shorthand (deprecated): the retrieve stage of ``kind: rag``."""

    collection: str = Field("documents", description="Qdrant collection to search")
    top_k: int = Field(4, ge=1, le=50, description="passages to retrieve")
    score_threshold: float = Field(0.35, ge=-1, le=1, description="cosine similarity below which a passage is ignored")


class GenerationSpec(Sampling):
    """Kind shorthand (deprecated): the generate stage of a ``kind:`` spec."""

    system_prompt: str = Field(DEFAULT_RAG_PROMPT, min_length=1, description="the system turn")


class ClassifySpec(GenerationSpec):
    """Kind shorthand (deprecated): the classify stage of ``kind: summarize_sentiment``."""

    max_new_tokens: int = Field(6, ge=1, le=32, description="a label is a word or two")
    labels: tuple[str, ...] = Field(("positive", "negative", "neutral"), min_length=2, description="allowed labels")
    system_prompt: str = Field(DEFAULT_CLASSIFY_PROMPT, min_length=1, description="the system turn")
    retries_on_invalid: int = Field(1, ge=0, le=3, description="new attempts when the output is not a label")
    examples: tuple[LabelledExample, ...] = Field(DEFAULT_EXAMPLES, description="few-shot turns, in order")

    @model_validator(mode="after")
    def _examples_use_labels(self) -> ClassifySpec:
        unknown = {e.label for e in self.examples} - set(self.labels)
        if unknown:
            raise ValueError(f"examples use labels that are not in labels: {sorted(unknown)}")
        return self


def _sampling(spec: Sampling) -> dict[str, Any]:
    return spec.model_dump(include=set(Sampling.model_fields))


def expand_kind(
    kind: str,
    moderation: ModerationSpec,
    embedding: StageSpec,
    retrieval: RetrievalSpec,
    generation: GenerationSpec,
    classify: ClassifySpec,
) -> tuple[Any, ...]:
    """The stage list a ``kind:`` spec stands for (exactly what the kind's class ran)."""
    mod = {"timeout_s": moderation.timeout_s, "retries": moderation.retries}
    stages: list[Any] = []
    if moderation.input:
        stages.append(ModerateStage(type="moderate", check="input", **mod))
    if kind == "rag":
        stages += [
            EmbedStage(type="embed", **embedding.model_dump()),
            RetrieveStage(type="retrieve", **retrieval.model_dump()),
            GenerateStage(
                type="generate", system_prompt=generation.system_prompt, stream=True, **_sampling(generation)
            ),
        ]
        if moderation.output:
            stages.append(
                ModerateStage(
                    type="moderate", check="output", stream_window_chars=moderation.stream_window_chars, **mod
                )
            )
    else:  # summarize_sentiment: it never moderated its output
        stages += [
            GenerateStage(
                type="generate", name="summarize", prompt="plain", system_prompt=generation.system_prompt,
                output="summary", **_sampling(generation),
            ),
            ClassifyStage(
                type="classify", labels=classify.labels, system_prompt=classify.system_prompt,
                retries_on_invalid=classify.retries_on_invalid, examples=classify.examples,
                output="sentiment", answer=True, **_sampling(classify),
            ),
        ]
    return tuple(stages)


# --- the version -------------------------------------------------------------------------------


class Fallbacks(_Strict):
    """Canned answers, per reason. They are outcomes (status OK), not errors."""

    input_flagged: str = Field("I can't help with that request.", description="a moderate stage on input flagged the query")
    output_flagged: str = Field("I can't help with that request.", description="a moderate stage on output flagged the answer")
    retrieval_miss: str = Field("I don't have information for that.", description="no passage above the threshold")
    stage_timeout: str = Field("Sorry, that took too long. Please try again.", description="a stage ran out of time")
    backend_unavailable: str = Field(
        "The service is temporarily unavailable. Please try again shortly.", description="a backend is down"
    )
    overload: str = Field("The service is busy right now. Please try again shortly.", description="a backend is full")
    invalid_output: str = Field(
        "Sorry, I couldn't produce a valid answer for that.", description="classify found no label"
    )
    ungrounded: str = Field(
        "I couldn't find a reliable answer to that in the documents.",
        description="a ground stage held the answer back and no passage sentence matched the question well enough",
    )


class CacheSpec(_Strict):
    """The version's response cache: answers, and canned answers that depend only on the input
    (flagged, retrieval miss, ungrounded); never a timeout's or an outage's."""

    ttl_s: float = Field(0.0, ge=0, description="0 disables; keyed by (pipeline@version, normalised input)")
    max_entries: int = Field(1024, ge=1, description="entries kept at most")


class AdmissionSpec(_Strict):
    max_in_flight: int = Field(8, ge=1, description="requests of this pipeline processed at once")
    max_queue: int = Field(32, ge=0, description="requests waiting beyond that; more get RESOURCE_EXHAUSTED")
    target_latency_s: float | None = Field(
        None, gt=0, description="a run slower than this counts as a sign of overload to the gateway's "
        "latency-steered query limit (gateway.admission.query.min_in_flight), as a stage timeout does"
    )
    max_queue_wait_s: float | None = Field(
        None, gt=0, description="the longest a request waits for a slot before RESOURCE_EXHAUSTED with retry-after; "
        "unset: until its deadline"
    )


class ServicesSpec(_Strict):
    """Serve application names; point a stage at another deployment (e.g. a canary model)."""

    embedding: str = Field("embedding", description="embedding application")
    retrieval: str = Field("retrieval", description="retrieval application")
    generation: str = Field("generation", description="generation application")
    moderation: str = Field("moderation", description="moderation application")


_KIND_SECTIONS = ("moderation", "embedding", "retrieval", "generation", "classify")


class PipelineSpec(_Strict):
    name: str = Field(description="what callers ask for")
    version: int = Field(ge=1, description="callers may pin it: name@version")
    stages: tuple[Stage, ...] = Field((), description="what the version does, in order")
    kind: Literal["rag", "summarize_sentiment"] | None = Field(
        None, description="deprecated shorthand (one release): expands to the kind's stage list; "
        "tuned by the moderation, embedding, retrieval, generation and classify sections"
    )
    description: str = Field("", description="shown by ListPipelines")
    budget_s: float = Field(60.0, gt=0, le=3600, description="overall deadline when the caller's is longer")
    max_input_chars: int = Field(2000, ge=1, le=100_000, description="longer queries are INVALID_ARGUMENT")
    moderation: ModerationSpec | None = Field(None, description="kind shorthand only")
    embedding: StageSpec | None = Field(None, description="kind shorthand only")
    retrieval: RetrievalSpec | None = Field(None, description="kind shorthand only")
    generation: GenerationSpec | None = Field(None, description="kind shorthand only")
    classify: ClassifySpec | None = Field(None, description="kind shorthand only")
    fallbacks: Fallbacks = Field(Fallbacks(), description="canned answers by reason")
    cache: CacheSpec = Field(CacheSpec(), description="response cache")
    admission: AdmissionSpec = Field(AdmissionSpec(), description="concurrency limits")
    services: ServicesSpec = Field(ServicesSpec(), description="which Serve applications the stages call")

    @model_validator(mode="before")
    @classmethod
    def _one_form(cls, raw: Any) -> Any:
        if isinstance(raw, dict) and raw.get("kind") is not None and raw.get("stages"):
            raise ValueError("give stages or kind (the deprecated shorthand), not both")
        return raw

    @model_validator(mode="after")
    def _check(self) -> PipelineSpec:
        if not NAME.match(self.name):
            raise ValueError(f"name {self.name!r} must match {NAME.pattern}")
        if self.kind is None:
            given = [k for k in _KIND_SECTIONS if getattr(self, k) is not None]
            if given:
                raise ValueError(f"{', '.join(given)}: only with kind; put these options on the stages")
        else:
            defaults = {
                "moderation": ModerationSpec(), "embedding": StageSpec(), "retrieval": RetrievalSpec(),
                "generation": GenerationSpec(), "classify": ClassifySpec(),
            }
            for key, default in defaults.items():
                if getattr(self, key) is None:
                    object.__setattr__(self, key, default)  # frozen: filled once, while validating
            object.__setattr__(self, "stages", expand_kind(self.kind, *(getattr(self, k) for k in _KIND_SECTIONS)))
        check_stages(self.stages)
        return self

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def stage_names(self) -> tuple[str, ...]:
        return tuple(s.label for s in self.stages)

    @property
    def collections(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(s.collection for s in self.stages if isinstance(s, RetrieveStage)))

    @property
    def route_targets(self) -> tuple[str, ...]:
        return tuple(
            t.pipeline
            for s in self.stages if isinstance(s, RouteStage)
            for t in (*s.routes.values(), *([s.default] if s.default else []))
            if t.pipeline
        )

    def stage(self, label: str) -> Any:
        """The stage with this label (KeyError when none)."""
        for s in self.stages:
            if s.label == label:
                return s
        raise KeyError(label)

    def expanded(self) -> dict[str, Any]:
        """The spec as a stage list (what ``ragrail pipelines show`` prints)."""
        data = self.model_dump(mode="json", exclude={"kind", *_KIND_SECTIONS})
        data["stages"] = [
            {
                "type": s.type, "name": s.label, **s.model_dump(mode="json", exclude={"type", "name"}),
                **({"categories": list(s.checked)} if isinstance(s, ModerateStage) else {}),
            }
            for s in self.stages
        ]
        return data


def check_stages(stages: Sequence[Any]) -> None:
    """What no single stage can check: order, names, references between stages."""
    if not stages:
        raise ValueError("stages: a version needs at least one stage")
    seen: set[str] = set()
    for i, stage in enumerate(stages):
        where = f"stages.{i} ({stage.label})"
        if stage.label in seen:
            raise ValueError(f"{where}: the name {stage.label!r} is used twice; give one a name")
        seen.add(stage.label)
        before = stages[:i]
        if isinstance(stage, RetrieveStage) and not any(isinstance(s, EmbedStage) for s in before):
            raise ValueError(f"{where}: needs an embed stage before it")
        if isinstance(stage, RerankStage) and not any(isinstance(s, RetrieveStage) for s in before):
            raise ValueError(f"{where}: needs a retrieve stage before it (it reorders the passages)")
        if isinstance(stage, GenerateStage):
            if stage.prompt != "plain" and not any(isinstance(s, RetrieveStage) for s in before):
                raise ValueError(f"{where}: a {stage.prompt} prompt needs a retrieve stage before it (or prompt: plain)")
            if stage.stream:
                after = stages[i + 1 :]
                if not all(isinstance(s, GroundStage) or (isinstance(s, ModerateStage) and s.check == "output")
                           for s in after):
                    raise ValueError(
                        f"{where}: only output moderate stages may follow a streaming generate (and ground stages)"
                    )
        if isinstance(stage, GroundStage):
            if not any(isinstance(s, GenerateStage) for s in before):
                raise ValueError(f"{where}: needs a generate stage before it (it checks the answer)")
            if not any(isinstance(s, RetrieveStage) for s in before):
                raise ValueError(f"{where}: needs a retrieve stage before it (it checks against the passages)")
            last_generate = max(j for j, s in enumerate(before) if isinstance(s, GenerateStage))
            if any(isinstance(s, ModerateStage) and s.check == "output" for s in before[last_generate:]):
                raise ValueError(f"{where}: put it before the output moderate stages, so they check its quotes too")
        if isinstance(stage, RouteStage):
            if i != len(stages) - 1:
                raise ValueError(f"{where}: route ends the run; it must be the last stage")
            classifiers = [s for s in before if isinstance(s, ClassifyStage)]
            source = next((s for s in classifiers if s.label == stage.label_from), None) if stage.label_from else (
                classifiers[-1] if classifiers else None
            )
            if source is None:
                raise ValueError(f"{where}: needs a classify stage before it" + (
                    f" named {stage.label_from!r}" if stage.label_from else ""
                ))
            unknown = set(stage.routes) - set(source.labels)
            if unknown:
                raise ValueError(f"{where}: routes for labels {source.label} never gives: {sorted(unknown)}")
            missing = set(source.labels) - set(stage.routes)
            if missing and stage.default is None:
                raise ValueError(f"{where}: no route for labels {sorted(missing)} and no default")


def route_source(stages: Sequence[Any], route: RouteStage) -> ClassifyStage:
    classifiers = [s for s in stages if isinstance(s, ClassifyStage)]
    if route.label_from:
        return next(s for s in classifiers if s.label == route.label_from)
    before = [s for s in stages[: list(stages).index(route)] if isinstance(s, ClassifyStage)]
    return before[-1]


def pipeline_json_schema() -> dict[str, Any]:
    """The JSON schema of one spec file (published to docs and shipped with the chart)."""
    schema = TypeAdapter(PipelineSpec).json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "ragrail pipeline spec (one file: name@version.yaml)"
    return schema


@dataclass(frozen=True)
class PipelineSet:
    """What one directory defines: specs and traffic splits."""

    specs: tuple[PipelineSpec, ...]
    routes: Mapping[str, Mapping[int, int]]


class SpecError(Exception):
    """A spec directory that cannot be loaded; the message names file, line and field."""


def load_pipeline_dir(directory: Path) -> PipelineSet:
    if not directory.is_dir():
        raise SpecError(f"{directory}: not a directory")
    specs: list[PipelineSpec] = []
    files: dict[str, str] = {}
    errors: list[str] = []
    for path in sorted(directory.glob("*.y*ml")):
        if path.name == ROUTES_FILE:
            continue
        try:
            spec = load_spec_file(path)
        except SpecError as exc:
            errors.append(str(exc))
            continue
        specs.append(spec)
        files[spec.ref] = files.get(spec.ref, path.name)
    seen: set[str] = set()
    for spec in specs:
        if spec.ref in seen:
            errors.append(f"{spec.ref} is defined twice")
        seen.add(spec.ref)
    errors += _route_target_errors(specs, files)
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


def _route_target_errors(specs: Sequence[PipelineSpec], files: Mapping[str, str]) -> list[str]:
    """Every route stage names a version in the folder, and no chain of routes comes back."""
    by_ref = {s.ref: s for s in specs}
    errors = [
        f"{files[s.ref]}: route to {target}: no such pipeline version in the folder"
        for s in specs for target in s.route_targets if target not in by_ref
    ]

    def cycle(ref: str, path: tuple[str, ...]) -> tuple[str, ...] | None:
        if ref in path:
            return (*path, ref)
        for target in by_ref[ref].route_targets if ref in by_ref else ():
            found = cycle(target, (*path, ref))
            if found:
                return found
        return None

    for s in specs:
        found = cycle(s.ref, ())
        if found and found[0] == s.ref:
            errors.append(f"{files[s.ref]}: routes form a loop: {' -> '.join(found)}")
    return errors


def load_spec_file(path: Path) -> PipelineSpec:
    try:
        text = path.read_text()
        raw = yaml.safe_load(text)
        node = yaml.compose(text)
    except yaml.YAMLError as exc:
        raise SpecError(f"{path.name}: not valid YAML ({_first_line(exc)})") from None
    if not isinstance(raw, dict):
        raise SpecError(f"{path.name}: must be a mapping")
    try:
        return PipelineSpec.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for e in exc.errors():
            line, where = _locate(node, e["loc"])
            problems.append(f"{path.name}:{line}: {where or 'spec'}: {_message(e)}")
        raise SpecError("; ".join(problems)) from None


def _message(error: Any) -> str:
    msg = str(error["msg"])
    return msg.removeprefix("Value error, ")


def _locate(node: yaml.Node | None, loc: Sequence[Any]) -> tuple[int, str]:
    """The YAML line of a pydantic error location, and the location as a dotted path
    (a discriminated union's tag, absent from the file, is left out)."""
    line = node.start_mark.line + 1 if node is not None else 1
    parts: list[str] = []
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            child = next((v for k, v in node.value if k.value == str(part)), None)
            key = next((k for k, v in node.value if k.value == str(part)), None)
            if child is None:
                if any(k.value == "type" and v.value == str(part) for k, v in node.value):
                    continue  # the union's tag
                parts.append(str(part))
                if key is not None:
                    line = key.start_mark.line + 1
                continue
            assert key is not None
            line = key.start_mark.line + 1
            node = child
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            node = None
        parts.append(str(part))
    return line, ".".join(parts)


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
