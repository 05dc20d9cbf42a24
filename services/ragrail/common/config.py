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
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ragrail.common.errors import InvalidArgument

DEFAULT_CONFIG = "ragrail.yaml"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EmbeddingSettings(Strict):
    model: str = Field("builtin:all-MiniLM-L6-v2", description="builtin name, hub id or folder")
    device: str = Field("auto", description="auto, cpu or cuda")
    max_batch_size: int = Field(64, ge=1, le=4096)
    max_text_chars: int = Field(8192, ge=1)
    max_tokens: int = Field(256, ge=8, description="window; longer texts are truncated")
    deployment: dict[str, Any] = Field(default_factory=dict)


class RetrievalSettings(Strict):
    qdrant_url: str | None = Field(None, description="Qdrant server URL; unset = embedded")
    qdrant_api_key: str | None = None
    qdrant_path: str | None = Field(None, description="embedded store folder; default DATA_DIR/qdrant")
    prefer_grpc: bool = True
    timeout_s: float = Field(10.0, gt=0)
    max_top_k: int = Field(100, ge=1)
    max_batch_size: int = Field(512, ge=1)
    deployment: dict[str, Any] = Field(default_factory=dict)


class GenerationSettings(Strict):
    model: str = Field("builtin:smollm2-135m-instruct", description="builtin name, hub id or folder")
    revision: str | None = None
    dtype: str = Field("bfloat16", description="float32, bfloat16 or float16")
    device: str = Field("auto", description="auto, cpu or cuda")
    max_new_tokens_limit: int = Field(512, ge=1)
    default_max_new_tokens: int = Field(128, ge=1)
    max_messages: int = Field(64, ge=1)
    max_prompt_chars: int = Field(32_000, ge=1)
    deployment: dict[str, Any] = Field(default_factory=dict)


class ModerationSettings(Strict):
    toxicity_threshold: float = Field(0.8, ge=0, le=1)
    prompt_injection_threshold: float = Field(0.9, ge=0, le=1)
    max_batch_size: int = Field(256, ge=1)
    max_text_chars: int = Field(16_000, ge=1)
    # The injection classifier reads 512 tokens; longer texts are scanned in windows.
    injection_window_chars: int = Field(1500, ge=100)
    deployment: dict[str, Any] = Field(default_factory=dict)


class ServeSettings(Strict):
    grpc_port: int = Field(9000, ge=1, le=65535)
    http_port: int = Field(8000, ge=1, le=65535)
    host: str = "127.0.0.1"
    request_timeout_s: float = Field(120.0, gt=0)
    num_cpus: float | None = Field(None, description="CPUs for the local Ray cluster; default all")


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


class GatewaySettings(Strict):
    host: str = "127.0.0.1"
    port: int = Field(50051, ge=0, le=65535)
    metrics_port: int = Field(9464, ge=0, le=65535, description="0 disables /metrics")
    serve_address: str = Field("127.0.0.1:9000", description="Ray Serve gRPC proxy")
    collection: str = "documents"
    max_query_chars: int = Field(2000, ge=1)
    max_documents: int = Field(64, ge=1)
    max_document_chars: int = Field(2_000_000, ge=1)
    max_message_bytes: int = Field(16 * 1024 * 1024, ge=1024)
    chunk_chars: int = Field(800, ge=50)
    chunk_overlap_chars: int = Field(120, ge=0)
    pipelines_dir: str | None = Field(None, description="pipeline specs; default: the packaged ones")
    reload_interval_s: float = Field(2.0, gt=0, description="how often the specs folder is checked")
    feedback_db: str | None = Field(None, description="SQLite file; default DATA_DIR/feedback.sqlite3")
    prompt_tag_secret: str | None = Field(
        None, description="keys the prompt-injection tags; set it (from a Secret) so gateway replicas agree"
    )
    auth: AuthSettings = AuthSettings()
    tls: TlsSettings = TlsSettings()
    resilience: ResilienceSettings = ResilienceSettings()


class Settings(Strict):
    data_dir: str = Field("~/.local/share/ragrail", description="state: Qdrant, converted models")
    models_dir: str | None = Field(None, description="converted models; default DATA_DIR/models")
    serve: ServeSettings = ServeSettings()
    gateway: GatewaySettings = GatewaySettings()
    embedding: EmbeddingSettings = EmbeddingSettings()
    retrieval: RetrievalSettings = RetrievalSettings()
    generation: GenerationSettings = GenerationSettings()
    moderation: ModerationSettings = ModerationSettings()

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


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _deep_merge(base[key], value)
        else:
            base[key] = value
