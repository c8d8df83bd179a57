"""Many clients at once against a real `noodle serve`: nothing lost, misrouted or late.

    python benchmarks/load.py [--clients 20] [--prompts 50] [--size 32] [--steps 2]
                              [--threads 1]

Starts `noodle serve` in a subprocess (its folders in a temporary directory) and runs
`--clients` clients concurrently, each with its own websocket and client_id, each queueing
`--prompts` prompts of the shipped txt2img workflow on the embedded tiny model, shrunk to
`--size` pixels and `--steps` steps, every prompt with its own seed (so each one samples,
decodes and saves; the loaded model and the prompt encodings come from the cache). Then:

* finished: prompts whose `finished` event reached their client;
* lost events: a prompt's events that should have arrived and did not — `queued`,
  `started` and `finished` once each, `node_started`/`node_finished` per executed node,
  `node_cached` per cached node (as its history entry lists them), and every progress step
  1..total;
* misrouted events: events on a client's socket for another client's prompt;
* history 404s: `GET /api/history/{id}` sent as soon as the `finished` event arrives;
* sockets closed by the server (a client that falls too far behind is closed, not starved);
* throughput, and submit-to-finished latency.

It exits 1 when a figure is wrong (anything unfinished, lost, misrouted, or a 404), so it
doubles as a check. A few minutes on two cores at the defaults.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

REPO = Path(__file__).resolve().parent.parent
FINAL = ("finished",)


def small_txt2img(size: int, steps: int) -> dict[str, Any]:
    """The shipped txt2img workflow, smaller: `size` pixels square and `steps` steps."""
    workflow = json.loads((REPO / "workflows" / "txt2img.json").read_text())
    nodes = workflow["nodes"]
    for node in nodes.values():
        inputs = node["inputs"]
        if node["type"] == "RandomLatents":
            inputs.update(width=size, height=size, batch_size=1)
        elif node["type"] == "Denoise":
            inputs["steps"] = steps
        elif node["type"] == "SaveImage":
            inputs["filename_prefix"] = "load/img"
    return workflow


def with_seed(workflow: dict[str, Any], seed: int) -> dict[str, Any]:
    copy = json.loads(json.dumps(workflow))
    for node in copy["nodes"].values():
        if "seed" in node["inputs"]:
            node["inputs"]["seed"] = seed
    return copy


@dataclass
class Client:
    """One client: its socket's events by prompt, and what it saw."""

    name: str
    submitted: dict[str, float] = field(default_factory=dict)  # prompt id -> time sent
    events: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    finished_at: dict[str, float] = field(default_factory=dict)
    history_404: int = 0
    closed_by_server: list[int] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    checks: list[asyncio.Task[None]] = field(default_factory=list)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(root: Path, port: int, threads: int) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOODLE_")}
    # One intra-op thread: on a small shared machine, more spin against each other.
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    cmd = [sys.executable, "-m", "graph_runtime.cli", "serve", "--port", str(port),
           "--output-dir", str(root / "output")]
    return subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.DEVNULL,
                            stderr=open(root / "server.log", "wb"))  # noqa: SIM115


async def wait_up(base: str, proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"the server exited with code {proc.returncode}")
            try:
                async with session.get(base + "/api/queue") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    raise SystemExit("the server did not start")


async def listen(session: aiohttp.ClientSession, base: str, ws: Any, client: Client,
                 expected: int) -> None:
    """Read the client's socket until all its prompts finished, checking the history as
    soon as each final event arrives."""
    async for msg in ws:
        if msg.type != aiohttp.WSMsgType.TEXT:
            break
        event = json.loads(msg.data)
        pid = (event.get("data") or {}).get("prompt_id")
        if pid is None:
            continue
        client.events.setdefault(pid, []).append(event)
        if event["type"] in FINAL:
            client.finished_at[pid] = time.perf_counter()
            client.checks.append(asyncio.create_task(check_history(session, base, pid,
                                                                   client)))
            if len(client.finished_at) >= expected:
                break
    if ws.close_code not in (None, 1000) and len(client.finished_at) < expected:
        client.closed_by_server.append(int(ws.close_code))
    client.done.set()


async def check_history(session: aiohttp.ClientSession, base: str, pid: str,
                        client: Client) -> None:
    async with session.get(f"{base}/api/history/{pid}") as resp:
        if resp.status == 404:
            client.history_404 += 1
        await resp.read()


