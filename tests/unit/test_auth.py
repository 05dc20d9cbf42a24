"""Unit tests for ragrail.gateway.auth: keys file, authentication, authorization, rate limits."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml

from ragrail.common.errors import InvalidArgument, PermissionDenied, ResourceExhausted, Unauthenticated
from ragrail.gateway.auth import (
    ANONYMOUS,
    ApiKeyEntry,
    Authenticator,
    Principal,
    generate_key,
    hash_key,
    load_keys,
)

BILLING_KEY = "rg_billing-secret"
OPS_KEY = "rg_ops-secret"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def _entry(name: str, secret: str, pipelines: list[str], rate: float = 2.0, burst: int = 3) -> dict[str, Any]:
    return {"name": name, "sha256": hash_key(secret), "pipelines": pipelines, "rate_per_s": rate, "burst": burst}


def _write(path: Path, entries: list[dict[str, Any]]) -> Path:
    path.write_text(yaml.safe_dump({"keys": entries}, sort_keys=False))
    return path


def _bearer(key: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {key}")]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def keys() -> list[ApiKeyEntry]:
    return [
        ApiKeyEntry.model_validate(_entry("billing", BILLING_KEY, ["rag", "summarize_sentiment"])),
        ApiKeyEntry.model_validate(_entry("ops", OPS_KEY, ["*"], rate=1.0, burst=1)),
    ]


@pytest.fixture
def auth(keys: list[ApiKeyEntry], clock: FakeClock) -> Authenticator:
    return Authenticator(keys, enabled=True, clock=clock)


# --- keys and hashing -------------------------------------------------------------


def test_generate_key_round_trips_through_hash_key() -> None:
    key = generate_key()
    assert key.startswith("rg_") and len(key) > 40
    assert generate_key() != key
    digest = hash_key(key)
    assert len(digest) == 64 and digest == digest.lower()
    entry = ApiKeyEntry(name="new", sha256=digest, pipelines=["*"], rate_per_s=1, burst=1)
    assert Authenticator([entry], enabled=True).authenticate(_bearer(key)).name == "new"


def test_hash_key_is_sha256_hex() -> None:
    assert hash_key("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_from_file_loads_keys(tmp_path: Path) -> None:
    path = _write(tmp_path / "keys.yaml", [_entry("billing", BILLING_KEY, ["rag"])])
    auth = Authenticator.from_file(path)
    assert auth.enabled
    assert auth.authenticate(_bearer(BILLING_KEY)) == Principal("billing", frozenset({"rag"}))


def test_docstring_example_format_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text(
        "keys:\n"
        "  - name: billing-service            # shows up in logs/metrics, never the key\n"
        f'    sha256: "{hash_key(BILLING_KEY)}"\n'
        '    pipelines: ["rag", "summarize_sentiment"]   # or ["*"] for all\n'
        "    rate_per_s: 5\n"
        "    burst: 10\n"
    )
    [entry] = load_keys(path)
    assert entry.name == "billing-service" and entry.rate_per_s == 5 and entry.burst == 10


# --- invalid keys files -------------------------------------------------------------


def _assert_invalid(path: Path, fragment: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        Authenticator.from_file(path)
    message = info.value.message
    assert str(path) in message
    assert fragment in message
    assert "\n" not in message


def test_bad_yaml_is_invalid_argument(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text("keys: [\n  - name: x\n")
    _assert_invalid(path, "invalid YAML")


def test_bad_hash_is_invalid_argument(tmp_path: Path) -> None:
    entry = _entry("billing", BILLING_KEY, ["rag"])
    entry["sha256"] = entry["sha256"].upper()
    _assert_invalid(_write(tmp_path / "keys.yaml", [entry]), "sha256: must be 64 lowercase hex")
    entry["sha256"] = "abc123"
    _assert_invalid(_write(tmp_path / "keys.yaml", [entry]), "sha256: must be 64 lowercase hex")


def test_duplicate_names_are_invalid_argument(tmp_path: Path) -> None:
    entries = [_entry("billing", BILLING_KEY, ["rag"]), _entry("billing", OPS_KEY, ["*"])]
    _assert_invalid(_write(tmp_path / "keys.yaml", entries), "duplicate name 'billing'")


def test_duplicate_hashes_are_invalid_argument(tmp_path: Path) -> None:
    entries = [_entry("billing", BILLING_KEY, ["rag"]), _entry("other", BILLING_KEY, ["*"])]
    _assert_invalid(_write(tmp_path / "keys.yaml", entries), "duplicate sha256")


def test_unknown_key_field_is_invalid_argument(tmp_path: Path) -> None:
    entry = _entry("billing", BILLING_KEY, ["rag"]) | {"rate_per_sec": 3}
    _assert_invalid(_write(tmp_path / "keys.yaml", [entry]), "rate_per_sec")


@pytest.mark.parametrize(
    "content,fragment",
    [
        ("", "expected a mapping"),  # an empty file loads as None
        ("- a\n- b\n", "expected a mapping"),
        ("keys: {}\n", "keys"),
        ("keys: []\nextra: 1\n", "extra"),
    ],
)
def test_wrong_shapes_are_invalid_argument(tmp_path: Path, content: str, fragment: str) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text(content)
    _assert_invalid(path, fragment)


@pytest.mark.parametrize(
    "change,fragment",
    [
        ({"rate_per_s": 0}, "rate_per_s"),
        ({"burst": 0}, "burst"),
        ({"pipelines": []}, "pipelines: list at least one pipeline (or '*'), or set ingest: true"),
        ({"pipelines": [], "ingest": False}, "pipelines"),
        ({"ingest": "sometimes"}, "ingest"),
        ({"name": "anonymous"}, "reserved"),
        ({"name": "has space"}, "name"),
        ({"name": ""}, "name"),
    ],
)
def test_bad_values_are_invalid_argument(tmp_path: Path, change: dict[str, Any], fragment: str) -> None:
    entry = _entry("billing", BILLING_KEY, ["rag"]) | change
    _assert_invalid(_write(tmp_path / "keys.yaml", [entry]), fragment)


def test_missing_file_is_invalid_argument(tmp_path: Path) -> None:
    _assert_invalid(tmp_path / "absent.yaml", "cannot read")


# --- authentication -----------------------------------------------------------------


def test_valid_key_authenticates(auth: Authenticator) -> None:
    principal = auth.authenticate([("x-request-id", "r1"), *_bearer(BILLING_KEY)])
    assert principal == Principal("billing", frozenset({"rag", "summarize_sentiment"}))


def test_missing_header_is_unauthenticated(auth: Authenticator) -> None:
    with pytest.raises(Unauthenticated) as info:
        auth.authenticate([("x-request-id", "r1")])
    assert info.value.message == "missing authorization metadata: send 'authorization: Bearer <key>'"


@pytest.mark.parametrize("value", [f"Basic {BILLING_KEY}", BILLING_KEY, "Bearer", "Bearer  ", f"Token {BILLING_KEY}"])
def test_wrong_scheme_is_unauthenticated(auth: Authenticator, value: str) -> None:
    with pytest.raises(Unauthenticated) as info:
        auth.authenticate([("authorization", value)])
    assert info.value.message == "invalid API key"


def test_unknown_key_is_unauthenticated(auth: Authenticator) -> None:
    with pytest.raises(Unauthenticated) as info:
        auth.authenticate(_bearer("rg_not-a-key"))
    assert info.value.message == "invalid API key"


def test_header_key_and_scheme_are_case_insensitive(auth: Authenticator) -> None:
    assert auth.authenticate([("Authorization", f"bearer {OPS_KEY}")]).name == "ops"
    assert auth.authenticate([("AUTHORIZATION", f"BEARER {OPS_KEY}")]).name == "ops"


def test_key_itself_is_case_sensitive(auth: Authenticator) -> None:
    with pytest.raises(Unauthenticated):
        auth.authenticate(_bearer(OPS_KEY.upper()))


def test_enabled_without_keys_refuses_everyone() -> None:
    with pytest.raises(Unauthenticated):
        Authenticator(None, enabled=True).authenticate(_bearer(BILLING_KEY))


def test_disabled_mode_is_anonymous_and_unlimited(keys: list[ApiKeyEntry], clock: FakeClock) -> None:
    auth = Authenticator(keys, enabled=False, clock=clock)
    principal = auth.authenticate([])
    assert principal == ANONYMOUS == Principal("anonymous", frozenset({"*"}), ingest=True)
    assert auth.authenticate(_bearer("garbage")) == ANONYMOUS
    auth.authorize(principal, "anything")
    auth.authorize_ingest(principal)  # auth off: the local CLI ingests without a key
    for _ in range(100):
        auth.admit(principal)


# --- authorization ------------------------------------------------------------------


def test_authorize_allows_listed_pipelines(auth: Authenticator) -> None:
    principal = auth.authenticate(_bearer(BILLING_KEY))
    auth.authorize(principal, "rag")
    auth.authorize(principal, "summarize_sentiment")


def test_authorize_denies_other_pipelines(auth: Authenticator) -> None:
    principal = auth.authenticate(_bearer(BILLING_KEY))
    with pytest.raises(PermissionDenied) as info:
        auth.authorize(principal, "ingest")
    assert info.value.message == "key 'billing' may not call pipeline 'ingest'"


def test_authorize_star_allows_every_pipeline_but_not_ingest(auth: Authenticator) -> None:
    principal = auth.authenticate(_bearer(OPS_KEY))
    for name in ("rag", "ingest", "whatever"):
        auth.authorize(principal, name)
    with pytest.raises(PermissionDenied) as info:
        auth.authorize_ingest(principal)
    assert info.value.message == "key 'ops' may not ingest (its keys-file entry needs ingest: true)"


def test_ingest_is_granted_only_by_its_own_field(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "keys.yaml",
        [
            _entry("billing", BILLING_KEY, ["*"]) | {"ingest": True},
            _entry("indexer", OPS_KEY, []) | {"ingest": True},  # ingest only
        ],
    )
    auth = Authenticator.from_file(path)
    billing = auth.authenticate(_bearer(BILLING_KEY))
    auth.authorize_ingest(billing)
    auth.authorize(billing, "rag")
    indexer = auth.authenticate(_bearer(OPS_KEY))
    assert indexer == Principal("indexer", frozenset(), ingest=True)
    auth.authorize_ingest(indexer)
    with pytest.raises(PermissionDenied):
        auth.authorize(indexer, "rag")


def test_old_keys_files_load_and_their_explicit_ingest_grant_still_works(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Written before the ``ingest`` field: listing "ingest" under pipelines was how to grant it."""
    path = _write(
        tmp_path / "keys.yaml", [_entry("indexer", BILLING_KEY, ["ingest"]), _entry("ops", OPS_KEY, ["*"])]
    )
    with caplog.at_level(logging.WARNING, logger="ragrail.gateway.auth"):
        auth = Authenticator.from_file(path)
    assert [r.getMessage() for r in caplog.records] == [
        f"keys file {path}: key 'indexer' grants Ingest by listing 'ingest' under pipelines; "
        "write `ingest: true` instead"
    ]
    auth.authorize_ingest(auth.authenticate(_bearer(BILLING_KEY)))
    with pytest.raises(PermissionDenied):
        auth.authorize_ingest(auth.authenticate(_bearer(OPS_KEY)))


