"""Sweeps and `noodle batch` on the local backend: specs, manifest, resume by signature."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from graph_runtime.cli import main
from graph_runtime.scale.sweep import Sweep, SweepError, combinations, parse_sweep, parse_values
from tests.scale.conftest import REPO, STEPS


def test_specs(tmp_path: Path) -> None:
    assert parse_values("0..3") == [0, 1, 2, 3]
    assert parse_values("2..8:3") == [2, 5, 8]
    assert parse_values("[1, 5, 9]") == [1, 5, 9]
    (tmp_path / "prompts.txt").write_text("a red circle\n\n7\n\"quoted\"\n")
    assert parse_values("@prompts.txt", tmp_path) == ["a red circle", 7, "quoted"]
    assert parse_sweep("4.seed=[3]") == Sweep("4.seed", (3,))
    for bad in ("4.seed=5..1", "4.seed=x", "seed=1..2", "4.seed=[]", "4.seed=@missing.txt"):
        with pytest.raises(SweepError):
            parse_sweep(bad, tmp_path)


def test_product_and_zip() -> None:
    a, b = Sweep("1.x", (1, 2)), Sweep("2.y", ("p", "q", "r"))
    assert combinations([a, b]) == [{"1.x": x, "2.y": y} for x in (1, 2) for y in "pqr"]
    c = Sweep("3.z", (7, 8))
    assert combinations([a, c], zipped=True) == [{"1.x": 1, "3.z": 7}, {"1.x": 2, "3.z": 8}]
    with pytest.raises(SweepError):
        combinations([a, b], zipped=True)


def _batch(out: Path, capsys: pytest.CaptureFixture[str]) -> dict:
    code = main(["batch", str(REPO / "workflows" / "txt2img.json"), "--set", f"5.steps={STEPS}",
                 "--sweep", "4.seed=0..1", "--sweep", "2.text=[\"a\",\"b\",\"c\"]",
                 "--output-dir", str(out), "--json"])
    assert code == 0
    lines = [json.loads(ln) for ln in capsys.readouterr().out.splitlines() if ln.strip()]
    assert lines[-1]["type"] == "batch_finished"
    return lines[-1]


def test_batch_manifest_and_resume(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    first = _batch(out, capsys)
    assert (first["items"], first["executed"], first["skipped"]) == (6, 6, 0)
    records = [json.loads(ln) for ln in (out / "manifest.jsonl").read_text().splitlines()]
    assert sorted(r["index"] for r in records) == list(range(6))
    assert {(r["overrides"]["4.seed"], r["overrides"]["2.text"]) for r in records} == {
        (s, t) for s in (0, 1) for t in "abc"}
    assert all(r["status"] == "success" and r["worker"] == "local" for r in records)
    files = [f for r in records for f in r["files"]]
    assert len(set(files)) == 6 and all((out / f).is_file() for f in files)
    assert len({(out / f).read_bytes() for f in files}) == 6  # six different images

    assert _batch(out, capsys)["executed"] == 0
    (out / records[4]["files"][0]).unlink()
    again = _batch(out, capsys)
    assert (again["executed"], again["skipped"]) == (1, 5)
    last = json.loads((out / "manifest.jsonl").read_text().splitlines()[-1])
    assert last["index"] == 4 and (out / last["files"][0]).is_file()


def test_bad_sweep_is_invalid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["batch", str(REPO / "workflows" / "txt2img.json"), "--sweep", "4.seed=9..1",
                 "--output-dir", str(tmp_path), "--json"])
    assert code == 2
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["errors"][0]["code"] == \
        "invalid_sweep"


def test_serve_flags_build_a_ray_backend(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    from graph_runtime.cli import build_parser, executor_from_args
    from graph_runtime.scale.commands import ray_backend

    args = build_parser().parse_args(["serve", "--backend", "ray", "--workers", "3",
                                      "--ray-address", "auto", "--torch-threads", "1",
                                      "--output-dir", str(tmp_path)])
    backend = ray_backend(args, executor_from_args(args), ["nodes"])
    assert backend.concurrent and backend.capacity() == 0  # nothing started yet
    assert backend.shape == (3, None) and backend.address == "auto"
    assert backend.settings.nodes == "nodes" and backend.settings.torch_threads == 1
    assert backend.settings.models is None  # on a cluster each worker uses its own
    local = build_parser().parse_args(["serve", "--backend", "ray"])
    assert ray_backend(local, executor_from_args(local), ["nodes"]).settings.models
