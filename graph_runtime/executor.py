"""Runs a validated workflow: plan, sign, reuse cached outputs, execute the rest, report.

Each node's signature is a Merkle hash of its type and version, its literal inputs (widget
defaults filled in, so leaving a value at its default and writing it out sign the same),
the signatures and output names of what is linked into it, a fingerprint from nodes that
read files (called with the node's literal inputs), and for output nodes the output
folder. Equal signature means equal result, so the cache is shared by every run and every
workflow this executor sees. The plan is walked from the outputs back: a node runs only
when it is not cached and something that has to run needs it.

Failure modes are part of the contract: a node that raises ends the run with an `error`
event and `RunResult.error` while everything finished before it stays cached; raising
`Interrupted` (or the interrupt event being set between nodes) ends it with `interrupted`;
a CUDA out-of-memory error frees the cache and retries that node once.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from hashlib import blake2b
from pathlib import Path
from typing import Any

from graph_runtime.cache import CacheEntry, OutputCache
from graph_runtime.context import Interrupted, RunContext, activate, deactivate
from graph_runtime.graph import build_graph, output_nodes, plan, validate
from graph_runtime.nodes import REGISTRY, NodeDef, Registry
from graph_runtime.workflow import Workflow, load_workflow

Event = dict[str, Any]
_MISSING = object()


class WorkflowInvalid(Exception):
    """Validation failed; nothing ran. `.errors` is the list from `graph.validate`."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        self.errors = errors
        first = errors[0]["message"] if errors else ""
        super().__init__(f"{len(errors)} validation error(s), first: {first}")


