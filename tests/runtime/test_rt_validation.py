"""Validation: every code from its own case, and all faults reported at once."""

from __future__ import annotations

import pytest

from graph_runtime.executor import Executor, WorkflowInvalid
from graph_runtime.graph import build_graph, validate
from graph_runtime.registry import Registry
from tests.support.workflows import link, wf


def codes(errors: list[dict]) -> list[tuple]:
    return [(e["node"], e["input"], e["code"]) for e in errors]


def test_valid_workflow_has_no_errors(reg: Registry) -> None:
    w = wf({"1": ("Const", {"value": 3}), "2": ("Sink", {"value": link("1", "value")})})
    assert validate(w, reg) == []


@pytest.mark.parametrize(("nodes", "expected"), [
    ({"1": ("Nope", {}), "2": ("Sink", {"value": 1})},
     ("1", None, "unknown_node_type")),
    ({"1": ("Const", {"colour": 3}), "2": ("Sink", {"value": 1})},
     ("1", "colour", "unknown_input")),
    ({"1": ("Add", {}), "2": ("Sink", {"value": 1})},
     ("1", "a", "missing_input")),
    ({"2": ("Sink", {"value": link("7", "value")})},
     ("2", "value", "dangling_link")),
    ({"1": ("Const", {}), "2": ("Sink", {"value": link("1", "nothing")})},
     ("2", "value", "unknown_output")),
    ({"1": ("Label", {"x": 1}), "2": ("Sink", {"value": link("1", "text")})},
     ("2", "value", "type_mismatch")),
    ({"1": ("Const", {"value": "three"}), "2": ("Sink", {"value": 1})},
     ("1", "value", "invalid_value_type")),
    ({"1": ("Const", {"value": 1000}), "2": ("Sink", {"value": 1})},
     ("1", "value", "value_out_of_range")),
    ({"1": ("Const", {"value": 10**400}), "2": ("Sink", {"value": 1})},
     ("1", "value", "value_out_of_range")),
    ({"1": ("Const", {"value": 64.0}), "2": ("Sink", {"value": 1})},
     ("1", "value", "invalid_value_type")),
    ({"1": ("Scale", {"x": 1.0, "factor": float("nan")}), "2": ("Sink", {"value": 1})},
     ("1", "factor", "invalid_value_type")),
    ({"1": ("Scale", {"x": 1.0, "factor": float("inf")}), "2": ("Sink", {"value": 1})},
     ("1", "factor", "invalid_value_type")),
    ({"1": ("Label", {"x": 1, "mode": "whisper"}), "2": ("Sink", {"value": 1})},
     ("1", "mode", "invalid_choice")),
    ({"1": ("Add", {"a": link("2", "sum")}), "2": ("Add", {"a": link("1", "sum")}),
      "3": ("Sink", {"value": link("1", "sum")})},
     ("1", None, "cycle")),
    ({"1": ("Const", {})},
     (None, None, "no_outputs")),
], ids=lambda v: v[2] if isinstance(v, tuple) else "")
def test_each_code(reg: Registry, nodes: dict, expected: tuple) -> None:
    errors = validate(wf(nodes), reg)
    assert codes(errors) == [expected]
    assert all(e["message"] for e in errors)


def test_socket_input_given_a_literal_is_a_value_type_error(reg: Registry) -> None:
    w = wf({"1": ("Scale", {"x": "big"}), "2": ("Sink", {"value": 1})})
    assert codes(validate(w, reg)) == [("1", "x", "invalid_value_type")]


def test_int_may_feed_float_but_not_the_reverse(reg: Registry) -> None:
    ok = wf({"1": ("Const", {}), "2": ("Scale", {"x": link("1", "value")}),
             "3": ("Sink", {"value": 1})})
    assert validate(ok, reg) == []
    bad = wf({"1": ("Scale", {"x": 1.5}), "2": ("Sink", {"value": link("1", "value")})})
    assert codes(validate(bad, reg)) == [("2", "value", "type_mismatch")]


def test_several_faults_are_all_reported(reg: Registry) -> None:
    w = wf({
        "1": ("Nope", {}),
        "2": ("Const", {"value": 500, "extra": 1}),
        "3": ("Add", {"b": "x"}),
        "4": ("Label", {"x": link("99", "value"), "mode": "shout"}),
        "5": ("Sink", {"value": link("2", "missing")}),
        "6": ("Add", {"a": link("7", "sum")}),
        "7": ("Add", {"a": link("6", "sum")}),
    })
    got = set(codes(validate(w, reg)))
    assert got == {
        ("1", None, "unknown_node_type"), ("2", "value", "value_out_of_range"),
        ("2", "extra", "unknown_input"), ("3", "b", "invalid_value_type"),
        ("3", "a", "missing_input"), ("4", "x", "dangling_link"),
        ("4", "mode", "invalid_choice"), ("5", "value", "unknown_output"),
        ("6", None, "cycle"),
    }


def test_cycle_is_reported_once_with_its_members(reg: Registry) -> None:
    w = wf({"1": ("Add", {"a": link("3", "sum")}), "2": ("Add", {"a": link("1", "sum")}),
            "3": ("Add", {"a": link("2", "sum")}), "4": ("Sink", {"value": link("3", "sum")}),
            "5": ("Add", {"a": link("5", "sum")})})
    errors = validate(w, reg)
    assert codes(errors) == [("1", None, "cycle"), ("5", None, "cycle")]
    assert "1 -> 2 -> 3" in errors[0]["message"]


def test_targets_replace_the_output_requirement(reg: Registry) -> None:
    w = wf({"1": ("Const", {})})
    assert validate(w, reg, targets=["1"]) == []
    assert codes(validate(w, reg, targets=["9"])) == [("9", None, "unknown_target")]


def test_executor_raises_before_running_anything(reg: Registry) -> None:
    w = wf({"1": ("Const", {"value": 5}), "2": ("Sink", {"value": link("1", "value")}),
            "3": ("Sink", {"value": link("8", "value")})})
    ex = Executor(reg)
    events: list[dict] = []
    with pytest.raises(WorkflowInvalid) as info:
        ex.run(w, on_event=events.append)
    assert codes(info.value.errors) == [("3", "value", "dangling_link")]
    assert events == [] and len(ex.cache) == 0


def test_build_graph_is_a_digraph_with_links(reg: Registry) -> None:
    w = wf({"1": ("Const", {}), "2": ("Add", {"a": link("1", "value"), "b": link("1", "value")}),
            "3": ("Sink", {"value": link("2", "sum")})})
    g = build_graph(w, reg)
    assert sorted(g.edges) == [("1", "2"), ("2", "3")]
    assert sorted(g.edges["1", "2"]["links"]) == [("value", "a"), ("value", "b")]
    assert g.nodes["3"]["output_node"] is True and g.nodes["1"]["output_node"] is False
