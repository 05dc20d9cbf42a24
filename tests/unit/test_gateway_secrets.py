"""Secrets the gateway takes at start or re-reads: the prompt-tag key from the environment,
the keys file's change detection, the TLS pair's reload rules (no server here; the
contract tests in tests/contract/test_gateway_rotation.py run them on a real one)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest
import yaml

from ragrail.common.config import Settings
from ragrail.gateway.auth import Authenticator, hash_key


def _args(tmp_path: Path) -> argparse.Namespace:
    config = tmp_path / "ragrail.yaml"
    config.write_text(yaml.safe_dump({"gateway": {"port": 0}}))
    return argparse.Namespace(config=str(config), pipelines=None)


def _gateway_settings(args: argparse.Namespace) -> Settings:
    """What `ragrail gateway` starts its gateway with."""
    from ragrail.cli.main import _gateway_settings, _settings

    return _gateway_settings(_settings(args))


def test_prompt_tag_secret_comes_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ragrail.cli.main import PROMPT_TAG_SECRET_ENV

    monkeypatch.delenv(PROMPT_TAG_SECRET_ENV, raising=False)
    assert _gateway_settings(_args(tmp_path)).gateway.prompt_tag_secret is None
    monkeypatch.setenv(PROMPT_TAG_SECRET_ENV, "from-the-secret")
    assert _gateway_settings(_args(tmp_path)).gateway.prompt_tag_secret == "from-the-secret"


def test_a_prompt_tag_secret_in_the_config_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ragrail.cli.main import PROMPT_TAG_SECRET_ENV

    args = _args(tmp_path)
    Path(args.config).write_text(yaml.safe_dump({"gateway": {"prompt_tag_secret": "in-config"}}))
    monkeypatch.setenv(PROMPT_TAG_SECRET_ENV, "from-the-secret")
    assert _gateway_settings(args).gateway.prompt_tag_secret == "in-config"


def test_the_feedback_url_comes_from_the_environment_unless_configured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ragrail.cli.main import FEEDBACK_URL_ENV

    args = _args(tmp_path)
    monkeypatch.delenv(FEEDBACK_URL_ENV, raising=False)
    settings = _gateway_settings(args)
    assert settings.gateway.feedback.url is None
    assert settings.feedback_target == str(settings.feedback_path)  # SQLite, the local default
    monkeypatch.setenv(FEEDBACK_URL_ENV, "postgresql://app@db/ragrail")
    settings = _gateway_settings(args)
    assert settings.feedback_target == "postgresql://app@db/ragrail"
    assert settings.gateway.port == 0  # the rest of the config is kept
    Path(args.config).write_text(yaml.safe_dump({"gateway": {"feedback": {"url": "postgresql://cfg@db/x"}}}))
    assert _gateway_settings(args).feedback_target == "postgresql://cfg@db/x"


def test_ragrail_up_gives_its_gateway_the_feedback_url_and_its_serve_apps_no_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ragrail import stack
    from ragrail.cli import main as cli
    from ragrail.common import models

    started: dict[str, Settings] = {}

    class FakeStack:  # no Ray: what `up` hands the Serve applications is all this test needs
        temp_dir = str(tmp_path)

        def __init__(self, settings: Settings) -> None:
            started["serve"] = settings

        def start(self) -> None: ...

        def stop(self) -> None: ...

    async def serve_gateway(settings: Settings, *args: object, **kwargs: object) -> int:
        started["gateway"] = settings
        return 0

    monkeypatch.setattr(stack, "LocalStack", FakeStack)
    monkeypatch.setattr(models, "prepare_builtin_models", lambda path: [])
    monkeypatch.setattr(cli, "_serve_gateway", serve_gateway)
    monkeypatch.setenv(cli.FEEDBACK_URL_ENV, "postgresql://app:s3cret@db/ragrail")
    monkeypatch.setenv(cli.PROMPT_TAG_SECRET_ENV, "tag-key")
    args = _args(tmp_path)
    args.no_sample, args.health_host, args.health_port = True, None, None

    assert cli._cmd_up(args) == 0
    assert started["gateway"].feedback_target == "postgresql://app:s3cret@db/ragrail"
    assert started["gateway"].gateway.prompt_tag_secret == "tag-key"
    # The Serve applications' args (shown by Ray's state API) hold neither.
    serve_args = started["serve"].model_dump_json()
    assert "s3cret" not in serve_args and "tag-key" not in serve_args


def _keys(path: Path, *names: str) -> None:

    entries = [{"name": n, "sha256": hash_key(f"rg_{n}"), "pipelines": ["*"], "rate_per_s": 1, "burst": 1} for n in names]
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump({"keys": entries}))
    os.replace(tmp, path)  # a new inode, as a Secret volume update makes


def test_keys_reload_only_when_the_file_changed(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    _keys(path, "alpha", "bravo")
    auth = Authenticator.from_file(path)
    assert not auth.reload_if_changed()  # unchanged: nothing read
    _keys(path, "bravo")
    assert auth.reload_if_changed()
    assert auth.key_names == ["bravo"]
    assert not auth.reload_if_changed()
    assert auth.reload_if_changed(force=True)  # SIGHUP reads it whatever the stamp


def test_a_missing_or_broken_keys_file_keeps_the_keys(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    _keys(path, "alpha")
    auth = Authenticator.from_file(path)
    path.unlink()  # mid-swap
    assert not auth.reload_if_changed()
    path.write_text("keys: [{name: alpha}]\n")
    assert not auth.reload_if_changed()
    assert auth.key_names == ["alpha"]
    _keys(path, "charlie")  # fixed: picked up at the next change
    assert auth.reload_if_changed() and auth.key_names == ["charlie"]


def test_an_authenticator_without_a_file_never_reloads() -> None:
    assert not Authenticator(None, enabled=False).reload_if_changed(force=True)


def test_tls_reloader_hands_grpc_a_new_pair_only_when_the_files_change(tmp_path: Path) -> None:
    from ragrail.gateway.tls import CertificateReloader, TlsFiles
    from tests.contract.gateway_fixtures import make_pki

    old, new = make_pki(tmp_path / "old"), make_pki(tmp_path / "new")
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    cert.write_bytes(old.server_cert.read_bytes())
    key.write_bytes(old.server_key.read_bytes())
    reloader = CertificateReloader(TlsFiles(cert, key))
    reloader.credentials()
    assert reloader.fetch() is None
    key.write_bytes(b"half-written")  # the key renewed, not yet complete
    assert reloader.fetch() is None and reloader.reloads == 0  # kept the pair in use
    assert reloader.fetch() is None  # not retried until the files change again
    key.write_bytes(new.server_key.read_bytes())
    cert.write_bytes(new.server_cert.read_bytes())
    assert reloader.fetch() is not None and reloader.reloads == 1
    assert reloader.fetch() is None


def test_tls_reloader_refuses_unreadable_files_at_start(tmp_path: Path) -> None:
    from ragrail.gateway.tls import CertificateReloader, TlsFiles

    with pytest.raises(OSError):
        CertificateReloader(TlsFiles(tmp_path / "missing.crt", tmp_path / "missing.key"))
