"""GPU check: ragrail's generation engine against plain ``model.generate``, in one run.

Needs only torch and transformers (no Ray, no gRPC, no downloaded weights): each
model is built from its config with random weights, saved, and loaded back
through the normal ``from_pretrained`` path, with a byte-level BPE tokenizer
trained here on the sample corpus (padded with merges to the model's vocabulary).
Throughput does not depend on the weights' values; EOS is suppressed so every
request runs to its length. Prints, measured in the same run:

  agreement       greedy text from ragrail, alone and in a batch of mixed prompt lengths (chunked
                  prefill too), equal to ``model.generate``'s, in float32 and in bfloat16; a seeded
                  sampled row gives the same text alone and in company
  single stream   tok/s and TTFT, ragrail vs ``model.generate`` on the same prompt
  N callers       aggregate tok/s at N concurrent callers vs ``generate`` on one batch of N
  arrivals        TTFT p50/p99 while 64 callers arrive over 2 s
  embedding       texts/s fp32 vs bf16 (ragrail's TextEmbedder, MiniLM shape)

    python benchmarks/gpu_check.py                        # on a GPU machine, < 5 min
    python benchmarks/gpu_check.py --quick                # a CPU dry run: small sizes, seconds
    python benchmarks/gpu_check.py --models smollm2-135m --callers 64,256 --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "services"))  # the source tree is enough: no install needed

import torch  # noqa: E402
from transformers import AutoModelForCausalLM, BertConfig, BertModel, LlamaConfig  # noqa: E402
from transformers import PreTrainedTokenizerFast  # noqa: E402

from ragrail.generation.core import Message, Sampling, TextGenerator  # noqa: E402
from ragrail.generation.engine import ContinuousBatcher  # noqa: E402

CORPUS = ROOT / "services" / "ragrail" / "data" / "sample_corpus"
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
# SmolLM2-135M-Instruct's shipped config.json, and TinyLlama-1.1B's shape.
MODELS = {
    "smollm2-135m": dict(
        hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
        num_key_value_heads=3, head_dim=64, max_position_embeddings=8192, vocab_size=49152,
        rms_norm_eps=1e-5, rope_theta=100000.0, tie_word_embeddings=True,
    ),
    # SmolLM2's depth with a near-free forward: on a CPU, the host-bound regime of a GPU.
    "deep-tiny": dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=30, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=8192, vocab_size=8192,
        rms_norm_eps=1e-5, rope_theta=100000.0, tie_word_embeddings=True,
    ),
    "tinyllama-1.1b": dict(
        hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
        num_key_value_heads=4, max_position_embeddings=2048, vocab_size=32000, rms_norm_eps=1e-5,
        rope_theta=10000.0, tie_word_embeddings=False,
    ),
}


# -- models from configs ---------------------------------------------------------------------


def build_tokenizer(vocab_size: int, folder: Path) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on the sample corpus, padded with merges to ``vocab_size``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    specials = ["<|unk|>", "<|bos|>", "<|eos|>", "<|pad|>"]
    tok = Tokenizer(models.BPE(unk_token="<|unk|>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    text = [p.read_text() for p in sorted(CORPUS.glob("*.md"))]
    tok.train_from_iterator(text, trainers.BpeTrainer(vocab_size=min(vocab_size, 3000), special_tokens=specials,
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    state = json.loads(tok.to_str())
    vocab: dict[str, int] = state["model"]["vocab"]
    merges = state["model"]["merges"]
    pieces = [t for t in vocab if t not in specials]
    i = 0
    while len(vocab) < vocab_size:  # merges that never fire on real text, but decode like any token
        a, b = pieces[i % len(pieces)], pieces[(i // len(pieces)) % len(pieces)]
        i += 1
        if a + b not in vocab:
            vocab[a + b] = len(vocab)
            merges.append([a, b])
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "raw.json").write_text(json.dumps(state))
    fast = PreTrainedTokenizerFast(
        tokenizer_file=str(folder / "raw.json"), unk_token="<|unk|>", bos_token="<|bos|>", eos_token="<|eos|>",
        pad_token="<|pad|>",
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_model(name: str, folder: Path, dtype: str, device: str) -> TextGenerator:
    """Saves a random model of ``name``'s shape and loads it through ``from_pretrained``."""
    shape = dict(MODELS[name])
    tokenizer = build_tokenizer(int(shape["vocab_size"]), folder / "tokenizer-build")
    eos, pad, bos = tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.bos_token_id
    config = LlamaConfig(**shape, bos_token_id=bos, eos_token_id=eos, pad_token_id=pad)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.generation_config.eos_token_id = eos
    model.generation_config.pad_token_id = pad
    model.generation_config.suppress_tokens = [eos]  # every request runs to its length, here and in generate
    model.save_pretrained(folder / name)
    tokenizer.save_pretrained(folder / name)
    del model
    return TextGenerator(str(folder / name), name=name, device=device, dtype=dtype,
                         max_new_tokens_limit=4096, max_prompt_chars=1_000_000)


