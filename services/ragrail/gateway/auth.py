"""API keys for the gateway: who is calling, what they may call, how often.

Keys are never stored, only their SHA-256, in a YAML keys file::

    keys:
      - name: billing-service            # shows up in logs/metrics, never the key
        sha256: "<hex sha256 of the secret key>"
        pipelines: ["rag", "summarize_sentiment"]   # or ["*"] for all
        ingest: false                     # may call Ingest (optional, default false)
        rate_per_s: 5                     # token bucket refill rate
        burst: 10                         # bucket size

Ingest writes to the store every pipeline reads from, so it is a scope of its own:
only ``ingest: true`` grants it, never ``pipelines: ["*"]``. A key may be for ingest
only (``pipelines: []``); one that grants nothing is an error. Keys files written
before ``ingest`` existed load unchanged; their ``pipelines: ["ingest"]``, the old
explicit grant, still grants Ingest (with a warning at load to write ``ingest: true``).

The file is validated strictly (unknown fields, duplicate names or hashes and
malformed hashes are errors) so a typo never silently opens or closes access.
``ragrail new-key`` prints a fresh key and its entry.

Callers send ``authorization: Bearer <key>`` as gRPC metadata. Each key has a
token bucket that starts full, holds ``burst`` tokens and refills at
``rate_per_s``; one request takes one token.

Keys rotate without a restart: an Authenticator made ``from_file`` re-reads its file
when the file changes (``watch`` polls it; ``reload_if_changed`` on SIGHUP), so a
revoked key is refused within one poll interval. A file that fails validation
leaves the keys in force as they were (and is logged), never an open door or an
empty key set.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ragrail.common.errors import InvalidArgument, PermissionDenied, ResourceExhausted, Unauthenticated

log = logging.getLogger(__name__)

ANONYMOUS_NAME = "anonymous"
ALL_PIPELINES = "*"
LEGACY_INGEST = "ingest"  # before the `ingest` field, listing this pipeline name granted Ingest
KEY_PREFIX = "rg_"
MISSING_MESSAGE = "missing authorization metadata: send 'authorization: Bearer <key>'"
INVALID_MESSAGE = "invalid API key"  # same text for every failure: no oracle for guessing
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_SHA256 = re.compile(r"[0-9a-f]{64}")


class ApiKeyEntry(BaseModel):
    """One entry of the keys file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    sha256: str
    pipelines: list[Annotated[str, Field(min_length=1)]]
    ingest: bool = False
    rate_per_s: Annotated[float, Field(gt=0)]
    burst: Annotated[int, Field(ge=1)]

    @property
    def may_ingest(self) -> bool:
        return self.ingest or LEGACY_INGEST in self.pipelines

    @model_validator(mode="after")
    def _grants_something(self) -> ApiKeyEntry:
        if not self.pipelines and not self.ingest:
            raise ValueError("pipelines: list at least one pipeline (or '*'), or set ingest: true")
        return self

    @field_validator("name")
    @classmethod
    def _check_name(cls, name: str) -> str:
        # Names become log fields and metric labels: keep them plain.
        if not _NAME.fullmatch(name):
            raise ValueError("must be 1-64 characters of A-Z, a-z, 0-9, '_', '.' or '-'")
        # The anonymous principal of disabled auth is never rate limited; a key
        # with its name would be confused with it.
        if name == ANONYMOUS_NAME:
            raise ValueError(f"{ANONYMOUS_NAME!r} is reserved")
        return name

    @field_validator("sha256")
    @classmethod
    def _check_sha256(cls, digest: str) -> str:
        if not _SHA256.fullmatch(digest):
            raise ValueError("must be 64 lowercase hex characters (see `ragrail new-key`)")
        return digest


class KeysFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    keys: list[ApiKeyEntry]

    @model_validator(mode="after")
    def _unique(self) -> KeysFile:
        for field in ("name", "sha256"):
            seen: set[str] = set()
            for entry in self.keys:
                value = getattr(entry, field)
                if value in seen:
                    shown = value if field == "name" else value[:12] + "..."
                    raise ValueError(f"duplicate {field} {shown!r}")
                seen.add(value)
        return self


