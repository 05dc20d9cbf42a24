"""The `ragrail` command: run the local stack, ingest files, ask questions."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import time
from pathlib import Path

import grpc

from ragrail.common.errors import RagrailError

DEFAULT_ADDRESS = "127.0.0.1:50051"
log = logging.getLogger("ragrail")


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        return int(args.func(args) or 0)
    except RagrailError as exc:
        print(f"ragrail: {exc.message}", file=sys.stderr)
        return 2
    except grpc.RpcError as exc:
        print(f"ragrail: {exc.code().name}: {exc.details()}", file=sys.stderr)  # type: ignore[attr-defined]
        return 1
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ragrail", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    up = sub.add_parser("up", help="start Ray, the four services and the gateway; Ctrl-C stops all")
    up.add_argument("--config", type=Path, help="config file (default: the packaged ragrail.yaml)")
    up.add_argument("--no-sample", action="store_true", help="do not ingest the sample corpus")
    up.add_argument("--pipelines", type=Path, help="folder of pipeline specs (default: the packaged ones)")
    _health_args(up)
    up.set_defaults(func=_cmd_up)

    gw = sub.add_parser("gateway", help="run only the gateway, against a running Serve (Kubernetes)")
    gw.add_argument("--config", type=Path)
    gw.add_argument("--pipelines", type=Path, help="folder of pipeline specs")
    _health_args(gw)
    gw.set_defaults(func=_cmd_gateway)

    prep = sub.add_parser("prepare-models", help="convert packaged model weights once (idempotent)")
    prep.add_argument("--config", type=Path)
    prep.set_defaults(func=_cmd_prepare)

    migrate = sub.add_parser(
        "migrate-store",
        help="move an embedded store written by qdrant-client's local mode into the embedded engine",
        description="Stop the stack first: the store has one owner. The old files are kept in a backup folder.",
    )
    migrate.add_argument("--config", type=Path)
    migrate.add_argument("--path", type=Path, help="the store folder (default: the config's qdrant path)")
    migrate.set_defaults(func=_cmd_migrate_store)

    ingest = sub.add_parser("ingest", help="add .txt, .md and .html files (or folders of them)")
    ingest.add_argument("paths", nargs="+", type=Path)
    _client_args(ingest, timeout=600)
    ingest.set_defaults(func=_cmd_ingest)

    ask = sub.add_parser("ask", help="ask a question through a pipeline")
    ask.add_argument("query")
    ask.add_argument("--pipeline", default="rag", help='"name" or "name@version" (default: rag)')
    ask.add_argument("--stream", action="store_true", help="print the answer as it is generated")
    _client_args(ask, timeout=60)
    ask.set_defaults(func=_cmd_ask)

    pipelines = sub.add_parser("pipelines", help="list the gateway's pipelines; validate or show specs")
    _client_args(pipelines, timeout=10)
    pipelines.set_defaults(func=_cmd_pipelines)
    specs = pipelines.add_subparsers(dest="action", metavar="{validate,show}")
    validate = specs.add_parser("validate", help="check a folder of pipeline specs (exit 1 naming file and line)")
    validate.add_argument("dir", type=Path)
    validate.set_defaults(func=_cmd_pipelines_validate)
    show = specs.add_parser("show", help="print a version's expanded stage list (YAML)")
    show.add_argument("ref", help="name@version")
    show.add_argument("--dir", type=Path, help="folder of pipeline specs (default: the config's)")
    show.add_argument("--config", type=Path)
    show.set_defaults(func=_cmd_pipelines_show)

    status = sub.add_parser("status", help="pipelines, traffic splits, circuit breakers, services")
    _client_args(status, timeout=10)
    status.set_defaults(func=_cmd_status)

    feedback = sub.add_parser("feedback", help="rate an answer by its request id (1 bad .. 5 good)")
    feedback.add_argument("request_id")
    feedback.add_argument("rating", type=int, choices=range(1, 6))
    feedback.add_argument("comment", nargs="?", default="")
    _client_args(feedback, timeout=10)
    feedback.set_defaults(func=_cmd_feedback)

    keys = sub.add_parser(
        "new-key",
        help="print a new API key and the keys-file entry holding its hash",
        description="Say what the key may do: --pipelines, --ingest, or both (there is no default).",
    )
    keys.add_argument("name")
    keys.add_argument("--pipelines", help="comma-separated pipeline names the key may call, or '*' for all")
    keys.add_argument(
        "--ingest", action="store_true", help="the key may also call Ingest (never implied by --pipelines '*')"
    )
    keys.add_argument("--rate", type=float, default=5.0, help="requests per second (token bucket)")
    keys.add_argument("--burst", type=int, default=10)
    keys.set_defaults(func=_cmd_new_key)
    return parser


HEALTH_PORT_ENV = "RAGRAIL_GATEWAY_HEALTH_PORT"
HEALTH_HOST_ENV = "RAGRAIL_GATEWAY_HEALTH_HOST"


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"not a port number (1-65535): {text!r}")
    return port


def _health_args(p: argparse.ArgumentParser) -> None:
    """The gateway's plaintext health-only port: off unless a flag or the environment sets it."""
    p.add_argument(
        "--health-port",
        type=_port,
        default=os.environ.get(HEALTH_PORT_ENV) or None,
        help="also serve grpc.health.v1 alone, in plaintext, on this port: for probes that cannot "
        f"speak the gateway's TLS, such as Kubernetes' gRPC probe (or {HEALTH_PORT_ENV}; default off)",
    )
    p.add_argument(
        "--health-host",
        default=os.environ.get(HEALTH_HOST_ENV) or None,
        help=f"address the health port binds (or {HEALTH_HOST_ENV}; default gateway.host)",
    )


