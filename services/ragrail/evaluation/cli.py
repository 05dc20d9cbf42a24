"""`ragrail eval`: its arguments and its run function (cli/main.py only registers them)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

DEFAULT_ADDRESS = "127.0.0.1:50051"
DEFAULT_PIPELINES = "rag@1,rag@2"


def add_eval_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:  # type: ignore[type-arg]
    p = sub.add_parser(
        "eval",
        help="run the labelled question set through the gateway against pipeline versions",
        description="Asks every question of every version (pinned as name@version), prints a table per "
        "version (accuracy, citations, groundedness, fallbacks, prompt leaks, latency) and can write JSON. "
        "Before asking, it ingests the set's own documents (a folder 'documents' next to the set).",
    )
    p.add_argument("--address", default=os.environ.get("RAGRAIL_ADDRESS", DEFAULT_ADDRESS))
    p.add_argument("--api-key", default=os.environ.get("RAGRAIL_API_KEY", ""), help="or RAGRAIL_API_KEY")
    p.add_argument("--ca-file", type=Path, help="use TLS, trusting this CA (PEM)")
    p.add_argument("--timeout", type=float, default=120.0, help="deadline per question in seconds (default 120)")
    p.add_argument(
        "--pipelines", default=DEFAULT_PIPELINES, help=f"comma-separated name@version list (default {DEFAULT_PIPELINES})"
    )
    p.add_argument("--set", type=Path, dest="set_path", help="question set, JSONL (default: the packaged one)")
    p.add_argument("--json", type=Path, dest="json_out", help="also write the full report (every answer) here")
    p.add_argument("--limit", type=int, help="only the first N questions")
    p.add_argument("--ids", help="only these question ids (comma-separated)")
    p.add_argument(
        "--retry-transient", type=int, default=0, metavar="N",
        help="ask again (up to N times) after a stage_timeout, overload or backend_unavailable answer: "
        "on a busy machine these measure the machine, not the version (default 0; the table counts retries)",
    )
    p.add_argument("--no-ingest", action="store_true", help="do not ingest the set's documents (already there)")
    p.add_argument("-q", "--quiet", action="store_true", help="no line per answer")
    p.add_argument(
        "--rescore", type=Path, metavar="REPORT",
        help="judge the answers saved in a --json report again with the current metrics and set; no gateway",
    )
    p.set_defaults(func=run_eval_command)
    return p


def run_eval_command(args: argparse.Namespace) -> int:
    from ragrail.common.errors import InvalidArgument
    from ragrail.evaluation.dataset import default_set_path, load_questions
    from ragrail.evaluation.runner import (
        GatewayClient, Target, format_table, rescore, run_eval, system_prompts, write_json,
    )

    versions = [v.strip() for v in args.pipelines.split(",") if v.strip()]
    if not versions or any("@" not in v for v in versions):
        raise InvalidArgument(f"--pipelines needs name@version entries, e.g. {DEFAULT_PIPELINES}")
    set_path = args.set_path or default_set_path()
    questions = load_questions(set_path)
    if args.ids:
        wanted = [i.strip() for i in args.ids.split(",") if i.strip()]
        missing = set(wanted) - {q.id for q in questions}
        if missing:
            raise InvalidArgument(f"no question(s) {', '.join(sorted(missing))} in {set_path}")
        questions = [q for q in questions if q.id in wanted]
    if args.limit is not None:
        if args.limit < 1:
            raise InvalidArgument("--limit must be at least 1")
        questions = questions[: args.limit]
    if args.rescore:
        try:
            saved = json.loads(args.rescore.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise InvalidArgument(f"{args.rescore}: not a report: {exc}") from None
        report = rescore(saved, questions, system_prompts())
        print(f"{args.rescore}: {len(report['results'])} answers judged again\n")
        print(format_table(report))
        if args.json_out:
            write_json(report, args.json_out)
        return 0
    client = GatewayClient(Target(args.address, args.api_key, args.ca_file, args.timeout))
    progress = (lambda line: None) if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    try:
        report = run_eval(
            client, questions, versions, set_path=set_path, ingest=not args.no_ingest,
            prompts=system_prompts(), retry_transient=max(0, args.retry_transient), progress=progress,
        )
    finally:
        client.close()
    report["address"] = args.address
    if report["interrupted"]:
        print(f"interrupted: {report['versions'][versions[0]]['questions']} of {len(questions)} questions answered")
    print(f"{len(questions)} questions from {set_path}, {report['duration_s']:.0f} s, gateway {args.address}\n")
    print(format_table(report))
    if args.json_out:
        write_json(report, args.json_out)
        print(f"\nreport: {args.json_out}")
    # Every call failing means no measurement, not a poor one.
    return 1 if all(s["errors"] == s["questions"] for s in report["versions"].values()) else 0
