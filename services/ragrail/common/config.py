"""One configuration file drives the local stack and (later) Kubernetes.

The file is YAML validated strictly: unknown keys are errors, so a typo never
silently falls back to a default. Each service section has a ``deployment``
block passed verbatim to Ray Serve (``autoscaling_config``, ``ray_actor_options``,
``max_ongoing_requests``...), which keeps it translatable to a RayService's
``serveConfigV2``.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from collections.abc import Mapping
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ragrail.common.errors import InvalidArgument

DEFAULT_CONFIG = "ragrail.yaml"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# Weights' dtype (ragrail.common.models.pick_dtype): auto = bfloat16 on CUDA and on CPUs with native bfloat16 (AMX, AVX512-BF16), else float32.
ModelDtype = Literal["auto", "float32", "bfloat16", "float16"]


class EmbeddingSettings(Strict):
    model: str = Field("builtin:all-MiniLM-L6-v2", description="builtin name, hub id or folder")
    device: str = Field("auto", description="auto, cpu or cuda")
    dtype: ModelDtype = Field(
        "auto", description="auto (bfloat16 on CUDA or a CPU with native bfloat16, else float32), float32, bfloat16 or float16; "
        "vectors are pooled and normalised in float32 either way"
    )
    max_batch_size: int = Field(64, ge=1, le=4096)
    max_text_chars: int = Field(8192, ge=1)
    max_tokens: int = Field(256, ge=8, description="window; longer texts are truncated")
    max_document_chars: int = Field(2_000_000, ge=1, description="longest text a Chunk call splits")
    batch_max_requests: int = Field(16, ge=1, description="concurrent Embed calls merged into one forward pass")
    batch_wait_s: float = Field(
        0.02, ge=0, le=1, description="how long a dynamic batch waits to fill (longer: bigger batches, more latency when idle)"
    )
    cpu_threads: int | None = Field(
        None, ge=1, le=256, description="torch threads on CPU; default: every core the replica may use "
        "(Ray alone gives a replica with num_cpus < 1 a single thread)"
    )
    deployment: dict[str, Any] = Field(default_factory=dict)


class RetrievalSettings(Strict):
    qdrant_url: str | None = Field(None, description="Qdrant server URL; unset = embedded")
    qdrant_api_key: str | None = None
    qdrant_path: str | None = Field(None, description="embedded store folder; default DATA_DIR/qdrant")
    embedded_engine: Literal["edge", "local"] = Field(
        "edge", description="embedded store: edge (Qdrant's engine in process, HNSW) or local (qdrant-client's "
        "pure-Python local mode, the format before; `ragrail migrate-store` moves it to edge)"
    )
    embedded_lock_wait_s: float = Field(
        30.0, ge=0, description="how long a starting replica waits for the embedded store's previous owner to let go"
    )
    prefer_grpc: bool = Field(True, description="data calls over gRPC (grpc_port) instead of REST (the URL's port)")
    grpc_port: int = Field(6334, ge=1, le=65535, description="Qdrant's gRPC port, used when prefer_grpc")
    timeout_s: float = Field(10.0, gt=0, description="bound on every Qdrant call (rounded up to whole seconds)")
    max_top_k: int = Field(100, ge=1)
    max_batch_size: int = Field(512, ge=1)
    lexical_field: str | None = Field(
        "text", description="payload field indexed lexically (BM25 sparse vectors, Qdrant's IDF) in collections "
        "created from now on, for hybrid search; null: dense only. A collection created before keeps dense only "
        "until it is deleted and re-ingested"
    )
    hybrid_candidates: int = Field(
        50, ge=1, le=1000, description="hybrid search: how many dense and lexical candidates are fused "
        "(at least max_top_k)"
    )
    deployment: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _embedded_store_has_one_owner(self) -> RetrievalSettings:
        # Embedded Qdrant locks its folder: a second replica would fail to open it.
        if self.qdrant_url:
            return self
        replicas = self.deployment.get("num_replicas")
        autoscaling = self.deployment.get("autoscaling_config") or {}
        max_replicas = autoscaling.get("max_replicas", 1) if isinstance(autoscaling, dict) else 1
        if replicas == "auto" or (isinstance(replicas, int) and replicas > 1) or (
            isinstance(max_replicas, int) and max_replicas > 1
        ):
            raise ValueError(
                "retrieval without qdrant_url uses the embedded store, which exactly one replica "
                "may own: set retrieval.deployment.num_replicas to 1 (no autoscaling), or set "
                "retrieval.qdrant_url to a Qdrant server to scale out"
            )
        return self


class GenerationSettings(Strict):
    model: str = Field("builtin:smollm2-135m-instruct", description="builtin name, hub id or folder")
    revision: str | None = None
    dtype: ModelDtype = Field(
        "auto", description="auto (bfloat16 on CUDA or a CPU with native bfloat16; float32 on other CPUs, where "
        "bfloat16 generated at half float32's speed), float32, bfloat16 or float16"
    )
    device: str = Field("auto", description="auto, cpu or cuda")
    max_new_tokens_limit: int = Field(512, ge=1)
    default_max_new_tokens: int = Field(128, ge=1)
    max_messages: int = Field(64, ge=1)
    max_prompt_chars: int = Field(32_000, ge=1)
    max_batch_size: int = Field(
        8, ge=1, le=1024, description="requests decoded together (continuous batching: they join and leave "
        "between steps); 1 = one at a time"
    )
    max_batch_tokens: int = Field(
        16_384, ge=1, description="KV-cache budget of the running batch, in tokens: a request reserves its prompt "
        "plus max_new_tokens and waits while the budget is spent (raised to the model's context if lower)"
    )
    prefill_chunk_tokens: int | None = Field(
        None, ge=1, description="prompt tokens (padding counted) prefilled per step while other requests decode: "
        "bounds their stall; default 512 on CPU, 8192 on CUDA"
    )
    prefill_burst_tokens: int | None = Field(
        None, ge=1, description="prompt tokens prefilled per step when nothing is decoding (a burst from idle "
        "shares one prefill; nobody stalls): bounds activation memory; default 4 x prefill_chunk_tokens, "
        "at most max_batch_tokens"
    )
    max_waiting: int = Field(64, ge=1, description="requests waiting to join the batch; more get RESOURCE_EXHAUSTED")
    gather_wait_s: float = Field(
        0.01, ge=0, le=1, description="when nothing is running, how long a first request waits for others to "
        "arrive so they share one prefill (a burst prefilled together)"
    )
    cpu_threads: int | None = Field(
        None, ge=1, le=256, description="torch threads on CPU; default: every core the replica may use "
        "(Ray alone gives a replica with num_cpus < 1 a single thread)"
    )
    deployment: dict[str, Any] = Field(default_factory=dict)


_BACKEND_FIELDS = {
    "profanity_check": (),
    "nanoguard": ("window_chars",),
    "regex": ("pii_types", "pii_allow"),
    "transformers": ("model", "revision", "label", "device", "dtype", "batch_size", "max_length"),
}


class CategorySettings(Strict):
    """One moderation category: the backend that scores it and the threshold that flags."""

    backend: Literal["profanity_check", "nanoguard", "regex", "transformers"] = Field(
        description="profanity_check (toxicity), nanoguard (prompt injection), regex (PII), "
        "transformers (any sequence-classification model)"
    )
    threshold: float = Field(0.5, ge=0, le=1, description="a score at or above it flags the text")
    window_chars: int | None = Field(
        None, ge=100, description="nanoguard reads 512 tokens: longer texts are scanned in windows (default 1500)"
    )
    pii_types: list[Literal["email", "phone", "card", "ssn", "uk_nino", "iban"]] | None = Field(
        None, description="regex: the PII types detected (default all)"
    )
    pii_allow: list[str] | None = Field(
        None, description="regex: values never reported, e.g. a published helpline (compared by letters and digits)"
    )
    model: str | None = Field(None, description="transformers: builtin name, hub id or folder")
    revision: str | None = Field(None, description="transformers: hub revision")
    label: str | int | None = Field(None, description="transformers: the label scored, by name or index")
    device: str | None = Field(None, description="transformers: auto, cpu or cuda (default: the replica's)")
    dtype: ModelDtype | None = Field(
        None, description="transformers: auto (bfloat16 on CUDA or a CPU with native bfloat16, else float32; the default), float32, bfloat16 "
        "or float16"
    )
    batch_size: int | None = Field(None, ge=1, description="transformers: texts per forward pass (default 32)")
    max_length: int | None = Field(None, ge=8, description="transformers: token cap (default the model's)")

    @model_validator(mode="after")
    def _fields_fit_the_backend(self) -> CategorySettings:
        foreign = [
            name
            for backend, names in _BACKEND_FIELDS.items()
            if backend != self.backend
            for name in names
            if getattr(self, name) is not None
        ]
        if foreign:
            raise ValueError(
                f"backend {self.backend} does not take {', '.join(foreign)} "
                "(remove them; in a Helm override, set them to null)"
            )
        if self.backend == "transformers" and (self.model is None or self.label is None):
            raise ValueError("backend transformers needs a model and a label")
        return self


class ModerationCategories(Strict):
    toxicity: CategorySettings = CategorySettings(backend="profanity_check", threshold=0.8)
    prompt_injection: CategorySettings = CategorySettings(backend="nanoguard", threshold=0.98)
    pii: CategorySettings = CategorySettings(backend="regex", threshold=0.5)


class ModerationSettings(Strict):
    categories: ModerationCategories = ModerationCategories()
    max_batch_size: int = Field(256, ge=1)
    max_text_chars: int = Field(16_000, ge=1)
    cpu_threads: int | None = Field(
        None, ge=1, le=256, description="torch threads on CPU; default: every core the replica may use "
        "(Ray alone gives a replica with num_cpus < 1 a single thread)"
    )
    deployment: dict[str, Any] = Field(default_factory=dict)


class ServeSettings(Strict):
    grpc_port: int = Field(9000, ge=1, le=65535)
    http_port: int = Field(8000, ge=1, le=65535)
    host: str = Field(
        "127.0.0.1",
        description="address the local stack's Serve ingress binds (HTTP, and gRPC through HAProxy on the fast "
        "path; Serve's own gRPC proxy binds [::] whatever it says); a loopback address also keeps "
        "its whole Ray cluster (GCS, raylet, agents, workers, metrics) on loopback. Unused on Kubernetes, where "
        "proxies bind all of a pod's interfaces",
    )
    request_timeout_s: float = Field(120.0, gt=0)
    num_cpus: float | None = Field(None, description="CPUs for the local Ray cluster; default all")
    fast_path: bool = Field(
        True,
        description="Serve's HAProxy ingress + throughput-optimized mode (RAY_SERVE_ENABLE_HA_PROXY, "
        "RAY_SERVE_THROUGHPUT_OPTIMIZED); false: Serve's Python gRPC proxy (see README, Serve's fast path)",
    )
    startup_timeout_s: float = Field(
        120.0, gt=0, description="how long `up` waits for services; pending ones are then reported, not awaited"
    )
    metrics_export_port: int | None = Field(
        9465, ge=1, le=65535,
        description="Ray's Prometheus endpoint (ray_serve_* and ragrail_service_* metrics) for `make observe`; "
        "null = a random port",
    )


class AuthSettings(Strict):
    enabled: bool = Field(False, description="require 'authorization: Bearer <key>' (on in the Helm chart)")
    keys_file: str | None = Field(None, description="YAML of hashed keys (see ragrail.gateway.auth)")


class TlsSettings(Strict):
    cert_file: str | None = Field(None, description="PEM certificate chain; set with key_file to enable TLS")
    key_file: str | None = None
    client_ca_file: str | None = Field(None, description="PEM CA bundle: require client certificates (mTLS)")


class ResilienceSettings(Strict):
    failure_threshold: int = Field(5, ge=1, description="consecutive failures that open a service's circuit")
    cooldown_s: float = Field(10.0, gt=0, description="how long a circuit stays open before one probe")
    retry_budget_ratio: float = Field(0.1, ge=0, le=1, description="retries may add at most this much load")


class AdmissionClassSettings(Strict):
    max_in_flight: int = Field(ge=1, description="RPCs of this class processed at once")
    max_queue: int = Field(ge=0, description="RPCs waiting for a slot beyond that; more get RESOURCE_EXHAUSTED")
    max_wait_s: float = Field(gt=0, description="longest wait in the queue (a shorter caller deadline wins)")


class GatewayAdmissionSettings(Strict):
    """Front-door bounds, applied by ragrail.gateway.interceptors before a handler runs.

    Excess is refused at once with RESOURCE_EXHAUSTED and a ``retry-after`` trailer. Ingest has a
    class of its own so a bulk ingest (0.7-2 s per 256-chunk upsert, measured) cannot take the
    slots live queries need; each pipeline's own ``admission`` still applies inside ``query``.
    """

    max_concurrent_rpcs: int = Field(
        256, ge=1, description="RPCs (health and reflection aside) in flight at once; more are refused before "
        "their request is read. grpc's own hard limit is set this plus 64 (for health checks)"
    )
    retry_after_s: float = Field(1.0, gt=0, description="the retry-after hint sent with a refusal")
    query: AdmissionClassSettings = AdmissionClassSettings(max_in_flight=64, max_queue=64, max_wait_s=30.0)
    ingest: AdmissionClassSettings = AdmissionClassSettings(max_in_flight=2, max_queue=4, max_wait_s=60.0)

    @model_validator(mode="after")
    def _classes_fit(self) -> GatewayAdmissionSettings:
        # A class that could fill every RPC slot with its running and queued calls would starve
        # the others: ingest alone must never lock queries (or Status) out.
        for name in ("query", "ingest"):
            c: AdmissionClassSettings = getattr(self, name)
            if c.max_in_flight + c.max_queue >= self.max_concurrent_rpcs:
                raise ValueError(
                    f"admission.{name}: max_in_flight + max_queue ({c.max_in_flight + c.max_queue}) must be "
                    f"below admission.max_concurrent_rpcs ({self.max_concurrent_rpcs})"
                )
        return self


class FeedbackSettings(Strict):
    """Where ratings and answer attributions live, and how much of them (ragrail.gateway.feedback).

    SQLite (a file, the local default) serves one gateway process; with several replicas set
    ``url`` to a PostgreSQL database every replica reaches, so a rating sent to any pod is
    attributed and nothing is lost when a pod goes.
    """

    url: str | None = Field(
        None, description="postgresql://user@host/db (or sqlite:///path); default: SQLite at gateway.feedback_db. "
        "`ragrail gateway` also reads RAGRAIL_FEEDBACK_URL (from a Secret), used when this is unset"
    )
    retention_days: float = Field(90.0, gt=0, description="ratings older than this are deleted")
    attribution_hours: float = Field(
        72.0, gt=0, description="how long after an answer a rating is still attributed to its pipeline version "
        "(one stored row per answer, deleted after this)"
    )
    sweep_interval_s: float = Field(60.0, gt=0, description="how often expired rows are deleted")
    sweep_batch: int = Field(
        5000, ge=1, description="most rows deleted per table per sweep, so a sweep never holds the database long"
    )
    per_key_limit: int = Field(
        600, ge=1, description="ratings one API key may store per per_key_window_s, counted over all replicas; "
        "more are refused with RESOURCE_EXHAUSTED (the anonymous caller of disabled auth is not limited)"
    )
    per_key_window_s: float = Field(3600.0, gt=0, description="the window of per_key_limit")
    pool_size: int = Field(4, ge=1, le=64, description="PostgreSQL: connections per gateway process")
    statement_timeout_s: float = Field(
        5.0, gt=0, description="PostgreSQL: longest a statement or a wait for a pooled connection may take"
    )
    connect_timeout_s: float = Field(
        10.0, gt=0, description="PostgreSQL: how long the gateway waits for the database at start before it "
        "exits with an error (and Kubernetes restarts it)"
    )


class IngestSettings(Strict):
    """How the gateway runs an ingest (ragrail.gateway.ingestion.Pipelining): embedding overlapped
    with upserts, upserts sized by bytes, documents of one call side by side."""

    pipelined: bool = Field(
        True, description="upsert a document's batch k while batch k+1 is embedded, and run documents_in_flight "
        "documents of a call at once; false: the sequential path (each document embedded whole, one call at a time, "
        "then upserted; one document after another), kept as a benchmark baseline"
    )
    upsert_batch_bytes: int = Field(
        2 * 1024 * 1024, ge=64 * 1024, le=3 * 1024 * 1024, description="most bytes per Upsert call (estimated: "
        "float32 vectors, UTF-8 texts, payload keys); Ray Serve replicas' gRPC servers accept 4 MiB by default "
        "(RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH)"
    )
    upsert_batch_points: int = Field(
        256, ge=1, le=4096, description="most points per Upsert call (at most retrieval.max_batch_size)"
    )
    batches_in_flight: int = Field(
        2, ge=1, le=16, description="upsert batches of one document held at once (being embedded, waiting or being "
        "upserted): bounds the memory a document's vectors take"
    )
    embed_calls_in_flight: int = Field(
        1, ge=1, le=16, description="Embed calls of one document at once; on CPU more slow the embedding replica "
        "down (2 cores: 22 texts/s at 1, 17 at 2, 11 at 4), on a GPU 2 keeps it busy between calls"
    )
    documents_in_flight: int = Field(
        1, ge=1, le=64, description="documents of one Ingest call ingested at once (each id still one at a time); "
        "1: one after another, so a call's documents commit in request order and a transient failure meets the "
        "document it interrupted, not a neighbour's retry. Callers that send many documents per call gain most "
        "from 2; `ragrail ingest` overlaps documents by sending two calls at once instead"
    )


class GatewaySettings(Strict):
    host: str = "127.0.0.1"
    port: int = Field(50051, ge=0, le=65535)
    metrics_port: int = Field(9464, ge=0, le=65535, description="0 disables /metrics")
    serve_address: str = Field("127.0.0.1:9000", description="Ray Serve gRPC proxy")
    collection: str = "documents"
    max_documents: int = Field(64, ge=1)
    max_document_chars: int = Field(2_000_000, ge=1)
    max_message_bytes: int = Field(16 * 1024 * 1024, ge=1024)
    chunking: Literal["tokens", "chars"] = Field(
        "tokens", description="tokens: the embedding service splits documents in its model's tokens along their "
        "structure (headings carried into each chunk, list items and table rows kept whole, nothing past the "
        "model's window); chars: split here by characters (chunk_chars), as before"
    )
    chunk_tokens: int = Field(200, ge=16, description="most tokens per chunk (capped at the embedding model's window)")
    chunk_overlap_tokens: int = Field(32, ge=0, description="tokens consecutive chunks may share")
    chunk_chars: int = Field(800, ge=50, description="chunking: chars only")
    chunk_overlap_chars: int = Field(120, ge=0, description="chunking: chars only")
    ingest: IngestSettings = IngestSettings()
    pipelines_dir: str | None = Field(None, description="pipeline specs; default: the packaged ones")
    reload_interval_s: float = Field(2.0, gt=0, description="how often the specs folder is checked")
    shutdown_grace_s: float = Field(
        30.0, ge=0, le=3600, description="on SIGTERM/Ctrl-C: health turns NOT_SERVING, new calls are refused and "
        "calls in flight (streams, ingests) get this long to finish before they are cancelled; a second Ctrl-C "
        "stops at once. Keep the pod's terminationGracePeriodSeconds above it"
    )
    max_connection_age_s: float | None = Field(
        300.0, gt=0, description="clients' connections are closed gracefully after this long, so they reconnect "
        "and spread over gateway pods the autoscaler added (gRPC balances per connection); null: never"
    )
    feedback_db: str | None = Field(None, description="SQLite file; default DATA_DIR/feedback.sqlite3")
    feedback: FeedbackSettings = FeedbackSettings()
    prompt_tag_secret: str | None = Field(
        None, description="keys the prompt-injection tags; set it (from a Secret) so gateway replicas agree"
    )
    auth: AuthSettings = AuthSettings()
    tls: TlsSettings = TlsSettings()
    resilience: ResilienceSettings = ResilienceSettings()
    admission: GatewayAdmissionSettings = GatewayAdmissionSettings()


class Settings(Strict):
    data_dir: str = Field("~/.local/share/ragrail", description="state: Qdrant, converted models")
    models_dir: str | None = Field(None, description="converted models; default DATA_DIR/models")
    serve: ServeSettings = ServeSettings()
    gateway: GatewaySettings = GatewaySettings()
    embedding: EmbeddingSettings = EmbeddingSettings()
    retrieval: RetrievalSettings = RetrievalSettings()
    generation: GenerationSettings = GenerationSettings()
    moderation: ModerationSettings = ModerationSettings()

    @model_validator(mode="after")
    def _upserts_fit_the_retrieval_service(self) -> Settings:
        # Otherwise every ingest of a long document fails at its first full batch.
        points, limit = self.gateway.ingest.upsert_batch_points, self.retrieval.max_batch_size
        if points > limit:
            raise ValueError(
                f"gateway.ingest.upsert_batch_points ({points}) must be at most retrieval.max_batch_size ({limit})"
            )
        return self

    @property
    def data_path(self) -> Path:
        return Path(os.path.expanduser(self.data_dir))

    @property
    def models_path(self) -> Path:
        return Path(os.path.expanduser(self.models_dir)) if self.models_dir else self.data_path / "models"

    @property
    def pipelines_path(self) -> Path:
        if self.gateway.pipelines_dir:
            return Path(os.path.expanduser(self.gateway.pipelines_dir))
        return Path(str(resources.files("ragrail").joinpath("pipelines")))

    @property
    def feedback_path(self) -> Path:
        return Path(os.path.expanduser(self.gateway.feedback_db or self.data_path / "feedback.sqlite3"))

    @property
    def feedback_target(self) -> str:
        """The feedback store: its URL when one is set, else the SQLite file's path."""
        return self.gateway.feedback.url or str(self.feedback_path)

    @property
    def qdrant_path(self) -> Path:
        return Path(os.path.expanduser(self.retrieval.qdrant_path or self.data_path / "qdrant"))


