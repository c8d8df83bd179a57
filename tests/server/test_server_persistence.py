"""The queue and history kept in SQLite: restarts, crashes, paging, one copy per workflow.

In-process tests restart the app on the same state file; the crash tests start the real
`noodle serve`, kill it with SIGKILL in the middle of a run and start it again.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import sqlite3
import subprocess
import threading
import time
import urllib.error
import urllib.request
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from graph_runtime.server import history as history_http
from graph_runtime.server.app import QUEUE_KEY
from graph_runtime.server.prompt_queue import STOPPED_MESSAGE, QueueItem
from graph_runtime.server.store import QueueStore, WorkflowText
from graph_runtime.settings import SettingsError
from graph_runtime.workflow import from_dict
from tests.support.comfy_api import comfy_app, gradient_prompt
from tests.support.comfy_api import wait_history as wait_comfy
from tests.support.command import NOODLE, TOY_NODES_MODULE, noodle_env
from tests.support.noodle_api import wait_history
from tests.support.toy_nodes import image_workflow
from tests.support.workflows import link, workflow_dict

STATE = "user/queue.sqlite3"  # where comfy_app's server keeps its state by default


async def post(client: Any, workflow: dict[str, Any], **body: Any) -> str:
    resp = await client.post("/api/prompt", json={"workflow": workflow, **body})
    assert resp.status == 200, await resp.text()
    return str((await resp.json())["prompt_id"])


def quick(value: int) -> dict[str, Any]:
    return workflow_dict({"1": ("Number", {"value": value}),
                          "2": ("ShowInt", {"value": link("1", "value")})})


# ---------------------------------------------------------------------------- in process
@pytest.mark.asyncio
async def test_history_survives_a_restart_with_outputs(aiohttp_client: Any,
                                                       tmp_path: Path) -> None:
    client = await aiohttp_client(comfy_app(tmp_path))
    ok = await post(client, image_workflow(seed=4))
    bad = await post(client, workflow_dict({"1": ("Number", {"value": 2}),
                                            "2": ("Fail", {"value": link("1", "value")})}))
    prompt, pnginfo = gradient_prompt(seed=6), {"workflow": {"nodes": ["ui"]}}
    resp = await client.post("/prompt", json={"prompt": prompt, "client_id": "c",
                                              "extra_data": {"extra_pnginfo": pnginfo}})
    theirs = (await resp.json())["prompt_id"]
    before = {pid: await wait_history(client, pid) for pid in (ok, bad)}
    comfy_before = await wait_comfy(client, theirs)
    await client.close()

    client = await aiohttp_client(comfy_app(tmp_path))
    for pid, entry in before.items():
        assert await (await client.get(f"/api/history/{pid}")).json() == entry
    assert before[ok]["status"] == "success" and before[bad]["status"] == "error"
    image = before[ok]["outputs"]["2"]["images"][0]
    view = await client.get("/api/view", params=image)
    assert view.status == 200 and (await view.read())[:8] == b"\x89PNG\r\n\x1a\n"
    after = await wait_comfy(client, theirs)
    assert after == comfy_before
    assert after["prompt"][2] == prompt and after["prompt"][3]["extra_pnginfo"] == pnginfo
    assert [m[0] for m in after["status"]["messages"]] == [
        "execution_start", "execution_cached", "execution_success"]
    listing = await (await client.get("/history")).json()
    assert list(listing) == [ok, bad, theirs]
    # Numbering goes on where the last process stopped.
    resp = await client.post("/api/prompt", json={"workflow": quick(1)})
    assert (await resp.json())["number"] == 4


def _crashed_state(path: Path, values: list[int], running_first: bool = True) -> list[str]:
    """The state file as a process killed mid-run leaves it: the first prompt running,
    the others pending."""
    store = QueueStore(path)
    ids = []
    for number, value in enumerate(values, start=1):
        item = QueueItem(f"p{number}", number, from_dict(quick(value)), "c")
        document = WorkflowText.of(item.workflow.to_dict())
        item.workflow_hash = document.hash
        store.add(item.stored(), document)
        ids.append(item.prompt_id)
    if running_first:
        store.set_running(ids[0])
    store.close()
    return ids


@pytest.mark.asyncio
async def test_restart_runs_pending_and_records_the_interrupted_one(aiohttp_client: Any,
                                                                    tmp_path: Path) -> None:
    ids = _crashed_state(tmp_path / STATE, [1, 2, 3, 4])
    client = await aiohttp_client(comfy_app(tmp_path))
    entries = [await wait_history(client, pid) for pid in ids]
    first = entries[0]
    assert first["status"] == "interrupted" and first["error"]["message"] == STOPPED_MESSAGE
    assert [e["status"] for e in entries[1:]] == ["success"] * 3
    assert [e["outputs"]["2"]["text"] for e in entries[1:]] == [["2"], ["3"], ["4"]]
    listing = await (await client.get("/api/history")).json()
    assert [e["prompt_id"] for e in listing] == ids  # recorded in order
    comfy_first = await wait_comfy(client, ids[0])
    assert comfy_first["status"]["status_str"] == "error"
    assert comfy_first["status"]["messages"][-1][0] == "execution_interrupted"
    # A new prompt is numbered after the restored ones.
    resp = await client.post("/api/prompt", json={"workflow": quick(9)})
    assert (await resp.json())["number"] == 5


@pytest.mark.asyncio
async def test_restart_can_run_the_interrupted_one_again(aiohttp_client: Any,
                                                         tmp_path: Path) -> None:
    ids = _crashed_state(tmp_path / STATE, [5, 6])
    app = comfy_app(tmp_path)
    app[QUEUE_KEY].requeue_interrupted = True
    client = await aiohttp_client(app)
    entries = [await wait_history(client, pid) for pid in ids]
    assert [e["status"] for e in entries] == ["success", "success"]
    assert entries[0]["finished_at"] <= entries[1]["finished_at"]


@pytest.mark.asyncio
async def test_a_stop_keeps_pending_prompts_for_the_next_start(aiohttp_client: Any,
                                                               tmp_path: Path) -> None:
    client = await aiohttp_client(comfy_app(tmp_path))
    slow = await post(client, image_workflow(steps=200, delay=0.02))
    waiting = [await post(client, quick(v)) for v in (7, 8)]
    while not (await (await client.get("/api/queue")).json())["running"]:
        await asyncio.sleep(0.02)
    await client.close()  # a clean stop interrupts the running prompt

    client = await aiohttp_client(comfy_app(tmp_path))
    assert (await wait_history(client, slow))["status"] == "interrupted"
    assert [(await wait_history(client, pid))["status"] for pid in waiting] == ["success"] * 2


@pytest.mark.asyncio
async def test_history_is_paged(aiohttp_client: Any, tmp_path: Path,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(history_http, "BATCH", 2)  # several reads per response
    client = await aiohttp_client(comfy_app(tmp_path))
    ids = [await post(client, quick(v)) for v in range(5)]
    for pid in ids:
        await wait_history(client, pid)

    async def ours(query: str) -> list[str]:
        resp = await client.get("/api/history" + query)
        assert resp.status == 200 and resp.headers["X-Total-Count"] == "5"
        return [e["prompt_id"] for e in await resp.json()]

    assert await ours("") == ids
    assert await ours("?limit=2") == ids[3:]  # the newest, oldest first
    assert await ours("?limit=2&offset=1") == ids[1:3]
    assert await ours("?limit=3&offset=4") == ids[4:]
    assert await ours("?limit=0") == []
    assert await ours("?offset=9&limit=5") == []
    assert await ours(f"?limit={history_http.MAX_LIMIT + 5}") == ids
    for bad in ("?limit=x", "?limit=-1", "?offset=-2&limit=1"):
        resp = await client.get("/api/history" + bad)
        assert resp.status == 400
        assert (await resp.json())["errors"][0]["code"] == "invalid_request"
    # ComfyUI's paging, at both paths.
    assert list(await (await client.get("/history?max_items=2")).json()) == ids[3:]
    assert list(await (await client.get("/history?offset=3")).json()) == ids[3:]
    assert list(await (await client.get("/api/history?max_items=2&offset=1")).json()) == ids[1:3]
    assert list(await (await client.get("/history")).json()) == ids
    # Read a batch at a time, never on the event loop's thread.
    queue, reads = client.server.app[QUEUE_KEY], []
    real = queue.history_from

    def spy(start: int, limit: int) -> Any:
        reads.append((limit, threading.current_thread() is threading.main_thread()))
        return real(start, limit)

    monkeypatch.setattr(queue, "history_from", spy)
    assert len(await (await client.get("/history")).json()) == 5
    assert len(await (await client.get("/api/history")).json()) == 5
    assert reads == [(2, False), (2, False), (1, False)] * 2


@pytest.mark.asyncio
async def test_each_workflow_is_stored_once(aiohttp_client: Any, tmp_path: Path) -> None:
    client = await aiohttp_client(comfy_app(tmp_path))
    marker = "a-label-seen-once"
    prompt = gradient_prompt(seed=1)
    prompt["1"]["inputs"]["label"] = marker
    theirs = []
    for _ in range(2):  # the same prompt twice: one workflow
        resp = await client.post("/prompt", json={"prompt": prompt, "client_id": "c",
                                                  "extra_data": {"extra_pnginfo": {"m": 1}}})
        theirs.append((await resp.json())["prompt_id"])
    ours = [await post(client, quick(3)) for _ in range(3)]
    for pid in ours:
        await wait_history(client, pid)
    for pid in theirs:
        await wait_comfy(client, pid)
    await client.post("/history", json={"delete": ours[:2]})
    await client.close()

    with closing(sqlite3.connect(tmp_path / STATE)) as db:
        history = db.execute("SELECT prompt_id, workflow, meta FROM history").fetchall()
        bodies = [b for (b,) in db.execute("SELECT body FROM workflows")]
    assert [h[0] for h in history] == [*theirs, ours[2]]
    assert len({h[1] for h in history}) == 2 and len(bodies) == 2
    assert sum(marker in b for b in bodies) == 1  # the prompt lives in the workflow only
    assert not any(marker in h[2] for h in history)

    client = await aiohttp_client(comfy_app(tmp_path))
    await client.post("/history", json={"clear": True})
    assert await (await client.get("/api/history")).json() == []
    await client.close()
    with closing(sqlite3.connect(tmp_path / STATE)) as db:
        assert db.execute("SELECT COUNT(*) FROM workflows").fetchone() == (0,)


def test_the_history_keeps_its_newest_entries(tmp_path: Path) -> None:
    ids = _crashed_state(tmp_path / "s.sqlite3", list(range(6)), running_first=False)
    store = QueueStore(tmp_path / "s.sqlite3", history_limit=3)
    for stored in store.unfinished():
        store.finish(stored, {"status": "success"})
    assert store.count() == 3
    start = store.start_id(0)
    assert start is not None
    assert [e.prompt.prompt_id for e in store.entries(start, 10)] == ids[3:]
    assert store.unfinished() == []
    store.close()
    with closing(sqlite3.connect(tmp_path / "s.sqlite3")) as db:
        assert db.execute("SELECT COUNT(*) FROM workflows").fetchone() == (3,)


def test_the_state_file_has_one_server(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    first = QueueStore(path)
    with pytest.raises(SettingsError, match="in use by another process"):
        QueueStore(path)
    first.close()
    QueueStore(path).close()
    garbage = tmp_path / "garbage.sqlite3"
    garbage.write_bytes(b"this is not a database" * 100)
    with pytest.raises(SettingsError, match="unreadable"):
        QueueStore(garbage)


# ---------------------------------------------------------------------------- kill -9
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _call(url: str, data: dict[str, Any] | None = None) -> tuple[int, Any]:
    body = json.dumps(data).encode() if data is not None else None
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


class Server:
    """`noodle serve` over the toy nodes in `root`, keeping its state in `state`."""

    def __init__(self, root: Path, state: Path, *flags: str) -> None:
        port = _free_port()
        self.base = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen(
            [*NOODLE, "serve", "--port", str(port), "--nodes", TOY_NODES_MODULE,
             "--output-dir", str(root / "out"), "--state-db", str(state), *flags],
            cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=noodle_env())
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(self.base + "/api/queue", timeout=1).close()
                return
            except OSError:
                if self.proc.poll() is not None:
                    raise AssertionError(self.proc.stdout.read().decode()) from None  # type: ignore[union-attr]
                time.sleep(0.1)
        raise AssertionError("the server did not start")

    def post(self, workflow: dict[str, Any]) -> str:
        status, body = _call(self.base + "/api/prompt", {"workflow": workflow})
        assert status == 200, body
        return str(body["prompt_id"])

    def entry(self, prompt_id: str, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status, body = _call(f"{self.base}/api/history/{prompt_id}")
            if status == 200:
                return dict(body)
            time.sleep(0.05)
        raise AssertionError(f"prompt {prompt_id} did not finish")

    def wait_running(self, prompt_id: str) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            running = _call(self.base + "/api/queue")[1]["running"]
            if running and running[0]["prompt_id"] == prompt_id:
                return
            time.sleep(0.05)
        raise AssertionError(f"prompt {prompt_id} did not start")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.kill()


@pytest.fixture
def servers(tmp_path: Path):  # type: ignore[no-untyped-def]
    started: list[Server] = []

    def start(*flags: str) -> Server:
        server = Server(tmp_path, tmp_path / "state.sqlite3", *flags)
        started.append(server)
        return server

    yield start
    for server in started:
        if server.proc.poll() is None:
            server.stop()


def test_kill_9_mid_run_with_five_queued(servers: Any, tmp_path: Path) -> None:
    first = servers()
    earlier = first.post(image_workflow(seed=1))
    done = first.entry(earlier)
    slow = first.post(image_workflow(steps=100, delay=0.05, seed=2))
    queued = [first.post(image_workflow(seed=10 + i)) for i in range(5)]
    first.wait_running(slow)
    first.kill()

    second = servers()
    entries = [second.entry(pid) for pid in queued]
    assert [e["status"] for e in entries] == ["success"] * 5
    assert [e["number"] for e in entries] == sorted(e["number"] for e in entries)
    interrupted = second.entry(slow)
    assert interrupted["status"] == "interrupted"
    assert interrupted["error"]["message"] == STOPPED_MESSAGE
    assert second.entry(earlier) == done
    for entry in (done, *entries):
        image = entry["outputs"]["2"]["images"][0]
        assert (tmp_path / "out" / image["filename"]).is_file()
    _, listing = _call(second.base + "/api/history")
    assert [e["prompt_id"] for e in listing] == [earlier, slow, *queued]


def test_kill_9_then_requeue_the_interrupted_prompt(servers: Any) -> None:
    first = servers()
    slow = first.post(image_workflow(steps=40, delay=0.05, seed=3))
    queued = [first.post(image_workflow(seed=20 + i)) for i in range(2)]
    first.wait_running(slow)
    first.kill()

    second = servers("--requeue-interrupted")
    rerun = second.entry(slow)
    assert rerun["status"] == "success" and rerun["executed"] == ["1", "2"]
    entries = [second.entry(pid) for pid in queued]
    assert [e["status"] for e in entries] == ["success"] * 2
    assert rerun["finished_at"] < entries[0]["finished_at"]
