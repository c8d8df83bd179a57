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
    assert {k: seen[k] for k in ("host", "port")} == {"host": "0.0.0.0", "port": 9999}
    assert executor.folders.output == tmp_path and executor.folders.models == tmp_path / "m"
    assert executor.cache.budgets["cpu"] == 2**30  # the flag wins over the environment
    assert "Const" in executor.registry
    assert os.environ["NOODLE_CACHE_CPU_BYTES"] == "8G"  # and nothing is exported


# ---------------------------------------------------------------------------- bad input
BAD_FILES = {
    "deep.json": "[" * 990 + "]" * 990,
    "nan.json": '{"format": "noodle.workflow", "version": 1, "nodes": {"1": '
                '{"type": "Const", "inputs": {"value": NaN}}}}',
    "digits.json": '{"format": "noodle.workflow", "version": 1, "nodes": {"1": '
                   '{"type": "Const", "inputs": {"value": ' + "9" * 5000 + "}}}}",
    "surrogate.json": '{"format": "noodle.workflow", "version": 1, "nodes": {"\\ud800": '
                      '{"type": "Const"}}}',
    "ids.json": json.dumps({"format": "noodle.workflow", "version": 1, "nodes": {
        "²": {"type": "Const", "inputs": {"value": 10**400}},
        "3": {"type": "Sink", "inputs": {"value": {"from": "²", "output": "value"}}}}}),
    "garbage.json": "\x00\xff not json",
    "empty.json": "",
}


def outcome(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, dict, str]:
    """Exit code, the JSON error object (of a failed command), and everything printed."""
    code = cli.main(argv)
    out, err = capsys.readouterr()
    stream = out if "--json" in argv else err
    report = json.loads(stream.strip().splitlines()[-1]) if code else {}
    return code, report, out + err


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_files_exit_2_with_json_and_no_traceback(
        name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        global_registry: Registry) -> None:
    path = tmp_path / name
    path.write_bytes(BAD_FILES[name].encode("utf-8", "surrogatepass"))
    for argv in (["validate", str(path), "--json"], ["validate", str(path)],
                 ["run", str(path), "--json"], ["run", str(path)], ["import", str(path)]):
        argv = [*argv, "--nodes", TOY_NODES_MODULE]
        code, report, printed = outcome(capsys, argv)
        if name == "ids.json" and argv[0] == "import":
            assert code == 0  # a readable file converts; its problems are listed
            continue
        assert code == 2, (argv, printed)
        assert report["ok"] is False and report["errors"][0]["code"], printed
        assert "Traceback" not in printed


def test_missing_paths_and_settings_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                           global_registry: Registry) -> None:
    for argv in (["validate", str(tmp_path / "none.json"), "--json"],
                 ["run", str(tmp_path), "--json"],
                 ["validate", str(good(tmp_path)), "--nodes", "no_such_node_library"],
                 ["import", str(good(tmp_path)), "-o", str(tmp_path / "no" / "dir.json")]):
        if "--nodes" not in argv:
            argv = [*argv, "--nodes", TOY_NODES_MODULE]
        code, report, printed = outcome(capsys, argv)
        assert code == 2 and report["errors"], printed
        assert "Traceback" not in printed


def test_an_unexpected_error_is_json_too(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str],
                                         global_registry: Registry) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(cli, "validate", broken)
    path = str(good(tmp_path))
    code, report, printed = outcome(capsys, ["run", path, "--json", "--nodes",
                                             TOY_NODES_MODULE])
    assert code == 1 and report["type"] == "internal_error"
    assert report["errors"][0]["message"] == "RuntimeError: a bug"
    code, report, printed = outcome(capsys, ["validate", path, "--nodes", TOY_NODES_MODULE])
    assert code == 1 and report["errors"][0]["code"] == "internal_error"
    assert "Traceback" not in printed
