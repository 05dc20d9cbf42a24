"""Unit tests for configuration loading (ragrail.common.config) and the packaged config."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

import pytest
import yaml

from ragrail.common.config import DEFAULT_CONFIG, ResilienceSettings, Settings, load_settings
from ragrail.common.errors import InvalidArgument
from ragrail.gateway.specs import load_pipeline_dir

SERVICES = ("embedding", "retrieval", "generation", "moderation")
CORES = 2
PACKAGED_PIPELINES = Path(str(resources.files("ragrail").joinpath("pipelines")))


@pytest.fixture(autouse=True)
def no_env_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAGRAIL_DATA_DIR", raising=False)
    monkeypatch.delenv("RAGRAIL_MODELS_DIR", raising=False)


@pytest.fixture
def packaged_raw() -> dict:
    return yaml.safe_load(resources.files("ragrail.config").joinpath(DEFAULT_CONFIG).read_text())


def write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "ragrail.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_packaged_config_loads() -> None:
    settings = load_settings()
    assert isinstance(settings, Settings)
    assert settings.gateway.pipelines_dir is None
    assert settings.pipelines_path == PACKAGED_PIPELINES
    assert settings.gateway.resilience == ResilienceSettings(
        failure_threshold=5, cooldown_s=10, retry_budget_ratio=0.1
    )
    assert settings.data_dir == "~/.local/share/ragrail"
    assert settings.models_path == settings.data_path / "models"
    assert not str(settings.data_path).startswith("~")


def test_packaged_config_sets_every_service_deployment(packaged_raw: dict) -> None:
    for service in SERVICES:
        assert packaged_raw[service].get("deployment"), f"{service} has no deployment block"


def test_a_file_round_trips(tmp_path: Path, packaged_raw: dict) -> None:
    assert load_settings(write(tmp_path, packaged_raw)) == load_settings()


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert load_settings(path) == Settings()


@pytest.mark.parametrize(
    ("patch", "key"),
    [
        ({"bogus_top_level": 1}, "bogus_top_level"),
        ({"gateway": {"prot": 1}}, "gateway.prot"),
        ({"gateway": {"resilience": {"cooldwn_s": 3}}}, "gateway.resilience.cooldwn_s"),
        ({"gateway": {"auth": {"enable": True}}}, "gateway.auth.enable"),
        # The old inline pipeline settings moved to spec files: the key is now unknown.
        ({"gateway": {"pipelines": {"rag": {"top_k": 3}}}}, "gateway.pipelines"),
        ({"embedding": {"modle": "x"}}, "embedding.modle"),
    ],
)
def test_unknown_key_is_rejected_by_name(tmp_path: Path, patch: dict, key: str) -> None:
    with pytest.raises(InvalidArgument, match=re.escape(key)) as caught:
        load_settings(write(tmp_path, patch))
    assert str(tmp_path) in caught.value.message


@pytest.mark.parametrize(
    ("patch", "key"),
    [
        ({"gateway": {"resilience": {"failure_threshold": 0}}}, "failure_threshold"),
        ({"gateway": {"resilience": {"retry_budget_ratio": 1.5}}}, "retry_budget_ratio"),
        ({"gateway": {"reload_interval_s": 0}}, "reload_interval_s"),
        ({"gateway": {"port": 70000}}, "port"),
    ],
)
def test_invalid_value_is_rejected(tmp_path: Path, patch: dict, key: str) -> None:
    with pytest.raises(InvalidArgument, match=key):
        load_settings(write(tmp_path, patch))


@pytest.mark.parametrize("dtype", ["auto", "float32", "bfloat16", "float16"])
def test_embedding_dtype_is_one_of_the_known_ones(dtype: str) -> None:
    assert load_settings(embedding={"dtype": dtype}).embedding.dtype == dtype


def test_a_bad_embedding_dtype_is_rejected_naming_the_known_ones() -> None:
    with pytest.raises(InvalidArgument, match="embedding.dtype") as caught:
        load_settings(embedding={"dtype": "fp8"})
    assert "'auto', 'float32', 'bfloat16' or 'float16'" in caught.value.message


def test_pipelines_dir_points_at_a_spec_folder(tmp_path: Path) -> None:
    settings = load_settings(gateway={"pipelines_dir": str(tmp_path / "specs")})
    assert settings.pipelines_path == tmp_path / "specs"
    assert load_settings(gateway={"pipelines_dir": "~/specs"}).pipelines_path == Path("~/specs").expanduser()


def test_the_default_pipelines_folder_is_valid() -> None:
    refs = sorted(s.ref for s in load_pipeline_dir(load_settings().pipelines_path).specs)
    assert refs == ["rag@1", "rag@2", "rag@3", "summarize_sentiment@1"]


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(InvalidArgument, match="mapping"):
        load_settings(path)


def test_keyword_overrides_merge_deeply() -> None:
    settings = load_settings(gateway={"port": 0}, serve={"grpc_port": 9100})
    assert settings.gateway.port == 0 and settings.serve.grpc_port == 9100
    assert settings.gateway.collection == "documents"  # siblings survive the merge
    assert settings.gateway.resilience.failure_threshold == 5
    nested = load_settings(gateway={"resilience": {"cooldown_s": 3}})
    assert nested.gateway.resilience.cooldown_s == 3
    assert nested.gateway.resilience.failure_threshold == 5  # nested siblings survive too


def test_data_dir_env_overrides_the_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RAGRAIL_DATA_DIR", str(tmp_path / "state"))
    settings = load_settings()
    assert settings.data_path == tmp_path / "state"
    assert settings.models_path == tmp_path / "state" / "models"
    assert settings.qdrant_path == tmp_path / "state" / "qdrant"


def test_models_dir_env_overrides_only_models(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RAGRAIL_DATA_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("RAGRAIL_MODELS_DIR", str(tmp_path / "models"))
    settings = load_settings()
    assert settings.models_path == tmp_path / "models"
    assert settings.data_path == tmp_path / "state"


def test_env_override_beats_a_config_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = write(tmp_path, {"data_dir": str(tmp_path / "from-file"), "models_dir": str(tmp_path / "m-file")})
    assert load_settings(path).data_path == tmp_path / "from-file"
    monkeypatch.setenv("RAGRAIL_DATA_DIR", str(tmp_path / "from-env"))
    monkeypatch.setenv("RAGRAIL_MODELS_DIR", str(tmp_path / "m-env"))
    settings = load_settings(path)
    assert settings.data_path == tmp_path / "from-env"
    assert settings.models_path == tmp_path / "m-env"


def test_empty_env_value_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAGRAIL_DATA_DIR", "")
    monkeypatch.setenv("RAGRAIL_MODELS_DIR", "")
    assert load_settings() == Settings.model_validate(
        yaml.safe_load(resources.files("ragrail.config").joinpath(DEFAULT_CONFIG).read_text())
    )


def _actor_options(settings: Settings, service: str) -> dict:
    options = getattr(settings, service).deployment.get("ray_actor_options")
    assert isinstance(options, dict), f"{service}.deployment.ray_actor_options is missing"
    return options


def test_services_fit_on_two_cores_without_gpus() -> None:
    settings = load_settings()
    total = 0.0
    for service in SERVICES:
        options = _actor_options(settings, service)
        num_cpus = options.get("num_cpus")
        assert isinstance(num_cpus, int | float), f"{service}: num_cpus must be set"
        assert 0 < num_cpus < 1, f"{service}: num_cpus {num_cpus} must be fractional"
        assert options.get("num_gpus") == 0, f"{service}: num_gpus must be 0"
        total += num_cpus
    assert total <= CORES, f"services reserve {total} CPUs; the stack must fit on {CORES} cores"


def test_services_fit_on_two_cores_at_max_replicas() -> None:
    """Autoscaling up must not ask for CPUs a 2-core machine does not have."""
    settings = load_settings()
    total = 0.0
    for service in SERVICES:
        deployment = getattr(settings, service).deployment
        autoscaling = deployment.get("autoscaling_config") or {}
        replicas = autoscaling.get("max_replicas", deployment.get("num_replicas", 1))
        total += replicas * _actor_options(settings, service)["num_cpus"]
    assert total <= CORES, f"at max replicas the services reserve {total} CPUs (> {CORES})"


def test_every_service_bounds_its_replica_queue(packaged_raw: dict) -> None:
    """Ray's default max_queued_requests is unbounded: overload became 30 s stage timeouts."""
    for service in ("embedding", "retrieval", "generation", "moderation"):
        queued = packaged_raw[service]["deployment"].get("max_queued_requests", -1)
        assert 0 < queued <= 256, f"{service}: max_queued_requests {queued}"
