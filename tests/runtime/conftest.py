"""Fixtures for the engine tests."""

from __future__ import annotations

import pytest
from rt_helpers import make_registry

from graph_runtime.registry import Registry


@pytest.fixture
def reg() -> Registry:
    return make_registry()
