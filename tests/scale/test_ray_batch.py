"""`noodle batch --backend ray`: the same sweep, manifest and resume as the local backend,
with the items spread over a `ray.util.ActorPool` of two workers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from graph_runtime.cli import main
from tests.scale.conftest import REPO, STEPS

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _batch(out: Path, capsys: pytest.CaptureFixture[str], backend: str) -> dict[str, Any]:
    code = main(["batch", str(REPO / "workflows" / "txt2img.json"), "--set", f"5.steps={STEPS}",
                 "--sweep", "4.seed=0..1", "--sweep", "2.text=[\"a\",\"b\",\"c\"]",
                 "--backend", backend, "--workers", "2", "--torch-threads", "1",
                 "--output-dir", str(out), "--json"])
    assert code == 0
    lines = [json.loads(ln) for ln in capsys.readouterr().out.splitlines() if ln.strip()]
    assert lines[-1]["type"] == "batch_finished"
    return lines[-1]


def _records(out: Path) -> list[dict[str, Any]]:
    return [json.loads(ln) for ln in (out / "manifest.jsonl").read_text().splitlines()]


def test_ray_batch_matches_local_and_resumes(ray_instance: Any, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ray"
    first = _batch(out, capsys, "ray")
    assert (first["items"], first["executed"], first["skipped"]) == (6, 6, 0)
    records = _records(out)
    assert sorted(r["index"] for r in records) == list(range(6))
    assert all(r["status"] == "success" for r in records)
    assert {r["worker"] for r in records} <= {"worker-0", "worker-1"}
    files = {r["index"]: r["files"] for r in records}
    assert all(len(f) == 1 and (out / f[0]).is_file() for f in files.values())

    local = tmp_path / "local"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each worker runs: the same reduction order, the same bytes
    try:
        _batch(local, capsys, "local")
    finally:
        torch.set_num_threads(threads)
    by_index = {r["index"]: r["files"][0] for r in _records(local)}
    for index, names in files.items():  # the same images, whichever backend made them
        assert (out / names[0]).read_bytes() == (local / by_index[index]).read_bytes()

    assert _batch(out, capsys, "ray")["executed"] == 0
    (out / files[2][0]).unlink()
    again = _batch(out, capsys, "ray")
    assert (again["executed"], again["skipped"]) == (1, 5)
    last = _records(out)[-1]
    assert last["index"] == 2 and (out / last["files"][0]).is_file()
