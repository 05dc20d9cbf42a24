"""Per-category config and backends, and the transformers backend on a tiny model built here."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from ragrail.common.config import CategorySettings, ModerationSettings, load_settings
from ragrail.common.errors import FailedPrecondition, InvalidArgument
from ragrail.moderation import core
from ragrail.moderation.core import (
    BACKENDS,
    Category,
    RegexPiiScorer,
    TransformersClassifierScorer,
    build_moderator,
    build_scorer,
)

# -- config ------------------------------------------------------------------------------


def test_packaged_categories() -> None:
    categories = load_settings().moderation.categories
    assert (categories.toxicity.backend, categories.toxicity.threshold) == ("profanity_check", 0.8)
    assert (categories.prompt_injection.backend, categories.prompt_injection.threshold) == ("nanoguard", 0.98)
    assert (categories.pii.backend, categories.pii.threshold) == ("regex", 0.5)
    assert ModerationSettings().categories.pii.threshold == 0.5  # the code's default agrees


def _load(tmp_path: Path, moderation: dict[str, Any]) -> ModerationSettings:
    path = tmp_path / "ragrail.yaml"
    path.write_text(yaml.safe_dump({"moderation": moderation}))
    return load_settings(path).moderation


def test_a_category_can_change_backend_and_others_keep_their_defaults(tmp_path: Path) -> None:
    settings = _load(
        tmp_path,
        {"categories": {"toxicity": {"backend": "transformers", "model": "/models/tox", "label": "toxic", "threshold": 0.7}}},
    )
    tox = settings.categories.toxicity
    assert (tox.backend, tox.model, tox.label, tox.threshold) == ("transformers", "/models/tox", "toxic", 0.7)
    assert settings.categories.pii.backend == "regex"
    assert settings.categories.prompt_injection.backend == "nanoguard"


def test_transformers_takes_a_dtype(tmp_path: Path) -> None:
    category = {"backend": "transformers", "model": "m", "label": 1, "dtype": "bfloat16"}
    settings = _load(tmp_path, {"categories": {"pii": category}})
    assert settings.categories.pii.dtype == "bfloat16"
    assert settings.categories.toxicity.dtype is None  # auto, decided by the scorer


def test_a_label_may_be_an_index(tmp_path: Path) -> None:
    settings = _load(tmp_path, {"categories": {"pii": {"backend": "transformers", "model": "m", "label": 1}}})
    assert settings.categories.pii.label == 1


@pytest.mark.parametrize(
    ("category", "fragment"),
    [
        ({"backend": "perspective"}, "backend"),
        ({"backend": "regex", "threshold": 1.5}, "threshold"),
        ({"backend": "regex", "thresold": 0.5}, "thresold"),
        ({"threshold": 0.5}, "backend"),
        ({"backend": "transformers", "model": "m"}, "needs a model and a label"),
        ({"backend": "transformers", "label": "toxic"}, "needs a model and a label"),
        ({"backend": "profanity_check", "model": "m"}, "backend profanity_check does not take model"),
        ({"backend": "transformers", "model": "m", "label": 1, "window_chars": 900}, "does not take window_chars"),
        ({"backend": "regex", "pii_types": ["passport"]}, "pii_types"),
        ({"backend": "transformers", "model": "m", "label": 0, "batch_size": 0}, "batch_size"),
        ({"backend": "regex", "dtype": "bfloat16"}, "backend regex does not take dtype"),
        ({"backend": "nanoguard", "dtype": "float32"}, "backend nanoguard does not take dtype"),
        (
            {"backend": "transformers", "model": "m", "label": 0, "dtype": "fp8"},
            "'auto', 'float32', 'bfloat16' or 'float16'",
        ),
    ],
)
def test_bad_category_config_is_rejected_at_load(tmp_path: Path, category: dict[str, Any], fragment: str) -> None:
    with pytest.raises(InvalidArgument, match="invalid config") as info:
        _load(tmp_path, {"categories": {"toxicity": category}})
    assert fragment in str(info.value)


def test_unknown_category_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="violence"):
        _load(tmp_path, {"categories": {"violence": {"backend": "regex"}}})


def test_old_flat_threshold_fields_are_gone(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="toxicity_threshold"):
        _load(tmp_path, {"toxicity_threshold": 0.8})


# -- backend selection -------------------------------------------------------------------


class Recorder:
    def __init__(self, name: str, settings: CategorySettings, device: str, models_dir: Path | None) -> None:
        self.name, self.settings, self.device, self.models_dir = name, settings, device, models_dir

    def score(self, texts: Sequence[str]) -> list[float]:
        return [0.0] * len(texts)


@pytest.fixture
def recorded_backends(monkeypatch: pytest.MonkeyPatch) -> None:
    fakes = {
        name: (lambda s, device, models_dir, name=name: Recorder(name, s, device, models_dir))
        for name in ("profanity_check", "nanoguard", "transformers")
    }
    monkeypatch.setattr(core, "BACKENDS", {**BACKENDS, **fakes})


@pytest.mark.usefixtures("recorded_backends")
def test_each_category_gets_its_configured_backend_and_threshold(tmp_path: Path) -> None:
    settings = ModerationSettings.model_validate(
        {
            "categories": {
                "toxicity": {"backend": "transformers", "model": "m", "label": "toxic", "threshold": 0.7},
                "prompt_injection": {"backend": "nanoguard", "threshold": 0.95, "window_chars": 900},
                "pii": {"backend": "regex", "threshold": 0.5, "pii_types": ["email"], "pii_allow": ["a@b.io"]},
            }
        }
    )
    moderator = build_moderator(settings, "cuda", tmp_path)
    tox, inj, pii = (moderator.scorers[c] for c in (Category.TOXICITY, Category.PROMPT_INJECTION, Category.PII))
    assert isinstance(tox, Recorder) and tox.name == "transformers" and tox.settings.model == "m"
    assert (tox.device, tox.models_dir) == ("cuda", tmp_path)
    assert isinstance(inj, Recorder) and inj.name == "nanoguard" and inj.settings.window_chars == 900
    assert isinstance(pii, RegexPiiScorer) and pii.types == ("email",) and pii.allow == ("a@b.io",)
    assert moderator.thresholds == {Category.TOXICITY: 0.7, Category.PROMPT_INJECTION: 0.95, Category.PII: 0.5}


@pytest.mark.usefixtures("recorded_backends")
def test_any_backend_may_score_any_category() -> None:
    settings = ModerationSettings.model_validate({"categories": {"toxicity": {"backend": "regex", "threshold": 0.5}}})
    moderator = build_moderator(settings)
    assert isinstance(moderator.scorers[Category.TOXICITY], RegexPiiScorer)
    (verdict,) = moderator.moderate(["mail a@b.io"])
    assert verdict.flagged_categories == [Category.TOXICITY, Category.PII]
    assert verdict.pii_types == ("email",)  # named by the PII category only


def test_an_unregistered_backend_is_a_failed_precondition(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(core, "BACKENDS", {})
    with pytest.raises(FailedPrecondition, match="unknown moderation backend 'regex'"):
        build_scorer(CategorySettings(backend="regex"))


# -- the transformers backend on a tiny model ----------------------------------------------

TINY_POSITIONS = 64


def _save_tiny_classifier(folder: Path, minilm_path: str, **config: Any) -> Path:
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    bert = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=TINY_POSITIONS,
        id2label={0: "ok", 1: "toxic"},
        label2id={"ok": 0, "toxic": 1},
        pad_token_id=tokenizer.pad_token_id,
        initializer_range=0.2,  # the usual 0.02 scores every text ~0.495: order mistakes would not show
        **config,
    )
    with torch.random.fork_rng():
        torch.manual_seed(7)
        model = BertForSequenceClassification(bert)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_classifier(tmp_path_factory: pytest.TempPathFactory, minilm_path: str) -> Path:
    return _save_tiny_classifier(tmp_path_factory.mktemp("tiny-classifier"), minilm_path)


@pytest.fixture(scope="module")
def scorer(tiny_classifier: Path) -> TransformersClassifierScorer:
    return TransformersClassifierScorer(str(tiny_classifier), "toxic", batch_size=2)


TEXTS = [
    "What time does the first train leave?",
    "you are a worthless idiot",
    "",
    "Refunds are paid within 14 days.",
    "a b c d e f g",
]


def test_scores_are_probabilities_of_the_named_label(tiny_classifier: Path, scorer: TransformersClassifierScorer) -> None:
    toxic = scorer.score(TEXTS)
    ok = TransformersClassifierScorer(str(tiny_classifier), "ok").score(TEXTS)
    assert len(toxic) == len(TEXTS)
    assert all(0.0 <= p <= 1.0 for p in toxic)
    assert [a + b for a, b in zip(toxic, ok)] == pytest.approx([1.0] * len(TEXTS), abs=1e-5)
    assert max(toxic) - min(toxic) > 0.05, "the texts should not all score the same"
    assert (scorer.label_index, scorer.label) == (1, "toxic")


def test_label_by_index_and_case_insensitive_name(tiny_classifier: Path, scorer: TransformersClassifierScorer) -> None:
    by_index = TransformersClassifierScorer(str(tiny_classifier), 1)
    by_folded = TransformersClassifierScorer(str(tiny_classifier), "TOXIC")
    assert by_index.score(TEXTS) == pytest.approx(scorer.score(TEXTS), abs=1e-6)
    assert by_folded.label_index == 1


def test_batching_keeps_order(scorer: TransformersClassifierScorer) -> None:
    one_by_one = [scorer.score([t])[0] for t in TEXTS]
    assert scorer.score(TEXTS) == pytest.approx(one_by_one, abs=1e-5)  # batches of 2, padded
    assert scorer.score(TEXTS[::-1]) == pytest.approx(one_by_one[::-1], abs=1e-5)


def test_long_texts_are_truncated_to_the_models_length(scorer: TransformersClassifierScorer) -> None:
    assert scorer.max_length == TINY_POSITIONS  # the model's positions, below the tokenizer's 512
    head = "the train to Lyon leaves at ten " * 20  # well over 64 tokens
    long_a, long_b = scorer.score([head, head + "idiot " * 500])
    assert long_a == pytest.approx(long_b, abs=1e-6), "only the first 64 tokens are read"


def test_max_length_setting_caps_further(tiny_classifier: Path) -> None:
    short = TransformersClassifierScorer(str(tiny_classifier), "toxic", max_length=16)
    assert short.max_length == 16
    text = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen"
    assert short.score([text, text + " fifteen sixteen"])[0] == pytest.approx(
        short.score([text + " fifteen sixteen"])[0], abs=1e-6
    )


def test_unknown_label_fails_at_load_naming_the_labels(tiny_classifier: Path) -> None:
    with pytest.raises(FailedPrecondition, match=r"has no label 'toxicity'; its labels: 0=ok, 1=toxic"):
        TransformersClassifierScorer(str(tiny_classifier), "toxicity")
    with pytest.raises(FailedPrecondition, match="has no label index 2"):
        TransformersClassifierScorer(str(tiny_classifier), 2)


def test_a_folder_without_a_model_fails_at_load(tmp_path: Path) -> None:
    with pytest.raises(FailedPrecondition, match="cannot load moderation model") as info:
        TransformersClassifierScorer(str(tmp_path), "toxic")
    assert "\n" not in info.value.message


def test_multi_label_models_use_a_sigmoid(tmp_path: Path, minilm_path: str) -> None:
    folder = _save_tiny_classifier(tmp_path, minilm_path, problem_type="multi_label_classification")
    toxic = TransformersClassifierScorer(str(folder), "toxic")
    ok = TransformersClassifierScorer(str(folder), "ok")
    assert toxic.multi_label
    sums = [a + b for a, b in zip(toxic.score(TEXTS), ok.score(TEXTS))]
    assert all(0.0 <= p <= 1.0 for p in toxic.score(TEXTS))
    assert sums != pytest.approx([1.0] * len(TEXTS), abs=1e-3)


def test_the_transformers_backend_from_config_moderates(tiny_classifier: Path, scorer: TransformersClassifierScorer) -> None:
    expected = scorer.score(TEXTS)
    threshold = sorted(expected)[2]
    settings = ModerationSettings.model_validate(
        {
            "categories": {
                "toxicity": {"backend": "transformers", "model": str(tiny_classifier), "label": "toxic",
                             "threshold": threshold, "batch_size": 3, "device": "cpu"},
                "prompt_injection": {"backend": "transformers", "model": str(tiny_classifier), "label": 0},
            }
        }
    )  # fmt: skip
    moderator = build_moderator(settings)
    tox = moderator.scorers[Category.TOXICITY]
    assert isinstance(tox, TransformersClassifierScorer) and tox.batch_size == 3 and tox.device == "cpu"
    verdicts = moderator.moderate(TEXTS, [Category.TOXICITY])
    assert [v.scores[0].score for v in verdicts] == pytest.approx(expected, abs=1e-5)
    assert [v.flagged for v in verdicts] == [p >= threshold for p in expected]
    assert sum(v.flagged for v in verdicts) == 3


def test_bfloat16_weights_score_like_float32(
    tiny_classifier: Path, scorer: TransformersClassifierScorer, caplog: pytest.LogCaptureFixture
) -> None:
    import torch

    from ragrail.common.models import _cpu_has_native_bf16

    with caplog.at_level(logging.INFO, logger="ragrail.moderation.core"):
        half = TransformersClassifierScorer(str(tiny_classifier), "toxic", dtype="bfloat16")
    full = TransformersClassifierScorer(str(tiny_classifier), "toxic", dtype="float32")
    auto = torch.bfloat16 if _cpu_has_native_bf16() else torch.float32  # auto on this CPU
    assert (scorer.dtype, scorer._model.dtype) == (auto, auto)
    assert (full.dtype, full._model.dtype) == (torch.float32, torch.float32)
    assert (half.dtype, half._model.dtype) == (torch.bfloat16, torch.bfloat16)
    assert f"moderation model {tiny_classifier} on cpu (bfloat16)" in caplog.messages
    scores = half.score(TEXTS)
    assert all(type(p) is float and 0.0 <= p <= 1.0 for p in scores)
    assert scores == pytest.approx(full.score(TEXTS), abs=0.02)
    assert scores != pytest.approx(full.score(TEXTS), abs=1e-6), "bfloat16 weights should change scores a little"


def test_the_transformers_backend_passes_its_dtype(tiny_classifier: Path) -> None:
    import torch

    configured = CategorySettings(backend="transformers", model=str(tiny_classifier), label="toxic", dtype="bfloat16")
    built = build_scorer(configured, "cpu")
    assert isinstance(built, TransformersClassifierScorer) and built._model.dtype == torch.bfloat16
    default = build_scorer(CategorySettings(backend="transformers", model=str(tiny_classifier), label="toxic"), "cpu")
    from ragrail.common.models import _cpu_has_native_bf16

    auto = torch.bfloat16 if _cpu_has_native_bf16() else torch.float32  # auto on this CPU
    assert isinstance(default, TransformersClassifierScorer) and default.dtype == auto
