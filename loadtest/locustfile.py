"""Locust users that speak gRPC to ragrail: no HTTP shim.

    .venv/bin/python loadtest/run.py --users 4 --run-time 60s       # headless, SLO gates
    .venv/bin/locust -f loadtest/locustfile.py --host 127.0.0.1:50051  # locust's own UI/CLI

Users
-----
One class per pipeline reference, calling ``GatewayService/Run`` on the gateway:

====================  ====================  ==============================================
class                 pipeline              queries
====================  ====================  ==============================================
RagUser               ``rag`` (its split)   rag.txt + off_topic.txt (``--off-topic-ratio``)
RagV1User             ``rag@1``             same
RagV2User             ``rag@2``             same
SummarizeUser         summarize_sentiment   summarize.txt
PipelineUser          ``--pipeline REF``    chosen by the pipeline's name
====================  ====================  ==============================================

and one class per model service, calling it directly through Ray Serve's gRPC
proxy (``--serve-host``, metadata ``application=<service>``): EmbeddingUser,
RetrievalUser, GenerationUser, ModerationUser.

Each call is reported to locust with its name, latency, response size and gRPC
status. Canned fallbacks are their own type and name
(``fallback`` / ``rag@1 [fallback:retrieval_miss]``): visible, never failures.
Pipeline users retry a call the gateway refused for capacity (RESOURCE_EXHAUSTED
with ``retry-after``) as ragrail-client does (``--refusal-retries``, default 2):
an answer after a retry is its own row, ``rag@1 [retried]``, its latency with the
wait; a refusal that outlasts the retries is a failure.

Configuration
-------------
Weights (per class, read when this file is imported, so from the environment):
``RAGRAIL_LT_WEIGHTS="rag=4,rag@1=1,rag@2=1,summarize_sentiment=1,embedding=0,..."``.
Keys: rag, rag@1, rag@2, summarize_sentiment, pipeline, embedding, retrieval,
generation, moderation. A weight of 0 disables a class. Defaults: the four
pipeline users on (1 each: 4 users cover the four), the rest off.
``RAGRAIL_LT_PIPELINE=REF`` (what ``run.py --pipeline`` sets) turns
PipelineUser on with weight 1 unless a weight is given.

Everything else is a command-line option or its environment variable (see
``locust -f loadtest/locustfile.py --help``, section "Custom arguments"): the
gateway is locust's ``--host`` (default 127.0.0.1:50051); ``--ca-file`` turns
on TLS; ``--api-key`` (RAGRAIL_API_KEY) is sent as ``authorization: Bearer``.

Bounds
------
Traffic goes only to ``--host`` and ``--serve-host``. At most ``MAX_USERS``
users; a headless run without ``--run-time`` stops after ``DEFAULT_RUN_TIME_S``.
"""

from __future__ import annotations

import logging
import os
import random
import sys
import uuid
from collections import Counter
from pathlib import Path

# Locust has monkey-patched the standard library (gevent) before importing this
# file; gRPC's own event loop must cooperate with gevent before any channel exists.
import grpc.experimental.gevent as grpc_gevent

grpc_gevent.init_gevent()

import gevent  # noqa: E402
from locust import User, events, task  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ragrail_load.grpc_calls import (  # noqa: E402
    DEFAULT_GATEWAY,
    DEFAULT_SERVE,
    auth_metadata,
    Retries,
    classify_run,
    open_channel,
    retrying_refusals,
    serve_metadata,
    target,
    timed_call,
)
from ragrail_load.queries import DEFAULT_DIR, QuerySet  # noqa: E402

from ragrail.embedding.v1 import embedding_pb2, embedding_pb2_grpc  # noqa: E402
from ragrail.gateway.v1 import gateway_pb2, gateway_pb2_grpc  # noqa: E402
from ragrail.generation.v1 import generation_pb2, generation_pb2_grpc  # noqa: E402
from ragrail.moderation.v1 import moderation_pb2, moderation_pb2_grpc  # noqa: E402
from ragrail.retrieval.v1 import retrieval_pb2, retrieval_pb2_grpc  # noqa: E402

log = logging.getLogger("ragrail.loadtest")

