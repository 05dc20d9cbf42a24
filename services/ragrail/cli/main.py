"""The `ragrail` command: run the local stack, ingest files, ask questions."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import grpc

from ragrail.common.errors import RagrailError

if TYPE_CHECKING:  # pydantic and the config schema load only for the commands that need them
    from ragrail.common.config import Settings

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
        return _fail(args, exc.status.value, exc.message, EXIT_USAGE)
    except grpc.RpcError as exc:
        code: grpc.StatusCode = exc.code()  # type: ignore[attr-defined]
        retry_after = dict(exc.trailing_metadata() or ()).get("retry-after")  # type: ignore[attr-defined]
        return _fail(args, code.name, exc.details() or "", rpc_exit_code(code), retry_after)  # type: ignore[attr-defined]
    except KeyboardInterrupt:
        return 130


# Exit codes, for scripts (also in `ragrail --help`).
EXIT_OK = 0
EXIT_FAILED = 1  # the command ran and failed (a spec is invalid, a file failed to ingest, auth refused...)
EXIT_USAGE = 2  # bad usage: wrong arguments, an invalid request, an unknown pipeline
EXIT_UNAVAILABLE = 3  # the gateway is unreachable, overloaded, too slow, or reports itself unhealthy
EXIT_FALLBACK = 4  # `ask --fail-on-fallback`: the answer is a canned fallback
EXIT_CODES_HELP = """exit codes:
  0  ok
  1  the command failed (invalid spec, a file not ingested, key refused, server error)
  2  bad usage: wrong arguments, an invalid request (INVALID_ARGUMENT), unknown pipeline (NOT_FOUND)
  3  unavailable: UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED; `status` when unhealthy
  4  `ask --fail-on-fallback` got a canned fallback answer