def load_settings(path: str | os.PathLike[str] | None = None, **overrides: Any) -> Settings:
    """Reads the YAML config (the packaged default when path is None).

    ``RAGRAIL_DATA_DIR`` and ``RAGRAIL_MODELS_DIR`` override the config file; keyword overrides are merged
    into the top level (used by the CLI's flags and by tests).
    """
    if path is None:
        text = resources.files("ragrail.config").joinpath(DEFAULT_CONFIG).read_text()
        source = f"(packaged) {DEFAULT_CONFIG}"
    else:
        text = Path(path).read_text()
        source = str(path)
    raw = yaml.safe_load(text) or {}
    if not isinstance(raw, dict):
        raise InvalidArgument(f"{source}: top level must be a mapping")
    for key in ("data_dir", "models_dir"):
        if os.environ.get(f"RAGRAIL_{key.upper()}"):
            raw[key] = os.environ[f"RAGRAIL_{key.upper()}"]
    _deep_merge(raw, overrides)
    try:
        return Settings.model_validate(raw)
    except ValidationError as exc:
        raise InvalidArgument(f"invalid config {source}: {exc}") from exc


# Secrets a deployment hands the gateway in its environment (from Kubernetes Secrets, so they sit
# in no ConfigMap): variable -> the gateway setting it fills when the config leaves it unset.
GATEWAY_SECRET_ENV: dict[str, tuple[str, ...]] = {
    "RAGRAIL_PROMPT_TAG_SECRET": ("prompt_tag_secret",),
    "RAGRAIL_FEEDBACK_URL": ("feedback", "url"),
}


def with_gateway_secrets(settings: Settings, environ: Mapping[str, str]) -> Settings:
    """``settings`` with each unset secret of GATEWAY_SECRET_ENV taken from ``environ``; the config wins."""
    gateway = settings.gateway
    for variable, path in GATEWAY_SECRET_ENV.items():
        value = environ.get(variable)
        if value and _get(gateway, path) is None:
            gateway = _replace(gateway, path, value)
    return settings.model_copy(update={"gateway": gateway})


def _get(model: BaseModel, path: tuple[str, ...]) -> Any:
    for name in path:
        model = getattr(model, name)
    return model


def _replace(model: Any, path: tuple[str, ...], value: Any) -> Any:
    """A copy of frozen ``model`` with the field at ``path`` set to ``value``."""
    head, *rest = path
    new = _replace(getattr(model, head), tuple(rest), value) if rest else value
    return model.model_copy(update={head: new})


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _deep_merge(base[key], value)
        else:
            base[key] = value