def hash_key(secret: str) -> str:
    """The hex SHA-256 stored in the keys file for ``secret``."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def generate_key() -> str:
    """A new random API key (256 bits); the prefix makes leaked keys greppable."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def load_keys(path: str | Path) -> list[ApiKeyEntry]:
    """Reads and validates a keys file; any problem is one-line InvalidArgument."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InvalidArgument(f"keys file {path}: cannot read: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise InvalidArgument(f"keys file {path}: invalid YAML: {_yaml_problem(exc)}") from None
    if not isinstance(raw, dict):
        raise InvalidArgument(f"keys file {path}: expected a mapping with a 'keys' list")
    try:
        keys = KeysFile.model_validate(raw).keys
    except ValidationError as exc:
        raise InvalidArgument(f"keys file {path}: {_first_error(exc)}") from None
    for entry in keys:
        if LEGACY_INGEST in entry.pipelines and not entry.ingest:
            log.warning(
                "keys file %s: key %r grants Ingest by listing %r under pipelines; "
                "write `ingest: true` instead", path, entry.name, LEGACY_INGEST,
            )
    return keys


def _yaml_problem(exc: yaml.YAMLError) -> str:
    problem = getattr(exc, "problem", None) or type(exc).__name__
    mark = getattr(exc, "problem_mark", None)
    return f"{problem} at line {mark.line + 1}" if mark is not None else str(problem)


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"])
    message = error["msg"].removeprefix("Value error, ")
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{where or 'top level'}: {message}{more}"


@dataclass(frozen=True)
class Principal:
    """An authenticated caller, as the rest of the gateway sees it."""

    name: str
    pipelines: frozenset[str]
    ingest: bool = False  # may call Ingest: never implied by ALL_PIPELINES

    def may_call(self, pipeline_name: str) -> bool:
        return ALL_PIPELINES in self.pipelines or pipeline_name in self.pipelines


# Auth off (the local default) means everything is allowed, ingest included.
ANONYMOUS = Principal(name=ANONYMOUS_NAME, pipelines=frozenset({ALL_PIPELINES}), ingest=True)


@dataclass(frozen=True)
class _Key:
    digest: bytes
    principal: Principal
    rate_per_s: float
    burst: int


@dataclass
class _Bucket:
    tokens: float
    updated: float


def _compile(entries: Iterable[ApiKeyEntry]) -> dict[str, _Key]:
    return {
        e.name: _Key(
            digest=bytes.fromhex(e.sha256),
            principal=Principal(name=e.name, pipelines=frozenset(e.pipelines), ingest=e.may_ingest),
            rate_per_s=e.rate_per_s,
            burst=e.burst,
        )
        for e in entries
    }


class Authenticator:
    """Authentication, per-pipeline authorization and per-key rate limiting.

    Thread-safe: grpc.aio calls come from one thread, but a reload may come
    from another, so keys and buckets are guarded by one lock.
    """

    def __init__(
        self,
        keys: list[ApiKeyEntry] | None,
        *,
        enabled: bool,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.enabled = enabled
        self._clock = clock
        self._lock = threading.Lock()
        self._keys = _compile(keys or ())
        self._buckets: dict[str, _Bucket] = {}
        self.keys_file: Path | None = None  # set by from_file: what reload_if_changed re-reads
        self._stamp: _Stamp | None = None

    @classmethod
    def from_file(cls, path: str | Path, enabled: bool = True) -> Authenticator:
        stamp = _stamp(Path(path))  # before reading: a change during the read is seen next poll
        auth = cls(load_keys(path), enabled=enabled)
        auth.keys_file, auth._stamp = Path(path), stamp
        return auth

    @property
    def key_names(self) -> list[str]:
        with self._lock:
            return sorted(self._keys)

    def authenticate(self, metadata: Iterable[tuple[str, str]]) -> Principal:
        """The caller behind ``authorization: Bearer <key>``, or Unauthenticated."""
        if not self.enabled:
            return ANONYMOUS
        header = _authorization(metadata)
        if header is None:
            raise Unauthenticated(MISSING_MESSAGE)
        scheme, _, secret = header.strip().partition(" ")
        secret = secret.strip()
        if scheme.lower() != "bearer" or not secret:
            raise Unauthenticated(INVALID_MESSAGE)
        digest = hashlib.sha256(secret.encode("utf-8")).digest()
        with self._lock:
            keys = list(self._keys.values())
        match: Principal | None = None
        # No early exit: the time taken must not reveal which entry (if any) matched.
        for key in keys:
            if hmac.compare_digest(digest, key.digest):
                match = key.principal
        if match is None:
            raise Unauthenticated(INVALID_MESSAGE)
        return match

    def authorize(self, principal: Principal, pipeline_name: str) -> None:
        if not principal.may_call(pipeline_name):
            raise PermissionDenied(f"key {principal.name!r} may not call pipeline {pipeline_name!r}")

    def authorize_ingest(self, principal: Principal) -> None:
        if not principal.ingest:
            raise PermissionDenied(f"key {principal.name!r} may not ingest (its keys-file entry needs ingest: true)")

    def admit(self, principal: Principal) -> None:
        """Takes one token from the caller's bucket, or raises ResourceExhausted."""
        if not self.enabled or principal.name == ANONYMOUS_NAME:
            return
        with self._lock:
            key = self._keys.get(principal.name)
            if key is None:
                return  # removed by a reload after authenticate; the next call is refused there
            now = self._clock()
            bucket = self._buckets.setdefault(principal.name, _Bucket(float(key.burst), now))
            _refill(bucket, key, now)
            if bucket.tokens >= 1.0:
                bucket.tokens -= 1.0
                return
            retry_after = (1.0 - bucket.tokens) / key.rate_per_s
        raise ResourceExhausted(
            f"rate limit of {key.rate_per_s:g}/s exceeded for key {principal.name!r}",
            retry_after_s=retry_after,
        )

    def reload_if_changed(self, *, force: bool = False) -> bool:
        """Re-reads ``keys_file`` when it changed since the last read (or ``force``: SIGHUP).

        True when new keys are in force. A broken file is logged and the keys in force are
        kept; it is not read again until it changes once more.
        """
        if self.keys_file is None:
            return False
        stamp = _stamp(self.keys_file)
        if stamp == self._stamp and not force:
            return False
        self._stamp = stamp
        try:
            self.reload(self.keys_file)
        except InvalidArgument as exc:
            log.error("API keys not reloaded, the previous keys stay in force: %s", exc.message)
            return False
        log.info("API keys reloaded from %s: %s", self.keys_file, ", ".join(self.key_names) or "(none)")
        return True

    async def watch(self, interval_s: float) -> None:
        """Polls ``keys_file`` every ``interval_s`` (a task of the gateway; cancel to stop).

        Polling the mtime, not inotify: a Kubernetes Secret volume swaps a symlink to a new
        folder, which an inotify watch on the file never sees; ``stat`` follows the link.
        """
        while True:
            await asyncio.sleep(interval_s)
            self.reload_if_changed()

    def reload(self, path: str | Path) -> None:
        """Swaps in a new keys file; on error the old keys stay in force."""
        keys = _compile(load_keys(path))
        with self._lock:
            self._keys = keys
            # Keep surviving buckets so a reload is no way to reset a rate limit.
            self._buckets = {n: b for n, b in self._buckets.items() if n in keys}
            for name, bucket in self._buckets.items():
                bucket.tokens = min(bucket.tokens, float(keys[name].burst))


# What tells a changed keys file apart: mtime, size and inode (a Secret update is a new file).
_Stamp = tuple[int, int, int]


def _stamp(path: Path) -> _Stamp | None:
    try:
        st = os.stat(path)
    except OSError:
        return None  # gone (mid-swap): load_keys reports it if a reload is tried
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def _authorization(metadata: Iterable[tuple[str, str]]) -> str | None:
    # gRPC lowercases metadata keys, but in-process callers and tests may not.
    for key, value in metadata:
        if key.lower() == "authorization":
            return value
    return None


def _refill(bucket: _Bucket, key: _Key, now: float) -> None:
    elapsed = max(0.0, now - bucket.updated)  # a clock that steps back never adds tokens
    bucket.tokens = min(float(key.burst), bucket.tokens + elapsed * key.rate_per_s)
    bucket.updated = now
