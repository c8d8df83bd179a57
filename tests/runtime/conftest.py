"""Fixtures for the engine tests."""

from __future__ import annotations

import pytest

from graph_runtime.registry import Registry
from tests.support.toy_nodes import ENGINE, toy_registry


@pytest.fixture
def reg() -> Registry:
    """A private registry of the engine's toy nodes."""
    return toy_registry(ENGINE)
