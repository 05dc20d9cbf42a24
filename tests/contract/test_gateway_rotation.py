"""Secrets that rotate and a start-up that waits, on a real gateway (port 0, fake backends).

- a key removed from the keys file is refused (UNAUTHENTICATED) within the reload interval,
  with no restart; a broken keys file keeps the keys in force; SIGHUP's reload is immediate;
- a renewed TLS certificate is served to new connections, no restart;
- started without wait_ready (``ragrail gateway``), the gateway is up and NOT_SERVING while
  Serve does not answer and turns SERVING once it does.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ragrail.common.config import load_settings
from ragrail.gateway.auth import hash_key
from ragrail.gateway.server import SERVICE_NAME, start_gateway
from ragrail.gateway.v1 import gateway_pb2 as pb
from ragrail.gateway.v1 import gateway_pb2_grpc
from tests.contract.gateway_fixtures import COLLECTION, DOCS, GatewayFactory, Harness, make_pki, spec, write_spec
from tests.unit.fakes import FakeStack

pytestmark = pytest.mark.asyncio(loop_scope="session")

KEY_A, KEY_B = "rg_alpha_rotation_key", "rg_bravo_rotation_key"
INTERVAL_S = 0.2
# Bound on "within the reload interval" on a loaded 2-core CI machine: many intervals.
WITHIN_S = 30 * INTERVAL_S


def entry(name: str, key: str) -> dict:
    return {"name": name, "sha256": hash_key(key), "pipelines": ["*"], "rate_per_s": 1000, "burst": 1000}


def write_keys(path: Path, *entries: dict) -> None:
    """Writes a new file and renames it over the old one, as a Secret volume update does."""
    tmp = path.with_suffix(".new")
    tmp.write_text(yaml.safe_dump({"keys": list(entries)}))
    os.replace(tmp, path)


def bearer(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


def run() -> pb.RunRequest:
    return pb.RunRequest(pipeline="rag", query="Where is Paris?")


async def code_of(call: Awaitable[object]) -> grpc.StatusCode:
    try:
        await call
    except grpc.aio.AioRpcError as err:
        return err.code()
    return grpc.StatusCode.OK


async def until(predicate: Callable[[], Awaitable[bool]], within_s: float) -> float:
    """Seconds until ``predicate`` holds; fails after ``within_s``."""
    start = time.monotonic()
    while not await predicate():
        assert time.monotonic() - start < within_s, f"not within {within_s} s"
        await asyncio.sleep(0.02)
    return time.monotonic() - start


@pytest_asyncio.fixture(loop_scope="session")
async def gateways(tmp_path: Path) -> AsyncIterator[GatewayFactory]:
    factory = GatewayFactory(tmp_path)
    yield factory
    await factory.close()


async def keyed_gateway(gateways: GatewayFactory, tmp_path: Path, interval_s: float) -> tuple[Harness, Path]:
    keys = tmp_path / "keys.yaml"
    write_keys(keys, entry("alpha", KEY_A), entry("bravo", KEY_B))
    h = await gateways(
        [spec("rag")],
        gateway={"auth": {"enabled": True, "keys_file": str(keys)}, "reload_interval_s": interval_s},
    )
    return h, keys


async def test_a_revoked_key_is_refused_within_the_reload_interval(gateways: GatewayFactory, tmp_path: Path) -> None:
    h, keys = await keyed_gateway(gateways, tmp_path, INTERVAL_S)
    stub = h.stub()
    assert await code_of(stub.Run(run(), metadata=bearer(KEY_A), timeout=5)) == grpc.StatusCode.OK
    server = h.gateway.server

    write_keys(keys, entry("bravo", KEY_B))  # alpha revoked

    async def alpha_refused() -> bool:
        return await code_of(stub.Run(run(), metadata=bearer(KEY_A), timeout=5)) == grpc.StatusCode.UNAUTHENTICATED

    await until(alpha_refused, WITHIN_S)
    assert await code_of(stub.Run(run(), metadata=bearer(KEY_B), timeout=5)) == grpc.StatusCode.OK
    assert h.gateway.server is server  # same server, same connection: no restart

    # A key added back is accepted the same way.
    write_keys(keys, entry("bravo", KEY_B), entry("alpha", KEY_A))

    async def alpha_back() -> bool:
        return await code_of(stub.Run(run(), metadata=bearer(KEY_A), timeout=5)) == grpc.StatusCode.OK

    await until(alpha_back, WITHIN_S)


async def test_a_broken_keys_file_keeps_the_keys_in_force(gateways: GatewayFactory, tmp_path: Path) -> None:
    h, keys = await keyed_gateway(gateways, tmp_path, INTERVAL_S)
    auth = h.gateway.servicer.auth
    keys.with_suffix(".new").write_text("keys:\n  - name: alpha\n    sha256: not-a-hash\n")
    os.replace(keys.with_suffix(".new"), keys)
    assert not auth.reload_if_changed(force=True)  # what the watcher does too, once
    assert auth.key_names == ["alpha", "bravo"]
    assert await code_of(h.stub().Run(run(), metadata=bearer(KEY_A), timeout=5)) == grpc.StatusCode.OK


async def test_sighup_reloads_the_keys_at_once(gateways: GatewayFactory, tmp_path: Path) -> None:
    from ragrail.cli.main import _on_sighup

    h, keys = await keyed_gateway(gateways, tmp_path, 3600)  # the watcher would not see it for an hour
    write_keys(keys, entry("bravo", KEY_B))
    _on_sighup(h.gateway)
    code = await code_of(h.stub().Run(run(), metadata=bearer(KEY_A), timeout=5))
    assert code == grpc.StatusCode.UNAUTHENTICATED


async def test_a_renewed_tls_certificate_is_served_to_new_connections(gateways: GatewayFactory, tmp_path: Path) -> None:
    old, new = make_pki(tmp_path / "old"), make_pki(tmp_path / "new")
    live = tmp_path / "live"
    live.mkdir()
    shutil.copy(old.server_cert, live / "tls.crt")
    shutil.copy(old.server_key, live / "tls.key")
    h = await gateways([spec("rag")], gateway={"tls": {"cert_file": str(live / "tls.crt"), "key_file": str(live / "tls.key")}})

    def channel(ca: Path) -> grpc.aio.Channel:
        ch = grpc.aio.secure_channel(h.address, grpc.ssl_channel_credentials(ca.read_bytes()))
        h.channels.append(ch)
        return ch

    assert await code_of(h.stub(channel(old.ca_cert)).Status(pb.StatusRequest(), timeout=5)) == grpc.StatusCode.OK

    for name, source in (("tls.key", new.server_key), ("tls.crt", new.server_cert)):
        shutil.copy(source, live / f"{name}.new")
        os.replace(live / f"{name}.new", live / name)

    # New connections get the new certificate: trusted by the new CA, refused by the old one.
    assert await code_of(h.stub(channel(new.ca_cert)).Status(pb.StatusRequest(), timeout=5)) == grpc.StatusCode.OK
    assert await code_of(h.stub(channel(old.ca_cert)).Status(pb.StatusRequest(), timeout=5)) == grpc.StatusCode.UNAVAILABLE


async def test_without_wait_ready_health_is_not_serving_until_serve_answers(tmp_path: Path) -> None:
    stack = FakeStack()
    await stack.add_texts(COLLECTION, DOCS)
    stack.embedding.faults.unavailable()  # Serve still deploying: every call fails
    pipelines = tmp_path / "pipelines"
    pipelines.mkdir()
    write_spec(pipelines, spec("rag"))
    settings = load_settings(
        None,
        data_dir=str(tmp_path / "data"),
        gateway={"port": 0, "metrics_port": 0, "pipelines_dir": str(pipelines), "reload_interval_s": 3600},
    )
    backends = stack.backends
    gateway = await start_gateway(settings, backends_for=lambda _spec: backends, wait_ready=False)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}")
    try:
        health = health_pb2_grpc.HealthStub(channel)

        async def status() -> int:
            return (await health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=5)).status

        async def tried_twice() -> bool:
            return stack.embedding.faults.attempts >= 2

        await until(tried_twice, 30)  # it retries rather than exiting...
        assert await status() == health_pb2.HealthCheckResponse.NOT_SERVING  # ...and says it is not ready
        assert (await gateway_pb2_grpc.GatewayServiceStub(channel).Status(pb.StatusRequest(), timeout=5)) is not None

        stack.embedding.faults.clear()  # Serve answers now

        async def serving() -> bool:
            return await status() == health_pb2.HealthCheckResponse.SERVING

        await until(serving, 30)
    finally:
        await channel.close()
        await gateway.stop(0)


async def test_with_wait_ready_a_start_that_cannot_reach_serve_fails(tmp_path: Path) -> None:
    """`ragrail up` keeps its fail-fast start (the wait is STARTUP_CALL_TIMEOUT_S there)."""
    from ragrail.common.errors import RagrailError

    stack = FakeStack()
    stack.embedding.faults.unavailable()
    pipelines = tmp_path / "pipelines"
    pipelines.mkdir()
    write_spec(pipelines, spec("rag"))
    settings = load_settings(
        None,
        data_dir=str(tmp_path / "data"),
        gateway={"port": 0, "metrics_port": 0, "pipelines_dir": str(pipelines)},
    )
    backends = stack.backends
    with pytest.raises(RagrailError):
        await start_gateway(settings, backends_for=lambda _spec: backends)
