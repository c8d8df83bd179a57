"""The workflow file: lossless round trip, errors that say where, --set overrides."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from graph_runtime.workflow import (
    Workflow,
    WorkflowFormatError,
    apply_overrides,
    load_workflow,
    parse_value,
    save_workflow,
)

FULL = {
    "format": "noodle.workflow", "version": 1, "name": "txt2img", "description": "d",
    "nodes": {
        "1": {"type": "LoadPipeline", "inputs": {"source": "noodle-tiny"},
              "ui": {"pos": [40, 80], "size": [300, 120], "title": "Load", "collapsed": False},
              "future_key": {"kept": True}},
        "2": {"type": "TextToConditioning",
              "inputs": {"tokenizer": {"from": "1", "output": "tokenizer"},
                         "text": "a red circle", "weights": [1, 2.5, None]}},
    },
    "ui": {"groups": [{"title": "g", "bounding": [0, 0, 10, 10], "color": "#fff"}],
           "viewport": {"offset": [0, 0], "scale": 1.0}},
    "links_meta": {"anything": "unknown top-level keys survive"},
}


def test_round_trip_is_lossless(tmp_path: Path) -> None:
    src = tmp_path / "a.json"
    src.write_text(json.dumps(FULL))
    w = load_workflow(src)
    assert w.name == "txt2img" and w.extra == {"links_meta": FULL["links_meta"]}
    out = tmp_path / "b.json"
    save_workflow(w, out)
    assert json.loads(out.read_text()) == FULL
    assert load_workflow(out).to_dict() == FULL


def test_minimal_file_round_trips_without_added_keys() -> None:
    data = {"format": "noodle.workflow", "version": 1, "nodes": {}}
    assert load_workflow(json.dumps(data)).to_dict() == data
    with_empty = {**data, "name": "", "ui": {}}
    assert load_workflow(with_empty).to_dict() == with_empty


@pytest.mark.parametrize(("text", "where"), [
    ('{"format": "noodle.workflow", "version": 1,\n "nodes": {,}}', "line 2 column"),
    ('[1, 2]', "top level"),
    ('{"format": "other", "version": 1, "nodes": {}}', "format"),
    ('{"format": "noodle.workflow", "version": 7, "nodes": {}}', "version"),
    ('{"format": "noodle.workflow", "version": 1, "nodes": []}', "nodes"),
    ('{"format": "noodle.workflow", "version": 1, "nodes": {"3": 5}}', "nodes['3']"),
    ('{"format": "noodle.workflow", "version": 1, "nodes": {"3": {"inputs": {}}}}',
     "nodes['3'].type"),
    ('{"format": "noodle.workflow", "version": 1, "nodes": {"3": {"type": "A", "inputs": 1}}}',
     "nodes['3'].inputs"),
    ('{"format": "noodle.workflow", "version": 1, "nodes": {"3": {"type": "A", '
     '"inputs": {"x": {"from": 1, "output": "y"}}}}}', "nodes['3'].inputs.x.from"),
    ('{"format": "noodle.workflow", "version": 1, "nodes": {"3": {"type": "A", '
     '"inputs": {"x": {"from": "1"}}}}}', "nodes['3'].inputs.x.output"),
    ('{"format": "noodle.workflow", "version": 1, "nodes": {}, "ui": []}', "ui"),
])
def test_malformed_files_name_the_place(text: str, where: str) -> None:
    with pytest.raises(WorkflowFormatError) as info:
        load_workflow(text)
    assert where in str(info.value)


def test_unreadable_path_names_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    with pytest.raises(WorkflowFormatError, match="nope.json"):
        load_workflow(missing)


def test_parse_value() -> None:
    assert parse_value("5") == 5 and parse_value("2.5") == 2.5
    assert parse_value("true") is True and parse_value("[1, 2]") == [1, 2]
    assert parse_value("a cat") == "a cat" and parse_value('"7"') == "7"


def test_overrides_apply_and_report_unknown_nodes() -> None:
    w = load_workflow(FULL)
    before = json.dumps(FULL)
    errors = apply_overrides(w, ["2.text=a blue square", "1.source=\"x\"", "9.seed=1",
                                 "no-equals", "2.new_input=3"])
    assert w.nodes["2"]["inputs"]["text"] == "a blue square"
    assert w.nodes["1"]["inputs"]["source"] == "x"
    assert w.nodes["2"]["inputs"]["new_input"] == 3
    assert [(e["node"], e["code"]) for e in errors] == [("9", "unknown_node"),
                                                         (None, "invalid_override")]
    assert json.dumps(FULL) == before  # the source dict is not modified


def test_copy_is_independent() -> None:
    w = load_workflow(FULL)
    c = w.copy()
    c.nodes["2"]["inputs"]["text"] = "changed"
    assert w.nodes["2"]["inputs"]["text"] == "a red circle"
    assert isinstance(c, Workflow) and c.to_dict()["links_meta"] == FULL["links_meta"]
