"""The prompt queue's Ray backend: N actors, each an executor keeping its models resident.

The server keeps the queue, the history and the websockets; this backend only decides
where a prompt runs and relays what happens there. Dispatch prefers the idle worker whose
cache holds the prompt's model-loading signatures (known from what each worker reports
after a run), then the most of its other signatures, then the least loaded, then the one
holding least. Events stream
back while the prompt runs (a Ray streaming generator), output files arrive as bytes and
are written to the server's own folders.

Faults: a worker that dies mid-prompt (`RayActorError`: killed, crashed, out of memory) is
restarted by Ray (`max_restarts=-1`); its prompt runs once more on another worker with a
`retried` note. A node error is a result like any other and is not retried. While no
worker is up, `capacity()` is 0 and prompts wait in the queue until one returns.
"""

from __future__ import annotations

import logging
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError

from graph_runtime.executor import Executor, WorkflowInvalid
from graph_runtime.scale.placement import FilePlacer, rewrite_ui
from graph_runtime.scale.worker import RESULT, ExecutorWorker, WorkerSettings
from graph_runtime.server.backend import Event, OnEvent, RemoteResult
from graph_runtime.workflow import Workflow

log = logging.getLogger("noodle.scale")
MODEL_WEIGHT = 1000  # one model already loaded outweighs any number of other cached nodes
PROBE_SECONDS = 2.0


@dataclass
class _Slot:
    """One worker as the dispatcher sees it."""

    name: str
    handle: Any
    up: bool = False
    busy: int = 0
    held: set[str] = field(default_factory=set)
    info: dict[str, Any] = field(default_factory=dict)


class WorkerLost(Exception):
    """A prompt's worker died on both tries."""


def start_ray(address: str | None, **options: Any) -> bool:
    """Join `address` (`auto`, `ray://...`) or start a local instance; True when this
    call started or joined it (and so should shut it down)."""
    if ray.is_initialized():
        return False
    if address:
        ray.init(address=address, **options)
    else:
        ray.init(include_dashboard=False, **options)
    return True


