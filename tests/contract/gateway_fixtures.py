"""Helpers for the gateway contract tests: a real gateway (port 0) over the unit fakes.

``GatewayFactory`` starts gateways with their own pipelines folder and data dir
under a test's tmp_path; ``make_pki`` writes a throwaway CA, a server
certificate for 127.0.0.1/localhost and a client certificate, all PEM.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import yaml

from ragrail.common.config import Settings, load_settings
from ragrail.gateway.backends import Backends
from ragrail.gateway.server import RunningGateway, start_gateway
from ragrail.gateway.specs import PipelineSpec
from ragrail.gateway.v1 import gateway_pb2_grpc
from tests.unit.fakes import FakeStack

COLLECTION = "documents"
DOCS = {
    "paris.md": "Paris is the capital of France and sits on the Seine.",
    "tickets.md": "Tickets can be refunded in full up to 7 days before departure.",
}


def spec(name: str = "rag", version: int = 1, **overrides: Any) -> dict[str, Any]:
    """A rag spec that always retrieves (threshold -1) and never caches."""
    body: dict[str, Any] = {
        "name": name,
        "version": version,
        "kind": "rag",
        "retrieval": {"score_threshold": -1.0},
        "cache": {"ttl_s": 0},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(body.get(key), dict):
            body[key] = {**body[key], **value}
        else:
            body[key] = value
    return body


def write_spec(folder: Path, body: Mapping[str, Any]) -> Path:
    path = folder / f"{body['name']}@{body['version']}.yaml"
    path.write_text(yaml.safe_dump(dict(body)))
    return path


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


@dataclass
class Harness:
    gateway: RunningGateway
    stack: FakeStack
    settings: Settings
    pipelines_dir: Path
    data_dir: Path
    channels: list[grpc.aio.Channel] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gateway.port}"

    def channel(self) -> grpc.aio.Channel:
        ch = grpc.aio.insecure_channel(self.address)
        self.channels.append(ch)
        return ch

    def stub(self, channel: grpc.aio.Channel | None = None) -> gateway_pb2_grpc.GatewayServiceStub:
        return gateway_pb2_grpc.GatewayServiceStub(channel or self.channel())

    def sample(self, name: str, labels: Mapping[str, str] | None = None) -> float:
        value = self.gateway.servicer.metrics.registry.get_sample_value(name, dict(labels or {}))
        return 0.0 if value is None else value

    async def close(self) -> None:
        for ch in self.channels:
            await ch.close()
        await self.gateway.stop(0)


class GatewayFactory:
    """``await factory(specs, ...)`` starts a gateway; ``close()`` stops them all."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.running: list[Harness] = []

    async def __call__(
        self,
        specs: list[Mapping[str, Any]],
        *,
        stack: FakeStack | None = None,
        routes: Mapping[str, Mapping[int, int]] | None = None,
        gateway: Mapping[str, Any] | None = None,
        backends_for: Callable[[PipelineSpec], Backends] | None = None,
        health_port: int | None = None,
    ) -> Harness:
        n = len(self.running)
        pipelines_dir = self.root / f"pipelines{n}"
        data_dir = self.root / f"data{n}"
        pipelines_dir.mkdir()
        data_dir.mkdir()
        for body in specs:
            write_spec(pipelines_dir, body)
        if routes is not None:
            (pipelines_dir / "routes.yaml").write_text(
                yaml.safe_dump({name: dict(split) for name, split in routes.items()})
            )
        stack = stack or FakeStack()
        await stack.add_texts(COLLECTION, DOCS)
        g = _merge(
            {
                "port": 0,
                "metrics_port": 0,
                "pipelines_dir": str(pipelines_dir),
                # Reloads only when a test asks: the watcher must not race the assertions.
                "reload_interval_s": 3600,
                "feedback_db": str(data_dir / "feedback.sqlite3"),
                # A fixed query limit: the packaged latency-steered one starts at 2 and learns,
                # which only the tests of that behaviour want.
                "admission": {"query": {"min_in_flight": None}},
            },
            gateway or {},
        )
        settings = load_settings(None, data_dir=str(data_dir), gateway=g)
        backends = stack.backends
        running = await start_gateway(
            settings, backends_for=backends_for or (lambda _spec: backends), health_port=health_port
        )
        harness = Harness(running, stack, settings, pipelines_dir, data_dir)
        self.running.append(harness)
        return harness

    async def close(self) -> None:
        for harness in reversed(self.running):
            await harness.close()


# -- certificates ----------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_client_cert: Path  # signed by a CA the server does not trust
    other_client_key: Path


def make_pki(folder: Path) -> Pki:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)

    def key() -> ec.EllipticCurvePrivateKey:
        return ec.generate_private_key(ec.SECP256R1())

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def ca(cn: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        k = key()
        cert = (
            x509.CertificateBuilder()
            .subject_name(name(cn))
            .issuer_name(name(cn))
            .public_key(k.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                    key_encipherment=False, data_encipherment=False, key_agreement=False,
                    encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(k.public_key()), critical=False)
            .sign(k, hashes.SHA256())
        )
        return cert, k

    def leaf(
        cn: str,
        issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
        usage: x509.ObjectIdentifier,
        sans: list[x509.GeneralName] | None = None,
    ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        k = key()
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(cn))
            .issuer_name(issuer[0].subject)
            .public_key(k.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer[1].public_key()), critical=False
            )
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return builder.sign(issuer[1], hashes.SHA256()), k

    def write(stem: str, pair: tuple[x509.Certificate, ec.EllipticCurvePrivateKey]) -> tuple[Path, Path]:
        cert_path, key_path = folder / f"{stem}.crt", folder / f"{stem}.key"
        cert_path.write_bytes(pair[0].public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(
            pair[1].private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        return cert_path, key_path

    root = ca("ragrail test CA")
    server = leaf(
        "localhost",
        root,
        ExtendedKeyUsageOID.SERVER_AUTH,
        [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
    )
    client = leaf("test-client", root, ExtendedKeyUsageOID.CLIENT_AUTH)
    other_root = ca("untrusted CA")
    other_client = leaf("intruder", other_root, ExtendedKeyUsageOID.CLIENT_AUTH)
    ca_cert, _ = write("ca", root)
    server_cert, server_key = write("server", server)
    client_cert, client_key = write("client", client)
    other_cert, other_key = write("other-client", other_client)
    return Pki(ca_cert, server_cert, server_key, client_cert, client_key, other_cert, other_key)
