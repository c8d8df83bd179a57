"""What nodes may keep beside their outputs (`memo`) and folder-aware `check_inputs` hooks."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated

from graph_runtime import Folders, Int, Registry, Text, memo, node
from graph_runtime.cache import OutputCache
from graph_runtime.executor import Executor
from graph_runtime.graph import validate
from tests.support.workflows import wf


def _registry(reads: list[str]) -> Registry:
    reg = Registry()

    @node("Scaled", output="value", registry=reg)
    def scaled(name: Annotated[str, Text()] = "a",
               factor: Annotated[int, Int(min=0, max=100)] = 1) -> int:
        """A value derived from an expensive read of `name`, times a factor."""

        def read() -> list[int]:
            reads.append(name)
            return [len(name) * 100]

        return memo(f"read:{name}", read)[0] * factor

    def needs_file(literals: Mapping[str, object], folders: Folders) -> dict[str, str]:
        name = literals.get("name")
        if isinstance(name, str) and not (folders.models / name).exists():
            return {"name": f"no file {name!r} in {folders.models}"}
        return {}

    @node("FileName", output="text", registry=reg, check_inputs=needs_file)
    def file_name(name: Annotated[str, Text()] = "") -> str:
        """A name that must exist in the models folder."""
        return name

    @node("Show", output_node=True, registry=reg)
    def show(value: int) -> None:
        """Output node."""

    return reg


def test_a_memo_survives_a_rerun_for_another_input(tmp_path: Path) -> None:
    reads: list[str] = []
    ex = Executor(_registry(reads), cache=OutputCache({"cpu": None}))
    for factor in (1, 2, 3):
        graph = wf({"1": ("Scaled", {"name": "abc", "factor": factor}),
                    "2": ("Show", {"value": {"from": "1", "output": "value"}})})
        result = ex.run(graph, output_dir=tmp_path)
        assert result.ok and result.outputs["1"]["value"] == 300 * factor
    assert reads == ["abc"]  # read once; the factor changes re-ran the node only
    assert any(k.startswith("memo:") for k in ex.cache.keys())


def test_a_memo_is_recomputed_once_evicted(tmp_path: Path) -> None:
    reads: list[str] = []
    ex = Executor(_registry(reads), cache=OutputCache({"cpu": None}))
    graph = wf({"1": ("Scaled", {"name": "abc", "factor": 1}),
                "2": ("Show", {"value": {"from": "1", "output": "value"}})})
    ex.run(graph, output_dir=tmp_path)
    ex.cache.clear()
    assert ex.run(graph, output_dir=tmp_path).ok
    assert reads == ["abc", "abc"]


def test_outside_the_executor_memo_just_computes() -> None:
    calls: list[int] = []
    assert memo("k", lambda: calls.append(1) or 5) == 5
    assert memo("k", lambda: calls.append(1) or 5) == 5
    assert calls == [1, 1]


def test_check_inputs_may_read_the_runs_folders(tmp_path: Path) -> None:
    reg = _registry([])
    (tmp_path / "present.bin").write_bytes(b"x")
    folders = Folders(models=tmp_path)
    ok = wf({"1": ("FileName", {"name": "present.bin"})})
    bad = wf({"1": ("FileName", {"name": "absent.bin"})})
    assert validate(ok, reg, targets=["1"], folders=folders) == []
    errors = validate(bad, reg, targets=["1"], folders=folders)
    assert [(e["node"], e["input"], e["code"]) for e in errors] == [
        ("1", "name", "invalid_combination")]
    assert "absent.bin" in errors[0]["message"]
