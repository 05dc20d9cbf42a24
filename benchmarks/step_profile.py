"""Where one decoding step's time goes on this device, with plain transformers (no ragrail).

A model of SmolLM2-135M's shape (random weights, see gpu_check.py) decodes greedily from a
prefilled cache; the next token never leaves the device, so a step costs whichever is
slower: the host enqueueing its kernels or the device running them. Measured per step:

  batch 1 and batch N, every row the same length (the mask is all ones)
  batch N left-padded (what ``generate`` and ragrail run for prompts of mixed lengths)
  batch N with ``attention_mask=None`` (no mask built at all)
  the same with ``attn_implementation="eager"``

then the profiler's top operators for the padded batch, by host time and by device time.
Needs only torch and transformers:

    python benchmarks/step_profile.py                 # cuda if visible
    python benchmarks/step_profile.py --quick         # a CPU dry run
"""

from __future__ import annotations

import argparse
import inspect
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, DynamicCache, LlamaConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_check import MODELS  # noqa: E402


def cache_keyword(model: torch.nn.Module) -> str:
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def decode_steps(model: torch.nn.Module, batch: int, context: int, padded: bool, steps: int,
                 with_mask: bool = True) -> float:
    """Seconds per greedy decoding step from a prefilled cache of ``context`` columns."""
    device = model.device
    generator = torch.Generator(device="cpu").manual_seed(0)
    ids = torch.randint(100, 3000, (batch, context), generator=generator).to(device)
    mask = torch.ones_like(ids)
    if padded:
        for row in range(batch):
            mask[row, : (row * 37) % (context // 2)] = 0
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache(config=model.config)
    key = cache_keyword(model)
    with torch.inference_mode():
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1,
                    **{key: cache})
        last = out.logits[:, -1].argmax(-1, keepdim=True)
        position = positions[:, -1:] + 1
        sync(device)
        started = time.perf_counter()
        for _ in range(steps):
            mask = torch.cat([mask, mask.new_ones((batch, 1))], dim=1)
            out = model(input_ids=last, attention_mask=mask if with_mask else None, position_ids=position,
                        use_cache=True, logits_to_keep=1, **{key: cache})
            last = out.logits[:, -1].argmax(-1, keepdim=True)
            position = position + 1
        sync(device)
    return (time.perf_counter() - started) / steps


def profile_padded(model: torch.nn.Module, batch: int, context: int) -> None:
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if model.device.type == "cuda" else [])
    decode_steps(model, batch, context, padded=True, steps=2)  # warm
    with profile(activities=activities) as prof:
        decode_steps(model, batch, context, padded=True, steps=3)
    table = prof.key_averages()
    print(f"\n-- profiler, batch {batch} padded, 3 steps: top operators by host time")
    print(table.table(sort_by="self_cpu_time_total", row_limit=14, max_name_column_width=60))
    if model.device.type == "cuda":
        print("-- top operators by device time")
        print(table.table(sort_by="self_cuda_time_total", row_limit=10, max_name_column_width=60))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m", choices=sorted(MODELS))
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="CPU dry run: small sizes")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() and not args.quick else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if args.quick:
        args.model, args.batch, args.context, args.steps = "deep-tiny", 4, 64, 3
    shape = dict(MODELS[args.model])
    print(f"step_profile: {torch.cuda.get_device_name() if device.type == 'cuda' else 'CPU'}, torch "
          f"{torch.__version__}, transformers {__import__('transformers').__version__}, {args.model}, {dtype}, "
          f"context {args.context}")
    for attn in ("sdpa", "eager"):
        model = AutoModelForCausalLM.from_config(LlamaConfig(**shape), dtype=dtype, attn_implementation=attn)
        model = model.to(device).eval()
        b, c, n = args.batch, args.context, args.steps
        rows = [
            ("batch 1", decode_steps(model, 1, c, padded=False, steps=n)),
            (f"batch {b}, same lengths", decode_steps(model, b, c, padded=False, steps=n)),
            (f"batch {b}, left-padded", decode_steps(model, b, c, padded=True, steps=n)),
            (f"batch {b}, attention_mask=None", decode_steps(model, b, c, padded=False, steps=n, with_mask=False)),
        ]
        for label, seconds in rows:
            print(f"{attn:5s}  {label:32s} {seconds * 1e3:8.2f} ms/step")
        if attn == "sdpa":
            profile_padded(model, b, c)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
