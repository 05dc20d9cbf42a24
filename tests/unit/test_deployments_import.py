"""Every Ray Serve wrapper imports: the unit tier catches a broken wiring before the stack does."""

from __future__ import annotations

import importlib

import pytest


@pytest.mark.parametrize("service", ["embedding", "retrieval", "generation", "moderation"])
def test_the_deployment_module_imports_and_builds_its_app_factory(service: str) -> None:
    module = importlib.import_module(f"ragrail.{service}.deployment")
    assert callable(module.build_app)
