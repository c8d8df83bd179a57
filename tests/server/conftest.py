"""Fixtures: an app over the toy canvas nodes with every folder in a temporary directory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from graph_runtime import Folders
from graph_runtime.executor import Executor
from graph_runtime.server import create_app
from tests.support.toy_nodes import CANVAS, toy_registry
from tests.support.workflows import workflow_dict


@pytest.fixture
def folders(tmp_path: Path) -> dict[str, Path]:
    names = ("output", "input", "temp", "user", "workflows", "models")
    out = {name: tmp_path / name for name in names}
    for p in out.values():
        p.mkdir()
    (out["workflows"] / "shipped_one.json").write_text(
        json.dumps(workflow_dict({}, description="shipped")))
    (out["models"] / "tiny-model").mkdir()
    (out["models"] / "single.safetensors").write_bytes(b"x")
    return out


@pytest.fixture
def run_folders(folders: dict[str, Path]) -> Folders:
    """The same folders as the executor's `Folders`."""
    return Folders(output=folders["output"], input=folders["input"], models=folders["models"],
                   user=folders["user"], temp_dir=folders["temp"])


@pytest.fixture
def app(folders: dict[str, Path], run_folders: Folders) -> Any:
    executor = Executor(toy_registry(CANVAS), folders=run_folders)
    return create_app(executor, workflows_dir=folders["workflows"], max_upload_bytes=2**20)


@pytest_asyncio.fixture
async def client(aiohttp_client: Any, app: Any) -> Any:
    return await aiohttp_client(app)