Client commands read --address and --api-key from RAGRAIL_ADDRESS and RAGRAIL_API_KEY.
With --json each result is one JSON document on stdout (proto field names, every field
present); an error is {"error": {"code", "message", "exit_code"}} on stdout."""

_USAGE_CODES = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.OUT_OF_RANGE}
_UNAVAILABLE_CODES = {
    grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED
}


def rpc_exit_code(code: grpc.StatusCode) -> int:
    if code in _USAGE_CODES:
        return EXIT_USAGE
    return EXIT_UNAVAILABLE if code in _UNAVAILABLE_CODES else EXIT_FAILED


def _fail(args: argparse.Namespace, code: str, message: str, exit_code: int, retry_after: str | None = None) -> int:
    """Reports an error: one line on stderr, or with --json one document on stdout."""
    if getattr(args, "json", False) is True:
        error: dict[str, object] = {"code": code, "message": message, "exit_code": exit_code}
        try:
            error["retry_after_s"] = float(retry_after) if retry_after is not None else None
        except ValueError:
            error["retry_after_s"] = None
        if error["retry_after_s"] is None:
            del error["retry_after_s"]
        _emit({"error": error})
    else:
        hint = f" (retry after {retry_after} s)" if retry_after is not None else ""
        line = f"ragrail: {message}" if code == "INVALID_ARGUMENT" else f"ragrail: {code}: {message}{hint}"
        print(line, file=sys.stderr)
    return exit_code


def _emit(document: object) -> None:
    """One JSON document per line, keys sorted: stable for scripts and diffs."""
    import json

    print(json.dumps(document, sort_keys=True, ensure_ascii=False), flush=True)


def _message_json(message: object) -> dict[str, object]:
    """A message in proto3's JSON form with proto field names and every field present (as
    grpcurl -emit-defaults prints it; 64-bit integers are strings there)."""
    from google.protobuf import json_format

    document = json_format.MessageToDict(
        message,  # type: ignore[arg-type]
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True,
    )
    _fill_unset_messages(message, document)
    return document


def _fill_unset_messages(message: object, document: dict[str, object]) -> None:
    """Unset sub-messages (e.g. ``usage`` on a cached answer) as their empty form, so every
    document of a type has the same keys; oneof members stay as sent."""
    for field in message.DESCRIPTOR.fields:  # type: ignore[attr-defined]
        if field.message_type is None or field.containing_oneof is not None:
            continue
        if field.message_type.GetOptions().map_entry or getattr(field, "is_repeated", False):
            continue
        value = getattr(message, field.name)
        if field.name not in document:
            document[field.name] = _message_json(value)
        elif isinstance(document[field.name], dict):
            _fill_unset_messages(value, document[field.name])  # type: ignore[arg-type]
    for field in message.DESCRIPTOR.fields:  # type: ignore[attr-defined]
        if field.containing_oneof is not None and field.message_type is not None and field.name in document:
            _fill_unset_messages(getattr(message, field.name), document[field.name])  # type: ignore[arg-type]


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ragrail")
    except PackageNotFoundError:
        return "unknown"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ragrail",
        description=__doc__,
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument(
        "--version", action="version", version=f"ragrail {_version()}", help="print the version and exit"
    )
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    up = sub.add_parser("up", help="start Ray, the four services and the gateway; Ctrl-C stops all")
    up.add_argument("--config", type=Path, help="config file (default: the packaged ragrail.yaml)")
    up.add_argument("--no-sample", action="store_true", help="do not ingest the sample corpus")
    up.add_argument("--pipelines", type=Path, help="folder of pipeline specs (default: the packaged ones)")
    up.add_argument(
        "--cluster",
        metavar="ADDRESS",
        help="deploy the services onto this running Ray cluster (GCS host:port, as `ray start` printed it, "
        "or ray://head:10001) instead of starting a private one; Ctrl-C removes them and leaves the cluster "
        "(or serve.cluster_address)",
    )
    _health_args(up)
    up.set_defaults(func=_cmd_up)

    gw = sub.add_parser("gateway", help="run only the gateway, against a running Serve (Kubernetes)")
    gw.add_argument("--config", type=Path, help="config file (default: the packaged ragrail.yaml)")
    gw.add_argument("--pipelines", type=Path, help="folder of pipeline specs")
    _health_args(gw)
    gw.set_defaults(func=_cmd_gateway)

    prep = sub.add_parser("prepare-models", help="convert packaged model weights once (idempotent)")
    prep.add_argument("--config", type=Path, help="config file (default: the packaged ragrail.yaml)")
    _json_arg(prep)
    prep.set_defaults(func=_cmd_prepare)

    migrate = sub.add_parser(
        "migrate-store",
        help="move an embedded store written by qdrant-client's local mode into the embedded engine",
        description="Stop the stack first: the store has one owner. The old files are kept in a backup folder.",
    )
    migrate.add_argument("--config", type=Path, help="config file (default: the packaged ragrail.yaml)")
    migrate.add_argument("--path", type=Path, help="the store folder (default: the config's qdrant path)")
    _json_arg(migrate)
    migrate.set_defaults(func=_cmd_migrate_store)

    ingest = sub.add_parser("ingest", help="add .txt, .md and .html files (or folders of them)")
    ingest.add_argument("paths", nargs="+", type=Path, help=".txt, .md or .html files, or folders (recursed)")
    ingest.add_argument(
        "--parallel", type=_parallel, default=1, metavar="N",
        help="Ingest calls in flight, one file each (default 1: in file order). 2 (the gateway's "
        "admission.ingest.max_in_flight) embeds one file while another is moderated or stored; results still "
        "print in file order",
    )
    ingest.add_argument(
        "--no-progress", action="store_true",
        help="no progress on stderr (files, chunks, chunks/s, ETA every 2 s; never with --json)",
    )
    _client_args(ingest, timeout=600)
    ingest.set_defaults(func=_cmd_ingest)

    ask = sub.add_parser("ask", help="ask a question through a pipeline")
    ask.add_argument("query", help="the question (or, for text pipelines, the text)")
    ask.add_argument("--pipeline", default="rag", help='"name" or "name@version" (default: rag)')
    ask.add_argument("--stream", action="store_true", help="print the answer as it is generated")
    ask.add_argument(
        "--session-id",
        default="",
        help="caller key that keeps this caller on one version of a traffic split (sticky canaries)",
    )
    ask.add_argument(
        "--fail-on-fallback", action="store_true", help=f"exit {EXIT_FALLBACK} when the answer is a canned fallback"
    )
    _client_args(ask, timeout=60)
    ask.set_defaults(func=_cmd_ask)

    pipelines = sub.add_parser("pipelines", help="list the gateway's pipelines; validate or show specs")
    _client_args(pipelines, timeout=10)
    pipelines.set_defaults(func=_cmd_pipelines)
    specs = pipelines.add_subparsers(dest="action", metavar="{validate,show}")
    validate = specs.add_parser("validate", help="check a folder of pipeline specs (exit 1 naming file and line)")
    validate.add_argument("dir", type=Path, help="folder of pipeline specs")
    _json_arg(validate)
    validate.set_defaults(func=_cmd_pipelines_validate)
    show = specs.add_parser("show", help="print a version's expanded stage list (YAML)")
    show.add_argument("ref", help="name@version")
    show.add_argument("--dir", type=Path, help="folder of pipeline specs (default: the config's)")
    show.add_argument("--config", type=Path, help="config file whose pipelines folder to read (default: packaged)")
    _json_arg(show)
    show.set_defaults(func=_cmd_pipelines_show)

    status = sub.add_parser("status", help="pipelines, traffic splits, circuit breakers, services")
    _client_args(status, timeout=10)
    status.set_defaults(func=_cmd_status)

    feedback = sub.add_parser("feedback", help="rate an answer by its request id (1 bad .. 5 good)")
    feedback.add_argument("request_id", help="the request id printed with the answer")
    feedback.add_argument("rating", type=int, choices=range(1, 6), help="1 (bad) to 5 (good)")
    feedback.add_argument("comment", nargs="?", default="", help="optional free text, at most 2000 characters")
    _client_args(feedback, timeout=10)
    feedback.set_defaults(func=_cmd_feedback)

    keys = sub.add_parser(
        "new-key",
        help="print a new API key and the keys-file entry holding its hash",
        description="Say what the key may do: --pipelines, --ingest, or both (there is no default).",
    )
    keys.add_argument("name", help="the caller's name, in logs and metrics")
    keys.add_argument("--pipelines", help="comma-separated pipeline names the key may call, or '*' for all")
    keys.add_argument(
        "--ingest", action="store_true", help="the key may also call Ingest (never implied by --pipelines '*')"
    )
    keys.add_argument("--rate", type=float, default=5.0, help="requests per second (token bucket)")
    keys.add_argument("--burst", type=int, default=10, help="requests allowed at once above the rate")
    _json_arg(keys)
    keys.set_defaults(func=_cmd_new_key)

    from ragrail.evaluation.cli import add_eval_parser  # `ragrail eval`: its own module

    add_eval_parser(sub)
    return parser


PROGRESS_INTERVAL_S = 2.0  # `ragrail ingest`: the most often progress is shown
# More would only queue at the gateway (admission.ingest: 2 in flight, 4 queued by default).
MAX_PARALLEL_INGESTS = 6
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


def _parallel(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_PARALLEL_INGESTS:
        raise argparse.ArgumentTypeError(f"not a number of calls from 1 to {MAX_PARALLEL_INGESTS}: {text!r}")
    return value


def _client_args(p: argparse.ArgumentParser, timeout: float) -> None:
    p.add_argument(
        "--address",
        default=os.environ.get("RAGRAIL_ADDRESS", DEFAULT_ADDRESS),
        help=f"the gateway, host:port (or RAGRAIL_ADDRESS; default {DEFAULT_ADDRESS})",
    )
    p.add_argument("--timeout", type=float, default=timeout, help=f"deadline in seconds (default {timeout:g})")
    p.add_argument(
        "--api-key", default=os.environ.get("RAGRAIL_API_KEY", ""), help="sent as a bearer token (or RAGRAIL_API_KEY)"
    )
    p.add_argument("--ca-file", type=Path, help="use TLS, trusting this CA (PEM)")
    _json_arg(p)


def _json_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--json", action="store_true", help="print each result as one JSON document (proto field names, stable keys)"
    )


def _settings(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from ragrail.common.config import load_settings

    overrides: dict[str, dict[str, str]] = {}
    if getattr(args, "pipelines", None):
        overrides["gateway"] = {"pipelines_dir": str(args.pipelines)}
    if getattr(args, "cluster", None):
        overrides["serve"] = {"cluster_address": args.cluster}
    return load_settings(args.config, **overrides)


# -- server side --------------------------------------------------------------


def _cmd_prepare(args: argparse.Namespace) -> int:
    from ragrail.common.config import load_settings
    from ragrail.common.models import prepare_builtin_models

    settings = load_settings(args.config)
    ready = [str(path) for path in prepare_builtin_models(settings.models_path)]
    if args.json:
        _emit({"ready": ready})
    for path in ready if not args.json else ():
        print(f"ready: {path}")
    return 0


def _cmd_migrate_store(args: argparse.Namespace) -> int:
    from ragrail.retrieval.edge import migrate_local_store

    path = args.path or _settings(args).qdrant_path
    out = sys.stderr if args.json else sys.stdout  # --json: stdout holds the one result document
    copied = migrate_local_store(str(path), progress=lambda line: print(line, file=out, flush=True))
    if args.json:
        _emit({"path": str(path), "collections": dict(copied)})
        return 0
    for name, count in copied.items():
        print(f"{name}: {count} points migrated")
    print(f"{path}: now the embedded engine's store ({len(copied)} collection(s))")
    return 0


def _cmd_up(args: argparse.Namespace) -> int:
    from ragrail.common.models import prepare_builtin_models
    from ragrail.stack import ClusterStack, LocalStack, service_statuses

    started = time.monotonic()
    settings = _settings(args)
    prepare_builtin_models(settings.models_path)  # on a cluster: this machine's copy (each node needs one)
    # The Serve applications get the config as it is: their args are visible in Ray's state, so the
    # secrets the environment holds go to the gateway alone.
    address = settings.serve.cluster_address
    stack: LocalStack | ClusterStack
    if address:
        stack = ClusterStack(settings, address)
        log.info("deploying the services onto the Ray cluster at %s", address)
        ingress = "the cluster's Serve proxy (fast path: as its nodes were started)"
    else:
        stack = LocalStack(settings)
        log.info("starting Ray and the services (logs: %s)", stack.temp_dir)
        ingress = "HAProxy, Serve's fast path" if settings.serve.fast_path else "Serve's Python proxy"
    try:
        stack.start()
        log.info("services running on Serve's gRPC port %s:%d (%s)", settings.serve.host, settings.serve.grpc_port, ingress)
        if address:
            _log_placements(service_statuses())
        return asyncio.run(
            _serve_gateway(
                _gateway_settings(settings),
                started,
                ingest_sample=not args.no_sample,
                statuses=service_statuses,
                health=(args.health_host, args.health_port),
            )
        )
    finally:
        log.info("removing the services from the cluster" if address else "stopping Ray")
        stack.stop()
        log.info("stopped")


def _log_placements(statuses: dict[str, object]) -> None:
    """One line per replica: which node took it (ragrail status shows the same)."""
    for name, state in sorted(statuses.items()):
        for placement in getattr(state, "placements", ()):
            node = placement.node.describe() if placement.node else "no node yet"
            log.info("replica %s %s %s on %s", name, placement.replica_id, placement.state, node)


PROMPT_TAG_SECRET_ENV = "RAGRAIL_PROMPT_TAG_SECRET"
FEEDBACK_URL_ENV = "RAGRAIL_FEEDBACK_URL"


def _gateway_settings(settings: Settings) -> Settings:
    """The gateway's settings, for `ragrail gateway` and `ragrail up` alike: its secrets (the prompt-tag
    key, the feedback database's URL) may come from the environment: a Secret in Kubernetes, the same
    for every replica and in no ConfigMap. The config wins where it sets them."""
    from ragrail.common.config import with_gateway_secrets

    return with_gateway_secrets(settings, os.environ)


def _cmd_gateway(args: argparse.Namespace) -> int:
    return asyncio.run(
        _serve_gateway(
            _gateway_settings(_settings(args)),
            time.monotonic(),
            ingest_sample=False,
            health=(args.health_host, args.health_port),
            wait_ready=False,  # in Kubernetes: stay up, NOT_SERVING, while the RayService warms up
        )
    )


async def _serve_gateway(
    settings: object,
    started: float,
    *,
    ingest_sample: bool,
    statuses: object = None,
    health: tuple[str | None, int | None] = (None, None),
    wait_ready: bool = True,
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
        wait_ready=wait_ready,
    )
    loop.add_signal_handler(signal.SIGHUP, _on_sighup, gateway)
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


def _on_sighup(gateway: object) -> None:
    """SIGHUP: re-read the pipeline specs and the API keys file now (both are also polled)."""
    gateway.reload()  # type: ignore[attr-defined]
    gateway.servicer.auth.reload_if_changed(force=True)  # type: ignore[attr-defined]


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
        self.channel = channel
        self.stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        self.metadata = (("authorization", f"Bearer {args.api_key}"),) if args.api_key else ()
        self.timeout = args.timeout

    def close(self) -> None:
        """Cancels the calls in flight (their threads then end at once)."""
        self.channel.close()

    def __getattr__(self, rpc: str):  # type: ignore[no-untyped-def]
        method = getattr(self.stub, rpc)
        return lambda request: method(request, timeout=self.timeout, metadata=self.metadata)


def _stub(args: argparse.Namespace) -> _Client:
    return _Client(args)


def _cmd_ingest(args: argparse.Namespace) -> int:
    from ragrail.cli.loaders import collect_files
    from ragrail.gateway.v1 import gateway_pb2 as pb

    files = collect_files(args.paths)
    if not files:
        print("ragrail: no .txt, .md or .html files found", file=sys.stderr)
        return 2
    if args.json:
        return _ingest_json(args, files)
    progress = None if args.no_progress else IngestProgress(files, sys.stderr, PROGRESS_INTERVAL_S)
    total_stored = total_dropped = 0
    failed: list[str] = []
    for path, document_id, outcome in _ingest_files(args, files):
        lines: list[str] = []
        if isinstance(outcome, grpc.RpcError):  # this file failed; the others go on
            lines.append(f"{document_id}: FAILED ({outcome.code().name}): {outcome.details()}")  # type: ignore[attr-defined]
            failed.append(document_id)
            outcome = []
        for r in outcome:
            if r.status == pb.DOCUMENT_STATUS_FAILED:
                lines.append(f"{r.document_id}: FAILED ({r.error_code}): {r.error}")
                failed.append(r.document_id)
                continue
            dropped = f", {r.chunks_dropped} dropped by moderation" if r.chunks_dropped else ""
            lines.append(f"{r.document_id}: {r.chunks_stored} chunks stored{dropped}")
            total_stored += r.chunks_stored
            total_dropped += r.chunks_dropped
        if progress is not None:
            progress.print_lines(lines)
            progress.file_done(path, total_stored)
        else:
            print("\n".join(lines))
    if progress is not None:
        progress.finish()
    print(
        f"ingested {len(files) - len(failed)} of {len(files)} file(s): "
        f"{total_stored} chunks stored, {total_dropped} dropped"
    )
    if failed:
        print(f"failed: {', '.join(failed)} (ingest them again: it is idempotent by id)", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def _ingest_files(args: argparse.Namespace, files: list[Path]) -> Iterator[tuple[Path, str, object]]:
    """(path, document id, the call's DocumentResults or its grpc.RpcError) per file, in file
    order, one file per Ingest call and up to ``args.parallel`` calls in flight."""
    from concurrent.futures import Future, ThreadPoolExecutor

    from ragrail.cli.loaders import load_document
    from ragrail.gateway.v1 import gateway_pb2 as pb

    stub = _stub(args)

    def call(path: Path) -> tuple[Path, str, object]:
        doc = load_document(path)
        request = pb.IngestRequest(
            documents=[pb.Document(document_id=doc.document_id, text=doc.text, source=doc.source)]
        )
        try:
            return path, doc.document_id, list(stub.Ingest(request).documents)
        except grpc.RpcError as error:
            return path, doc.document_id, error

    pool = ThreadPoolExecutor(max_workers=args.parallel, thread_name_prefix="ingest")
    pending: deque[Future[tuple[Path, str, object]]] = deque()
    finished = False
    try:
        for path in files:
            pending.append(pool.submit(call, path))
            if len(pending) >= args.parallel:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
        finished = True
    finally:
        pool.shutdown(wait=finished, cancel_futures=True)
        if not finished and hasattr(stub, "close"):  # Ctrl-C, or a file that cannot be read
            stub.close()


class IngestProgress:
    """`ragrail ingest`'s progress on stderr: files done of all, chunks stored, chunks/s and the
    ETA (by bytes of the files left at the rate so far), at most every ``interval_s``. On a
    terminal one line rewrites itself (and steps aside for the result lines on stdout);
    otherwise plain lines. A run shorter than ``interval_s`` shows nothing."""

    def __init__(
        self,
        files: list[Path],
        stream: TextIO,
        interval_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.files_total = len(files)
        self.bytes_total = sum(_size(f) for f in files)
        self.stream = stream
        self.tty = stream.isatty()
        self.interval_s = interval_s
        self.clock = clock
        self.started = self.last = clock()
        self.files_done = self.bytes_done = self.chunks = 0
        self.shown = ""  # the line on the terminal now (tty only)

    def file_done(self, path: Path, chunks_stored: int) -> None:
        self.files_done += 1
        self.bytes_done += _size(path)
        self.chunks = chunks_stored
        now = self.clock()
        if now - self.last >= self.interval_s:
            self.last = now
            self._show(self.line(now))

    def line(self, now: float) -> str:
        elapsed = max(now - self.started, 1e-9)
        rate = self.chunks / elapsed
        left = self.bytes_total - self.bytes_done
        eta = _duration(elapsed * left / self.bytes_done) if self.bytes_done else "?"
        return (
            f"{self.files_done}/{self.files_total} files, {self.chunks} chunks, "
            f"{rate:.1f} chunks/s, ETA {eta}"
        )

    def print_lines(self, lines: list[str]) -> None:
        """Result lines for stdout, printed under the progress line rather than through it."""
        if not lines:
            return
        self._erase()
        print("\n".join(lines), flush=True)
        if self.shown:
            self.stream.write(self.shown)
            self.stream.flush()

    def finish(self) -> None:
        self._erase()
        self.shown = ""

    def _show(self, line: str) -> None:
        if self.tty:
            self.stream.write("\r\x1b[K" + line)
            self.shown = line
        else:
            self.stream.write(f"progress: {line}\n")
        self.stream.flush()

    def _erase(self) -> None:
        if self.tty and self.shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _ingest_json(args: argparse.Namespace, files: list[Path]) -> int:
    """``ingest --json``: one DocumentResult document per file, a failed call included (as
    status DOCUMENT_STATUS_FAILED with its code); exit 1 when any file failed."""
    from ragrail.gateway.v1 import gateway_pb2 as pb

    failed = False
    for _path, document_id, outcome in _ingest_files(args, files):
        if isinstance(outcome, grpc.RpcError):  # this file failed; the others go on
            code = outcome.code().name  # type: ignore[attr-defined]
            details = outcome.details() or ""  # type: ignore[attr-defined]
            outcome = [
                pb.DocumentResult(
                    document_id=document_id, status=pb.DOCUMENT_STATUS_FAILED, error=details, error_code=code
                )
            ]
        for result in outcome:  # type: ignore[attr-defined]
            failed = failed or result.status == pb.DOCUMENT_STATUS_FAILED
            _emit(_message_json(result))
    return EXIT_FAILED if failed else EXIT_OK


def _cmd_ask(args: argparse.Namespace) -> int:
    from ragrail.gateway.v1 import gateway_pb2 as pb

    stub = _stub(args)
    if args.stream:
        final = None
        request = pb.RunStreamRequest(pipeline=args.pipeline, query=args.query, session_id=args.session_id)
        for event in stub.RunStream(request):
            if args.json:  # one document per event: {"delta": ...} lines, then {"final": {...}}
                _emit(_message_json(event))
            if event.HasField("final"):
                final = event.final
            elif not args.json:
                print(event.delta, end="", flush=True)
        if final is None:
            return _fail(args, "INCOMPLETE_STREAM", "the stream ended without a final event", EXIT_FAILED)
        if not args.json:
            print()
            if final.replace_streamed:  # a canned answer (flagged, or a failure) replaces what was shown
                print(f"[replaced] {final.answer}")
            elif final.fallback:  # canned before any text was released
                print(final.answer)
            _print_details(final)
        return _answer_exit(args, final)
    response = stub.Run(pb.RunRequest(pipeline=args.pipeline, query=args.query, session_id=args.session_id))
    if args.json:
        _emit(_message_json(response))
    else:
        print(response.answer)
        _print_details(response)
    return _answer_exit(args, response)


def _answer_exit(args: argparse.Namespace, response: object) -> int:
    return EXIT_FALLBACK if args.fail_on_fallback and getattr(response, "fallback", False) else EXIT_OK


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
    mode = pb.AnswerMode.Name(r.answer_mode).removeprefix("ANSWER_MODE_").lower() if r.answer_mode else "?"
    total_ms = sum(t.duration_ms for t in r.timings)
    cached = "  (cached)" if r.cached else ""
    tokens = f"  tokens: {r.usage.prompt_tokens} in, {r.usage.completion_tokens} out" if r.usage.completion_tokens else ""
    print(
        f"pipeline: {r.pipeline}@{r.pipeline_version}  answer: {mode}  fallback: {fallback}  "
        f"stages: {total_ms:.0f} ms{tokens}  "
        f"request: {r.request_id}{cached}"
    )


def _cmd_pipelines(args: argparse.Namespace) -> int:
    from ragrail.gateway.v1 import gateway_pb2 as pb

    response = _stub(args).ListPipelines(pb.ListPipelinesRequest())
    if args.json:
        _emit(_message_json(response))
        return 0
    for p in response.pipelines:
        default = " (default)" if p.is_default else ""
        print(f"{p.name}@{p.version}{default}: {p.description}  [{' -> '.join(p.stages)}]")
    return 0



def _cmd_pipelines_validate(args: argparse.Namespace) -> int:
    from ragrail.gateway.specs import SpecError, load_pipeline_dir

    try:
        loaded = load_pipeline_dir(args.dir)
    except SpecError as exc:
        problems = [f"{args.dir}/{p}" if ".y" in p.split(":")[0] else p for p in str(exc).split("; ")]
        if args.json:
            _emit({"ok": False, "problems": problems})
        for problem in problems if not args.json else ():
            print(problem, file=sys.stderr)
        return 1
    if args.json:
        specs = [{"ref": s.ref, "stages": list(s.stage_names), "deprecated_kind": bool(s.kind)} for s in loaded.specs]
        _emit({"ok": True, "specs": specs})
        return 0
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
    if args.json:
        _emit(specs[args.ref].expanded())
        return 0
    print(yaml.safe_dump(specs[args.ref].expanded(), sort_keys=False, width=100), end="")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from ragrail.gateway.v1 import gateway_pb2 as pb

    r = _stub(args).Status(pb.StatusRequest())
    healthy = (
        all(c.state == "closed" for c in r.circuits)
        and all(s.status == "RUNNING" for s in r.services)
        and all(c.state in ("ready", "empty") for c in r.collections)
    )
    if args.json:
        _emit({**_message_json(r), "healthy": healthy})
        return EXIT_OK if healthy else EXIT_UNAVAILABLE
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
            for replica in s.replica_nodes:
                print(f"    {replica.replica_id}  {replica.state.lower():<18} {describe_node(replica)}")
    if r.collections:
        print("collections:")
        for c in r.collections:
            state = f"{c.points} points" if c.state == "ready" else c.state
            detail = f": {c.detail}" if c.detail else ""
            print(f"  {c.name} ({c.service}): {state}{detail}  [{', '.join(c.pipelines)}]")
    if r.last_reload_error:
        print(f"last pipeline reload rejected: {r.last_reload_error}")
    return EXIT_OK if healthy else EXIT_UNAVAILABLE


def describe_node(replica: object) -> str:
    """``node 1a2b3c4d 127.0.0.1 (head) CPU 1 GPU 1 pool=gpu``, or that it has none yet."""
    from ragrail.gateway.v1 import gateway_pb2 as pb

    assert isinstance(replica, pb.ReplicaInfo)
    if not replica.node_id:
        return "no node yet"
    resources = " ".join(f"{k} {v:g}" for k, v in sorted(replica.node_resources.items()))
    labels = " ".join(f"{k}={v}" for k, v in sorted(replica.node_labels.items()))
    head = " (head)" if replica.head else ""
    return " ".join(part for part in (f"node {replica.node_id[:8]} {replica.node_ip}{head}", resources, labels) if part)


def _cmd_feedback(args: argparse.Namespace) -> int:
    from ragrail.gateway.v1 import gateway_pb2 as pb

    r = _stub(args).Feedback(pb.FeedbackRequest(request_id=args.request_id, rating=args.rating, comment=args.comment))
    if args.json:
        _emit(_message_json(r))
        return 0
    # Unmatched: an unknown or expired request id, or one answered for another API key.
    print("recorded" + ("" if r.matched_request else " (unattributed: request id not answered recently for this key)"))
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
    if args.json:
        _emit({"key": key, "entry": entry})
        return 0
    print(f"API key (shown once; give it to the caller): {key}")
    print("add this entry under `keys:` in the gateway's keys file:")
    print(yaml.safe_dump([entry], sort_keys=False), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
