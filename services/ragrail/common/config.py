"""One configuration file drives the local stack and (later) Kubernetes.

The file is YAML validated strictly: unknown keys are errors, so a typo never
silently falls back to a default. Each service section has a ``deployment``
block passed verbatim to Ray Serve (``autoscaling_config``, ``ray_actor_options``,
``max_ongoing_requests``...), which keeps it translatable to a RayService's
``serveConfigV2``.
"""

from __future__ import annotations

import math
import os
import re
from importlib import resources
from pathlib import Path
from collections.abc import Mapping
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import core_schema as cs

from ragrail.common.errors import InvalidArgument

DEFAULT_CONFIG = "ragrail.yaml"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# Weights' dtype (ragrail.common.models.pick_dtype): auto = bfloat16 on CUDA and on CPUs with native bfloat16 (AMX, AVX512-BF16), else float32.
ModelDtype = Literal["auto", "float32", "bfloat16", "float16"]


# -- Serve deployment options: placement ----------------------------------------------------------
# A service's `deployment` block is Ray Serve's own vocabulary, passed to Serve as written (locally
# and in the RayService's serveConfigV2). The options that decide *where* replicas run are typed
# and checked here, at load, with the rules Ray 2.60 applies only when it deploys (or, for a
# resource no node offers, never: the replica stays pending). Other Serve options pass unchecked.

# Ray's label syntax (ray/_private/label_utils.py): a name, or for a selector value an optional
# `!` and `in(a, b)`.
_LABEL = r"[a-zA-Z0-9]([a-zA-Z0-9_.-]{0,61}[a-zA-Z0-9])?"
_LABEL_KEY = re.compile(rf"^(({_LABEL})(\.({_LABEL}))*/)?{_LABEL}$")
_LABEL_SELECTOR = re.compile(rf"^!?(in)?\({_LABEL}(, ?{_LABEL})*\)$|^!?{_LABEL}$")
# Ray counts resources in units of 1/10,000 (RESOURCE_UNIT_SCALING): a finer fraction is refused.
_RESOURCE_UNIT = 1e-4
# Resources Ray names with keywords of their own (num_cpus, num_gpus, memory) or reserves.
_RESERVED_RESOURCES = {"CPU", "GPU", "memory", "object_store_memory"}
# What `accelerator_type: X` asks of a node: this resource (Ray adds it to nodes it detects X on;
# `ray start --resources '{"accelerator_type:X": 1}'` declares it by hand).
ACCELERATOR_RESOURCE_PREFIX = "accelerator_type:"
MAX_REPLICAS_PER_NODE_LIMIT = 100  # Ray Serve's own bound


def _resource_quantity(value: float, name: str = "") -> float:
    where = f"{name}: " if name else ""
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{where}{value} is not a quantity (finite, at least 0)")
    if value and value < _RESOURCE_UNIT:
        raise ValueError(f"{where}{value} is finer than Ray's resource unit ({_RESOURCE_UNIT:g})")
    return value


