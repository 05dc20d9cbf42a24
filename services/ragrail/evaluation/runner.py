"""Runs a question set through a real gateway over gRPC, against pinned pipeline versions.

Versions are pinned the gateway's own way, ``pipeline: "rag@2"`` in each RunRequest, so
a traffic split never decides which version answers. Questions go one at a time, each
asked of every version before the next question: slow and fast moments of a busy
machine fall on all versions alike, so their latencies compare within one run.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from ragrail.common.errors import InvalidArgument, NotFound
from ragrail.evaluation.dataset import Question, documents_dir
from ragrail.evaluation.metrics import TRANSIENT, Answer, Judgement, judge, summarise
from ragrail.gateway.v1 import gateway_pb2 as pb
from ragrail.gateway.v1 import gateway_pb2_grpc

SESSION_ID = "ragrail-eval"


@dataclass(frozen=True)
class Target:
    """Where the gateway is and how to call it (as for ``ragrail ask``)."""

    address: str
    api_key: str = ""
    ca_file: Path | None = None
    timeout_s: float = 120.0


class GatewayClient:
    def __init__(self, target: Target) -> None:
        if target.ca_file:
            creds = grpc.ssl_channel_credentials(root_certificates=target.ca_file.read_bytes())
            self.channel = grpc.secure_channel(target.address, creds)
        else:
            self.channel = grpc.insecure_channel(target.address)
        self.stub = gateway_pb2_grpc.GatewayServiceStub(self.channel)
        self.metadata = (("authorization", f"Bearer {target.api_key}"),) if target.api_key else ()
        self.timeout_s = target.timeout_s

    def close(self) -> None:
        self.channel.close()

    def versions(self) -> set[str]:
        listed = self.stub.ListPipelines(pb.ListPipelinesRequest(), timeout=30, metadata=self.metadata)
        return {f"{p.name}@{p.version}" for p in listed.pipelines}

    def ingest(self, folder: Path) -> list[str]:
        """Ingests the set's own documents (idempotent: same ids replace themselves)."""
        from ragrail.cli.loaders import collect_files, load_document

        docs = [load_document(p) for p in collect_files([folder])]
        if not docs:
            return []
        request = pb.IngestRequest(
            documents=[pb.Document(document_id=d.document_id, text=d.text, source="eval:" + d.document_id) for d in docs]
        )
        response = self.stub.Ingest(request, timeout=600, metadata=self.metadata)
        failed = [r for r in response.documents if r.status == pb.DOCUMENT_STATUS_FAILED]
        if failed:
            raise InvalidArgument(f"ingesting the eval documents failed: {failed[0].document_id}: {failed[0].error}")
        return [f"{r.document_id}: {r.chunks_stored} chunks" for r in response.documents]

    def ask(self, version: str, question: str) -> Answer:
        started = time.perf_counter()
        try:
            r = self.stub.Run(
                pb.RunRequest(pipeline=version, query=question, session_id=SESSION_ID),
                timeout=self.timeout_s, metadata=self.metadata,
            )
        except grpc.RpcError as exc:
            return Answer(error=f"{exc.code().name}: {exc.details()}")  # type: ignore[attr-defined]
        return Answer(
            answer=r.answer,
            fallback=r.fallback,
            fallback_reason=pb.FallbackReason.Name(r.fallback_reason).removeprefix("FALLBACK_REASON_").lower()
            if r.fallback else "",
            citations=[(c.document_id, c.text) for c in r.citations],
            latency_ms=(time.perf_counter() - started) * 1000,
            cached=r.cached,
            pipeline=f"{r.pipeline}@{r.pipeline_version}",
            answer_mode=pb.AnswerMode.Name(r.answer_mode).removeprefix("ANSWER_MODE_").lower()
            if r.answer_mode else "",
        )


def system_prompts(pipelines_dir: Path | None = None) -> list[str]:
    """The system prompts an answer must not echo: every generate stage's of the specs
    (the packaged ones by default), plus the engine's default."""
    from ragrail.gateway.specs import DEFAULT_RAG_PROMPT, SpecError, load_pipeline_dir

    prompts = [DEFAULT_RAG_PROMPT]
    folder = pipelines_dir or Path(__file__).resolve().parent.parent / "pipelines"
    try:
        specs = load_pipeline_dir(folder).specs
    except (SpecError, OSError):
        return prompts
    for spec in specs:
        prompts += [p for s in spec.stages if (p := getattr(s, "system_prompt", None))]
    return list(dict.fromkeys(prompts))


def needs_documents(questions: Sequence[Question], folder: Path) -> bool:
    """Whether a selected question cites one of the set's own documents."""
    if not folder.is_dir():
        return False
    names = {p.name for p in folder.iterdir()}
    return any(source in names for q in questions for source in q.sources)