MAX_USERS = 64
DEFAULT_RUN_TIME_S = 120
DEFAULT_WEIGHTS = {
    "rag": 1, "rag@1": 1, "rag@2": 1, "summarize_sentiment": 1, "pipeline": 0,
    "embedding": 0, "retrieval": 0, "generation": 0, "moderation": 0,
}


def parse_weights(text: str | None) -> dict[str, int]:
    """``"rag=4,rag@1=1"`` over the defaults; unknown keys are an error, not a silent no-op."""
    weights = dict(DEFAULT_WEIGHTS)
    if os.environ.get("RAGRAIL_LT_PIPELINE"):
        weights["pipeline"] = 1
    for item in filter(None, (part.strip() for part in (text or "").split(","))):
        key, _, value = item.partition("=")
        key = key.strip()
        if key not in weights:
            raise ValueError(f"RAGRAIL_LT_WEIGHTS: unknown user {key!r} (known: {', '.join(weights)})")
        weights[key] = int(value)
        if weights[key] < 0:
            raise ValueError(f"RAGRAIL_LT_WEIGHTS: weight of {key} must be >= 0")
    return weights


WEIGHTS = parse_weights(os.environ.get("RAGRAIL_LT_WEIGHTS"))
# Which versions answered a bare name (a traffic split), printed at the end of a run.
VERSIONS_SEEN: Counter[tuple[str, str]] = Counter()


@events.init_command_line_parser.add_listener
def _arguments(parser) -> None:  # type: ignore[no-untyped-def]
    group = parser  # locust lists these under "Custom arguments"
    group.add_argument("--serve-host", env_var="RAGRAIL_LT_SERVE_HOST", default=DEFAULT_SERVE,
                       help="Ray Serve gRPC proxy, for the direct service users")
    group.add_argument("--ca-file", env_var="RAGRAIL_LT_CA_FILE", default="",
                       help="PEM CA bundle: use TLS to the gateway, trusting it")
    group.add_argument("--tls-server-name", env_var="RAGRAIL_LT_TLS_SERVER_NAME", default="",
                       help="expected name in the gateway's certificate, when it differs from the host")
    group.add_argument("--api-key", env_var="RAGRAIL_API_KEY", default="", is_secret=True,
                       help="sent as 'authorization: Bearer <key>'")
    group.add_argument("--pipeline", env_var="RAGRAIL_LT_PIPELINE", default="",
                       help="pipeline reference for PipelineUser, e.g. rag@3")
    group.add_argument("--queries-dir", env_var="RAGRAIL_LT_QUERIES_DIR", default=str(DEFAULT_DIR),
                       help="folder with rag.txt, off_topic.txt, summarize.txt")
    group.add_argument("--off-topic-ratio", env_var="RAGRAIL_LT_OFF_TOPIC_RATIO", type=float, default=0.2,
                       help="share of rag questions taken from off_topic.txt")
    group.add_argument("--think-min", env_var="RAGRAIL_LT_THINK_MIN", type=float, default=0.5,
                       help="seconds a user waits between calls, at least")
    group.add_argument("--think-max", env_var="RAGRAIL_LT_THINK_MAX", type=float, default=2.0,
                       help="seconds a user waits between calls, at most")
    group.add_argument("--call-timeout", env_var="RAGRAIL_LT_TIMEOUT", type=float, default=60.0,
                       help="gRPC deadline of each call in seconds")
    group.add_argument("--refusal-retries", env_var="RAGRAIL_LT_REFUSAL_RETRIES", type=int, default=2,
                       help="pipeline calls refused with RESOURCE_EXHAUSTED and a retry-after are tried again "
                       "after that wait, this many times within the call's deadline, as ragrail-client does "
                       "(answers after a retry: rows named '<pipeline> [retried]'); 0 reports every refusal")
    group.add_argument("--gen-max-tokens", env_var="RAGRAIL_LT_GEN_MAX_TOKENS", type=int, default=32,
                       help="max_new_tokens of GenerationUser's calls")
    group.add_argument("--collection", env_var="RAGRAIL_LT_COLLECTION", default="documents",
                       help="collection RetrievalUser searches")