# --- rate limiting ------------------------------------------------------------------


def test_bucket_allows_burst_then_refuses(auth: Authenticator) -> None:
    principal = auth.authenticate(_bearer(BILLING_KEY))  # rate 2/s, burst 3
    for _ in range(3):
        auth.admit(principal)
    with pytest.raises(ResourceExhausted) as info:
        auth.admit(principal)
    assert info.value.message == "rate limit of 2/s exceeded for key 'billing'"
    assert info.value.retry_after_s == pytest.approx(0.5)


def test_retry_after_shrinks_as_tokens_refill(auth: Authenticator, clock: FakeClock) -> None:
    principal = auth.authenticate(_bearer(BILLING_KEY))
    for _ in range(3):
        auth.admit(principal)
    clock.advance(0.3)
    with pytest.raises(ResourceExhausted) as info:
        auth.admit(principal)
    assert info.value.retry_after_s == pytest.approx(0.2)
    clock.advance(0.2)
    auth.admit(principal)


def test_bucket_refills_over_time_up_to_burst(auth: Authenticator, clock: FakeClock) -> None:
    principal = auth.authenticate(_bearer(BILLING_KEY))
    for _ in range(3):
        auth.admit(principal)
    clock.advance(1.0)  # 2 tokens back
    auth.admit(principal)
    auth.admit(principal)
    with pytest.raises(ResourceExhausted):
        auth.admit(principal)
    clock.advance(3600)  # capped at burst, not 7200 tokens
    for _ in range(3):
        auth.admit(principal)
    with pytest.raises(ResourceExhausted):
        auth.admit(principal)