class ActorOptions(BaseModel):
    """``ray_actor_options`` of a deployment: what each replica needs from a node (Serve's
    RayActorOptionsSchema, field for field)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    num_cpus: float | None = Field(
        None, ge=0, description="CPUs each replica reserves (fractions share a core; Serve's default is 1)"
    )
    num_gpus: float | None = Field(
        None, ge=0, description="GPUs each replica reserves: a replica lands only on a node offering them; "
        "a fraction (0.25) lets replicas share one device (Ray divides scheduling, not memory)"
    )
    memory: float | None = Field(None, ge=0, description="bytes of memory each replica reserves (scheduling only)")
    accelerator_type: str | None = Field(
        None, min_length=1, description="only nodes with this accelerator (H100, A100, L4... as Ray detects it, "
        "or a node started with the resource accelerator_type:<name>); needs num_gpus > 0"
    )
    resources: dict[str, float] = Field(
        default_factory=dict, description="custom resources each replica reserves, e.g. {\"gpu_pool_a\": 1}: "
        "only nodes that declare them (ray start --resources, KubeRay rayStartParams.resources) take it"
    )
    label_selector: dict[str, str] | None = Field(
        None, description="node labels a replica requires (ray start --labels, KubeRay's group labels), "
        "e.g. {\"ragrail/pool\": \"gpu\"}; a value may be negated or a set: \"!spot\", \"in(a, b)\", \"!in(a, b)\""
    )
    runtime_env: dict[str, Any] | None = Field(None, description="the replica's Ray runtime_env")
    fallback_strategy: list[dict[str, Any]] | None = Field(
        None, description="soft placement: options (label_selector) tried in order when no node meets the first"
    )

    @field_validator("num_cpus", "num_gpus")
    @classmethod
    def _in_ray_units(cls, value: float | None) -> float | None:
        return None if value is None else _resource_quantity(value)

    @field_validator("resources")
    @classmethod
    def _custom_resources(cls, value: dict[str, float]) -> dict[str, float]:
        for name, quantity in value.items():
            if name in _RESERVED_RESOURCES:
                keyword = {"CPU": "num_cpus", "GPU": "num_gpus", "memory": "memory"}.get(name)
                hint = f"use {keyword}" if keyword else "Ray reserves it"
                raise ValueError(f"{name} is not a custom resource ({hint})")
            if not name:
                raise ValueError("a resource needs a name")
            _resource_quantity(quantity, name)
        return value

    @field_validator("label_selector")
    @classmethod
    def _label_syntax(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        for key, selector in (value or {}).items():
            if len(key) > 253 + 1 + 63 or not _LABEL_KEY.match(key):
                raise ValueError(
                    f"{key!r} is not a label key (a name of up to 63 letters, digits, -, _ or ., "
                    "starting and ending alphanumeric, with an optional DNS prefix and /)"
                )
            if selector and not _LABEL_SELECTOR.match(selector):
                raise ValueError(
                    f"{key}: {selector!r} is not a selector: a value, !value, in(a, b) or !in(a, b) "
                    "(values up to 63 letters, digits, -, _ or ., starting and ending alphanumeric)"
                )
        return value

    @model_validator(mode="after")
    def _accelerator_needs_a_gpu(self) -> ActorOptions:
        if self.accelerator_type and not self.num_gpus:
            raise ValueError(
                f"accelerator_type {self.accelerator_type} without num_gpus: the replica would be kept to "
                "those nodes without using their accelerator; set num_gpus (a fraction is fine)"
            )
        return self


class DeploymentOptions(BaseModel):
    """A service's ``deployment`` block: Ray Serve deployment options (DeploymentSchema's fields but
    ``name``, which is ragrail's), passed to Serve as written.

    Checked here: the replica count, queue bounds and everything that decides placement; the
    rest are typed loosely and left to Serve. An unknown name is refused at load.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    num_replicas: Annotated[int, Field(ge=1)] | Literal["auto"] | None = Field(
        None, description="fixed replica count, or \"auto\" (Serve's default autoscaling); "
        "leave unset with autoscaling_config"
    )
    max_ongoing_requests: int | None = Field(None, ge=1, description="requests one replica runs at once")
    max_queued_requests: int | None = Field(
        None, ge=-1, description="requests waiting per caller beyond that; more get RESOURCE_EXHAUSTED (-1: no bound)"
    )
    autoscaling_config: dict[str, Any] | None = Field(
        None, description="Serve's autoscaling: min_replicas, max_replicas, target_ongoing_requests..."
    )
    ray_actor_options: ActorOptions | None = Field(
        None, description="what each replica needs from a node: CPUs, GPUs, accelerator, custom resources, labels"
    )
    max_replicas_per_node: int | None = Field(
        None, ge=1, le=MAX_REPLICAS_PER_NODE_LIMIT,
        description="spread: at most this many replicas of the service on one node (1 = one per node, so "
        "losing a node loses one replica); a replica with no node left to take it stays pending",
    )
    placement_group_bundles: list[dict[str, float]] | None = Field(
        None, min_length=1, description="a placement group per replica, e.g. [{\"CPU\": 1, \"GPU\": 1}]; the "
        "replica runs in the first bundle, which must hold its ray_actor_options"
    )
    placement_group_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] | None = Field(
        None, description="how a replica's bundles are placed over nodes (needs placement_group_bundles)"
    )
    placement_group_bundle_label_selector: list[dict[str, str]] | None = Field(
        None, description="node labels per bundle of placement_group_bundles"
    )
    # Passed to Serve unchecked here (Serve validates them when it deploys).
    backpressure_config: dict[str, Any] | None = Field(None, description="Serve: the HTTP answer when the queue is full")
    user_config: dict[str, Any] | None = Field(None, description="Serve: passed to the deployment's reconfigure")
    graceful_shutdown_wait_loop_s: float | None = Field(None, ge=0, description="Serve: drain poll interval")
    graceful_shutdown_timeout_s: float | None = Field(
        None, ge=0, description="Serve: how long a stopping replica may finish its requests"
    )
    health_check_period_s: float | None = Field(None, gt=0, description="Serve: how often replicas are checked")
    health_check_timeout_s: float | None = Field(
        None, gt=0, description="Serve: how long a health check may take before the replica is replaced"
    )
    logging_config: dict[str, Any] | None = Field(None, description="Serve: this deployment's logging")
    request_router_config: dict[str, Any] | None = Field(None, description="Serve: the request router")
    gang_scheduling_config: dict[str, Any] | None = Field(None, description="Serve: replicas scheduled in gangs")
    deployment_actors: list[dict[str, Any]] | None = Field(None, description="Serve: actors shared by the replicas")
    rolling_update_percentage: float | None = Field(
        None, gt=0, le=1, description="Serve: share of replicas updated at a time"
    )
    max_surge_percent: int | None = Field(
        None, ge=0, le=100, description="Serve: extra replicas allowed during a rolling update (percent)"
    )

    @field_validator("placement_group_bundles")
    @classmethod
    def _bundles(cls, value: list[dict[str, float]] | None) -> list[dict[str, float]] | None:
        for i, bundle in enumerate(value or []):
            if not bundle:
                raise ValueError(f"[{i}] is empty")
            for name, quantity in bundle.items():
                _resource_quantity(quantity, f"[{i}].{name}")
        return value

    @model_validator(mode="after")
    def _placement_fits(self) -> DeploymentOptions:
        if self.placement_group_strategy and not self.placement_group_bundles:
            raise ValueError("placement_group_strategy needs placement_group_bundles")
        if self.placement_group_bundles and self.max_replicas_per_node is not None:
            raise ValueError(
                "max_replicas_per_node and placement_group_bundles do not go together (Ray Serve refuses it); "
                "spread replicas with one or the other"
            )
        if isinstance(self.num_replicas, int) and self.autoscaling_config:
            raise ValueError(
                "num_replicas and autoscaling_config do not go together (Ray Serve refuses it): set one "
                "(in a Helm override, set the other to null)"
            )
        actor = self.ray_actor_options
        if self.placement_group_bundles and actor is not None:
            first = self.placement_group_bundles[0]
            asked = {"CPU": actor.num_cpus or 0, "GPU": actor.num_gpus or 0, **actor.resources}
            short = [f"{k} {v:g} > {first.get(k, 0):g}" for k, v in asked.items() if v > first.get(k, 0)]
            if short:
                raise ValueError(
                    f"ray_actor_options must fit in placement_group_bundles[0] (the replica runs there): {', '.join(short)}"
                )
        return self

    def gpus(self) -> float:
        """GPUs one replica reserves."""
        return float((self.ray_actor_options.num_gpus if self.ray_actor_options else None) or 0)


