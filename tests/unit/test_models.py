"""Device and dtype resolution shared by the model services (ragrail.common.models)."""

from __future__ import annotations

import typing

import pytest
import torch

from ragrail.common.config import ModelDtype
from ragrail.common.errors import FailedPrecondition
from ragrail.common.models import DTYPES, dtype_name, pick_dtype, tune_cuda_attention


@pytest.mark.parametrize(
    ("device", "expected"),
    [("cpu", torch.float32), ("cuda", torch.bfloat16), ("cuda:1", torch.bfloat16), ("mps", torch.float32)],
)
def test_auto_is_bfloat16_on_cuda_and_float32_elsewhere(
    device: str, expected: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    native_bf16(monkeypatch, False)
    assert pick_dtype("auto", device) == expected


@pytest.mark.parametrize("probe", ["_is_amx_tile_supported", "_is_avx512_bf16_supported"])
def test_auto_is_bfloat16_on_a_cpu_with_native_bfloat16(probe: str, monkeypatch: pytest.MonkeyPatch) -> None:
    native_bf16(monkeypatch, False)
    monkeypatch.setattr(torch.cpu, probe, lambda: True)
    assert pick_dtype("auto", "cpu") == torch.bfloat16


def native_bf16(monkeypatch: pytest.MonkeyPatch, value: bool) -> None:
    for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        monkeypatch.setattr(torch.cpu, probe, lambda: value, raising=False)


@pytest.mark.parametrize("device", ["cpu", "cuda"])
@pytest.mark.parametrize(
    ("setting", "expected"),
    [("float32", torch.float32), ("bfloat16", torch.bfloat16), ("float16", torch.float16)],
)
def test_an_explicit_dtype_is_kept_on_any_device(setting: str, expected: torch.dtype, device: str) -> None:
    assert pick_dtype(setting, device) == expected


def test_an_unknown_dtype_fails_naming_the_known_ones() -> None:
    with pytest.raises(FailedPrecondition, match="unknown dtype 'int8' .*auto, float32, bfloat16, float16"):
        pick_dtype("int8", "cpu")


def test_the_config_accepts_exactly_the_dtypes_pick_dtype_knows() -> None:
    assert typing.get_args(ModelDtype) == DTYPES


def test_dtype_names_for_logs() -> None:
    assert [dtype_name(pick_dtype(s, "cuda")) for s in DTYPES] == ["bfloat16", "float32", "bfloat16", "float16"]


@pytest.mark.parametrize(("device", "turned_off"), [("cuda", True), ("cuda:1", True), ("cpu", False)])
def test_cuda_models_keep_attention_off_cudnn(device: str, turned_off: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """cuDNN's SDPA made masked decoding steps 4-8x slower on an H200 (see tune_cuda_attention)."""
    state = {"cudnn": True}
    monkeypatch.setattr(torch.backends.cuda, "cudnn_sdp_enabled", lambda: state["cudnn"])
    monkeypatch.setattr(torch.backends.cuda, "enable_cudnn_sdp", lambda on: state.update(cudnn=on))
    tune_cuda_attention(device)
    assert state["cudnn"] is not turned_off
