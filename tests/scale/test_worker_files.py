"""The worker's protocol without Ray: events with the files they show, the result, and
placing sent files under free names on the receiving side."""

from __future__ import annotations

from pathlib import Path

from graph_runtime.scale.placement import FilePlacer, rewrite_ui, write_free
from graph_runtime.scale.worker import RESULT, ExecutorWorker, WorkerSettings
from tests.scale.conftest import small_txt2img


def test_write_free_never_overwrites(tmp_path: Path) -> None:
    first = write_free(tmp_path / "img_00001_.png", b"a")
    second = write_free(tmp_path / "img_00001_.png", b"b")
    third = write_free(tmp_path / "plain.png", b"c")
    fourth = write_free(tmp_path / "plain.png", b"d")
    assert [p.name for p in (first, second, third, fourth)] == [
        "img_00001_.png", "img_00002_.png", "plain.png", "plain_2.png"]
    assert first.read_bytes() == b"a" and second.read_bytes() == b"b"


def test_worker_streams_events_with_files_and_placer_writes_them(tmp_path: Path) -> None:
    worker = ExecutorWorker("w", WorkerSettings(torch_threads=1))
    events = list(worker.run("r1", small_txt2img(4).to_dict()))
    kinds = [e["type"] for e in events]
    assert kinds[0] == "run_started" and kinds[-1] == RESULT and "progress" in kinds
    result = events[-1]
    assert result["ok"] and result["worker"] == "w"
    assert set(result["signatures"].values()) <= set(result["held"])
    saved = next(e for e in events if e.get("node") == "7" and e["type"] == "node_finished")
    sent = saved["worker_files"]
    assert len(sent) == 1 and sent[0]["data"] == Path(result["files"][0]).read_bytes()
    assert sent[0]["data"][:8] == b"\x89PNG\r\n\x1a\n"

    placer = FilePlacer({"output": tmp_path / "out", "temp": tmp_path / "temp"})
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / sent[0]["relative"]).write_bytes(b"another worker's file")
    placed = placer.place("w", sent[0])
    assert placed.name != sent[0]["relative"] and placed.read_bytes() == sent[0]["data"]
    assert placer.place("w", sent[0]) == placed  # sent again unchanged: not written twice
    moved = {("output", sent[0]["relative"]): placer.ref(placed, "output")}
    ui = rewrite_ui(saved["ui"], moved)
    assert ui["images"] == [{"filename": placed.name, "subfolder": "", "type": "output"}]

    again = list(worker.run("r2", small_txt2img(4).to_dict()))
    assert again[-1]["executed"] == [] and "7" in again[-1]["cached"]


def test_worker_makes_previews_only_when_the_server_asks() -> None:
    worker = ExecutorWorker("w", WorkerSettings(torch_threads=1))
    unwatched = [e for e in worker.run("r1", small_txt2img(11).to_dict())
                 if e["type"] == "progress"]
    assert unwatched and all(e.get("preview") is None for e in unwatched)
    watched = [e for e in worker.run("r2", small_txt2img(12).to_dict(), preview_every=1)
               if e["type"] == "progress"]
    assert len(watched) == len(unwatched)
    assert watched[-1].get("preview") is not None  # the last step's preview always comes