def corpus_windows(tokenizer: PreTrainedTokenizerFast, count: int, tokens: int) -> list[str]:
    """``count`` different texts of about ``tokens`` tokens each, cut from the sample corpus."""
    ids = tokenizer("\n".join(p.read_text() for p in sorted(CORPUS.glob("*.md"))))["input_ids"]
    ids = ids * (1 + tokens // max(1, len(ids)) + 1)  # long enough for any window
    span = max(1, len(ids) - tokens)
    return [tokenizer.decode(ids[(i * 37) % span :][:tokens]) for i in range(count)]


def prompts(generator: TextGenerator, count: int, tokens: int) -> list[list[Message]]:
    """``count`` different user messages whose chat prompts are about ``tokens`` long."""
    overhead = generator.prepare([Message("user", "x")], Sampling(max_new_tokens=1)).token_count - 1
    return [[Message("user", text)] for text in corpus_windows(generator.tokenizer, count, max(1, tokens - overhead))]


# -- measurements --------------------------------------------------------------------------------


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def hf_generate(generator: TextGenerator, batch: list[list[Message]], new: int) -> float:
    """Seconds for plain ``model.generate`` on one left-padded batch (greedy, EOS suppressed)."""
    tok = generator.tokenizer
    tok.padding_side = "left"
    chats = [[{"role": m.role, "content": m.content} for m in msgs] for msgs in batch]
    enc = tok.apply_chat_template(chats, add_generation_prompt=True, return_tensors="pt", return_dict=True,
                                  padding=True)
    enc = {k: v.to(generator.model.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
    sync(str(generator.model.device.type))
    started = time.perf_counter()
    with torch.inference_mode():
        generator.model.generate(**enc, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                                 pad_token_id=generator.pad_token_id)
    sync(str(generator.model.device.type))
    return time.perf_counter() - started


async def ours(engine: ContinuousBatcher, batch: list[list[Message]], new: int,
               arrivals: list[float] | None = None) -> tuple[float, list[float]]:
    """Seconds for all callers to finish, and each caller's TTFT."""
    sampling = Sampling(max_new_tokens=new)
    ttft: list[float] = []

    async def one(msgs: list[Message], delay: float) -> None:
        await asyncio.sleep(delay)
        submitted = time.perf_counter()
        first = True
        async for _event in engine.astream(msgs, sampling):
            if first:
                ttft.append(time.perf_counter() - submitted)
                first = False

    started = time.perf_counter()
    await asyncio.gather(*(one(m, (arrivals or [0.0] * len(batch))[i]) for i, m in enumerate(batch)))
    return time.perf_counter() - started, ttft


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def check_generation(name: str, args: argparse.Namespace, device: str, workdir: Path, report: dict) -> None:
    generator = build_model(name, workdir, args.dtype, device)
    callers = [int(c) for c in args.callers.split(",")]
    largest = max(callers + [args.arrivals])
    engine = ContinuousBatcher(generator, max_batch_size=largest, max_waiting=4 * largest,
                               max_batch_tokens=largest * (args.prompt_tokens + args.new_tokens + 64),
                               prefill_chunk_tokens=args.prefill_chunk)
    pool = prompts(generator, largest, args.prompt_tokens)
    new = args.new_tokens
    prompt_len = generator.prepare(pool[0], Sampling(max_new_tokens=new)).token_count
    print(f"\n== {name}: {sum(p.numel() for p in generator.model.parameters()) / 1e6:.0f}M params, "
          f"{generator.model.dtype}, {device}, prompt {prompt_len} tokens, {new} new tokens"
          + (f", cuDNN attention {'on' if torch.backends.cuda.cudnn_sdp_enabled() else 'off'}" if device == "cuda" else ""))
    rows = report.setdefault(name, {})
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(ours(engine, pool[:2], 4))  # warm-up
        hf_generate(generator, pool[:2], 4)
        # single stream
        base_s = min(hf_generate(generator, pool[:1], new) for _ in range(2))
        base_ttft = min(hf_generate(generator, pool[:1], 1) for _ in range(3))
        runs = [loop.run_until_complete(ours(engine, pool[:1], new)) for _ in range(2)]
        our_s = min(r[0] for r in runs)
        our_ttft = min(min(r[1]) for r in runs)
        rows["single"] = dict(ours_tok_s=new / our_s, generate_tok_s=new / base_s, ratio=base_s / our_s,
                              ours_ttft_ms=our_ttft * 1e3, generate_ttft_ms=base_ttft * 1e3)
        print(f"single stream  ours {new / our_s:8.1f} tok/s  TTFT {our_ttft * 1e3:6.1f} ms | generate "
              f"{new / base_s:8.1f} tok/s  TTFT {base_ttft * 1e3:6.1f} ms | ratio {base_s / our_s:.2f} (target >= 0.9)")
        step_s = {}
        for n in callers:
            base_s = hf_generate(generator, pool[:n], new)
            our_s, _ = loop.run_until_complete(ours(engine, pool[:n], new))
            step_s[n] = base_s / new
            target = 1.0 if n <= 64 else 0.8
            rows[f"callers_{n}"] = dict(ours_tok_s=n * new / our_s, generate_tok_s=n * new / base_s,
                                        ratio=base_s / our_s, target=target)
            print(f"{n:4d} callers    ours {n * new / our_s:8.1f} tok/s | generate on one batch of {n:<4d} "
                  f"{n * new / base_s:8.1f} tok/s | ratio {base_s / our_s:.2f} (target >= {target})")
        n = args.arrivals
        spread = [i * args.arrival_s / max(1, n - 1) for i in range(n)]
        _, ttfts = loop.run_until_complete(ours(engine, pool[:n], new, spread))
        one_step = step_s.get(n) or hf_generate(generator, pool[:n], new) / new
        bound = 3 * our_ttft + one_step
        p50, p99 = pct(ttfts, 0.5), pct(ttfts, 0.99)
        rows["arrivals"] = dict(callers=n, over_s=args.arrival_s, ttft_p50_ms=p50 * 1e3, ttft_p99_ms=p99 * 1e3,
                                bound_ms=bound * 1e3)
        print(f"arrivals       {n} callers over {args.arrival_s:.1f} s: TTFT p50 {p50 * 1e3:.1f} ms, p99 "
              f"{p99 * 1e3:.1f} ms (target <= 3 x single TTFT + one step = {bound * 1e3:.1f} ms)")
    finally:
        loop.close()
        engine.close()
        del generator
        if device == "cuda":
            torch.cuda.empty_cache()


def reference_text(generator: TextGenerator, msgs: list[Message], new: int) -> str:
    """``model.generate`` on one prompt alone, greedy: the text ragrail must reproduce."""
    prepared = generator.prepare(msgs, Sampling(max_new_tokens=new))
    with torch.inference_mode():
        out = generator.model.generate(input_ids=prepared.input_ids,
                                       attention_mask=torch.ones_like(prepared.input_ids),
                                       max_new_tokens=new, do_sample=False, pad_token_id=generator.pad_token_id)
    return str(generator.tokenizer.decode(out[0, prepared.token_count :], skip_special_tokens=True))


def check_agreement(name: str, args: argparse.Namespace, device: str, workdir: Path, report: dict) -> None:
    """Same text as ``generate``, alone and in company: correctness on this device, not speed.

    Counted, not asserted: in bfloat16 a batch's different matrix shapes round differently and
    can flip a near tie of the random model; in float32 every row should agree."""
    build_model(name, workdir, "float32", device)  # writes the model folder once
    rows = report.setdefault("agreement", {})
    new, sizes = (16, [8, 24, 48, 12]) if args.quick else (32, [8, 30, 64, 120, 250, 16, 400, 90])
    print(f"\n== agreement: {name}, {len(sizes)} prompts of {min(sizes)}-{max(sizes)} tokens, {new} new tokens")
    for dtype in ("float32", "bfloat16"):
        generator = TextGenerator(str(workdir / name), name=name, device=device, dtype=dtype,
                                  max_new_tokens_limit=4096, max_prompt_chars=1_000_000)
        pool = [prompts(generator, 1, n)[0] for n in sizes]
        expected = [reference_text(generator, msgs, new) for msgs in pool]
        result = {}
        loop = asyncio.new_event_loop()
        try:
            for chunk in (None, 64):  # the default chunk, and one that splits the longer prompts
                engine = ContinuousBatcher(generator, max_batch_size=len(pool), max_waiting=4 * len(pool),
                                           max_batch_tokens=len(pool) * 2048, prefill_chunk_tokens=chunk)
                try:
                    alone = [engine.generate(msgs, Sampling(max_new_tokens=new)).text for msgs in pool]
                    together = loop.run_until_complete(texts_together(engine, pool, [Sampling(max_new_tokens=new)] * len(pool)))
                    seeded = Sampling(max_new_tokens=new, temperature=1.0, top_p=0.9, top_k=40, seed=7)
                    seeded_alone = engine.generate(pool[1], seeded).text
                    company = [Sampling(max_new_tokens=new, temperature=0.8)] * len(pool)
                    company[1] = seeded
                    seeded_together = loop.run_until_complete(texts_together(engine, pool, company))[1]
                finally:
                    engine.close()
                key = f"chunk_{chunk or 'default'}"
                result[key] = dict(alone=sum(a == e for a, e in zip(alone, expected)),
                                   batched=sum(t == e for t, e in zip(together, expected)),
                                   seeded_same=seeded_alone == seeded_together, of=len(pool))
                r = result[key]
                print(f"{dtype:9s} prefill chunk {chunk or 'default':>7}: equal to generate alone {r['alone']}/{r['of']}, "
                      f"in a batch {r['batched']}/{r['of']}; seeded row same in company: {r['seeded_same']}")
        finally:
            loop.close()
            del generator
            if device == "cuda":
                torch.cuda.empty_cache()
        rows[dtype] = result


async def texts_together(engine: ContinuousBatcher, pool: list[list[Message]], samplings: list[Sampling]) -> list[str]:
    """Every prompt submitted at once, so they share steps; each one's whole text."""

    async def one(msgs: list[Message], sampling: Sampling) -> str:
        return "".join([event.delta async for event in engine.astream(msgs, sampling)])

    return list(await asyncio.gather(*(one(m, s) for m, s in zip(pool, samplings))))


def check_embedding(args: argparse.Namespace, device: str, workdir: Path, report: dict) -> None:
    from ragrail.embedding.core import TextEmbedder

    folder = workdir / "minilm-shape"
    tokenizer = build_tokenizer(30522, workdir / "bert-tokenizer")
    config = BertConfig(vocab_size=30522, hidden_size=384, intermediate_size=1536, num_hidden_layers=6,
                        num_attention_heads=12, max_position_embeddings=512)
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    texts = corpus_windows(tokenizer, args.embed_texts, 60)
    rows = report.setdefault("embedding", {})
    print(f"\n== embedding: MiniLM-L6 shape, {len(texts)} texts of ~60 tokens, batch {args.embed_batch}")
    for dtype in ("float32", "bfloat16"):
        embedder = TextEmbedder(str(folder), name="minilm-shape", device=device, dtype=dtype,
                                max_batch_size=args.embed_batch)
        embedder.encode(texts[: args.embed_batch])  # warm-up
        sync(device)
        started = time.perf_counter()
        embedder.encode(texts)
        sync(device)
        rate = len(texts) / (time.perf_counter() - started)
        rows[dtype] = dict(texts_s=rate)
        print(f"{dtype:9s}  {rate:9.1f} texts/s")
    rows["ratio_bf16"] = rows["bfloat16"]["texts_s"] / rows["float32"]["texts_s"]
    print(f"bf16 / fp32 {rows['ratio_bf16']:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="smollm2-135m,tinyllama-1.1b")
    parser.add_argument("--device", default="auto", help="auto (cuda if visible), cuda or cpu")
    parser.add_argument("--dtype", default=None, help="default: bfloat16 on cuda, float32 on cpu")
    parser.add_argument("--prompt-tokens", type=int, default=438)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--callers", default="4,16,64,256")
    parser.add_argument("--arrivals", type=int, default=64, help="callers arriving over --arrival-s")
    parser.add_argument("--arrival-s", type=float, default=2.0)
    parser.add_argument("--prefill-chunk", type=int, default=None,
                        help="engine's prefill_chunk_tokens (default: the engine's, 8192 on CUDA)")
    parser.add_argument("--embed-texts", type=int, default=4096)
    parser.add_argument("--embed-batch", type=int, default=256)
    parser.add_argument("--skip-agreement", action="store_true", help="only the speed figures")
    parser.add_argument("--quick", action="store_true", help="CPU dry run: small sizes")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    args.dtype = args.dtype or ("bfloat16" if device == "cuda" else "float32")
    if args.quick:
        args.models, args.prompt_tokens, args.new_tokens = "smollm2-135m", 64, 16
        args.callers, args.arrivals, args.arrival_s, args.embed_texts, args.embed_batch = "2,4", 4, 0.5, 64, 32
    logging.basicConfig(level=logging.WARNING)
    __import__("transformers").utils.logging.disable_progress_bar()
    name = torch.cuda.get_device_name() if device == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"gpu_check: {name}, torch {torch.__version__}, transformers {__import__('transformers').__version__}")
    report: dict = {"device": name, "torch": torch.__version__, "args": {k: str(v) for k, v in vars(args).items()}}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ragrail-gpu-check-") as tmp:
        if not args.skip_agreement:
            check_agreement(args.models.split(",")[0], args, device, Path(tmp) / "agreement", report)
        for model in args.models.split(","):
            check_generation(model, args, device, Path(tmp), report)
        check_embedding(args, device, Path(tmp), report)
    report["seconds"] = time.perf_counter() - started
    print(f"\ndone in {report['seconds']:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