@events.init.add_listener
def _bounds(environment, **_kwargs) -> None:  # type: ignore[no-untyped-def]
    options = environment.parsed_options
    if options is None:
        return
    if options.num_users and options.num_users > MAX_USERS:
        log.error("at most %d users (asked for %d): a load test here must stay bounded", MAX_USERS, options.num_users)
        sys.exit(2)
    if options.headless and not options.run_time and not environment.shape_class:
        options.run_time = DEFAULT_RUN_TIME_S
        log.warning("no --run-time given: stopping after %d s", DEFAULT_RUN_TIME_S)
    if getattr(options, "pipeline", ""):
        PipelineUser.pipeline = options.pipeline


@events.quitting.add_listener
def _final_csv(environment, **_kwargs) -> None:  # type: ignore[no-untyped-def]
    """Locust rewrites its CSV files once a second and not again at exit: by now every
    user has stopped, so one more tick of its writer makes the files final."""
    options = environment.parsed_options
    if options is not None and getattr(options, "csv_prefix", None):
        gevent.sleep(1.5)


@events.quitting.add_listener
def _versions(environment, **_kwargs) -> None:  # type: ignore[no-untyped-def]
    for name in sorted({ref for ref, _ in VERSIONS_SEEN}):
        seen = {version: n for (ref, version), n in VERSIONS_SEEN.items() if ref == name}
        total = sum(seen.values())
        split = ", ".join(f"{version} {n / total:.0%}" for version, n in sorted(seen.items()))
        log.info("%s answered as: %s (%d answers)", name, split, total)


def _option(user: User, name: str, default):  # type: ignore[no-untyped-def]
    options = user.environment.parsed_options
    value = getattr(options, name, None) if options is not None else None
    return default if value in (None, "") else value


_QUERY_SETS: dict[str, QuerySet] = {}


def _queries(user: User) -> QuerySet:
    folder = _option(user, "queries_dir", str(DEFAULT_DIR))
    if folder not in _QUERY_SETS:
        _QUERY_SETS[folder] = QuerySet.load(folder)
    return _QUERY_SETS[folder]


def _think(user: User) -> float:
    low = float(_option(user, "think_min", 0.5))
    high = max(low, float(_option(user, "think_max", 2.0)))
    return random.uniform(low, high)


class _GrpcUser(User):
    abstract = True
    host = DEFAULT_GATEWAY
    wait_time = _think

    def _fire(self, **kwargs) -> None:  # type: ignore[no-untyped-def]
        self.environment.events.request.fire(**kwargs)

    @property
    def timeout(self) -> float:
        return float(_option(self, "call_timeout", 60.0))

    def on_stop(self) -> None:
        channel = getattr(self, "channel", None)
        if channel is not None:
            channel.close()


class _PipelineUser(_GrpcUser):
    """Calls GatewayService/Run on ``pipeline`` with a question (or a text)."""

    abstract = True
    pipeline = "rag"

    def on_start(self) -> None:
        self.rng = random.Random()
        self.session_id = uuid.uuid4().hex  # one caller: sticky on one version of a split
        self.channel = open_channel(
            target(self.host, DEFAULT_GATEWAY),
            ca_file=_option(self, "ca_file", None),
            server_name=_option(self, "tls_server_name", None),
        )
        self.stub = gateway_pb2_grpc.GatewayServiceStub(self.channel)
        self.metadata = auth_metadata(_option(self, "api_key", None))

    def _query(self) -> str:
        queries = _queries(self)
        if self.pipeline.split("@")[0].startswith("summarize"):
            return queries.text(self.rng)
        question, _off_topic = queries.question(self.rng, float(_option(self, "off_topic_ratio", 0.2)))
        return question

    @task
    def run_pipeline(self) -> None:
        ref = self.pipeline
        request = gateway_pb2.RunRequest(pipeline=ref, query=self._query(), session_id=self.session_id)
        tries = Retries()
        response = timed_call(
            self._fire, ref,
            lambda: retrying_refusals(
                lambda timeout: self.stub.Run(request, timeout=timeout, metadata=self.metadata),
                self.timeout, int(_option(self, "refusal_retries", 2)), gevent.sleep, tries,
            ),
            classify=lambda r: classify_run(ref, r), retries=tries,
        )
        if response is not None and "@" not in ref:
            VERSIONS_SEEN[(ref, f"{response.pipeline}@{response.pipeline_version}")] += 1


class RagUser(_PipelineUser):
    pipeline = "rag"
    weight = WEIGHTS["rag"]


class RagV1User(_PipelineUser):
    pipeline = "rag@1"
    weight = WEIGHTS["rag@1"]


