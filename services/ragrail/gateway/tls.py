"""The gateway's TLS credentials, re-read when the certificate files change.

grpc's dynamic server credentials ask a callback for the certificate before every TLS
handshake: this one compares the files' stamps (mtime, size, inode; a renewed
cert-manager Secret is a new file behind the same path) and returns a new
configuration only when they changed. Connections already open keep the certificate
they were made with; ``gateway.max_connection_age_s`` bounds how long that is.

grpc parses a configuration only at the handshake that uses it, so a half-written pair
(the key renewed, the chain not yet) would fail handshakes: both PEM blocks are checked
here and a failed read keeps the configuration in force until the files change again.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import grpc

log = logging.getLogger(__name__)

_Stamp = tuple[tuple[int, int, int] | None, ...]


@dataclass(frozen=True)
class TlsFiles:
    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None

    def paths(self) -> tuple[Path, ...]:
        return (self.cert_file, self.key_file, *([self.client_ca_file] if self.client_ca_file else []))


def _stamp(paths: tuple[Path, ...]) -> _Stamp:
    out: list[tuple[int, int, int] | None] = []
    for path in paths:
        try:
            st = os.stat(path)
            out.append((st.st_mtime_ns, st.st_size, st.st_ino))
        except OSError:
            out.append(None)
    return tuple(out)


class CertificateReloader:
    """Builds dynamic server credentials over ``files``; thread-safe (grpc calls the fetcher
    from its own threads)."""

    def __init__(self, files: TlsFiles) -> None:
        self.files = files
        self._lock = threading.Lock()
        self._stamp = _stamp(files.paths())
        self._initial = self._configuration()  # unreadable files at start are fatal: raise
        self.reloads = 0  # configurations handed to grpc after the first (for tests and logs)

    def _configuration(self) -> grpc.ServerCertificateConfiguration:
        f = self.files
        key, chain = f.key_file.read_bytes(), f.cert_file.read_bytes()
        if b"PRIVATE KEY-----" not in key or b"-----BEGIN CERTIFICATE-----" not in chain:
            raise ValueError(f"{f.key_file} / {f.cert_file}: not a PEM private key and certificate chain")
        ca = f.client_ca_file.read_bytes() if f.client_ca_file else None
        return grpc.ssl_server_certificate_configuration([(key, chain)], root_certificates=ca)

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """grpc's callback, before each handshake: a new configuration, or None for no change."""
        with self._lock:
            stamp = _stamp(self.files.paths())
            if stamp == self._stamp:
                return None
            self._stamp = stamp  # a broken pair is not retried until the files change again
            try:
                config = self._configuration()
            except (OSError, ValueError) as exc:
                log.error("TLS certificate not reloaded, the previous one stays in use: %s", exc)
                return None
            self.reloads += 1
        log.info("TLS certificate reloaded from %s", self.files.cert_file)
        return config

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(
            self._initial, self.fetch, require_client_authentication=self.files.client_ca_file is not None
        )