def test_buckets_are_per_key(auth: Authenticator) -> None:
    ops = auth.authenticate(_bearer(OPS_KEY))  # burst 1
    billing = auth.authenticate(_bearer(BILLING_KEY))
    auth.admit(ops)
    with pytest.raises(ResourceExhausted) as info:
        auth.admit(ops)
    assert "'ops'" in info.value.message and "1/s" in info.value.message
    auth.admit(billing)


def test_clock_stepping_back_adds_no_tokens(auth: Authenticator, clock: FakeClock) -> None:
    ops = auth.authenticate(_bearer(OPS_KEY))
    auth.admit(ops)
    clock.advance(-10)
    with pytest.raises(ResourceExhausted):
        auth.admit(ops)


def test_admit_is_thread_safe(keys: list[ApiKeyEntry], clock: FakeClock) -> None:
    entry = ApiKeyEntry(name="bulk", sha256=hash_key("rg_bulk"), pipelines=["*"], rate_per_s=1, burst=500)
    auth = Authenticator([entry], enabled=True, clock=clock)
    principal = auth.authenticate(_bearer("rg_bulk"))
    admitted: list[int] = []

    def worker() -> None:
        count = 0
        for _ in range(100):
            try:
                auth.admit(principal)
                count += 1
            except ResourceExhausted:
                pass
        admitted.append(count)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(admitted) == 500


