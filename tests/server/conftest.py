"""Fixtures: an app over the toy node library with every folder in a temporary directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from toy_nodes import make_registry

from graph_runtime import Folders
from graph_runtime.executor import Executor
from graph_runtime.server import create_app


@pytest.fixture
def folders(tmp_path: Path) -> dict[str, Path]:
    names = ("output", "input", "temp", "user", "workflows", "models")
    out = {name: tmp_path / name for name in names}
    for p in out.values():
        p.mkdir()
    (out["workflows"] / "shipped_one.json").write_text(
        '{"format": "noodle.workflow", "version": 1, "description": "shipped", "nodes": {}}')
    (out["models"] / "tiny-model").mkdir()
    (out["models"] / "single.safetensors").write_bytes(b"x")
    return out


def folders_of(folders: dict[str, Path]) -> Folders:
    return Folders(output=folders["output"], input=folders["input"], models=folders["models"],
                   user=folders["user"], temp_dir=folders["temp"])


@pytest.fixture
def app(folders: dict[str, Path]) -> Any:
    executor = Executor(make_registry(), folders=folders_of(folders))
    return create_app(executor, workflows_dir=folders["workflows"], max_upload_bytes=2**20)


@pytest_asyncio.fixture
async def client(aiohttp_client: Any, app: Any) -> Any:
    return await aiohttp_client(app)
