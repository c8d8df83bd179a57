"""The server's Ray backend on a local Ray instance: 2 workers, the same PNGs as the local
backend, live progress, cache affinity, and a worker killed mid-prompt."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from graph_runtime.executor import Executor
from graph_runtime.registry import REGISTRY
from graph_runtime.settings import Folders
from graph_runtime.workflow import Workflow
from tests.scale.conftest import small_txt2img

pytestmark = [pytest.mark.ray, pytest.mark.slow]
ray_backend = pytest.importorskip("graph_runtime.scale.ray_backend")


class Server:
    """A prompt queue on the Ray backend, keeping every message it publishes."""

    def __init__(self, root: Path) -> None:
        from graph_runtime.scale.worker import WorkerSettings
        from graph_runtime.server.prompt_queue import PromptQueue

        self.folders = Folders(output=root / "output", input=root / "input",
                               models=root / "models", user=root / "user",
                               temp_dir=root / "temp")
        self.executor = Executor(REGISTRY, folders=self.folders)
        self.backend = ray_backend.RayBackend(self.executor, 2,
                                              settings=WorkerSettings(torch_threads=1))
        self.messages: list[dict[str, Any]] = []
        self.hooks: list[Any] = []
        self.queue = PromptQueue(self.executor, self.publish, backend=self.backend)

    def publish(self, message: dict[str, Any], client: str | None) -> None:
        self.messages.append(message)
        for hook in self.hooks:
            hook(message)

    def submit(self, wf: Workflow) -> str:
        return self.queue.put(wf, "tester").prompt_id

    def of(self, pid: str, kind: str) -> list[dict[str, Any]]:
        return [m["data"] for m in self.messages
                if m["type"] == kind and m.get("data", {}).get("prompt_id") == pid]

    def entry(self, pid: str) -> dict[str, Any]:
        entry = self.queue.history_entry(pid)
        assert entry is not None
        return entry

    def image(self, pid: str) -> bytes:
        ref = self.entry(pid)["files"][0]
        return (self.folders.output / ref["subfolder"] / ref["filename"]).read_bytes()


@pytest.fixture(scope="module")
def server(ray_instance: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("ray_server"))
    srv.queue.start()
    assert srv.backend.wait_up(timeout=180)
    try:
        yield srv
    finally:
        srv.queue.stop()


def _local_png(seed: int, tmp: Path) -> bytes:
    """The same prompt on the local backend, with one torch thread like the workers."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = Executor(REGISTRY, folders=Folders(output=tmp, temp_dir=tmp / "t")).run(
            small_txt2img(seed))
    finally:
        torch.set_num_threads(threads)
    assert result.ok
    return Path(result.files[0]).read_bytes()


def test_affinity_keeps_a_model_on_the_worker_that_loaded_it(server: Server) -> None:
    first = server.submit(small_txt2img(100))
    assert server.queue.wait_idle(120)
    second = server.submit(small_txt2img(101))
    assert server.queue.wait_idle(120)
    a, b = server.entry(first), server.entry(second)
    assert a["status"] == b["status"] == "success"
    assert "1" in a["executed"]  # the first prompt loaded the model
    # Without affinity the second would go to the other, empty worker.
    assert b["worker"] == a["worker"]
    assert [d["worker"] for d in server.of(second, "dispatched")] == [a["worker"]]
    assert "1" in b["cached"] and "1" not in b["executed"]
    assert "1" in server.of(second, "started")[0]["cached"]
    assert not [d for d in server.of(second, "node_started") if d["node"] == "1"]


def test_eight_prompts_on_two_workers_match_the_local_backend(server: Server,
                                                              tmp_path: Path) -> None:
    pids = {seed: server.submit(small_txt2img(seed)) for seed in range(8)}
    assert server.queue.wait_idle(180)
    workers = set()
    for seed, pid in pids.items():
        entry = server.entry(pid)
        assert entry["status"] == "success", entry["error"]
        workers.add(entry["worker"])
        assert server.of(pid, "progress"), f"no progress for seed {seed}"
        assert server.of(pid, "finished")[-1]["ok"]
    assert workers == {"worker-0", "worker-1"}
    names = {server.entry(pid)["files"][0]["filename"] for pid in pids.values()}
    assert len(names) == 8  # no file overwrote another
    for seed in (0, 5):
        assert server.image(pids[seed]) == _local_png(seed, tmp_path / str(seed))
    assert len({server.image(pid) for pid in pids.values()}) == 8


def test_killed_worker_prompt_is_retried_once_elsewhere(server: Server) -> None:
    dispatched: dict[str, str] = {}
    started = threading.Event()

    def hook(message: dict[str, Any]) -> None:
        if message["type"] == "dispatched":
            dispatched.setdefault(message["data"]["prompt_id"], message["data"]["worker"])
        if message["type"] == "progress":
            started.set()

    server.hooks.append(hook)
    before = server.queue.history_count()
    pid = server.submit(small_txt2img(7, steps=60))
    assert started.wait(60)
    victim = dispatched[pid]
    pid_of = {w["name"]: w["pid"] for w in server.backend.describe()}
    os.kill(pid_of[victim], signal.SIGKILL)
    assert server.queue.wait_idle(180)
    entry = server.entry(pid)
    assert entry["status"] == "success", entry["error"]
    assert entry["retried"]["worker"] == victim and entry["worker"] != victim
    assert [d["worker"] for d in server.of(pid, "retried")] == [victim]
    assert len(server.of(pid, "finished")) == 1
    history = server.queue.history()
    assert server.queue.history_count() == before + 1
    assert [e["prompt_id"] for e in history].count(pid) == 1


def test_prompts_wait_while_every_worker_is_gone(server: Server) -> None:
    assert server.backend.wait_up(timeout=180)  # the one killed before is back
    for worker in server.backend.describe():
        os.kill(worker["pid"], signal.SIGKILL)
    pid = server.submit(small_txt2img(3))
    assert not server.queue.wait_idle(2)  # nothing to run it on yet: it waits
    assert server.queue.history_entry(pid) is None
    assert server.queue.wait_idle(240)  # Ray restarts the workers; the prompt runs
    entry = server.entry(pid)
    assert entry["status"] == "success", entry["error"]
    assert "retried" not in entry  # it never started on a dead worker
    assert server.backend.capacity() >= 1