# --- reload -------------------------------------------------------------------------


def test_reload_keeps_working_keys_and_drops_removed(tmp_path: Path, clock: FakeClock) -> None:
    path = _write(tmp_path / "keys.yaml", [_entry("billing", BILLING_KEY, ["rag"]), _entry("ops", OPS_KEY, ["*"])])
    auth = Authenticator.from_file(path)
    auth._clock = clock  # from_file uses the real clock; the bucket check below needs a fake one
    billing = auth.authenticate(_bearer(BILLING_KEY))
    for _ in range(3):
        auth.admit(billing)

    new_key = generate_key()
    _write(path, [_entry("billing", BILLING_KEY, ["rag", "qa"]), _entry("new", new_key, ["*"])])
    auth.reload(path)

    assert auth.key_names == ["billing", "new"]
    reloaded = auth.authenticate(_bearer(BILLING_KEY))
    auth.authorize(reloaded, "qa")
    with pytest.raises(ResourceExhausted):  # the bucket survived: a reload is no reset
        auth.admit(reloaded)
    assert auth.authenticate(_bearer(new_key)).name == "new"
    with pytest.raises(Unauthenticated):
        auth.authenticate(_bearer(OPS_KEY))


def test_reload_clamps_surviving_bucket_to_new_burst(tmp_path: Path, clock: FakeClock) -> None:
    path = _write(tmp_path / "keys.yaml", [_entry("billing", BILLING_KEY, ["rag"], burst=10)])
    auth = Authenticator(load_keys(path), enabled=True, clock=clock)
    billing = auth.authenticate(_bearer(BILLING_KEY))
    auth.admit(billing)  # 9 left
    _write(path, [_entry("billing", BILLING_KEY, ["rag"], burst=2)])
    auth.reload(path)
    auth.admit(billing)
    auth.admit(billing)
    with pytest.raises(ResourceExhausted):
        auth.admit(billing)


def test_failed_reload_keeps_old_keys(tmp_path: Path) -> None:
    path = _write(tmp_path / "keys.yaml", [_entry("billing", BILLING_KEY, ["rag"])])
    auth = Authenticator.from_file(path)
    path.write_text("keys: [oops\n")
    with pytest.raises(InvalidArgument):
        auth.reload(path)
    assert auth.authenticate(_bearer(BILLING_KEY)).name == "billing"


def test_principal_removed_by_reload_is_not_rate_limited_by_stale_bucket(tmp_path: Path, clock: FakeClock) -> None:
    path = _write(tmp_path / "keys.yaml", [_entry("ops", OPS_KEY, ["*"], burst=1)])
    auth = Authenticator(load_keys(path), enabled=True, clock=clock)
    ops = auth.authenticate(_bearer(OPS_KEY))
    _write(path, [])
    auth.reload(path)
    auth.admit(ops)  # in-flight request: admitted; its next call fails authentication
    with pytest.raises(Unauthenticated):
        auth.authenticate(_bearer(OPS_KEY))
