"""Fixtures for scale-out: the shipped txt2img workflow made small, and a local Ray
instance (2 CPUs, no dashboard, loopback only) shut down after the module."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from graph_runtime.workflow import Workflow, apply_overrides, load_workflow

REPO = Path(__file__).resolve().parents[2]
STEPS = 2


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "ray: tests that start a local Ray instance")


def small_txt2img(seed: int = 0, steps: int = STEPS) -> Workflow:
    """The shipped txt2img on the tiny model, 64x64, with few steps."""
    import nodes  # noqa: F401 - registers the node types the workflow uses

    wf = load_workflow(REPO / "workflows" / "txt2img.json")
    assert not apply_overrides(wf, [f"5.steps={steps}", f"4.seed={seed}"])
    return wf


@pytest.fixture(scope="module")
def ray_instance() -> Iterator[Any]:
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
             log_to_driver=False, configure_logging=False)
    try:
        yield ray
    finally:
        ray.shutdown()
