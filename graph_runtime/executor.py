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

import json
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from hashlib import blake2b
from pathlib import Path
from typing import Any

from graph_runtime.cache import CacheEntry, OutputCache
from graph_runtime.context import PreviewPolicy, reset_preview_policy, set_preview_policy
from graph_runtime.graph import build_graph, output_nodes, plan, validate
from graph_runtime.modes import apply_modes
from graph_runtime.node_call import Emitter, NodeCall, is_out_of_memory, release_device_memory
from graph_runtime.registry import REGISTRY, NodeDef, Registry
from graph_runtime.settings import Folders
from graph_runtime.workflow import Workflow, is_link, load_workflow

__all__ = ["Executor", "RunResult", "WorkflowInvalid", "is_out_of_memory"]
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


@dataclass
class _Prepared:
    """What planning learned about one node, reused by signing and calling."""

    definition: NodeDef
    literals: dict[str, Any]
    links: list[tuple[str, str, str]]  # (input name, source node, output name)


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=repr,
                      ensure_ascii=False)


@dataclass
class _RunState:
    """One run's plan and what it has computed so far."""

    order: list[str]
    prepared: dict[str, _Prepared]
    roots: set[str]
    to_run: set[str]
    result: RunResult
    # How many nodes still to run read each node's outputs: on out-of-memory, outputs
    # nobody needs any more are dropped along with the cache.
    pending: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.pending = dict.fromkeys(self.order, 0)
        for nid in self.to_run:
            for _, src, _ in self.prepared[nid].links:
                self.pending[src] += 1

    def arguments(self, nid: str) -> dict[str, Any]:
        """The node's literals and the outputs linked into it."""
        prep, values = self.prepared[nid], self.result.outputs
        kwargs = prep.literals.copy()
        for name, src, out in prep.links:
            kwargs[name] = values[src][out]
            self.pending[src] -= 1
        return kwargs

    def drop_unneeded(self) -> None:
        values = self.result.outputs
        for done in [n for n in values if self.pending[n] == 0 and n not in self.roots]:
            del values[done]

    def keep(self, nid: str, entry: CacheEntry, cached: bool) -> None:
        result = self.result
        result.outputs[nid] = entry.outputs
        (result.cached if cached else result.executed).append(nid)
        if entry.ui:
            result.ui[nid] = entry.ui
        if entry.files:
            result.files.extend(entry.files)