def _client_args(p: argparse.ArgumentParser, timeout: float) -> None:
    p.add_argument("--address", default=os.environ.get("RAGRAIL_ADDRESS", DEFAULT_ADDRESS))
    p.add_argument("--timeout", type=float, default=timeout, help=f"deadline in seconds (default {timeout:g})")
    p.add_argument("--api-key", default=os.environ.get("RAGRAIL_API_KEY", ""), help="or RAGRAIL_API_KEY")
    p.add_argument("--ca-file", type=Path, help="use TLS, trusting this CA (PEM)")


def _settings(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from ragrail.common.config import load_settings

    overrides = {"gateway": {"pipelines_dir": str(args.pipelines)}} if getattr(args, "pipelines", None) else {}
    return load_settings(args.config, **overrides)


# -- server side --------------------------------------------------------------


def _cmd_prepare(args: argparse.Namespace) -> int:
    from ragrail.common.config import load_settings
    from ragrail.common.models import prepare_builtin_models

    settings = load_settings(args.config)
    for path in prepare_builtin_models(settings.models_path):
        print(f"ready: {path}")
    return 0


def _cmd_migrate_store(args: argparse.Namespace) -> int:
    from ragrail.retrieval.edge import migrate_local_store

    path = args.path or _settings(args).qdrant_path
    copied = migrate_local_store(str(path), progress=lambda line: print(line, flush=True))
    for name, count in copied.items():
        print(f"{name}: {count} points migrated")
    print(f"{path}: now the embedded engine's store ({len(copied)} collection(s))")
    return 0


def _cmd_up(args: argparse.Namespace) -> int:
    from ragrail.common.models import prepare_builtin_models
    from ragrail.stack import LocalStack, service_statuses

    started = time.monotonic()
    settings = _settings(args)
    prepare_builtin_models(settings.models_path)
    stack = LocalStack(settings)
    log.info("starting Ray and the services (logs: %s)", stack.temp_dir)
    try:
        stack.start()
        ingress = "HAProxy, Serve's fast path" if settings.serve.fast_path else "Serve's Python proxy"
        log.info("services running on Serve's gRPC port %s:%d (%s)", settings.serve.host, settings.serve.grpc_port, ingress)
        return asyncio.run(
            _serve_gateway(
                settings,
                started,
                ingest_sample=not args.no_sample,
                statuses=service_statuses,
                health=(args.health_host, args.health_port),
            )
        )
    finally:
        log.info("stopping Ray")
        stack.stop()
        log.info("stopped")


def _cmd_gateway(args: argparse.Namespace) -> int:
    return asyncio.run(
        _serve_gateway(
            _settings(args), time.monotonic(), ingest_sample=False, health=(args.health_host, args.health_port)
        )
    )


async def _serve_gateway(
    settings: object,
    started: float,
    *,
    ingest_sample: bool,
    statuses: object = None,
    health: tuple[str | None, int | None] = (None, None),
) -> int:
    from ragrail.common.config import Settings
    from ragrail.gateway.server import start_gateway

    assert isinstance(settings, Settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    health_host, health_port = health
    gateway = await start_gateway(
        settings,
        service_statuses=statuses,  # type: ignore[arg-type]
        health_port=health_port,
        health_host=health_host,
    )
    loop.add_signal_handler(signal.SIGHUP, gateway.reload)
    try:
        if ingest_sample:
            try:
                await _ingest_sample_if_empty(gateway, settings)
            except RagrailError as exc:  # the stack still serves; status says what is wrong
                log.warning("could not ingest the sample corpus: %s", exc.message)
        metrics = f", metrics http://{settings.gateway.host}:{gateway.metrics_port}/metrics" if gateway.metrics_port else ""
        if gateway.health_port is not None:
            metrics += f", health (plaintext) on {health_host or settings.gateway.host}:{gateway.health_port}"
        print(
            f"ragrail ready: gateway on {settings.gateway.host}:{gateway.port}{metrics} "
            f"({time.monotonic() - started:.1f} s). Ctrl-C to stop.",
            flush=True,
        )
        await stop.wait()
        await _drain(gateway, stop, settings.gateway.shutdown_grace_s)
    finally:
        await gateway.stop(0)  # returns at once when the drain finished; else cancels what is left
    return 0


async def _drain(gateway: object, stop: asyncio.Event, grace_s: float) -> None:
    """Lets calls in flight finish (up to ``grace_s``); a second signal cuts it short."""
    log.info("shutting down: new calls refused, calls in flight get up to %.0f s (Ctrl-C again: stop now)", grace_s)
    stop.clear()
    drain = asyncio.ensure_future(gateway.stop())  # type: ignore[attr-defined]
    again = asyncio.ensure_future(stop.wait())
    await asyncio.wait({drain, again}, return_when=asyncio.FIRST_COMPLETED)
    if not drain.done():
        log.info("stopping now")
        await gateway.stop(0)  # type: ignore[attr-defined]
        await drain
    again.cancel()


async def _ingest_sample_if_empty(gateway: object, settings: object) -> None:
    from importlib import resources

    from ragrail.cli.loaders import collect_files, load_document
    from ragrail.common.deadline import Deadline
    from ragrail.gateway.ingestion import IngestDocument

    servicer = gateway.servicer  # type: ignore[attr-defined]
    count = await servicer.ingestor.backends.retrieval.count(settings.gateway.collection, 30.0)  # type: ignore[attr-defined]
    if count:
        log.info("collection has %d chunks; skipping the sample corpus", count)
        return
    with resources.as_file(resources.files("ragrail.data").joinpath("sample_corpus")) as folder:
        docs = [load_document(p) for p in collect_files([folder])]
    outcomes = await servicer.ingestor.ingest(
        [IngestDocument(d.document_id, d.text, "sample:" + d.document_id) for d in docs], Deadline(600)
    )
    stored = sum(o.chunks_stored for o in outcomes)
    log.info("ingested the sample corpus: %d documents, %d chunks", len(outcomes), stored)


# -- client side --------------------------------------------------------------


class _Client:
    """The gateway stub with this command's API key and deadline on every call."""

    def __init__(self, args: argparse.Namespace) -> None:
        from ragrail.gateway.v1 import gateway_pb2_grpc

        options = [("grpc.max_send_message_length", 64 * 1024 * 1024)]
        if args.ca_file:
            creds = grpc.ssl_channel_credentials(root_certificates=args.ca_file.read_bytes())
            channel = grpc.secure_channel(args.address, creds, options=options)
        else:
            channel = grpc.insecure_channel(args.address, options=options)
        self.stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        self.metadata = (("authorization", f"Bearer {args.api_key}"),) if args.api_key else ()
        self.timeout = args.timeout

    def __getattr__(self, rpc: str):  # type: ignore[no-untyped-def]
        method = getattr(self.stub, rpc)
        return lambda request: method(request, timeout=self.timeout, metadata=self.metadata)


def _stub(args: argparse.Namespace) -> _Client:
    return _Client(args)


def _cmd_ingest(args: argparse.Namespace) -> int:
    from ragrail.cli.loaders import collect_files, load_document
    from ragrail.gateway.v1 import gateway_pb2 as pb

    files = collect_files(args.paths)
    if not files:
        print("ragrail: no .txt, .md or .html files found", file=sys.stderr)
        return 2
    stub = _stub(args)
    total_stored = total_dropped = 0
    for path in files:
        doc = load_document(path)
        request = pb.IngestRequest(
            documents=[pb.Document(document_id=doc.document_id, text=doc.text, source=doc.source)]
        )
        response = stub.Ingest(request)
        for r in response.documents:
            dropped = f", {r.chunks_dropped} dropped by moderation" if r.chunks_dropped else ""
            print(f"{r.document_id}: {r.chunks_stored} chunks stored{dropped}")
            total_stored += r.chunks_stored
            total_dropped += r.chunks_dropped
    print(f"ingested {len(files)} file(s): {total_stored} chunks stored, {total_dropped} dropped")
    return 0


def _cmd_ask(args: argparse.Namespace) -> int:
    from ragrail.gateway.v1 import gateway_pb2 as pb

    stub = _stub(args)
    if args.stream:
        final = None
        for event in stub.RunStream(pb.RunStreamRequest(pipeline=args.pipeline, query=args.query)):
            if event.HasField("final"):
                final = event.final
            else:
                print(event.delta, end="", flush=True)
        print()
        if final is None:
            return 1
        if final.replace_streamed:  # a canned answer (flagged, or a failure) replaces what was shown
            print(f"[replaced] {final.answer}")
        elif final.fallback:  # canned before any text was released
            print(final.answer)
        _print_details(final)
        return 0
    response = stub.Run(pb.RunRequest(pipeline=args.pipeline, query=args.query))
    print(response.answer)
    _print_details(response)
    return 0


def _print_details(response: object) -> None:
    from ragrail.gateway.v1 import gateway_pb2 as pb

    r = response
    assert isinstance(r, pb.RunResponse)
    for key, value in sorted(r.outputs.items()):
        print(f"  {key}: {value}")
    print()
    for i, c in enumerate(r.citations, 1):
        snippet = " ".join(c.text.split())[:100]
        print(f"  [{i}] {c.document_id} #{c.chunk_index} (score {c.score:.3f}): {snippet}…")
    reason = pb.FallbackReason.Name(r.fallback_reason).removeprefix("FALLBACK_REASON_").lower()
    fallback = f"yes ({reason})" if r.fallback else "no"
    total_ms = sum(t.duration_ms for t in r.timings)
    cached = "  (cached)" if r.cached else ""
    tokens = f"  tokens: {r.usage.prompt_tokens} in, {r.usage.completion_tokens} out" if r.usage.completion_tokens else ""
    print(
        f"pipeline: {r.pipeline}@{r.pipeline_version}  fallback: {fallback}  stages: {total_ms:.0f} ms{tokens}  "
        f"request: {r.request_id}{cached}"
    )


def _cmd_pipelines(args: argparse.Namespace) -> int:
    from ragrail.gateway.v1 import gateway_pb2 as pb

    response = _stub(args).ListPipelines(pb.ListPipelinesRequest())
    for p in response.pipelines:
        default = " (default)" if p.is_default else ""
        print(f"{p.name}@{p.version}{default}: {p.description}  [{' -> '.join(p.stages)}]")
    return 0



def _cmd_pipelines_validate(args: argparse.Namespace) -> int:
    from ragrail.gateway.specs import SpecError, load_pipeline_dir

    try:
        loaded = load_pipeline_dir(args.dir)
    except SpecError as exc:
        for problem in str(exc).split("; "):
            print(f"{args.dir}/{problem}" if ".y" in problem.split(":")[0] else problem, file=sys.stderr)
        return 1
    for spec in loaded.specs:
        print(f"{spec.ref}: ok  [{' -> '.join(spec.stage_names)}]" + ("  (kind: shorthand, deprecated)" if spec.kind else ""))
    return 0


def _cmd_pipelines_show(args: argparse.Namespace) -> int:
    import yaml

    from ragrail.gateway.specs import SpecError, load_pipeline_dir

    folder = args.dir or _settings(args).pipelines_path
    try:
        specs = {s.ref: s for s in load_pipeline_dir(folder).specs}
    except SpecError as exc:
        print(f"ragrail: {folder}: {exc}", file=sys.stderr)
        return 1
    if args.ref not in specs:
        print(f"ragrail: no {args.ref} in {folder}; there are: {', '.join(sorted(specs))}", file=sys.stderr)
        return 1
    print(yaml.safe_dump(specs[args.ref].expanded(), sort_keys=False, width=100), end="")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from ragrail.gateway.v1 import gateway_pb2 as pb

    r = _stub(args).Status(pb.StatusRequest())
    print("pipelines:")
    for p in r.pipelines:
        print(f"  {p.name}@{p.version}{' (default)' if p.is_default else ''}  [{' -> '.join(p.stages)}]")
    for route in r.routes:
        split = ", ".join(f"@{v}: {w}" for v, w in sorted(route.weights.items()))
        print(f"route {route.name}: {split}")
    print("circuits:  " + "  ".join(f"{c.service}={c.state}" for c in r.circuits))
    if r.services:
        print("services:")
        for s in r.services:
            replicas = ", ".join(f"{n} {state.lower()}" for state, n in sorted(s.replicas.items()))
            print(f"  {s.name}: {s.status}" + (f"  [replicas: {replicas}]" if replicas else ""))
    if r.collections:
        print("collections:")
        for c in r.collections:
            state = f"{c.points} points" if c.state == "ready" else c.state
            detail = f": {c.detail}" if c.detail else ""
            print(f"  {c.name} ({c.service}): {state}{detail}  [{', '.join(c.pipelines)}]")
    if r.last_reload_error:
        print(f"last pipeline reload rejected: {r.last_reload_error}")
    healthy = (
        all(c.state == "closed" for c in r.circuits)
        and all(s.status == "RUNNING" for s in r.services)
        and all(c.state in ("ready", "empty") for c in r.collections)
    )
    return 0 if healthy else 3


def _cmd_feedback(args: argparse.Namespace) -> int:
    from ragrail.gateway.v1 import gateway_pb2 as pb

    r = _stub(args).Feedback(pb.FeedbackRequest(request_id=args.request_id, rating=args.rating, comment=args.comment))
    print("recorded" + ("" if r.matched_request else " (request id not known to this gateway)"))
    return 0


def _cmd_new_key(args: argparse.Namespace) -> int:
    import yaml

    from ragrail.gateway.auth import generate_key, hash_key

    pipelines = [p.strip() for p in (args.pipelines or "").split(",") if p.strip()]
    if not pipelines and not args.ingest:
        # No default: a key for everything must be asked for, not handed out by omission.
        print("ragrail new-key: say what the key may do: --pipelines rag,qa (or '*' for all), "
              "--ingest, or both", file=sys.stderr)
        return 2
    key = generate_key()
    entry = {
        "name": args.name,
        "sha256": hash_key(key),
        "pipelines": pipelines,
        "ingest": args.ingest,
        "rate_per_s": args.rate,
        "burst": args.burst,
    }
    print(f"API key (shown once; give it to the caller): {key}")
    print("add this entry under `keys:` in the gateway's keys file:")
    print(yaml.safe_dump([entry], sort_keys=False), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
