"""The engine's defences against hostile documents: strict JSON, values any widget refuses,
node ids that are not what they seem, and a node's check of its values together."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import pytest

from graph_runtime import Float, Int, Registry, Text, node
from graph_runtime.graph import build_graph, natural_key, plan, validate
from graph_runtime.strict_json import MAX_JSON_DEPTH, parse_json
from graph_runtime.widgets import MAX_TEXT_LENGTH, shown
from graph_runtime.workflow import (
    WorkflowFormatError,
    load_workflow,
    load_workflow_file,
    parse_value,
)
from tests.support.workflows import link, wf


@pytest.mark.parametrize(("text", "why"), [
    ("NaN", "NaN is not a JSON number"), ("[-Infinity]", "-Infinity is not"),
    ("[1e400]", "too large"), ('"\\ud800"', "lone UTF-16 surrogate"),
    ("[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1), "nested more than"),
    ("[" * 5000 + "]" * 5000, "nested more than"), ("1" * 5000, "digits"),
])
def test_parse_json_refuses_what_breaks_later(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_json(text)


def test_parse_json_keeps_what_is_json() -> None:
    deepest = "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH
    assert parse_json(deepest) is not None
    assert parse_json('["\\ud83d\\ude00", "\\\\ud800", 1.5, 10]') == ["😀", "\\ud800", 1.5, 10]
    assert parse_json(b'{"a": "\\u00b2"}') == {"a": "²"}


@pytest.mark.parametrize("text", ["[" * 990 + "]" * 990, '{"format": NaN}', "9" * 5000,
                                  '{"nodes": {"\\udc00": 1}}'])
def test_workflow_files_with_such_json_are_format_errors(tmp_path: Path, text: str) -> None:
    path = tmp_path / "w.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(WorkflowFormatError, match="not acceptable JSON"):
        load_workflow_file(path, Registry())
    with pytest.raises(WorkflowFormatError):
        load_workflow(text if text.startswith(("[", "{")) else f"[{text}]")
    assert parse_value(text) == text  # --set takes it as the text it is


def test_ids_that_isdigit_calls_digits_plan_in_a_stable_order() -> None:
    assert natural_key("²") == (1, 0, "²") and natural_key("10") == (0, 10, "10")
    reg = Registry()

    @node("N", output="value", registry=reg)
    def n(value: Annotated[int, Int(min=0, max=9)] = 1) -> int:
        return value

    @node("Out", output_node=True, registry=reg)
    def out(value: int) -> None:
        return None

    graph = wf({"²": ("N", {}), "١": ("N", {}), "2": ("Out", {"value": link("²", "value")}),
                "10": ("Out", {"value": link("١", "value")})})
    assert validate(graph, reg) == []
    assert plan(build_graph(graph, reg), ["2", "10"]) == ["²", "2", "١", "10"]


@pytest.fixture
def reg() -> Registry:
    reg = Registry()

    def check(values: Mapping[str, Any]) -> dict[str, str]:
        if values.get("low", 0) > values.get("high", 0):
            return {"low": f"{values['low']} is above high {values['high']}"}
        return {}

    @node("Range", output="value", check_inputs=check, registry=reg)
    def range_(low: Annotated[int, Int(min=0, max=100)] = 0,
               high: Annotated[int, Int(min=0, max=100)] = 10,
               scale: Annotated[float, Float()] = 1.0,
               label: Annotated[str, Text()] = "") -> int:
        return high - low

    @node("Show", output_node=True, registry=reg)
    def show(value: int) -> None:
        return None

    return reg


def errors_of(reg: Registry, inputs: dict[str, Any]) -> set[tuple[str | None, str]]:
    graph = wf({"1": ("Range", inputs), "2": ("Show", {"value": link("1", "value")})})
    return {(e["input"], e["code"]) for e in validate(graph, reg)}


def test_a_node_checks_its_values_together(reg: Registry) -> None:
    assert errors_of(reg, {"low": 50, "high": 20}) == {("low", "invalid_combination")}
    assert errors_of(reg, {"low": 5}) == set()  # high's default takes part
    # A value its widget refuses is reported alone; the combination is not checked.
    assert errors_of(reg, {"low": 500, "high": 20}) == {("low", "value_out_of_range")}


def test_numbers_and_text_every_widget_refuses(reg: Registry) -> None:
    for value in (math.nan, math.inf, 10**400, True, "1"):
        assert errors_of(reg, {"scale": value}) == {("scale", "invalid_value_type")}
    assert errors_of(reg, {"scale": 10**300}) == set()  # large, but still a float
    assert errors_of(reg, {"low": 3.0}) == {("low", "invalid_value_type")}
    long = "x" * (MAX_TEXT_LENGTH + 1)
    assert errors_of(reg, {"label": long}) == {("label", "value_too_long")}


def test_messages_quote_values_briefly() -> None:
    assert shown(10**400) == "an integer of about 401 digits"
    assert len(shown("x" * 10**6)) < 80 and shown([[[[[1]]]]]) == "[[[[...]]]]"
    assert shown(1.5) == "1.5" and shown("²") == "'²'"


def test_the_registry_answers_for_names_that_are_not_strings() -> None:
    reg = Registry()
    assert reg.get(["a"]) is None and ["a"] not in reg  # type: ignore[arg-type]
