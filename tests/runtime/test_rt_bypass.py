"""Bypassed and muted nodes: the engine runs the workflow as if they were taken out."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from graph_runtime.executor import Executor, WorkflowInvalid
from graph_runtime.graph import validate
from graph_runtime.registry import Registry
from graph_runtime.workflow import WorkflowFormatError, dumps, load_workflow
from tests.support.workflows import link, wf, workflow_dict

BYPASS = {"mode": "bypass"}
MUTE = {"mode": "mute"}


def run_ui(reg: Registry, nodes: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    result = Executor(reg).run(wf(nodes), output_dir=tmp_path)
    assert result.ok, result.error
    return result.ui


def test_bypassed_node_gives_the_graph_without_it(reg: Registry, tmp_path: Path) -> None:
    with_bypass = run_ui(reg, {
        "1": ("Const", {"value": 2}),
        "2": ("Add", {"a": link("1", "value"), "b": 10}, BYPASS),
        "3": ("Add", {"a": link("2", "sum"), "b": 5}),
        "4": ("Sink", {"value": link("3", "sum")}),
    }, tmp_path)
    without = run_ui(reg, {
        "1": ("Const", {"value": 2}),
        "3": ("Add", {"a": link("1", "value"), "b": 5}),
        "4": ("Sink", {"value": link("3", "sum")}),
    }, tmp_path)
    assert with_bypass == without == {"4": {"value": [7]}}


def test_first_matching_linked_input_is_passed_through(reg: Registry, tmp_path: Path) -> None:
    ui = run_ui(reg, {
        "1": ("Const", {"value": 3}),
        "2": ("Const", {"value": 4}),
        "3": ("Add", {"b": link("2", "value"), "a": link("1", "value")}, BYPASS),
        "4": ("Sink", {"value": link("3", "sum")}),
    }, tmp_path)
    assert ui == {"4": {"value": [3]}}  # `a` is declared first, whatever the file order


def test_chain_of_bypassed_nodes(reg: Registry, tmp_path: Path) -> None:
    result = Executor(reg).run(wf({
        "1": ("Const", {"value": 6}),
        "2": ("Add", {"a": link("1", "value"), "b": 1}, BYPASS),
        "3": ("Split", {"x": link("2", "sum")}, BYPASS),
        "4": ("Add", {"a": link("3", "high"), "b": 100}, BYPASS),
        "5": ("Sink", {"value": link("4", "sum")}),
    }), output_dir=tmp_path)
    assert result.ui == {"5": {"value": [6]}}
    assert result.executed == ["1", "5"]


def test_no_matching_input_unlinks_the_consumer(reg: Registry, tmp_path: Path) -> None:
    w = wf({
        "1": ("Const", {"value": 2}),
        "2": ("Label", {"x": link("1", "value")}, BYPASS),
        "3": ("TextSink", {"text": link("2", "text")}),
    })
    with pytest.raises(WorkflowInvalid) as info:
        Executor(reg).run(w, output_dir=tmp_path)
    assert [(e["node"], e["input"], e["code"]) for e in info.value.errors] == [
        ("3", "text", "missing_input")]
    assert validate(w, reg) == info.value.errors
    assert "mode" in w.nodes["2"]  # the caller's workflow is left as it was


def test_unlinked_optional_input_takes_its_default(reg: Registry, tmp_path: Path) -> None:
    ui = run_ui(reg, {
        "1": ("Const", {"value": 2}),
        "2": ("Label", {"x": link("1", "value")}, BYPASS),
        "3": ("Sink", {"value": link("1", "value"), "note": link("2", "text")}),
    }, tmp_path)
    assert ui == {"3": {"value": [2]}}


def test_bypassed_unknown_type_is_rewired_by_type(reg: Registry, tmp_path: Path) -> None:
    ui = run_ui(reg, {
        "1": ("Const", {"value": 9}),
        "2": ("NoSuchNode", {"x": link("1", "value")}, BYPASS),
        "3": ("Sink", {"value": link("2", "anything")}),
    }, tmp_path)
    assert ui == {"3": {"value": [9]}}


def test_mute_removes_what_only_it_feeds(reg: Registry, tmp_path: Path) -> None:
    result = Executor(reg).run(wf({
        "1": ("Const", {"value": 2}),
        "2": ("Add", {"a": link("1", "value")}, MUTE),
        "3": ("Split", {"x": link("2", "sum")}),
        "4": ("Sink", {"value": link("3", "low")}),
        "5": ("Sink", {"value": link("1", "value")}),
        "6": ("Sink", {"value": link("1", "value"), "note": link("7", "text")}),
        "7": ("Label", {"x": link("2", "sum")}),
    }), output_dir=tmp_path)
    assert result.ok
    assert result.executed == ["1", "5"]
    assert result.ui == {"5": {"value": [2]}}


def test_muting_every_output_reports_no_outputs(reg: Registry) -> None:
    w = wf({
        "1": ("Const", {"value": 2}),
        "2": ("Sink", {"value": link("1", "value")}, MUTE),
    })
    assert [e["code"] for e in validate(w, reg)] == ["no_outputs"]


@pytest.mark.parametrize("mode", ["active", "Bypass", 4, None, ["mute"]])
def test_invalid_mode_is_a_format_error(mode: Any) -> None:
    data = workflow_dict({"1": ("Const", {"value": 2}, {"mode": mode})})
    with pytest.raises(WorkflowFormatError) as info:
        load_workflow(data)
    assert info.value.where == "nodes['1'].mode"
    assert "bypass" in info.value.message


def test_round_trip_keeps_mode() -> None:
    data = workflow_dict({
        "1": ("Const", {"value": 2}, MUTE),
        "2": ("Sink", {"value": link("1", "value")}, BYPASS),
        "3": ("Const", {"value": 2}),
    })
    again = json.loads(dumps(load_workflow(json.dumps(data))))
    assert again == data
    assert "mode" not in again["nodes"]["3"]