@dataclass
class RunResult:
    """What a run did. `outputs` holds the values of every node executed or taken from the
    cache; uncached nodes that nothing needed were skipped and are absent. `signatures`
    covers the whole plan (handy for checking what the cache holds)."""

    ok: bool = True
    executed: list[str] = field(default_factory=list)
    cached: list[str] = field(default_factory=list)
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    ui: dict[str, dict[str, Any]] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    error: dict[str, Any] | None = None
    interrupted: bool = False
    seconds: float = 0.0
    signatures: dict[str, str] = field(default_factory=dict)


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA/MPS out-of-memory, recognised without importing torch."""
    torch = sys.modules.get("torch")
    oom_cls = getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None)
    if isinstance(oom_cls, type) and isinstance(exc, oom_cls):
        return True
    if type(exc).__name__ == "OutOfMemoryError":
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def _release_device_memory() -> None:
    gc.collect()
    torch = sys.modules.get("torch")
    cuda = getattr(torch, "cuda", None)
    try:
        if cuda is not None and cuda.is_available():
            cuda.empty_cache()
    except Exception:  # noqa: BLE001 - freeing is best effort; the retry will tell
        return


@dataclass
class _Prepared:
    """What planning learned about one node, reused by signing and calling."""

    definition: NodeDef
    literals: dict[str, Any]
    links: list[tuple[str, str, str]]  # (input name, source node, output name)


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=repr,
                      ensure_ascii=False)


class Executor:
    """Runs workflows against a registry, sharing one `OutputCache` across runs."""

    def __init__(self, registry: Registry = REGISTRY, cache: OutputCache | None = None) -> None:
        self.registry = registry
        self.cache = cache if cache is not None else OutputCache()

    # ------------------------------------------------------------------ planning
    def _prepare(self, wf: Workflow, order: Iterable[str]) -> dict[str, _Prepared]:
        prepared: dict[str, _Prepared] = {}
        registry = self.registry
        for nid in order:
            nd = wf.nodes[nid]
            definition = registry[nd["type"]]
            given = nd.get("inputs") or {}
            literals: dict[str, Any] = {}
            links: list[tuple[str, str, str]] = []
            for name, spec in definition.inputs.items():
                value = given.get(name, _MISSING)
                if type(value) is dict and "from" in value:
                    links.append((name, value["from"], value["output"]))
                    continue
                if value is _MISSING:
                    if spec.widget is None:
                        continue  # optional socket left empty: the function default applies
                    value = spec.widget.default
                if spec.type == "FLOAT" and type(value) is int:
                    value = float(value)
                literals[name] = value
            prepared[nid] = _Prepared(definition, literals, links)
        return prepared

    def _sign(self, prepared: dict[str, _Prepared], output_dir: Path) -> dict[str, str]:
        sigs: dict[str, str] = {}
        out_dir_text: str | None = None
        for nid, prep in prepared.items():
            d = prep.definition
            fingerprint = None
            if d.fingerprint is not None:
                try:
                    fingerprint = d.fingerprint(prep.literals)
                except Exception as exc:  # noqa: BLE001 - the node itself will report it
                    fingerprint = f"unreadable:{type(exc).__name__}:{exc}"
            if d.output_node and out_dir_text is None:
                out_dir_text = str(output_dir.resolve())
            payload = [d.name, d.version, prep.literals,
                       [(i, sigs[s], o) for i, s, o in prep.links], fingerprint,
                       out_dir_text if d.output_node else None]
            sigs[nid] = blake2b(_canonical(payload).encode(), digest_size=16).hexdigest()
        return sigs

    def _plan(self, wf: Workflow, targets: Iterable[str] | None) -> list[str]:
        errors = validate(wf, self.registry, targets)
        if errors:
            raise WorkflowInvalid(errors)
        g = build_graph(wf, self.registry)
        roots = list(targets) if targets else output_nodes(wf, self.registry)
        return plan(g, roots)

    def signatures(self, wf: Workflow | dict[str, Any] | str | Path,
                   targets: Iterable[str] | None = None,
                   output_dir: Path | str = Path("output")) -> dict[str, str]:
        """Signatures of the planned nodes (all ancestors of the outputs or targets)."""
        wf = load_workflow(wf)
        return self._sign(self._prepare(wf, self._plan(wf, targets)), Path(output_dir))

    # ------------------------------------------------------------------ running
    def run(self, wf: Workflow | dict[str, Any] | str | Path,
            targets: Iterable[str] | None = None,
            on_event: Callable[[Event], None] | None = None,
            interrupt: threading.Event | None = None,
            output_dir: Path | str = Path("output"),
            run_id: str | None = None) -> RunResult:
        """Validate (raising `WorkflowInvalid`), then run the plan. Every event carries
        `run_id` when one is given, so a server can route events of concurrent clients."""
        started = time.perf_counter()
        wf = load_workflow(wf)
        output_dir = Path(output_dir)
        interrupt = interrupt if interrupt is not None else threading.Event()
        targets = list(targets) if targets else None
        order = self._plan(wf, targets)
        prepared = self._prepare(wf, order)
        sigs = self._sign(prepared, output_dir)
        result = RunResult(signatures=sigs)

        if on_event is None:
            def emit(event: Event) -> None:
                return None
        elif run_id is None:
            emit = on_event
        else:
            def emit(event: Event) -> None:
                event["run_id"] = run_id
                on_event(event)

        emit({"type": "queued", "nodes": order})
        emit({"type": "run_started", "nodes": order})
        roots = set(targets) if targets else {n for n in order
                                              if prepared[n].definition.output_node}
        hits, to_run = self._lookup(order, prepared, sigs, roots)
        workflow_dict = wf.to_dict()
        values = result.outputs
        # How many nodes still to run read each node's outputs: on out-of-memory, outputs
        # nobody needs any more are dropped along with the cache.
        pending: dict[str, int] = dict.fromkeys(order, 0)
        for nid in to_run:
            for _, src, _ in prepared[nid].links:
                pending[src] += 1

        def free_memory() -> None:
            self.cache.free()
            for done in [n for n in values if pending[n] == 0 and n not in roots]:
                del values[done]
            _release_device_memory()

        for nid in order:
            prep = prepared[nid]
            d = prep.definition
            entry = hits.get(nid)
            if entry is not None:
                values[nid] = entry.outputs
                result.cached.append(nid)
                self._collect(result, nid, entry.ui, entry.files)
                emit({"type": "node_cached", "node": nid, "node_type": d.name,
                      "ui": entry.ui})
                continue
            if nid not in to_run:
                continue  # not cached, but nothing that has to run needs it
            if interrupt.is_set():
                result.interrupted = True
                emit({"type": "interrupted", "node": nid, "node_type": d.name})
                break
            kwargs = prep.literals.copy()
            for name, src, out in prep.links:
                kwargs[name] = values[src][out]
                pending[src] -= 1
            if d.output_node:
                output_dir.mkdir(parents=True, exist_ok=True)
            outcome = self._execute(nid, d, kwargs, emit, interrupt, output_dir,
                                    workflow_dict, free_memory)
            if isinstance(outcome, CacheEntry):
                self.cache.put(sigs[nid], outcome)
                values[nid] = outcome.outputs
                result.executed.append(nid)
                self._collect(result, nid, outcome.ui, outcome.files)
                continue
            if outcome is None:
                result.interrupted = True
            else:
                result.error = outcome
            break

        result.ok = result.error is None and not result.interrupted
        result.seconds = time.perf_counter() - started
        finished: Event = {"type": "run_finished", "executed": list(result.executed),
                           "cached": list(result.cached), "files": list(result.files),
                           "seconds": result.seconds, "ok": result.ok,
                           "interrupted": result.interrupted}
        if result.error is not None:
            finished["error"] = result.error
        emit(finished)
        return result

    def _lookup(self, order: list[str], prepared: dict[str, _Prepared], sigs: dict[str, str],
                roots: set[str]) -> tuple[dict[str, CacheEntry], set[str]]:
        """Walk the plan from the outputs back: a node runs only if it is not cached and a
        node that runs (or a root) needs it, so an evicted model loader is not reloaded
        just because something behind it is still cached."""
        hits: dict[str, CacheEntry] = {}
        required = set(roots)
        to_run: set[str] = set()
        for nid in reversed(order):
            sig = sigs[nid]
            entry = self.cache.get(sig)
            if entry is not None and entry.files and not all(map(os.path.exists, entry.files)):
                self.cache.discard(sig)  # an output file was deleted: make it again
                entry = None
            if entry is not None:
                hits[nid] = entry
            elif nid in required:
                to_run.add(nid)
                required.update(src for _, src, _ in prepared[nid].links)
        return hits, to_run

    @staticmethod
    def _collect(result: RunResult, nid: str, ui: dict[str, Any], files: list[str]) -> None:
        if ui:
            result.ui[nid] = ui
        if files:
            result.files.extend(files)

    def _execute(self, nid: str, d: NodeDef, kwargs: dict[str, Any],
                 emit: Callable[[Event], None], interrupt: threading.Event,
                 output_dir: Path, workflow_dict: dict[str, Any],
                 free_memory: Callable[[], None]) -> CacheEntry | dict[str, Any] | None:
        """Run one node. Returns its entry, an error dict, or None when interrupted."""
        node_type = d.name

        def ctx_emit(kind: str, data: dict[str, Any]) -> None:
            emit({"type": kind, "node_type": node_type, **data})

        emit({"type": "node_started", "node": nid, "node_type": node_type})
        retried = False
        while True:
            ctx = RunContext(nid, node_type, output_dir, workflow_dict, interrupt, ctx_emit)
            t0 = time.perf_counter()
            token = activate(ctx)
            try:
                outputs = d.call(kwargs)
            except (Interrupted, KeyboardInterrupt):
                interrupt.set()
                emit({"type": "interrupted", "node": nid, "node_type": node_type})
                return None
            except Exception as exc:  # noqa: BLE001 - any node failure becomes an event
                if not retried and is_out_of_memory(exc):
                    retried = True  # once: a second out-of-memory error is reported
                    del exc
                    free_memory()
                    continue
                error = {"node": nid, "node_type": node_type,
                         "exception_type": type(exc).__name__, "message": str(exc),
                         "traceback": "".join(traceback.format_exception(
                             type(exc), exc, exc.__traceback__))}
                emit({"type": "error", **error})
                return error
            finally:
                deactivate(token)
            seconds = time.perf_counter() - t0
            emit({"type": "node_finished", "node": nid, "node_type": node_type,
                  "seconds": seconds, "ui": ctx.ui})
            return CacheEntry(outputs, ctx.ui, ctx.files, node_type=node_type)