class RagV2User(_PipelineUser):
    pipeline = "rag@2"
    weight = WEIGHTS["rag@2"]


class SummarizeUser(_PipelineUser):
    pipeline = "summarize_sentiment"
    weight = WEIGHTS["summarize_sentiment"]


class PipelineUser(_PipelineUser):
    """Any pipeline reference, from ``--pipeline`` / RAGRAIL_LT_PIPELINE."""

    pipeline = os.environ.get("RAGRAIL_LT_PIPELINE", "rag")
    weight = WEIGHTS["pipeline"]


class _ServiceUser(_GrpcUser):
    """Calls one model service directly through Serve's gRPC proxy."""

    abstract = True
    application = ""

    def on_start(self) -> None:
        self.rng = random.Random()
        self.channel = open_channel(target(_option(self, "serve_host", DEFAULT_SERVE), DEFAULT_SERVE))
        self.metadata = serve_metadata(self.application)

    def _call(self, name: str, method, request):  # type: ignore[no-untyped-def]
        return timed_call(self._fire, name, lambda: method(request, timeout=self.timeout, metadata=self.metadata))

    def _question(self) -> str:
        return self.rng.choice(_queries(self).on_topic)


class EmbeddingUser(_ServiceUser):
    application = "embedding"
    weight = WEIGHTS["embedding"]

    def on_start(self) -> None:
        super().on_start()
        self.stub = embedding_pb2_grpc.EmbeddingServiceStub(self.channel)

    @task
    def embed(self) -> None:
        self._call("embedding/Embed", self.stub.Embed, embedding_pb2.EmbedRequest(texts=[self._question()]))


class RetrievalUser(_ServiceUser):
    """Searches with real question vectors (embedded once at start), random unit vectors if that fails."""

    application = "retrieval"
    weight = WEIGHTS["retrieval"]
    vectors: list[list[float]] = []

    def on_start(self) -> None:
        super().on_start()
        self.stub = retrieval_pb2_grpc.RetrievalServiceStub(self.channel)
        if not RetrievalUser.vectors:
            RetrievalUser.vectors = self._question_vectors()

    def _question_vectors(self) -> list[list[float]]:
        questions = list(_queries(self).on_topic)[:32]
        embed = embedding_pb2_grpc.EmbeddingServiceStub(self.channel)
        try:  # setup, not part of the measured traffic
            response = embed.Embed(embedding_pb2.EmbedRequest(texts=questions), timeout=self.timeout,
                                   metadata=serve_metadata("embedding"))
            return [list(e.values) for e in response.embeddings]
        except Exception as exc:  # noqa: BLE001
            log.warning("could not embed the questions (%s); searching with random vectors", exc)
            rng = random.Random(0)
            out = []
            for _ in range(32):
                v = [rng.gauss(0, 1) for _ in range(384)]
                norm = sum(x * x for x in v) ** 0.5
                out.append([x / norm for x in v])
            return out

    @task
    def search(self) -> None:
        request = retrieval_pb2.SearchRequest(
            collection=str(_option(self, "collection", "documents")),
            vector=self.rng.choice(RetrievalUser.vectors), top_k=4,
        )
        self._call("retrieval/Search", self.stub.Search, request)


class GenerationUser(_ServiceUser):
    application = "generation"
    weight = WEIGHTS["generation"]

    def on_start(self) -> None:
        super().on_start()
        self.stub = generation_pb2_grpc.GenerationServiceStub(self.channel)

    @task
    def generate(self) -> None:
        request = generation_pb2.GenerateRequest(
            messages=[generation_pb2.ChatMessage(role=generation_pb2.ROLE_USER, content=self._question())],
            sampling=generation_pb2.SamplingParams(max_new_tokens=int(_option(self, "gen_max_tokens", 32))),
        )
        self._call("generation/Generate", self.stub.Generate, request)


class ModerationUser(_ServiceUser):
    application = "moderation"
    weight = WEIGHTS["moderation"]

    def on_start(self) -> None:
        super().on_start()
        self.stub = moderation_pb2_grpc.ModerationServiceStub(self.channel)

    @task
    def moderate(self) -> None:
        self._call("moderation/Moderate", self.stub.Moderate,
                   moderation_pb2.ModerateRequest(texts=[self._question()]))
