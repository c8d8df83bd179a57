"""The `noodle` command as a user runs it: exit codes and --json event lines."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import graph_runtime
from graph_runtime import Registry, cli, registry
from tests.support.command import NOODLE, TOY_NODES_MODULE, noodle_env
from tests.support.workflows import link, write_workflow


def noodle(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*NOODLE, *args], cwd=cwd,
                          env=noodle_env(NOODLE_NODES=TOY_NODES_MODULE),
                          capture_output=True, text=True, timeout=60)


def good(tmp_path: Path) -> Path:
    return write_workflow(tmp_path / "good.json", {
        "1": ("Const", {"value": 4}),
        "2": ("TSteps", {"x": link("1", "value")}),
        "3": ("Sink", {"value": link("2", "value")})})


@pytest.fixture
def global_registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[Registry]:
    """An empty process-wide registry for commands run in this process, so the toy library
    they load never mixes with the node library other tests registered there."""
    fresh = Registry()
    for module in (graph_runtime, registry, cli):
        monkeypatch.setattr(module, "REGISTRY", fresh)
    loaded = sys.modules.pop(TOY_NODES_MODULE, None)
    yield fresh
    sys.modules.pop(TOY_NODES_MODULE, None)
    if loaded is not None:
        sys.modules[TOY_NODES_MODULE] = loaded


def test_run_json_prints_one_event_per_line(tmp_path: Path) -> None:
    proc = noodle("run", str(good(tmp_path)), "--json", "--set", "1.value=9", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    kinds = [e["type"] for e in events]
    assert kinds[0] == "run_started" and kinds[-1] == "run_finished"
    assert kinds.count("progress") == 3 and kinds.count("node_finished") == 3
    assert all(e["preview"] is None for e in events if e["type"] == "progress")
    shown = [e for e in events if e["type"] == "node_finished" and e["node"] == "3"][0]
    assert shown["ui"] == {"value": [9]}
    assert events[-1]["ok"] is True and events[-1]["executed"] == ["1", "2", "3"]


def test_run_human_output_and_target(tmp_path: Path) -> None:
    proc = noodle("run", str(good(tmp_path)), "--target", "1", "--output-dir", "o",
                  cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Const #1" in proc.stderr and "1 executed" in proc.stderr
    assert "TSteps" not in proc.stderr


def test_failing_node_exits_1_with_error_event(tmp_path: Path) -> None:
    path = write_workflow(tmp_path / "bad.json", {
        "1": ("Const", {}),
        "2": ("TFail", {"x": link("1", "value")}),
        "3": ("Sink", {"value": link("2", "value")})})
    proc = noodle("run", str(path), "--json", cwd=tmp_path)
    assert proc.returncode == 1
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    error = [e for e in events if e["type"] == "error"][0]
    assert error["node"] == "2" and error["exception_type"] == "RuntimeError"
    assert error["message"] == "cannot handle 1" and "Traceback" in error["traceback"]
    assert events[-1]["type"] == "run_finished" and events[-1]["ok"] is False
    human = noodle("run", str(path), cwd=tmp_path)
    assert human.returncode == 1 and "cannot handle 1" in human.stderr


def test_invalid_workflow_exits_2(tmp_path: Path) -> None:
    path = good(tmp_path)
    proc = noodle("run", str(path), "--json", "--set", "1.value=500", "--set", "7.x=1",
                  "--set", "2.nope=1", cwd=tmp_path)
    assert proc.returncode == 2
    (line,) = proc.stdout.splitlines()
    report = json.loads(line)
    assert report["ok"] is False
    assert {(e["node"], e["code"]) for e in report["errors"]} == {
        ("7", "unknown_node"), ("1", "value_out_of_range"), ("2", "unknown_input")}
    text = noodle("run", str(path), "--set", "1.value=500", cwd=tmp_path)
    assert text.returncode == 2 and "value_out_of_range" in text.stderr
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    assert noodle("run", str(broken), cwd=tmp_path).returncode == 2


def test_validate_and_nodes(tmp_path: Path) -> None:
    ok = noodle("validate", str(good(tmp_path)), "--json", cwd=tmp_path)
    assert ok.returncode == 0 and json.loads(ok.stdout) == {"ok": True, "errors": []}
    bad = noodle("validate", str(good(tmp_path)), "--json", "--set", "1.value=\"x\"",
                 cwd=tmp_path)
    assert bad.returncode == 2
    assert json.loads(bad.stdout)["errors"][0]["code"] == "invalid_value_type"
    listed = noodle("nodes", "--json", cwd=tmp_path)
    schemas = json.loads(listed.stdout)
    assert listed.returncode == 0 and schemas["Sink"]["output_node"] is True
    assert schemas["Const"]["inputs"][0]["max"] == 100
    human = noodle("nodes", cwd=tmp_path)
    assert "TSteps(x:INT, total:INT) -> value:INT" in human.stdout


def test_serve_hands_its_options_to_the_server(monkeypatch, tmp_path: Path,
                                              global_registry: Registry) -> None:
    import graph_runtime.server as server

    seen: dict = {}
    monkeypatch.setattr(server, "serve", lambda executor, **kw: seen.update(kw, ex=executor))
    monkeypatch.setenv("NOODLE_CACHE_CPU_BYTES", "8G")
    code = cli.main(["serve", "--host", "0.0.0.0", "--port", "9999", "--nodes",
                     TOY_NODES_MODULE, "--output-dir", str(tmp_path), "--cache-cpu-bytes",
                     "1G", "--models-dir", str(tmp_path / "m")])
    assert code == 0
    executor = seen.pop("ex")
    assert seen == {"host": "0.0.0.0", "port": 9999}
    assert executor.folders.output == tmp_path and executor.folders.models == tmp_path / "m"
    assert executor.cache.budgets["cpu"] == 2**30  # the flag wins over the environment
    assert "Const" in executor.registry
    assert os.environ["NOODLE_CACHE_CPU_BYTES"] == "8G"  # and nothing is exported
