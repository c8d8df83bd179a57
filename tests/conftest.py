"""Fixtures shared across folders: the tiny models, each kind built once per session.

A model is built the first time a test asks for it, so runs that need none build none.
"""

from __future__ import annotations

import pytest

from tests.support.tiny_models import (
    TinyModel,
    TinySDXL,
    build_tiny_ddpm,
    build_tiny_sd,
    build_tiny_sd1,
    build_tiny_sd2,
    build_tiny_sdxl,
)


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    """The 32 px Stable Diffusion pipeline for whole-graph runs."""
    return build_tiny_sd(tmp_path_factory.mktemp("models") / "tiny-sd")


@pytest.fixture(scope="session")
def tiny_sd1(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    """The Stable Diffusion pipeline with SD1.x conventions (exports to a single file)."""
    return build_tiny_sd1(tmp_path_factory.mktemp("models") / "tiny-sd1")


@pytest.fixture(scope="session")
def tiny_sd2(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    """The Stable Diffusion pipeline with SD 2.x conventions (exports to a single file)."""
    return build_tiny_sd2(tmp_path_factory.mktemp("models") / "tiny-sd2")


@pytest.fixture(scope="session")
def tiny_ddpm(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    """The unconditional DDPM pipeline."""
    return build_tiny_ddpm(tmp_path_factory.mktemp("models") / "tiny-ddpm")


@pytest.fixture(scope="session")
def tiny_sdxl(tmp_path_factory: pytest.TempPathFactory) -> TinySDXL:
    """The tiny SDXL base pipeline and its refiner."""
    return build_tiny_sdxl(tmp_path_factory.mktemp("models") / "tiny-sdxl")
