"""Fixtures for whole-graph runs of the shipped node library on the tiny models
(tests/conftest.py builds them): one executor for the session, and quiet diffusers."""

from __future__ import annotations

import os

import pytest

pytest.importorskip("diffusers")

import nodes  # noqa: E402,F401  (registers the node library)
from graph_runtime.cache import OutputCache  # noqa: E402
from graph_runtime.executor import Executor  # noqa: E402
from graph_runtime.registry import REGISTRY  # noqa: E402


@pytest.fixture(scope="session")
def executor() -> Executor:
    """One executor (and cache) for the session, as a server process would keep."""
    return Executor(REGISTRY, OutputCache())


@pytest.fixture(scope="session", autouse=True)
def _quiet_diffusers() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from diffusers.utils import logging as dlogging

    dlogging.set_verbosity_error()
    dlogging.disable_progress_bar()
