"""`noodle serve` end to end: the real command, a real socket, the loopback guard, a run."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.support.command import NOODLE, TOY_NODES_MODULE, noodle_env
from tests.support.workflows import link, workflow_dict


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(url: str, data: dict | None = None, headers: dict | None = None
            ) -> tuple[int, dict]:
    body = json.dumps(data).encode() if data is not None else None
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json",
                                                          **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.fixture
def served(tmp_path: Path):  # type: ignore[no-untyped-def]
    port = free_port()
    proc = subprocess.Popen(
        [*NOODLE, "serve", "--port", str(port), "--nodes", TOY_NODES_MODULE,
         "--output-dir", str(tmp_path / "out")],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=noodle_env())
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(base + "/api/queue", timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None:
                raise AssertionError(proc.stdout.read().decode()) from None  # type: ignore[union-attr]
            time.sleep(0.2)
    yield base, tmp_path
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def test_noodle_serve_runs_a_workflow(served) -> None:  # type: ignore[no-untyped-def]
    base, root = served
    status, nodes = request(base + "/api/nodes")
    assert status == 200 and {"Greeting", "WriteText"} <= set(nodes)
    wf = workflow_dict({
        "1": ("Greeting", {"name": "noodle"}),
        "2": ("WriteText", {"text": link("1", "text"), "filename": "greeting.txt"})})
    status, body = request(base + "/api/prompt", {"workflow": wf})
    assert status == 200
    for _ in range(100):
        status, entry = request(f"{base}/api/history/{body['prompt_id']}")
        if status == 200:
            break
        time.sleep(0.1)
    assert entry["status"] == "success"
    assert (root / "out" / "greeting.txt").read_text() == "hello noodle"
    assert (root / "input").is_dir() and not (root / "user" / "workflows").exists()
    assert (root / "user" / "queue.sqlite3").is_file()  # the queue and history persist
    status, _ = request(base + "/api/nodes", headers={"Host": "rebind.example:80"})
    assert status == 403
    status, _ = request(base + "/api/interrupt", {}, headers={"Origin": "null"})
    assert status == 403
