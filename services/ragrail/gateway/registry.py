"""Served pipelines by name and version, traffic splits, and hot reload.

A reload builds a complete new registry from the spec folder and swaps it in
one assignment; a folder that fails validation is rejected whole and the
running versions keep serving.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from ragrail.common.errors import CollectionMissing, NotFound, RagrailError, require
from ragrail.gateway.admission import Admission
from ragrail.gateway.backends import Backends
from ragrail.gateway.pipeline import Pipeline, build_pipeline
from ragrail.gateway.specs import AdmissionSpec, PipelineSet, PipelineSpec, SpecError, load_pipeline_dir
from ragrail.gateway.stages import StageRunner

log = logging.getLogger(__name__)


class PipelineRegistry:
    def __init__(
        self,
        pipelines: list[Pipeline],
        routes: Mapping[str, Mapping[int, int]] | None = None,
        admissions: Mapping[str, Admission] | None = None,
    ) -> None:
        self._by_key = {(p.name, p.version): p for p in pipelines}
        self.routes = {name: dict(split) for name, split in (routes or {}).items()}
        self._highest: dict[str, Pipeline] = {}
        for p in pipelines:
            if p.name not in self._highest or p.version > self._highest[p.name].version:
                self._highest[p.name] = p
        self.admissions = dict(admissions or {})
        for p in pipelines:
            p.resolve = self.resolve  # route stages reach other versions through this registry

    def all(self) -> list[Pipeline]:
        return sorted(self._by_key.values(), key=lambda p: (p.name, p.version))

    def is_default(self, pipeline: Pipeline) -> bool:
        """The version a bare name reaches most often: the heaviest route, else the highest."""
        split = self.routes.get(pipeline.name)
        if split:
            return pipeline.version == max(split, key=lambda v: (split[v], v))
        return self._highest.get(pipeline.name) is pipeline

    def resolve(self, ref: str, caller_key: str = "") -> Pipeline:
        ref = ref.strip()
        require(bool(ref), 'pipeline must not be empty (e.g. "rag" or "rag@1")')
        name, at, version = ref.partition("@")
        if not at:
            return self._route(name, caller_key)
        require(version.isascii() and version.isdigit(), f"pipeline version must be a number, got {version!r}")
        found = self._by_key.get((name, int(version)))
        if found is None:
            raise NotFound(f"unknown pipeline version {ref!r}")
        return found

    def admission(self, pipeline: Pipeline) -> Admission:
        return self.admissions[f"{pipeline.name}@{pipeline.version}"]

    def _route(self, name: str, caller_key: str) -> Pipeline:
        if name not in self._highest:
            raise NotFound(f"unknown pipeline {name!r}; known: {', '.join(sorted(self._highest)) or 'none'}")
        split = self.routes.get(name)
        if not split:
            return self._highest[name]
        return self._by_key[(name, pick_version(split, name, caller_key))]


@dataclass(frozen=True)
class CollectionState:
    """One collection the pipelines search, as the retrieval service reports it."""

    service: str  # the retrieval backend's name (Serve application)
    name: str
    pipelines: tuple[str, ...]  # "rag@1", ...
    state: str  # ready | empty | missing | unknown
    points: int = 0
    detail: str = ""


async def collection_states(registry: PipelineRegistry, timeout_s: float) -> list[CollectionState]:
    """Asks the retrieval service now about every collection a pipeline searches.

    Asked, not remembered from past queries: every replica gives the same answer, and
    one that was ingested into since shows as ready at once.
    """
    groups: dict[tuple[str, str], list[Pipeline]] = {}
    for p in registry.all():
        for collection in p.collections:
            groups.setdefault((p.backends.names["retrieval"], collection), []).append(p)

    async def check(service: str, name: str, pipelines: list[Pipeline]) -> CollectionState:
        refs = tuple(f"{p.name}@{p.version}" for p in pipelines)
        try:
            async with asyncio.timeout(timeout_s):  # also bounds a backend that ignores its deadline
                points = await pipelines[0].backends.retrieval.count(name, timeout_s)
        except CollectionMissing as exc:
            return CollectionState(service, name, refs, "missing", detail=exc.message)
        except RagrailError as exc:
            return CollectionState(service, name, refs, "unknown", detail=exc.message)
        except TimeoutError:
            return CollectionState(service, name, refs, "unknown", detail=f"no answer within {timeout_s:.1f} s")
        return CollectionState(service, name, refs, "ready" if points else "empty", points)

    return list(await asyncio.gather(*(check(s, n, ps) for (s, n), ps in sorted(groups.items()))))


def pick_version(split: Mapping[int, int], name: str, caller_key: str) -> int:
    """Weighted choice, sticky per caller: the same key always lands on the same version."""
    total = sum(split.values())
    if caller_key:
        digest = hashlib.sha256(f"{name}\x00{caller_key}".encode()).digest()
        point = int.from_bytes(digest[:8], "big") % total
    else:
        point = random.randrange(total)
    for version in sorted(split):
        point -= split[version]
        if point < 0:
            return version
    raise AssertionError("weights exhausted")  # unreachable: point < total


def admission_for(spec: PipelineSpec) -> Admission:
    policy = spec.admission
    return Admission(spec.ref, policy.max_in_flight, policy.max_queue, max_queue_wait_s=policy.max_queue_wait_s)


class RegistryLoader:
    """Builds registries from a spec folder; reuses admission slots across reloads."""

    def __init__(
        self,
        directory: Path,
        backends_for: Callable[[PipelineSpec], Backends],
        runner: StageRunner,
        tag_key: bytes = b"",
    ) -> None:
        self.directory = directory
        # One key for every pipeline and reload, so prompts (and answers) stay stable.
        self.tag_key = tag_key or secrets.token_bytes(32)
        self.backends_for = backends_for
        self.runner = runner
        self.last_error = ""
        self._signature: tuple[tuple[str, float, int], ...] = ()
        self._admissions: dict[str, tuple[AdmissionSpec, Admission]] = {}

    def load(self) -> PipelineRegistry:
        """Raises SpecError when the folder is invalid."""
        self._signature = self.signature()
        pipeline_set = load_pipeline_dir(self.directory)
        self.last_error = ""
        return self.build(pipeline_set)

    def build(self, pipeline_set: PipelineSet) -> PipelineRegistry:
        pipelines = [
            build_pipeline(spec, self.backends_for(spec), self.runner, self.tag_key) for spec in pipeline_set.specs
        ]
        admissions = {}
        for spec in pipeline_set.specs:
            old = self._admissions.get(spec.ref)
            # An unchanged policy keeps its Admission: its slots, queue and learned limit.
            admissions[spec.ref] = old if old and old[0] == spec.admission else (spec.admission, admission_for(spec))
        self._admissions = admissions
        return PipelineRegistry(pipelines, pipeline_set.routes, {ref: a for ref, (_, a) in admissions.items()})

    def changed(self) -> bool:
        return self.signature() != self._signature

    def signature(self) -> tuple[tuple[str, float, int], ...]:
        try:
            files = sorted(self.directory.glob("*.y*ml"))
            return tuple((p.name, p.stat().st_mtime, p.stat().st_size) for p in files)
        except OSError:
            return ()

    def try_reload(self) -> PipelineRegistry | None:
        """A new registry, or None (logged, counted by the caller) when the folder is broken."""
        try:
            return self.load()
        except SpecError as exc:
            self.last_error = str(exc)
            log.error("pipeline specs in %s rejected, keeping the running versions: %s", self.directory, exc)
            return None