def _checked_deployment(block: dict[str, Any]) -> dict[str, Any]:
    """Validates a deployment block with DeploymentOptions and keeps it as written (a mapping)."""
    try:
        DeploymentOptions.model_validate(block)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            where = ".".join(str(part) for part in error["loc"])
            message = error["msg"].removeprefix("Value error, ")
            problems.append(f"{where}: {message}" if where else message)
        raise ValueError("; ".join(problems)) from None
    return block


class _DeploymentOptionsSchema:
    """The JSON schema of a deployment block is DeploymentOptions' (values.schema.json shows it)."""

    @classmethod
    def __get_pydantic_json_schema__(cls, schema: cs.CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        return handler(DeploymentOptions.__pydantic_core_schema__)


# A deployment block as Serve takes it (a mapping), checked as DeploymentOptions at load.
ServeDeployment = Annotated[dict[str, Any], AfterValidator(_checked_deployment), _DeploymentOptionsSchema]


def deployment_options(block: Mapping[str, Any]) -> DeploymentOptions:
    """A (validated) deployment block as its typed view."""
    return DeploymentOptions.model_validate(dict(block))


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
    deployment: ServeDeployment = Field(
        default_factory=dict, description="Ray Serve deployment options, passed as written (DeploymentOptions)"
    )


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
    deployment: ServeDeployment = Field(
        default_factory=dict, description="Ray Serve deployment options, passed as written (DeploymentOptions)"
    )

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
    deployment: ServeDeployment = Field(
        default_factory=dict, description="Ray Serve deployment options, passed as written (DeploymentOptions)"
    )


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
    deployment: ServeDeployment = Field(
        default_factory=dict, description="Ray Serve deployment options, passed as written (DeploymentOptions)"
    )


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
    cluster_address: str | None = Field(
        None,
        description="deploy the services onto this existing Ray cluster instead of starting a private one "
        "(`ragrail up --cluster`): what ray.init takes, the GCS host:port seen from a node of that cluster "
        "(or ray://head:10001 from elsewhere). The services go in as a RayService puts them (serveConfigV2); "
        "Ctrl-C removes them and leaves the cluster running. Node-wide settings (num_cpus, fast_path, "
        "metrics_export_port) are then the cluster's own",
    )
    proxy_location: Literal["EveryNode", "HeadOnly"] = Field(
        "EveryNode",
        description="where Serve runs its ingress proxies: EveryNode (any node takes traffic; Kubernetes) or "
        "HeadOnly (one proxy: several nodes on one machine, which would all bind the same ports)",
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
    min_in_flight: int | None = Field(
        None, ge=1, description="steer the class's limit by latency, between this and max_in_flight: it starts "
        "here, grows while runs finish within their pipeline's admission.target_latency_s and shrinks when one "
        "is slower or ends overloaded (stage timeout, overload); the queue then holds at most one limit's worth. "
        "Unset: a fixed max_in_flight"
    )

    @model_validator(mode="after")
    def _floor_below_ceiling(self) -> AdmissionClassSettings:
        if self.min_in_flight is not None and self.min_in_flight > self.max_in_flight:
            raise ValueError(f"min_in_flight ({self.min_in_flight}) is above max_in_flight ({self.max_in_flight})")
        return self


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
        "`ragrail gateway` and `ragrail up` also read RAGRAIL_FEEDBACK_URL (from a Secret), used when this is unset"
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