def pool_shape(workers: int | None, num_gpus: float | None) -> tuple[int, float]:
    """How many workers and GPUs each: by default one worker per GPU of the cluster (one
    GPU each), or one CPU worker where it has none."""
    gpus = int(ray.cluster_resources().get("GPU", 0))
    if num_gpus is None:
        num_gpus = 1.0 if gpus else 0.0
    if workers is None:
        workers = max(1, int(gpus // num_gpus)) if num_gpus else 1
    return workers, num_gpus


def worker_class(num_gpus: float = 0, num_cpus: float = 1) -> Any:
    """The actor class: restarted by Ray when it dies, calls never retried by Ray itself
    (retrying is ours, once, on another worker), a few threads so `interrupt` and `ping`
    are answered while a prompt runs."""
    return ray.remote(ExecutorWorker).options(
        max_restarts=-1, max_task_retries=0, max_concurrency=4,
        num_gpus=num_gpus, num_cpus=num_cpus)


class RayBackend:
    """Runs the queue's prompts on `workers` Ray actors (see the module docstring)."""

    concurrent = True

    def __init__(self, executor: Executor, workers: int | None = 1, *,
                 address: str | None = None, settings: WorkerSettings | None = None,
                 num_gpus: float | None = 0,
                 num_cpus: float = 1, ray_options: dict[str, Any] | None = None) -> None:
        self.executor = executor
        self.count = workers or 0
        self.shape = (workers, num_gpus)
        self.address = address
        self.settings = settings if settings is not None else WorkerSettings()
        self.num_gpus, self.num_cpus = num_gpus or 0.0, num_cpus
        self.ray_options = ray_options or {}
        self.slots: list[_Slot] = []
        self._cond = threading.Condition()
        self._stopping = False
        self._owns_ray = False
        self.placer: FilePlacer | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Start (or join) Ray and the actors; they come up in the background."""
        folders = self.executor.folders
        self.placer = FilePlacer({"output": folders.output, "temp": folders.temp})
        self._owns_ray = start_ray(self.address, **self.ray_options)
        self.count, self.num_gpus = pool_shape(*self.shape)
        remote = worker_class(self.num_gpus, self.num_cpus)
        self._stopping = False
        for i in range(self.count):
            name = f"worker-{i}"
            slot = _Slot(name, remote.remote(name, self.settings))
            self.slots.append(slot)
            self._watch(slot)

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        for slot in self.slots:
            try:
                ray.kill(slot.handle)
            except Exception:  # noqa: BLE001 - already gone
                log.debug("worker %s was already gone", slot.name)
        self.slots = []
        if self._owns_ray:
            ray.shutdown()
            self._owns_ray = False

    def capacity(self) -> int:
        with self._cond:
            return sum(1 for s in self.slots if s.up)

    def describe(self) -> list[dict[str, Any]]:
        """Each worker: name, up, busy, and what it said of itself (pid, host)."""
        with self._cond:
            return [{"name": s.name, "up": s.up, "busy": s.busy, **s.info} for s in self.slots]

    def wait_up(self, count: int | None = None, timeout: float = 120.0) -> bool:
        """Block until `count` workers (all by default) are up."""
        want = self.count if count is None else count
        with self._cond:
            return self._cond.wait_for(lambda: self.capacity() >= want, timeout)

    def _watch(self, slot: _Slot) -> None:
        """Mark `slot` down and probe it in the background until Ray has it back."""
        slot.up, slot.held = False, set()

        def probe() -> None:
            while not self._stopping:
                try:
                    info = ray.get(slot.handle.ping.remote(), timeout=PROBE_SECONDS * 30)
                except GetTimeoutError:
                    continue
                except RayActorError:
                    threading.Event().wait(PROBE_SECONDS)  # restarting: ask again soon
                    continue
                with self._cond:
                    slot.info, slot.up = info, True
                    self._cond.notify_all()
                log.info("%s is up (pid %s on %s)", slot.name, info["pid"], info["host"])
                return

        threading.Thread(target=probe, name=f"probe-{slot.name}", daemon=True).start()

    # ------------------------------------------------------------------ dispatch
    def affinity(self, workflow: Workflow) -> tuple[set[str], set[str]]:
        """The prompt's model-loading signatures and all its signatures, computed here
        without running anything (a loader is a node that reads files)."""
        sigs = self.executor.signatures(workflow)
        registry = self.executor.registry
        loaders = {sig for nid, sig in sigs.items()
                   if registry[workflow.nodes[nid]["type"]].fingerprint is not None}
        return loaders, set(sigs.values())

    def _score(self, slot: _Slot, loaders: set[str], every: set[str]
               ) -> tuple[int, int, int]:
        """Affinity first, then the least loaded, then the emptiest cache (a model nobody
        holds goes where it displaces least)."""
        held = slot.held
        return (MODEL_WEIGHT * len(loaders & held) + len(every & held), -slot.busy,
                -len(held))

    def _acquire(self, loaders: set[str], every: set[str], avoid: str | None) -> _Slot:
        """The best idle worker (waiting for one): another than `avoid` when there is one."""
        with self._cond:
            while not self._stopping:
                idle = [s for s in self.slots if s.up and s.busy == 0]
                preferred = [s for s in idle if s.name != avoid] or idle
                if preferred:
                    slot = max(preferred, key=lambda s: self._score(s, loaders, every))
                    slot.busy += 1
                    return slot
                self._cond.wait(0.5)
        raise WorkerLost("the server is stopping")

    def _release(self, slot: _Slot, held: list[str] | None) -> None:
        with self._cond:
            slot.busy -= 1
            if held is not None:
                slot.held = set(held)
            self._cond.notify_all()

    def run(self, prompt_id: str, workflow: Workflow, on_event: OnEvent,
            interrupt: threading.Event) -> RemoteResult:
        """Run on the best worker; once more elsewhere if it dies mid-prompt. A worker
        found dead before the prompt started there does not count as a try: the prompt
        waits for a live one."""
        loaders, every = self.affinity(workflow)
        document = workflow.to_dict()
        retried: dict[str, Any] | None = None
        avoid: str | None = None
        tries = 0
        while True:
            slot = self._acquire(loaders, every, avoid)
            on_event({"type": "dispatched", "worker": slot.name, "attempt": tries + 1})
            held: list[str] | None = None
            seen: list[Event] = []
            try:
                payload = self._stream(slot, document, on_event, interrupt, seen)
                held = payload.get("held")
            except RayActorError as exc:
                log.warning("prompt %s: %s died (%s)", prompt_id, slot.name, type(exc).__name__)
                with self._cond:
                    self._watch(slot)
                if not seen:
                    continue  # it was already gone: not a try
                tries += 1
                if tries == 2:
                    raise WorkerLost(f"{slot.name} died on the retry as well: {exc}") from exc
                retried = {"worker": slot.name, "reason": type(exc).__name__}
                on_event({"type": "retried", **retried})
                avoid = slot.name
                continue
            finally:
                self._release(slot, held)
            return self._result(payload, slot.name, retried)

    def _preview_every(self) -> int:
        """The server's preview setting while someone watches, else 0: the worker then
        makes no previews at all."""
        policy = self.executor.previews
        return policy.every if policy is not None and policy.listening() else 0

    def _stream(self, slot: _Slot, document: dict[str, Any], on_event: OnEvent,
                interrupt: threading.Event, seen: list[Event]) -> dict[str, Any]:
        """Relay the worker's events (files placed here first, each kept in `seen`);
        returns its result."""
        run_id = uuid.uuid4().hex
        done = threading.Event()
        self._forward_interrupt(slot, run_id, interrupt, done)
        moved: dict[tuple[str, str], dict[str, str]] = {}
        paths: dict[str, str] = {}
        payload: dict[str, Any] = {}
        try:
            for ref in slot.handle.run.remote(run_id, document,
                                              preview_every=self._preview_every()):
                event = ray.get(ref)
                seen.append({"type": event["type"]})
                if event["type"] == RESULT:
                    payload = event
                    continue
                self._place(slot.name, event.pop("worker_files", []), moved, paths)
                if "ui" in event and event["ui"]:
                    event["ui"] = rewrite_ui(event["ui"], moved)
                if event["type"] == "run_finished":
                    event["files"] = [paths.get(f, f) for f in event.get("files", [])]
                on_event(event)
        finally:
            done.set()
        payload["ui"] = {n: rewrite_ui(u, moved) for n, u in (payload.get("ui") or {}).items()}
        payload["files"] = [paths.get(f, f) for f in payload.get("files") or []]
        return payload

    def _place(self, worker: str, sent: list[dict[str, Any]],
               moved: dict[tuple[str, str], dict[str, str]], paths: dict[str, str]) -> None:
        assert self.placer is not None
        for item in sent:
            path = self.placer.place(worker, item)
            moved[(item["kind"], item["relative"])] = self.placer.ref(path, item["kind"])
            paths[item["path"]] = str(path)

    @staticmethod
    def _forward_interrupt(slot: _Slot, run_id: str, interrupt: threading.Event,
                           done: threading.Event) -> None:
        def watch() -> None:
            while not done.is_set():
                if interrupt.wait(0.2):
                    slot.handle.interrupt.remote(run_id)
                    return

        threading.Thread(target=watch, name=f"interrupt-{run_id[:8]}", daemon=True).start()

    @staticmethod
    def _result(payload: dict[str, Any], worker: str, retried: dict[str, Any] | None
                ) -> RemoteResult:
        if payload.get("invalid") is not None:
            raise WorkflowInvalid(payload["invalid"])
        notes: dict[str, Any] = {"worker": worker}
        if retried is not None:
            notes["retried"] = retried
        if payload.get("failure") is not None:
            error = {"node": None, "node_type": None, "exception_type": "WorkerFailure",
                     "message": payload["failure"], "traceback": ""}
            return RemoteResult(ok=False, error=error, notes=notes)
        return RemoteResult(ok=bool(payload.get("ok")), executed=payload.get("executed", []),
                            cached=payload.get("cached", []), ui=payload.get("ui", {}),
                            files=payload.get("files", []), error=payload.get("error"),
                            interrupted=bool(payload.get("interrupted")),
                            seconds=float(payload.get("seconds", 0.0)),
                            signatures=payload.get("signatures", {}), notes=notes)