async def run_client(base: str, index: int, prompts: int, workflow: dict[str, Any],
                     ready: asyncio.Barrier, timeout: float) -> Client:
    client = Client(f"load-{index}")
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(f"{base}/ws?client_id={client.name}", max_msg_size=0)
        greeting = await ws.receive_json(timeout=30)
        assert greeting["type"] == "status", greeting
        reader = asyncio.create_task(listen(session, base, ws, client, prompts))
        await ready.wait()
        for k in range(prompts):
            body = {"workflow": with_seed(workflow, index * 100000 + k),
                    "client_id": client.name}
            sent = time.perf_counter()
            async with session.post(base + "/api/prompt", json=body) as resp:
                answer = await resp.json()
                if resp.status != 200:
                    raise SystemExit(f"prompt refused: {answer}")
            client.submitted[answer["prompt_id"]] = sent
        try:
            await asyncio.wait_for(client.done.wait(), timeout)
        except TimeoutError:
            pass
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        await asyncio.gather(*client.checks, return_exceptions=True)
        await ws.close()
    return client


async def history_of(base: str, pids: list[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    async with aiohttp.ClientSession() as session:
        for pid in pids:
            async with session.get(f"{base}/api/history/{pid}") as resp:
                if resp.status == 200:
                    out[pid] = await resp.json()
    return out


def lost_events(events: list[dict[str, Any]], entry: dict[str, Any] | None) -> int:
    """How many events a prompt should have had on its socket and did not."""
    seen = Counter(e["type"] for e in events)
    executed = entry.get("executed", []) if entry else []
    cached = entry.get("cached", []) if entry else []
    want = {"queued": 1, "started": 1, "finished": 1, "node_started": len(executed),
            "node_finished": len(executed), "node_cached": len(cached)}
    missing = sum(max(0, n - seen.get(kind, 0)) for kind, n in want.items())
    steps: dict[str, tuple[set[int], int]] = {}
    for e in events:
        if e["type"] == "progress":
            got, _ = steps.get(e["data"]["node"], (set(), 0))
            got.add(e["data"]["step"])
            steps[e["data"]["node"]] = (got, e["data"]["total"])
    for got, total in steps.values():
        missing += len(set(range(1, total + 1)) - got)
    return missing


def report(clients: list[Client], histories: dict[str, dict[str, Any]], prompts: int,
           seconds: float) -> bool:
    mine = {pid: c.name for c in clients for pid in c.submitted}
    total = len(clients) * prompts
    finished = sum(len(c.finished_at) for c in clients)
    misrouted = sum(len(evs) for c in clients for pid, evs in c.events.items()
                    if mine.get(pid) != c.name)
    lost = sum(lost_events(c.events.get(pid, []), histories.get(pid))
               for c in clients for pid in c.submitted)
    not_ok = sum(1 for h in histories.values() if h.get("status") != "success")
    late = sum(c.history_404 for c in clients)
    closed = [code for c in clients for code in c.closed_by_server]
    latencies = sorted(c.finished_at[p] - c.submitted[p] for c in clients
                       for p in c.submitted if p in c.finished_at)
    print(f"clients x prompts         {len(clients)} x {prompts}")
    print(f"finished                  {finished}/{total}  (not successful: {not_ok})")
    print(f"lost events               {lost}")
    print(f"misrouted events          {misrouted}")
    print(f"history 404 after final   {late}")
    print(f"sockets closed by server  {len(closed)} {sorted(set(closed)) or ''}")
    print(f"wall time                 {seconds:.1f} s  ({finished / seconds:.1f} prompts/s)")
    if latencies:
        p95 = latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))]
        print(f"submit -> finished        median {statistics.median(latencies):.1f} s, "
              f"p95 {p95:.1f} s, max {latencies[-1]:.1f} s")
    return finished == total and not (lost or misrouted or late or closed or not_ok)


async def main_async(args: argparse.Namespace) -> bool:
    workflow = small_txt2img(args.size, args.steps)
    with tempfile.TemporaryDirectory(prefix="noodle-load-") as tmp:
        root = Path(tmp)
        port = args.port or free_port()
        base = f"http://127.0.0.1:{port}"
        proc = start_server(root, port, args.threads)
        try:
            await wait_up(base, proc)
            ready = asyncio.Barrier(args.clients + 1)
            tasks = [asyncio.create_task(run_client(base, i, args.prompts, workflow, ready,
                                                    args.timeout))
                     for i in range(args.clients)]
            await ready.wait()
            start = time.perf_counter()
            clients = await asyncio.gather(*tasks)
            seconds = time.perf_counter() - start
            histories = await history_of(base, [p for c in clients for p in c.submitted])
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        return report(clients, histories, args.prompts, seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--prompts", type=int, default=50, help="prompts per client")
    parser.add_argument("--size", type=int, default=32, help="image width and height")
    parser.add_argument("--steps", type=int, default=2, help="denoising steps")
    parser.add_argument("--port", type=int, default=0, help="default: a free port")
    parser.add_argument("--threads", type=int, default=1,
                        help="the server's intra-op threads (OMP_NUM_THREADS)")
    parser.add_argument("--timeout", type=float, default=1800,
                        help="seconds a client waits for its prompts to finish")
    ok = asyncio.run(main_async(parser.parse_args()))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