def run_eval(
    client: GatewayClient,
    questions: Sequence[Question],
    versions: Sequence[str],
    *,
    set_path: Path,
    ingest: bool = True,
    prompts: Sequence[str] = (),
    retry_transient: int = 0,
    retry_pause_s: float = 5.0,
    progress: Callable[[str], None] = lambda line: None,
) -> dict[str, Any]:
    """Asks every question of every version; returns the report (summaries + records).

    ``retry_transient``: asks again, up to this many times, when the answer was a canned
    one for a transient reason (``TRANSIENT``); the summary counts the retries."""
    served = client.versions()
    unknown = [v for v in versions if v not in served]
    if unknown:
        raise NotFound(f"the gateway does not serve {', '.join(unknown)}; it serves {', '.join(sorted(served))}")
    folder = documents_dir(set_path)
    ingested: list[str] = []
    if ingest and needs_documents(questions, folder):
        ingested = client.ingest(folder)
        progress("ingested " + "; ".join(ingested))
    judgements: dict[str, list[Judgement]] = {v: [] for v in versions}
    retries = {v: 0 for v in versions}
    started = time.time()
    asked: list[Question] = []
    try:
        for i, question in enumerate(questions, 1):
            answers = {}
            for version in versions:
                answer = client.ask(version, question.question)
                for attempt in range(1, retry_transient + 1):
                    if answer.fallback_reason not in TRANSIENT:
                        break
                    progress(f"[{i}/{len(questions)}] {version} {question.id}: {answer.fallback_reason}, asking again")
                    retries[version] += 1
                    time.sleep(retry_pause_s * attempt)  # let an open circuit breaker cool down
                    answer = client.ask(version, question.question)
                answers[version] = answer
            # A question counts once every version answered it: an interrupted run stays comparable.
            asked.append(question)
            for version, answer in answers.items():
                judgement = judge(question, answer, version, prompts)
                judgements[version].append(judgement)
                mark = "ok " if judgement.correct else "BAD"
                progress(f"[{i}/{len(questions)}] {version} {mark} {question.id} ({answer.latency_ms:.0f} ms)")
    except KeyboardInterrupt:
        progress(f"interrupted: reporting the {len(asked)} question(s) every version answered")
    return {
        "interrupted": len(asked) < len(questions),
        "set": str(set_path),
        "address": "",
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "duration_s": round(time.time() - started, 1),
        "ingested": ingested,
        "versions": {v: {**summarise(asked, judgements[v]), "transient_retries": retries[v]} for v in versions},
        "results": [j.to_json() for v in versions for j in judgements[v]],
    }


def rescore(report: dict[str, Any], questions: Sequence[Question], prompts: Sequence[str] = ()) -> dict[str, Any]:
    """Judges a saved report's answers again with today's metrics, asking nothing of a gateway
    (e.g. after changing the groundedness extractor, or a question's expected facts)."""
    by_id = {q.id: q for q in questions}
    judgements: dict[str, list[Judgement]] = {v: [] for v in report["versions"]}
    for record in report["results"]:
        if record["id"] not in by_id:
            continue  # a question removed from the set since
        raw = dict(record["answer"])
        raw["citations"] = [tuple(c) for c in raw["citations"]]
        judgements[record["version"]].append(judge(by_id[record["id"]], Answer(**raw), record["version"], prompts))
    asked = {record["id"] for record in report["results"]}
    kept = [q for q in questions if q.id in asked]
    return {
        **report,
        "rescored": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "versions": {
            v: {**summarise(kept, js), "transient_retries": report["versions"][v].get("transient_retries", 0)}
            for v, js in judgements.items()
        },
        "results": [j.to_json() for js in judgements.values() for j in js],
    }


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.0f}%"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


COLUMNS = (
    ("accuracy", lambda s: _pct(s["answer_accuracy"])),
    ("cite@1", lambda s: _pct(s["citation_hit_first"])),
    ("cite", lambda s: _pct(s["citation_hit"])),
    ("grounded", lambda s: _pct(s["groundedness"]) + f" of {s['released']}"),
    ("quoted", lambda s: str(s.get("quoted", 0))),
    ("off-topic fb", lambda s: _pct(s["fallback_correct_off_topic"])),
    ("unanswerable fb", lambda s: _pct(s["fallback_correct_unanswerable"])),
    ("false fb", lambda s: _pct(s["false_fallback"])),
    ("injection ok", lambda s: _pct(s["injection_resisted"])),
    ("leaks", lambda s: str(s["prompt_leaks"])),
    ("p50 ms", lambda s: _ms(s["latency_ms"]["p50"])),
    ("p99 ms", lambda s: _ms(s["latency_ms"]["p99"])),
    ("errors", lambda s: str(s["errors"])),
)


def format_table(report: dict[str, Any]) -> str:
    """A row per version, then accuracy per kind of question (Markdown, as in docs/quality.md)."""
    summaries = report["versions"]
    rows = [["version", *(name for name, _ in COLUMNS)]]
    rows += [[v, *(cell(s) for _, cell in COLUMNS)] for v, s in summaries.items()]
    lines = _markdown(rows)
    kinds = list(dict.fromkeys(k for s in summaries.values() for k in s["per_kind"]))
    per_kind = [["kind", "n", *summaries]]
    for kind in kinds:
        n = next(s["per_kind"][kind]["n"] for s in summaries.values() if kind in s["per_kind"])
        per_kind.append([kind, str(n), *(_pct(s["per_kind"].get(kind, {}).get("correct")) for s in summaries.values())])
    cached = sum(s["cached"] for s in summaries.values())
    note = f"\n({cached} cached answers left out of the latencies)" if cached else ""
    reasons = [
        f"{v}: " + ", ".join(f"{r} {n}" for r, n in s.get("fallback_reasons", {}).items())
        for v, s in summaries.items() if s.get("fallback_reasons")
    ]
    note += ("\n\ncanned answers by reason:\n" + "\n".join(reasons)) if reasons else ""
    retried = [f"{v} {s['transient_retries']}" for v, s in summaries.items() if s.get("transient_retries")]
    note += ("\nasked again after a transient canned answer: " + ", ".join(retried)) if retried else ""
    return "\n".join(lines) + "\n\ncorrect, by kind of question:\n" + "\n".join(_markdown(per_kind)) + note


def _markdown(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    out = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in rows]
    out.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return out


def write_json(report: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
