"""Executor: planning, Merkle signatures, cache reuse, events, failure modes."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Annotated

import pytest

from graph_runtime import Int, Registry, Text, node
from graph_runtime.cache import OutputCache
from graph_runtime.executor import Executor, is_out_of_memory
from graph_runtime.workflow import Workflow
from tests.support.toy_nodes import ENGINE, toy_registry
from tests.support.workflows import add_nodes, link, wf


def chain() -> Workflow:
    """1 -> 2 -> 3 -> sink 5, and 1 -> 4 -> sink 6; 7 is unrelated to any output."""
    return wf({
        "1": ("Const", {"value": 2}),
        "2": ("Add", {"a": link("1", "value"), "b": 10}),
        "3": ("Split", {"x": link("2", "sum")}),
        "4": ("Label", {"x": link("1", "value")}),
        "5": ("Sink", {"value": link("3", "high")}),
        "6": ("TextSink", {"text": link("4", "text")}),
        "7": ("Const", {"value": 9}),
    })


def test_runs_outputs_ancestors_only_in_deterministic_order(reg: Registry,
                                                             tmp_path: Path) -> None:
    result = Executor(reg).run(chain(), output_dir=tmp_path)
    assert result.ok and result.error is None
    assert result.executed == ["1", "2", "3", "4", "5", "6"]
    assert result.outputs["3"] == {"low": 11, "high": 13}
    assert result.ui == {"5": {"value": [13]}, "6": {"text": ["n=2"]}}


def test_natural_order_puts_2_before_10(reg: Registry, tmp_path: Path) -> None:
    w = wf({"10": ("Const", {"value": 10}), "2": ("Const", {"value": 2}),
            "9": ("Sink", {"value": link("10", "value")}),
            "11": ("Sink", {"value": link("2", "value")})})
    assert Executor(reg).run(w, output_dir=tmp_path).executed == ["2", "10", "9", "11"]


def test_targets_plan_only_their_ancestors(reg: Registry, tmp_path: Path) -> None:
    result = Executor(reg).run(chain(), targets=["3"], output_dir=tmp_path)
    assert result.executed == ["1", "2", "3"]
    assert Executor(reg).run(chain(), targets=["7"], output_dir=tmp_path).executed == ["7"]


def test_second_run_executes_nothing(reg: Registry, tmp_path: Path) -> None:
    ex = Executor(reg)
    first = ex.run(chain(), output_dir=tmp_path)
    events: list[dict] = []
    second = ex.run(chain(), output_dir=tmp_path, on_event=events.append)
    assert second.executed == [] and second.cached == first.executed
    assert second.ui == first.ui and second.outputs == first.outputs
    kinds = [e["type"] for e in events]
    assert kinds == ["run_started"] + ["node_cached"] * 6 + ["run_finished"]


def test_changing_one_literal_reruns_that_node_and_descendants(reg: Registry,
                                                                tmp_path: Path) -> None:
    ex = Executor(reg)
    ex.run(chain(), output_dir=tmp_path)
    changed = chain()
    changed.nodes["2"]["inputs"]["b"] = 11
    result = ex.run(changed, output_dir=tmp_path)
    assert set(result.executed) == {"2", "3", "5"}
    assert set(result.cached) == {"1", "4", "6"}
    assert result.ui["5"] == {"value": [14]}


def test_ui_only_changes_and_explicit_defaults_keep_the_signature(reg: Registry) -> None:
    ex = Executor(reg)
    base = ex.signatures(chain())
    edited = chain()
    edited.nodes["4"]["inputs"]["mode"] = "plain"  # the widget default, written out
    edited.nodes["4"]["ui"] = {"pos": [1, 2], "title": "renamed"}
    add_nodes(edited, {"99": ("Const", {})})
    assert ex.signatures(edited) == base


def test_signature_covers_version_and_output_name(tmp_path: Path) -> None:
    def make(version: int) -> Registry:
        r = Registry()

        @node("Src", output="value", version=version, registry=r)
        def src(v: Annotated[int, Int()] = 1) -> int:
            return v

        @node("Out", output_node=True, registry=r)
        def out(value: int) -> None:
            return None
        return r

    w = wf({"1": ("Src", {}), "2": ("Out", {"value": link("1", "value")})})
    assert Executor(make(1)).signatures(w)["1"] != Executor(make(2)).signatures(w)["1"]
    reg = make(1)
    full = toy_registry(ENGINE)
    split_low = wf({"1": ("Split", {"x": 1}), "2": ("Sink", {"value": link("1", "low")})})
    split_high = wf({"1": ("Split", {"x": 1}), "2": ("Sink", {"value": link("1", "high")})})
    sig_low = Executor(full).signatures(split_low)
    sig_high = Executor(full).signatures(split_high)
    assert sig_low["1"] == sig_high["1"] and sig_low["2"] != sig_high["2"]
    assert Executor(reg).signatures(w, output_dir=tmp_path / "a")["2"] != \
        Executor(reg).signatures(w, output_dir=tmp_path / "b")["2"]


def test_fingerprint_hook_invalidates_on_file_change(tmp_path: Path) -> None:
    r = Registry()

    def fp(inputs: dict, folders: object) -> str:
        st = Path(inputs["path"]).stat()
        return f"{inputs['path']}:{st.st_size}:{st.st_mtime_ns}"

    @node("ReadText", output="text", fingerprint=fp, registry=r)
    def read_text(path: Annotated[str, Text()] = "") -> str:
        return Path(path).read_text()

    @node("Show", output_node=True, registry=r)
    def show(text: str) -> None:
        return None

    src = tmp_path / "in.txt"
    src.write_text("one")
    w = wf({"1": ("ReadText", {"path": str(src)}), "2": ("Show", {"text": link("1", "text")})})
    ex = Executor(r)
    assert ex.run(w, output_dir=tmp_path).outputs["1"]["text"] == "one"
    assert ex.run(w, output_dir=tmp_path).executed == []
    src.write_text("three")
    again = ex.run(w, output_dir=tmp_path)
    assert again.executed == ["1", "2"] and again.outputs["1"]["text"] == "three"


def test_workflows_sharing_a_prefix_reuse_it(reg: Registry, tmp_path: Path) -> None:
    ex = Executor(reg)
    a = wf({"1": ("Const", {"value": 4}), "2": ("Add", {"a": link("1", "value"), "b": 1}),
            "3": ("Sink", {"value": link("2", "sum")})})
    b = wf({"a": ("Const", {"value": 4}), "b": ("Add", {"a": link("a", "value"), "b": 1}),
            "c": ("Split", {"x": link("b", "sum")}), "d": ("Sink", {"value": link("c", "low")})})
    ex.run(a, output_dir=tmp_path)
    result = ex.run(b, output_dir=tmp_path)
    assert result.cached == ["a", "b"] and result.executed == ["c", "d"]
    assert result.ui["d"] == {"value": [4]}


def test_eviction_under_a_tiny_budget(reg: Registry, tmp_path: Path) -> None:
    cache = OutputCache({"cpu": 300})  # room for about two small entries
    ex = Executor(reg, cache)
    first = ex.run(chain(), output_dir=tmp_path)
    assert first.ok and cache.evictions > 0
    assert cache.used()["cpu"] <= 300 and 1 <= len(cache) < 6
    kept = {n for n, sig in first.signatures.items() if sig in cache}
    assert "3" not in kept  # the least recently used went first
    again = ex.run(chain(), output_dir=tmp_path)
    assert again.ok and set(again.cached) == kept and again.ui == first.ui
    redo = ex.run(chain(), targets=["3"], output_dir=tmp_path)
    assert "3" in redo.executed and redo.outputs["3"] == {"low": 11, "high": 13}


def test_evicted_ancestors_of_cached_outputs_are_not_recomputed(reg: Registry,
                                                               tmp_path: Path) -> None:
    ex = Executor(reg)
    first = ex.run(chain(), output_dir=tmp_path)
    for nid in ("1", "2", "3"):
        ex.cache.discard(first.signatures[nid])
    again = ex.run(chain(), output_dir=tmp_path)
    assert again.executed == [] and again.cached == ["4", "5", "6"]
    changed = chain()
    changed.nodes["4"]["inputs"]["suffix"] = "!"
    third = ex.run(changed, output_dir=tmp_path)
    assert third.executed == ["1", "4", "6"] and third.cached == ["5"]
    assert third.ui["6"] == {"text": ["n=2!"]}


def test_output_node_files_are_reported_when_cached(reg: Registry, tmp_path: Path) -> None:
    w = wf({"1": ("Const", {"value": 7}), "2": ("WriteFile", {"value": link("1", "value")})})
    ex = Executor(reg)
    out = tmp_path / "out"
    first = ex.run(w, output_dir=out)
    assert first.files == [str(out / "out.txt")]
    second = ex.run(w, output_dir=out)
    assert second.executed == [] and second.files == first.files
    assert second.ui["2"]["images"][0]["filename"] == "out.txt"
    (out / "out.txt").unlink()
    third = ex.run(w, output_dir=out)
    assert third.executed == ["2"] and (out / "out.txt").read_text() == "7"


def test_events_carry_the_agreed_fields(reg: Registry, tmp_path: Path) -> None:
    w = wf({"1": ("Const", {"value": 1}), "2": ("Steps", {"x": link("1", "value"), "total": 2}),
            "3": ("Sink", {"value": link("2", "value")})})
    events: list[dict] = []
    Executor(reg).run(w, output_dir=tmp_path, on_event=events.append, run_id="r1")
    progress = [e for e in events if e["type"] == "progress"]
    assert [(e["node"], e["step"], e["total"]) for e in progress] == [("2", 1, 2), ("2", 2, 2)]
    assert all(e["preview"] is None and e["node_type"] == "Steps" for e in progress)
    finished = [e for e in events if e["type"] == "node_finished"]
    assert all(e["seconds"] >= 0 and "ui" in e for e in finished)
    last = events[-1]
    assert last["type"] == "run_finished" and last["ok"] is True
    assert last["executed"] == ["1", "2", "3"] and last["cached"] == []
    assert all(e["run_id"] == "r1" for e in events)


def test_raising_node_gives_structured_error_and_keeps_finished_work(reg: Registry,
                                                                     tmp_path: Path) -> None:
    w = chain()
    add_nodes(w, {"8": ("Boom", {"x": link("2", "sum")}),
                  "9": ("Sink", {"value": link("8", "value")})})
    ex = Executor(reg)
    events: list[dict] = []
    result = ex.run(w, output_dir=tmp_path, on_event=events.append)
    assert not result.ok and not result.interrupted
    err = result.error
    assert err is not None and err["node"] == "8" and err["node_type"] == "Boom"
    assert err["exception_type"] == "ValueError" and err["message"] == "boom at 12"
    assert "ValueError: boom at 12" in err["traceback"]
    assert [e for e in events if e["type"] == "error"][0]["node"] == "8"
    assert events[-1]["type"] == "run_finished" and events[-1]["ok"] is False
    assert result.executed == ["1", "2", "3", "4", "5", "6"]
    del w.nodes["9"], w.nodes["8"]
    assert ex.run(w, output_dir=tmp_path).executed == []


def test_interrupt_inside_a_node_keeps_finished_nodes_cached(reg: Registry,
                                                             tmp_path: Path) -> None:
    w = wf({"1": ("Const", {"value": 1}), "2": ("Steps", {"x": link("1", "value"), "total": 5}),
            "3": ("Sink", {"value": link("2", "value")})})
    ex = Executor(reg)
    events: list[dict] = []
    stop = threading.Event()

    def on_event(event: dict) -> None:
        events.append(event)
        if event["type"] == "progress" and event["step"] == 2:
            stop.set()  # the user presses "stop" while step 2 is shown

    result = ex.run(w, output_dir=tmp_path, on_event=on_event, interrupt=stop)
    assert result.interrupted and not result.ok and result.error is None
    assert result.executed == ["1"]
    assert [e["step"] for e in events if e["type"] == "progress"] == [1, 2]
    assert [e for e in events if e["type"] == "interrupted"][0]["node"] == "2"
    assert events[-1]["type"] == "run_finished" and events[-1]["interrupted"] is True
    resumed = ex.run(w, output_dir=tmp_path, interrupt=threading.Event())
    assert resumed.cached == ["1"] and resumed.executed == ["2", "3"]


def test_interrupt_set_beforehand_runs_nothing(reg: Registry, tmp_path: Path) -> None:
    stop = threading.Event()
    stop.set()
    result = Executor(reg).run(chain(), output_dir=tmp_path, interrupt=stop)
    assert result.interrupted and result.executed == []


def test_out_of_memory_frees_the_cache_and_retries_once(reg: Registry, tmp_path: Path) -> None:
    class OutOfMemoryError(RuntimeError):
        """Named like torch.cuda.OutOfMemoryError; recognised by name."""

    calls = {"n": 0}

    @node("Hungry", output="value", registry=reg)
    def hungry(x: int, fail_times: Annotated[int, Int()] = 1) -> int:
        calls["n"] += 1
        if calls["n"] <= fail_times:
            raise OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return x * 3

    ex = Executor(reg)
    ex.run(wf({"9": ("Const", {"value": 50}), "8": ("Sink", {"value": link("9", "value")})}),
           output_dir=tmp_path)
    assert len(ex.cache) == 2
    w = wf({"1": ("Const", {"value": 5}), "2": ("Hungry", {"x": link("1", "value")}),
            "3": ("Sink", {"value": link("2", "value")})})
    result = ex.run(w, output_dir=tmp_path)
    assert result.ok and result.outputs["2"]["value"] == 15 and calls["n"] == 2
    assert len(ex.cache) == 2  # the earlier run's entries and node 1 were freed
    calls["n"] = 0
    w.nodes["2"]["inputs"]["fail_times"] = 2
    failed = ex.run(w, output_dir=tmp_path)
    assert calls["n"] == 2 and failed.error is not None
    assert failed.error["exception_type"] == "OutOfMemoryError"


def test_out_of_memory_detection() -> None:
    assert is_out_of_memory(RuntimeError("CUDA out of memory. Tried to allocate"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
    torch = pytest.importorskip("torch")
    assert is_out_of_memory(torch.cuda.OutOfMemoryError("x"))


def test_primitive_nodes_run_in_the_default_library(tmp_path: Path) -> None:
    import nodes.primitives  # noqa: F401
    from graph_runtime.registry import REGISTRY

    w = wf({"1": ("IntConstant", {"value": 6}), "2": ("FloatMath", {
        "a": link("1", "value"), "b": 4, "operation": "divide"}),
        "3": ("NumberToText", {"value": link("2", "value")}),
        "4": ("TextJoin", {"a": "ratio", "b": link("3", "text"), "separator": "="}),
        "5": ("ShowText", {"text": link("4", "text")}),
        "6": ("SaveText", {"text": link("4", "text"), "filename_prefix": "r"})})
    result = Executor(REGISTRY).run(w, output_dir=tmp_path)
    assert result.ok, result.error
    assert result.ui["5"] == {"text": ["ratio=1.5"]}
    assert result.files == [str(tmp_path / "r_00001.txt")]
    assert (tmp_path / "r_00001.txt").read_text() == "ratio=1.5"


def test_int_math_refuses_huge_results_before_computing_them() -> None:
    """`a ** b` with a huge b would run for minutes holding the GIL; it fails at once."""
    from nodes.primitives import MAX_INT_BITS, int_math

    assert int_math(3, 4, "power") == 81 and int_math(-2, 3, "power") == -8
    assert int_math(1, 10**12, "power") == 1 and int_math(-1, 10**12 + 1, "power") == -1
    assert int_math(2, MAX_INT_BITS - 1, "power").bit_length() == MAX_INT_BITS
    started = time.perf_counter()
    with pytest.raises(ValueError, match="input 'b'.*more than 1024 bits"):
        int_math(7, 10**15, "power")
    assert time.perf_counter() - started < 1.0
    with pytest.raises(ValueError, match="more than 1024 bits"):
        int_math(2**1000, 2**100, "multiply")
    assert int_math(7, 2, "floor_divide") == 3 and int_math(7, 2, "modulo") == 1