class Executor:
    """Runs workflows against a registry, sharing one `OutputCache` across runs. `folders`
    are where nodes read and write files (the defaults and their overrides if not given)."""

    def __init__(self, registry: Registry = REGISTRY, cache: OutputCache | None = None,
                 folders: Folders | None = None) -> None:
        self.registry = registry
        self.cache = cache if cache is not None else OutputCache()
        self.folders = folders if folders is not None else Folders.from_env()
        # Who wants step previews (see `context.PreviewPolicy`): nobody unless the embedder
        # (the server, a script) says so, so plain runs never pay for them.
        self.previews: PreviewPolicy | None = None

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
                if is_link(value):
                    links.append((name, value["from"], value["output"]))
                    continue
                if value is _MISSING:
                    if spec.widget is None:
                        continue  # optional socket left empty
                    value = spec.default
                if spec.type == "FLOAT" and type(value) is int:
                    value = float(value)
                literals[name] = value
            prepared[nid] = _Prepared(definition, literals, links)
        return prepared

    def _sign(self, prepared: dict[str, _Prepared], folders: Folders) -> dict[str, str]:
        sigs: dict[str, str] = {}
        out_dir_text: str | None = None
        for nid, prep in prepared.items():
            d = prep.definition
            fingerprint = None
            if d.fingerprint is not None:
                try:
                    fingerprint = d.fingerprint(prep.literals, folders)
                except Exception as exc:  # noqa: BLE001 - the node itself will report it
                    fingerprint = f"unreadable:{type(exc).__name__}:{exc}"
            if d.output_node and out_dir_text is None:
                out_dir_text = str(folders.output.resolve())
            payload = [d.name, d.version, prep.literals,
                       [(i, sigs[s], o) for i, s, o in prep.links], fingerprint,
                       out_dir_text if d.output_node else None]
            sigs[nid] = blake2b(_canonical(payload).encode(), digest_size=16).hexdigest()
        return sigs

    def _plan(self, wf: Workflow, targets: Iterable[str] | None, folders: Folders
              ) -> list[str]:
        g = build_graph(wf, self.registry)
        errors = validate(wf, self.registry, targets, folders, graph=g)
        if errors:
            raise WorkflowInvalid(errors)
        roots = list(targets) if targets else output_nodes(wf, self.registry)
        return plan(g, roots)

    def _folders(self, output_dir: Path | str | None) -> Folders:
        return self.folders if output_dir is None else self.folders.with_output(output_dir)

    def signatures(self, wf: Workflow | dict[str, Any] | str | Path,
                   targets: Iterable[str] | None = None,
                   output_dir: Path | str | None = None) -> dict[str, str]:
        """Signatures of the planned nodes (all ancestors of the outputs or targets)."""
        wf, folders = apply_modes(load_workflow(wf), self.registry), self._folders(output_dir)
        return self._sign(self._prepare(wf, self._plan(wf, targets, folders)), folders)

    # ------------------------------------------------------------------ running
    def run(self, wf: Workflow | dict[str, Any] | str | Path,
            targets: Iterable[str] | None = None,
            on_event: Callable[[Event], None] | None = None,
            interrupt: threading.Event | None = None,
            output_dir: Path | str | None = None,
            run_id: str | None = None,
            previews: PreviewPolicy | None = None) -> RunResult:
        """Validate (raising `WorkflowInvalid`), then run the plan. `output_dir` replaces
        the executor's output folder for this run. Every event carries `run_id` when one
        is given. `previews`: who wants step previews in this run (default: the
        executor's `previews`, nobody unless set)."""
        token = set_preview_policy(previews if previews is not None else self.previews)
        try:
            return self._run(wf, targets, on_event, interrupt, output_dir, run_id)
        finally:
            reset_preview_policy(token)

    def _run(self, wf: Workflow | dict[str, Any] | str | Path,
             targets: Iterable[str] | None, on_event: Callable[[Event], None] | None,
             interrupt: threading.Event | None, output_dir: Path | str | None,
             run_id: str | None) -> RunResult:
        started = time.perf_counter()
        original, folders = load_workflow(wf), self._folders(output_dir)
        wf = apply_modes(original, self.registry)  # what runs; files record `original`
        interrupt = interrupt if interrupt is not None else threading.Event()
        targets = list(targets) if targets else None
        order = self._plan(wf, targets, folders)
        prepared = self._prepare(wf, order)
        sigs = self._sign(prepared, folders)
        emit = Emitter(on_event, run_id)
        roots = set(targets) if targets else {n for n in order
                                              if prepared[n].definition.output_node}
        hits, to_run = self._lookup(order, prepared, sigs, roots)
        emit({"type": "run_started", "nodes": order,
              "cached": [n for n in order if n in hits]})
        state = _RunState(order, prepared, roots, to_run, RunResult(signatures=sigs))
        call = NodeCall(emit, interrupt, folders, original.to_dict(), lambda: self._free(state),
                        self._memo)
        result = state.result
        for nid in order:
            d = prepared[nid].definition
            if nid in hits:
                state.keep(nid, hits[nid], cached=True)
                emit({"type": "node_cached", "node": nid, "node_type": d.name,
                      "ui": hits[nid].ui})
                continue
            if nid not in to_run:
                continue  # not cached, but nothing that has to run needs it
            if interrupt.is_set():
                result.interrupted = True
                emit({"type": "interrupted", "node": nid, "node_type": d.name})
                break
            outcome = call(nid, d, state.arguments(nid))
            if isinstance(outcome, CacheEntry):
                self.cache.put(sigs[nid], outcome)
                state.keep(nid, outcome, cached=False)
                continue
            result.interrupted = outcome is None
            result.error = outcome
            break
        self._finish(result, started, emit)
        return result

    def _memo(self, key: str, compute: Callable[[], Any]) -> Any:
        """A value a node asked to keep (`context.memo`), in the output cache beside the
        outputs, under a key no signature can take."""
        full = f"memo:{key}"
        entry = self.cache.get(full)
        if entry is not None:
            return entry.outputs["value"]
        value = compute()
        self.cache.put(full, CacheEntry({"value": value}))
        return value

    def _free(self, state: _RunState) -> None:
        self.cache.free()
        state.drop_unneeded()
        release_device_memory()

    @staticmethod
    def _finish(result: RunResult, started: float, emit: Emitter) -> None:
        result.ok = result.error is None and not result.interrupted
        result.seconds = time.perf_counter() - started
        finished: Event = {"type": "run_finished", "executed": list(result.executed),
                           "cached": list(result.cached), "files": list(result.files),
                           "seconds": result.seconds, "ok": result.ok,
                           "interrupted": result.interrupted}
        if result.error is not None:
            finished["error"] = result.error
        emit(finished)

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
